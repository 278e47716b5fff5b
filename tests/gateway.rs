//! End-to-end behaviour of the standalone gateway over real sockets: login, chat, kicks,
//! heartbeats and deadlines.

mod common;

use std::time::Duration;

use common::*;
use im_connect::protocol::pb::IMessageWrap;
use serde_json::json;

#[tokio::test]
async fn ws_json_and_tcp_proto_users_chat_through_the_relay() {
    let srv = TestServer::start().await;
    let mut alice = ws_login(&srv, "alice", "web").await;
    let mut bob = tcp_login(&srv, "bob", "android").await;

    ws_send_json(
        &mut alice,
        json!({"code": 3, "requestId": "m1", "ids": ["bob"], "data": {"text": "hi bob"},
               "metadata": {"userId": "mallory"}}),
    )
    .await;
    let ack = ws_json(&mut alice).await;
    assert_eq!(ack["code"], 0, "{ack}");
    assert_eq!(ack["requestId"], "m1");

    let got = bob.recv_proto().await;
    assert_eq!(got.code, 3);
    assert_eq!(proto_data(&got), json!({"text": "hi bob"}));
    assert!(got.ids.is_empty(), "ids never reach clients");
    assert_eq!(
        got.metadata["userId"], "alice",
        "the server stamps the sender"
    );
    assert_eq!(got.metadata["deviceType"], "web");
    assert_eq!(got.metadata["platform"], "WEB");
    assert!(got.metadata.contains_key("brokerId"));

    // And back: protobuf over TCP to JSON over WebSocket.
    let reply = IMessageWrap {
        code: 3,
        request_id: "m2".into(),
        ids: vec!["alice".into()],
        data: Some(prost_types::Any {
            type_url: "type.googleapis.com/json".into(),
            value: br#"{"text":"hi alice"}"#.to_vec(),
        }),
        ..Default::default()
    };
    bob.send_proto(&reply).await;
    let ack = bob.recv_proto().await;
    assert_eq!((ack.code, ack.request_id.as_str()), (0, "m2"));
    let got = ws_json(&mut alice).await;
    assert_eq!(got["data"], json!({"text": "hi alice"}));
    assert_eq!(got["metadata"]["userId"], "bob");
    assert!(got.get("ids").is_none());
}

#[tokio::test]
async fn the_senders_other_devices_receive_its_messages() {
    let srv = TestServer::start().await;
    let mut phone = ws_login(&srv, "carol", "ios").await;
    let mut desk = ws_login(&srv, "carol", "mac").await;
    ws_send_json(
        &mut phone,
        json!({"code": 4, "requestId": "g1", "ids": ["carol"], "data": 1}),
    )
    .await;
    // The copy is handed over before the ACK is sent.
    let mut codes = vec![ws_json(&mut phone).await["code"].clone()];
    codes.push(ws_json(&mut phone).await["code"].clone());
    assert_eq!(codes, [json!(4), json!(0)]);
    assert_eq!(ws_json(&mut desk).await["requestId"], "g1");
}

#[tokio::test]
async fn a_second_login_in_the_same_group_kicks_the_first() {
    let srv = TestServer::start().await;
    let mut first = ws_login(&srv, "dave", "android").await;
    let mut web = ws_login(&srv, "dave", "web").await;
    let mut second = ws_login(&srv, "dave", "ios").await;

    let kick = ws_json(&mut first).await;
    assert_eq!(kick["code"], 6);
    assert_eq!(kick["data"]["reason"], "same_group_login");
    assert!(kick["data"]["message"].is_string());
    assert_eq!(ws_close(&mut first).await.0, 4001);

    // The web device is another group: untouched, and both survivors still get messages.
    let sessions = &srv.server.node().sessions;
    assert_eq!(sessions.connections("dave").len(), 2);
    ws_send_json(
        &mut web,
        json!({"code": 3, "requestId": "x", "ids": ["dave"]}),
    )
    .await;
    assert_eq!(ws_json(&mut web).await["code"], 3);
    assert_eq!(ws_json(&mut web).await["code"], 0);
    assert_eq!(ws_json(&mut second).await["code"], 3);

    // The kicked connection's clean-up never removed its replacement.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(sessions.connections("dave").len(), 2);
    let record = srv
        .server
        .node()
        .routes
        .lookup("dave")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.drivers["MOBILE"].device_id, "reg-dave-ios");
}

#[tokio::test]
async fn single_device_mode_kicks_every_other_group() {
    let mut config = config();
    config.netty.config.multi_device_enabled = false;
    let srv = TestServer::with(config).await;
    let mut web = ws_login(&srv, "erin", "web").await;
    let _desk = ws_login(&srv, "erin", "win").await;
    let kick = ws_json(&mut web).await;
    assert_eq!(kick["data"]["reason"], "single_device");
    assert_eq!(ws_close(&mut web).await.0, 4001);
}

