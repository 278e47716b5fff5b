//! Bad input of every kind gets the contract's answer, and the server keeps serving others.

mod common;

use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use im_connect::protocol::pb::IMessageWrap;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;

/// A logged-in bystander that must still be served after each abuse.
async fn still_serving(srv: &TestServer) {
    let mut ws = ws_login(srv, "bystander", "web").await;
    ws_send_json(&mut ws, json!({"code": 2})).await;
    assert_eq!(ws_json(&mut ws).await["code"], 2);
}

fn reason(frame: &serde_json::Value) -> &str {
    frame["metadata"]["reason"].as_str().unwrap_or("")
}

#[tokio::test]
async fn oversize_websocket_message_is_closed_1009() {
    let mut config = config();
    config.netty.config.max_frame_size = 1024;
    let srv = TestServer::with(config).await;
    let mut ws = ws_login(&srv, "big", "web").await;
    let text = json!({"code": 3, "data": "x".repeat(4096)}).to_string();
    ws.send(Message::Text(text.into())).await.unwrap();
    let error = ws_json(&mut ws).await;
    assert_eq!(reason(&error), "too_big");
    assert_eq!(ws_close(&mut ws).await.0, 1009);
    still_serving(&srv).await;
}

#[tokio::test]
async fn oversize_tcp_length_is_refused_before_the_payload() {
    let srv = TestServer::start().await;
    let mut tcp = Tcp::connect(srv.tcp).await;
    // Declares 1 MiB and sends nothing more: the answer must not wait for the payload.
    tcp.stream
        .write_all(&(1u32 << 20).to_be_bytes())
        .await
        .unwrap();
    let frames = tcp.closed().await;
    assert_eq!(frames.len(), 1);
    let error = IMessageWrap::decode_frame(&frames[0]);
    assert_eq!(error.code, -1);
    assert_eq!(error.metadata["reason"], "too_big");
    still_serving(&srv).await;
}

