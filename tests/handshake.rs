//! The WebSocket handshake, credentials, subprotocols and the Lucky Cloud dialect.

mod common;

use common::*;
use im_connect::config::Config;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends a raw HTTP request to the WebSocket port and returns the status line's code and the
/// whole response head.
async fn raw_http(srv: &TestServer, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(srv.ws).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    let code = head[9..12].parse().unwrap();
    (code, head)
}

fn upgrade_request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    )
}

#[tokio::test]
async fn handshake_checks_path_then_upgrade_then_credentials() {
    let srv = TestServer::start().await;
    let token = srv.token("u");
    let version = "Sec-WebSocket-Version: 13\r\n";
    let (code, _) = raw_http(
        &srv,
        &upgrade_request(&format!("/nope?token={token}"), version),
    )
    .await;
    assert_eq!(code, 404);
    let (code, _) = raw_http(&srv, "GET /im HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(code, 400);
    let (code, head) = raw_http(
        &srv,
        &upgrade_request("/im", "Sec-WebSocket-Version: 8\r\n"),
    )
    .await;
    assert_eq!(code, 426);
    assert!(head
        .to_ascii_lowercase()
        .contains("sec-websocket-version: 13"));
    let (code, _) = raw_http(&srv, &upgrade_request("/im", version)).await;
    assert_eq!(code, 401);
    let (code, _) = raw_http(
        &srv,
        &upgrade_request(&format!("/im/?token={token}"), version),
    )
    .await;
    assert_eq!(
        code, 101,
        "`/im/` matches too, Connection may list several tokens"
    );
}

#[tokio::test]
async fn credentials_come_from_query_header_or_cookie() {
    let srv = TestServer::start().await;
    let token = srv.token("cred");
    let version = "Sec-WebSocket-Version: 13\r\n";
    let bearer = format!("{version}Authorization: bearer {token}\r\n");
    assert_eq!(
        raw_http(&srv, &upgrade_request("/im", &bearer)).await.0,
        101
    );
    let cookie = format!("{version}Cookie: xtoken=no; token=\"{token}\"\r\n");
    assert_eq!(
        raw_http(&srv, &upgrade_request("/im", &cookie)).await.0,
        101
    );
    let wrong = format!("{version}Cookie: xtoken={token}\r\n");
    assert_eq!(raw_http(&srv, &upgrade_request("/im", &wrong)).await.0, 401);
}

#[tokio::test]
async fn subprotocol_selects_the_codec_and_frames_decode_by_type() {
    let srv = TestServer::start().await;
    let url = srv.ws_url(&format!("token={}&deviceType=IOS", srv.token("sub")));
    // Offering both: the first offered wins.
    let mut ws = ws_connect(&url, Some("proto, json")).await.unwrap();
    // A JSON text frame is still understood; the reply comes in protobuf.
    ws_send_json(&mut ws, json!({"code": 1, "requestId": "r"})).await;
    let reply = ws_proto(&mut ws).await;
    assert_eq!(reply.code, 1);
    assert_eq!(
        reply.device_type, "ios",
        "device type from the handshake query"
    );
    assert_eq!(reply.metadata["platform"], "MOBILE");

    // No offer: the configured default (proto).
    let url = srv.ws_url(&format!("token={}", srv.token("sub2")));
    let mut ws = ws_connect(&url, None).await.unwrap();
    ws_send_json(&mut ws, json!({"code": 1})).await;
    assert_eq!(ws_proto(&mut ws).await.device_type, "web");
}

#[tokio::test]
async fn a_register_sent_right_behind_the_upgrade_request_is_not_lost() {
    let srv = TestServer::start().await;
    let mut stream = TcpStream::connect(srv.ws).await.unwrap();
    let request = upgrade_request(
        &format!("/im?token={}", srv.token("eager")),
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: json\r\n",
    );
    let mut bytes = request.into_bytes();
    bytes.extend(masked_text_frame(
        br#"{"code":1,"requestId":"same-packet"}"#,
    ));
    stream.write_all(&bytes).await.unwrap();

    let mut buf = Vec::new();
    let reply = loop {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "server closed early");
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let frame = &buf[end + 4..];
        if let Some(payload) = server_frame_payload(frame) {
            break serde_json::from_slice::<serde_json::Value>(payload).unwrap();
        }
    };
    assert_eq!(reply["requestId"], "same-packet");
    assert_eq!(reply["message"], "ok");
}