#[tokio::test]
async fn heartbeats_are_answered_in_json_and_protobuf() {
    let srv = TestServer::start().await;
    let mut ws = ws_login(&srv, "hb1", "win").await;
    ws_send_json(&mut ws, json!({"code": 2, "requestId": "h"})).await;
    let reply = ws_json(&mut ws).await;
    assert_eq!(reply["code"], 2);
    assert_eq!(reply["requestId"], "h");
    assert_eq!(
        reply["metadata"],
        json!({"platform": "DESKTOP", "deviceType": "win"})
    );

    let mut tcp = tcp_login(&srv, "hb2", "ios").await;
    tcp.send_proto(&IMessageWrap {
        code: 2,
        ..Default::default()
    })
    .await;
    let reply = tcp.recv_proto().await;
    assert_eq!(reply.code, 2);
    assert_eq!(reply.metadata["platform"], "MOBILE");
    assert!(
        !reply.request_id.is_empty(),
        "the server generates a request id"
    );
}

#[tokio::test]
async fn websocket_pings_are_answered() {
    let srv = TestServer::start().await;
    let mut ws = ws_login(&srv, "pinger", "web").await;
    use futures_util::SinkExt;
    ws.send(tokio_tungstenite::tungstenite::Message::Ping(
        b"x".to_vec().into(),
    ))
    .await
    .unwrap();
    assert!(matches!(ws_next(&mut ws).await, WsEvent::Pong));
}

#[tokio::test]
async fn a_silent_connection_is_closed_4002() {
    let mut config = config();
    config.netty.config.heart_beat_time = 600;
    let srv = TestServer::with(config).await;
    let mut ws = ws_login(&srv, "quiet", "web").await;
    let started = std::time::Instant::now();
    assert_eq!(ws_close(&mut ws).await.0, 4002);
    assert!(started.elapsed() >= Duration::from_millis(500));
}

#[tokio::test]
async fn heartbeats_keep_a_connection_alive() {
    let mut config = config();
    config.netty.config.heart_beat_time = 600;
    let srv = TestServer::with(config).await;
    let mut ws = ws_login(&srv, "lively", "web").await;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        ws_send_json(&mut ws, json!({"code": 2})).await;
        assert_eq!(ws_json(&mut ws).await["code"], 2);
    }
}

#[tokio::test]
async fn a_token_about_to_expire_gets_refresh_token_and_an_expired_one_is_closed_4003() {
    let mut config = config();
    config.auth.jwt.leeway_seconds = 0;
    let srv = TestServer::with(config.clone()).await;
    // Expires in 2 s: inside the 3-minute refresh window.
    let token = token_for(&config, "short", 2);
    let mut ws = ws_connect(&srv.ws_url(&format!("token={token}")), Some("json"))
        .await
        .unwrap();
    ws_send_json(&mut ws, json!({"code": 1})).await;
    assert_eq!(ws_json(&mut ws).await["code"], 1);
    ws_send_json(&mut ws, json!({"code": 2})).await;
    assert_eq!(ws_json(&mut ws).await["code"], 10, "REFRESH_TOKEN");

    tokio::time::sleep(Duration::from_millis(3100)).await;
    ws_send_json(&mut ws, json!({"code": 2})).await;
    let error = ws_json(&mut ws).await;
    assert_eq!(error["metadata"]["reason"], "unauthenticated");
    assert_eq!(ws_close(&mut ws).await.0, 4003);
}

#[tokio::test]
async fn register_with_another_users_token_is_refused_and_changes_nothing() {
    let srv = TestServer::start().await;
    let mut ws = ws_login(&srv, "frank", "web").await;
    ws_send_json(&mut ws, json!({"code": 1, "token": srv.token("grace")})).await;
    let error = ws_json(&mut ws).await;
    assert_eq!(error["code"], -1);
    assert_eq!(error["metadata"]["reason"], "unauthenticated");
    ws_send_json(&mut ws, json!({"code": 2})).await;
    assert_eq!(ws_json(&mut ws).await["code"], 2, "still open");
    assert_eq!(srv.server.node().sessions.connections("frank").len(), 1);
    assert!(srv.server.node().sessions.connections("grace").is_empty());
}