#[tokio::test]
async fn invalid_json_gets_bad_frame_and_the_connection_stays() {
    let srv = TestServer::start().await;
    let mut ws = ws_login(&srv, "typo", "web").await;
    ws.send(Message::Text("{\"code\": 3,".into()))
        .await
        .unwrap();
    assert_eq!(reason(&ws_json(&mut ws).await), "bad_frame");
    ws.send(Message::Text(r#"{"code": "three"}"#.into()))
        .await
        .unwrap();
    assert_eq!(reason(&ws_json(&mut ws).await), "bad_frame");
    ws_send_json(&mut ws, json!({"code": 2})).await;
    assert_eq!(ws_json(&mut ws).await["code"], 2);
}

#[tokio::test]
async fn invalid_protobuf_gets_bad_frame() {
    let srv = TestServer::start().await;
    let mut ws = ws_login(&srv, "garbled", "web").await;
    ws.send(Message::Binary(vec![0x0a, 0xff, 0xff, 0xff].into()))
        .await
        .unwrap();
    // The connection's codec is JSON (subprotocol), so the ERROR is JSON.
    assert_eq!(reason(&ws_json(&mut ws).await), "bad_frame");
    still_serving(&srv).await;
}

#[tokio::test]
async fn unknown_and_server_side_codes_get_unknown_code() {
    let srv = TestServer::start().await;
    let mut ws = ws_login(&srv, "curious", "web").await;
    ws_send_json(&mut ws, json!({"code": 777, "requestId": "u"})).await;
    let error = ws_json(&mut ws).await;
    assert_eq!(
        (reason(&error), error["requestId"].as_str()),
        ("unknown_code", Some("u"))
    );
    ws_send_json(&mut ws, json!({"code": 0})).await;
    assert_eq!(reason(&ws_json(&mut ws).await), "unknown_code");
    ws_send_json(&mut ws, json!({"code": 2})).await;
    assert_eq!(ws_json(&mut ws).await["code"], 2, "still open");
}

#[tokio::test]
async fn messages_before_register_are_refused_and_closed() {
    let srv = TestServer::start().await;
    // WebSocket: authenticated by the handshake, but not registered.
    let url = srv.ws_url(&format!("token={}", srv.token("early")));
    let mut ws = ws_connect(&url, Some("json")).await.unwrap();
    ws_send_json(&mut ws, json!({"code": 3, "ids": ["x"]})).await;
    assert_eq!(reason(&ws_json(&mut ws).await), "not_logged_in");
    assert_eq!(ws_close(&mut ws).await.0, 1008);

    // TCP: the first frame must be REGISTER.
    let mut tcp = Tcp::connect(srv.tcp).await;
    tcp.send_json(json!({"code": 3, "ids": ["x"]})).await;
    let frames = tcp.closed().await;
    let error: serde_json::Value = serde_json::from_slice(&frames[0]).unwrap();
    assert_eq!(reason(&error), "not_logged_in");
    still_serving(&srv).await;
}

#[tokio::test]
async fn binary_garbage_on_tcp_is_refused_and_closed() {
    let srv = TestServer::start().await;
    let mut tcp = Tcp::connect(srv.tcp).await;
    tcp.stream
        .write_all(b"\x00\x00\x00\x05\xff\xfe\xfd\xfc\xfb")
        .await
        .unwrap();
    let frames = tcp.closed().await;
    assert_eq!(
        IMessageWrap::decode_frame(&frames[0]).metadata["reason"],
        "bad_frame"
    );

    // An empty payload is a bad frame too.
    let mut tcp = Tcp::connect(srv.tcp).await;
    tcp.send_raw(b"").await;
    let frames = tcp.closed().await;
    assert_eq!(
        IMessageWrap::decode_frame(&frames[0]).metadata["reason"],
        "bad_frame"
    );
    still_serving(&srv).await;
}

#[tokio::test]
async fn a_client_that_sends_nothing_is_closed_after_the_handshake_deadline() {
    let mut config = config();
    config.netty.config.handshake_timeout_ms = 300;
    config.netty.config.login_timeout_ms = 300;
    let srv = TestServer::with(config).await;
    let started = std::time::Instant::now();
    let mut tcp = Tcp::connect(srv.tcp).await;
    assert!(tcp.closed().await.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(250));

    // A raw socket on the WebSocket port that never finishes its HTTP request.
    let mut raw = Tcp::connect(srv.ws).await;
    raw.stream.write_all(b"GET /im HTTP/1.1\r\n").await.unwrap();
    assert!(raw.closed().await.is_empty());

    // An upgraded WebSocket that never registers.
    let url = srv.ws_url(&format!("token={}", srv.token("idle")));
    let mut ws = ws_connect(&url, Some("json")).await.unwrap();
    assert_eq!(ws_close(&mut ws).await, (1008, "login timeout".into()));
    still_serving(&srv).await;
}

#[tokio::test]
async fn tcp_refuses_bad_tokens_with_an_error_and_a_close() {
    let srv = TestServer::start().await;
    for token in ["not-a-jwt", &forged_token(), &expired_token(&srv)] {
        let mut tcp = Tcp::connect(srv.tcp).await;
        tcp.send_proto(&proto_register(token, "ios")).await;
        let frames = tcp.closed().await;
        let error = IMessageWrap::decode_frame(&frames[0]);
        assert_eq!(error.metadata["reason"], "unauthenticated", "token {token}");
    }
    let mut tcp = Tcp::connect(srv.tcp).await;
    tcp.send_proto(&proto_register("", "ios")).await;
    let frames = tcp.closed().await;
    assert_eq!(
        IMessageWrap::decode_frame(&frames[0]).metadata["reason"],
        "unauthenticated"
    );
}

#[tokio::test]
async fn websocket_refuses_forged_expired_and_unsigned_tokens_with_401() {
    let srv = TestServer::start().await;
    let none = unsigned_token();
    for token in ["garbage", &forged_token(), &expired_token(&srv), &none] {
        let status = ws_connect(&srv.ws_url(&format!("token={token}")), None)
            .await
            .err();
        assert_eq!(status, Some(401), "token {token}");
    }
    assert_eq!(ws_connect(&srv.ws_url(""), None).await.err(), Some(401));
}

#[tokio::test]
async fn a_client_that_cannot_keep_up_is_closed_4004() {
    let mut config = config();
    config.netty.config.outbound_queue = 8;
    config.netty.config.rate_limit.enable = false;
    let srv = TestServer::with(config).await;
    let mut slow = ws_login(&srv, "slow", "web").await;
    let mut fast = tcp_login(&srv, "fast", "web").await;
    // Enough bulk to fill the socket buffers while `slow` does not read.
    let blob = "y".repeat(60_000);
    for i in 0..200 {
        let msg = IMessageWrap {
            code: 3,
            request_id: i.to_string(),
            ids: vec!["slow".into()],
            message: blob.clone(),
            ..Default::default()
        };
        fast.send_proto(&msg).await;
        let _ack = fast.recv().await.expect("ack");
    }
    let mut frames = 0;
    let close = loop {
        match ws_next(&mut slow).await {
            WsEvent::Close(code, _) => break code,
            WsEvent::Ended => panic!("ended without a Close frame after {frames} frames"),
            _ => frames += 1,
        }
    };
    assert_eq!(close, 4004, "after {frames} frames");
    still_serving(&srv).await;
}

fn forged_token() -> String {
    let mut config = config();
    config.auth.jwt.secret = Some(im_connect::config::Secret::new("another-secret"));
    token_for(&config, "mallory", 3600)
}

fn expired_token(srv: &TestServer) -> String {
    let mut config = srv.config.clone();
    config.auth.jwt.leeway_seconds = 0;
    // Signed with the right key but expired an hour ago (beyond the 30 s leeway).
    let claims = json!({"username": "old", "exp": now() - 3600});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn unsigned_token() -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let claims = b64.encode(format!(r#"{{"username":"root","exp":{}}}"#, now() + 3600));
    format!("{header}.{claims}.")
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

trait DecodeFrame {
    fn decode_frame(bytes: &[u8]) -> IMessageWrap;
}

impl DecodeFrame for IMessageWrap {
    fn decode_frame(bytes: &[u8]) -> IMessageWrap {
        prost::Message::decode(bytes).expect("a protobuf frame")
    }
}

#[tokio::test]
async fn a_client_close_is_answered_with_a_close() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, CloseFrame};

    let srv = TestServer::start().await;
    let mut ws = ws_login(&srv, "leaver", "web").await;
    let bye = CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    };
    ws.send(Message::Close(Some(bye))).await.unwrap();
    let answer = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("an answer");
    match answer {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 1000),
        other => panic!("expected the server's Close, got {other:?}"),
    }
    still_serving(&srv).await;
}

#[tokio::test]
async fn a_flooding_client_still_receives_its_close_frame() {
    use futures_util::StreamExt;

    let mut config = config();
    config.netty.config.rate_limit.per_second = 1.0;
    config.netty.config.rate_limit.burst = 2;
    config.netty.config.rate_limit.max_violations = 3;
    let srv = TestServer::with(config).await;
    for round in 0..3 {
        let ws = ws_login(&srv, &format!("flood-{round}"), "web").await;
        let (mut sink, mut stream) = ws.split();
        // Far more than the server reads before it decides to close: input still unread at
        // close time must not turn into a reset that swallows the Close frame.
        let flood = tokio::spawn(async move {
            let filler = "x".repeat(1024);
            for i in 0..3_000 {
                let frame = json!({"code": 3, "requestId": i.to_string(), "ids": ["nobody"], "data": filler});
                if sink
                    .feed(Message::Text(frame.to_string().into()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            let _ = sink.flush().await;
        });
        let close = loop {
            let next = tokio::time::timeout(WAIT, stream.next())
                .await
                .expect("the close");
            match next {
                Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                other => panic!("round {round}: no Close frame, got {other:?}"),
            }
        };
        assert_eq!(close, Some(1008), "round {round}");
        flood.abort();
    }
    still_serving(&srv).await;
}