/// The payload of a complete unmasked server frame at the start of `frame`, if it is all there.
fn server_frame_payload(frame: &[u8]) -> Option<&[u8]> {
    let (len, start) = match *frame.get(1)? & 0x7f {
        126 => (
            u16::from_be_bytes([*frame.get(2)?, *frame.get(3)?]) as usize,
            4,
        ),
        127 => panic!("unexpectedly large reply"),
        n => (n as usize, 2),
    };
    frame.get(start..start + len)
}

fn masked_text_frame(payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

#[tokio::test]
async fn tcp_detects_json_and_reads_the_token_from_data() {
    let srv = TestServer::start().await;
    let mut tcp = Tcp::connect(srv.tcp).await;
    tcp.send_raw(
        format!(
            "  {}",
            json!({"code": "1", "data": {"token": srv.token("jt"), "deviceType": "linux"}})
        )
        .as_bytes(),
    )
    .await;
    let reply = tcp.recv_json().await;
    assert_eq!(reply["code"], 1);
    assert_eq!(reply["deviceType"], "linux");
    assert_eq!(reply["metadata"]["platform"], "DESKTOP");
    assert!(
        reply.get("token").is_none(),
        "replies never carry the token"
    );
    assert_eq!(
        reply["data"],
        json!({"deviceType": "linux"}),
        "data is echoed without its token"
    );
}

fn lucky_config() -> Config {
    let text = std::fs::read_to_string("config/application-lucky.yml").unwrap();
    let mut lucky = common::isolated(Config::from_yaml(&text).unwrap().config);
    lucky.auth.jwt.secret = config().auth.jwt.secret;
    lucky
}

#[tokio::test]
async fn a_lucky_cloud_client_logs_in_and_chats() {
    let srv = TestServer::with(lucky_config()).await;
    let url = srv.ws_url(&format!("token={}", srv.token("lucky1")));
    let mut a = ws_connect(&url, Some("json")).await.unwrap();
    ws_send_json(
        &mut a,
        json!({"code": 200, "deviceType": "desktop", "requestId": "l1"}),
    )
    .await;
    let reply = ws_json(&mut a).await;
    assert_eq!(reply["code"], 209);
    assert_eq!(reply["deviceType"], "win", "desktop is an alias of win");
    assert_eq!(reply["metadata"]["platform"], "DESKTOP");

    ws_send_json(&mut a, json!({"code": 206})).await;
    assert_eq!(ws_json(&mut a).await["code"], 207);

    let url = srv.ws_url(&format!("token={}", srv.token("lucky2")));
    let mut b = ws_connect(&url, Some("json")).await.unwrap();
    ws_send_json(&mut b, json!({"code": 200, "deviceType": "android"})).await;
    assert_eq!(ws_json(&mut b).await["code"], 209);

    ws_send_json(
        &mut a,
        json!({"code": 1000, "requestId": "c1", "ids": ["lucky2"], "data": {"t": 1}}),
    )
    .await;
    assert_eq!(ws_json(&mut a).await["code"], 300);
    let got = ws_json(&mut b).await;
    assert_eq!(got["code"], 1000);
    assert_eq!(got["metadata"]["userId"], "lucky1");

    // A seed code is unknown in the lucky table.
    ws_send_json(&mut a, json!({"code": 3})).await;
    assert_eq!(ws_json(&mut a).await["metadata"]["reason"], "unknown_code");

    // Kicks use FORCE_LOGOUT 104.
    let url = srv.ws_url(&format!("token={}", srv.token("lucky2")));
    let mut b2 = ws_connect(&url, Some("json")).await.unwrap();
    ws_send_json(&mut b2, json!({"code": 200, "deviceType": "ios"})).await;
    assert_eq!(ws_json(&mut b2).await["code"], 209);
    assert_eq!(ws_json(&mut b).await["code"], 104);
    assert_eq!(ws_close(&mut b).await.0, 4001);
}