#[tokio::test]
async fn client_logout_acks_and_closes_1000() {
    let srv = TestServer::start().await;
    let mut ws = ws_login(&srv, "henry", "web").await;
    ws_send_json(&mut ws, json!({"code": 6, "requestId": "bye"})).await;
    let ack = ws_json(&mut ws).await;
    assert_eq!(
        (ack["code"].as_i64(), ack["requestId"].as_str()),
        (Some(0), Some("bye"))
    );
    assert_eq!(ws_close(&mut ws).await.0, 1000);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(srv.server.node().sessions.connections("henry").is_empty());
    assert!(srv
        .server
        .node()
        .routes
        .lookup("henry")
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn disconnect_removes_binding_and_route() {
    let srv = TestServer::start().await;
    let ws = ws_login(&srv, "ivan", "web").await;
    assert_eq!(srv.server.node().sessions.online_users(), 1);
    drop(ws);
    for _ in 0..50 {
        if srv.server.node().sessions.online_users() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(srv.server.node().sessions.online_users(), 0);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(srv
        .server
        .node()
        .routes
        .lookup("ivan")
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn graceful_shutdown_sends_1001() {
    let srv = TestServer::start().await;
    let mut ws = ws_login(&srv, "judy", "web").await;
    let mut tcp = tcp_login(&srv, "kate", "web").await;
    let shutdown = tokio::spawn(async move { srv.server.shutdown().await });
    assert_eq!(ws_close(&mut ws).await.0, 1001);
    assert!(tcp.closed().await.is_empty());
    tokio::time::timeout(WAIT, shutdown).await.unwrap().unwrap();
}

#[tokio::test]
async fn rate_limit_answers_errors_then_closes_1008() {
    let mut config = config();
    config.netty.config.rate_limit.per_second = 1.0;
    config.netty.config.rate_limit.burst = 2;
    config.netty.config.rate_limit.max_violations = 3;
    let srv = TestServer::with(config).await;
    // REGISTER spends one token.
    let mut ws = ws_login(&srv, "flood", "web").await;
    let mut reasons = Vec::new();
    for i in 0..4 {
        ws_send_json(
            &mut ws,
            json!({"code": 3, "requestId": i.to_string(), "ids": ["nobody"]}),
        )
        .await;
    }
    for _ in 0..4 {
        let frame = ws_json(&mut ws).await;
        reasons.push(
            frame["metadata"]["reason"]
                .as_str()
                .unwrap_or("ack")
                .to_string(),
        );
    }
    assert_eq!(
        reasons,
        ["ack", "rate_limited", "rate_limited", "rate_limited"]
    );
    assert_eq!(
        ws_close(&mut ws).await,
        (1008, "rate limit exceeded".into())
    );
}

#[tokio::test]
async fn a_message_without_recipients_gets_an_error_in_embedded_mode() {
    let srv = TestServer::start().await;
    let mut ws = ws_login(&srv, "lonely", "web").await;
    ws_send_json(&mut ws, json!({"code": 3, "requestId": "n"})).await;
    let error = ws_json(&mut ws).await;
    assert_eq!(error["metadata"]["reason"], "no_recipients");
    assert_eq!(error["requestId"], "n");
}

/// Reads until the connection closes (its close code) or stays quiet for `quiet`.
async fn close_or_quiet(ws: &mut Ws, quiet: Duration) -> Option<u16> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        match tokio::time::timeout(quiet, ws.next()).await {
            Err(_) => return None,
            Ok(Some(Ok(Message::Close(frame)))) => {
                return Some(frame.map_or(1005, |f| f.code.into()))
            }
            Ok(None | Some(Err(_))) => return Some(1006),
            Ok(Some(Ok(_))) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_repeated_registers_of_one_group_leave_exactly_one_connection() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;

    let srv = TestServer::start().await;
    let mut sender = ws_login(&srv, "sender", "web").await;
    for round in 0..20 {
        let user = format!("racer-{round}");
        let url = srv.ws_url(&format!("token={}", srv.token(&user)));
        let mut a = ws_connect(&url, Some("json")).await.unwrap();
        let mut b = ws_connect(&url, Some("json")).await.unwrap();
        let burst = |ws: &'static str| {
            (0..30).map(move |i| {
                let frame =
                    json!({"code": 1, "deviceType": "android", "requestId": format!("{ws}-{i}")});
                Ok::<_, tokio_tungstenite::tungstenite::Error>(Message::Text(
                    frame.to_string().into(),
                ))
            })
        };
        let mut burst_a = futures_util::stream::iter(burst("a"));
        let mut burst_b = futures_util::stream::iter(burst("b"));
        let (sent_a, sent_b) = tokio::join!(a.send_all(&mut burst_a), b.send_all(&mut burst_b));
        sent_a.unwrap();
        sent_b.unwrap();

        let quiet = Duration::from_millis(700);
        let (closed_a, closed_b) =
            tokio::join!(close_or_quiet(&mut a, quiet), close_or_quiet(&mut b, quiet));
        let survivors = srv.server.node().sessions.connections(&user);
        assert_eq!(
            survivors.len(),
            1,
            "round {round}: {closed_a:?} {closed_b:?}"
        );
        match (closed_a, closed_b) {
            (None, Some(4001)) | (Some(4001), None) => {}
            other => panic!("round {round}: one kicked with 4001, one alive; got {other:?}"),
        }

        // The survivor still receives messages.
        let probe =
            json!({"code": 3, "requestId": format!("probe-{round}"), "ids": [user], "data": "?"});
        ws_send_json(&mut sender, probe).await;
        assert_eq!(ws_json(&mut sender).await["code"], 0);
        let alive = if closed_a.is_none() { &mut a } else { &mut b };
        assert_eq!(ws_json(alive).await["requestId"], format!("probe-{round}"));
    }
}
