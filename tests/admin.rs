//! The admin endpoint over real HTTP: health, readiness, metrics, run-time ports, kicks,
//! user lookups, the bearer token and the errors bad requests get.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use im_connect::config::{RabbitMqConfig, Secret};
use im_connect::server::Server;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One HTTP answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: String,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// Sends one HTTP/1.1 request with `Connection: close` and reads the whole answer.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Answer {
    let mut stream = TcpStream::connect(addr)
        .await
        .expect("admin endpoint accepts");
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() || method != "GET" {
        head.push_str("Content-Type: application/json\r\n");
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    head.push_str(body);
    stream.write_all(head.as_bytes()).await.unwrap();

    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut raw))
        .await
        .expect("an answer within the wait")
        .unwrap();
    let raw = String::from_utf8(raw).expect("UTF-8 answer");
    let (headers, body) = raw.split_once("\r\n\r\n").expect("a complete answer");
    let status = headers[9..12].parse().expect("a status code");
    Answer {
        status,
        headers: headers.to_ascii_lowercase(),
        body: body.to_owned(),
    }
}

async fn get(addr: SocketAddr, path: &str) -> Answer {
    http(addr, "GET", path, None, None).await
}

fn admin(srv: &TestServer) -> SocketAddr {
    srv.server.admin_addr().expect("the admin endpoint runs")
}

/// The value of one series in a Prometheus exposition (0 when absent: a series appears once
/// something touched it).
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            let rest = line.strip_prefix(series)?;
            rest.strip_prefix(' ')?.trim().parse().ok()
        })
        .unwrap_or(0.0)
}

async fn scrape(addr: SocketAddr) -> String {
    let answer = get(addr, "/metrics").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(
        answer.headers.contains("content-type: text/plain"),
        "{}",
        answer.headers
    );
    answer.body
}

#[tokio::test]
async fn health_ready_console_and_unknown_paths() {
    let srv = TestServer::start().await;
    let addr = admin(&srv);
    assert!(addr.ip().is_loopback());

    let health = get(addr, "/health").await;
    assert_eq!(
        (health.status, health.json()["status"].clone()),
        (200, json!("alive"))
    );

    let ready = get(addr, "/ready").await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert_eq!(ready.json()["ready"], true);
    assert!(srv.server.readiness().ready);

    let page = get(addr, "/").await;
    assert_eq!(page.status, 200);
    assert!(page.headers.contains("content-type: text/html"));
    assert!(page.body.contains("im-connect console"));
    // The page is told the code table and where the WebSocket listener is.
    assert!(page.body.contains("\"single_message\":3"), "codes injected");
    assert!(page
        .body
        .contains(&format!("\"wsPorts\":[{}]", srv.ws.port())));

    let missing = get(addr, "/nope").await;
    assert_eq!(missing.status, 404);
    assert!(missing.json()["error"].as_str().unwrap().contains("/nope"));

    let wrong = http(addr, "POST", "/health", None, None).await;
    assert_eq!(wrong.status, 405);
    assert!(wrong.headers.contains("allow: get"), "{}", wrong.headers);
    srv.server.shutdown_with(WAIT).await;
}

#[tokio::test]
async fn ready_is_503_naming_what_is_not_ready() {
    // No port bound yet, and a RabbitMQ broker whose server is not there (nothing listens on
    // port 1): readiness names both.
    let mut config = config();
    config.rabbitmq = Some(RabbitMqConfig {
        port: 1,
        connection_timeout: 500,
        exchange: format!("admin-ready-{}", std::process::id()),
        ..RabbitMqConfig::default()
    });
    let server = Server::start(config)
        .await
        .expect("starts while RabbitMQ is down");
    let addr = server.admin_addr().unwrap();

    let ready = get(addr, "/ready").await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    let body = ready.json();
    assert_eq!(body["ready"], false);
    assert_eq!(body["notReady"], json!(["listeners", "broker"]), "{body}");
    let broker = &body["checks"][1];
    assert_eq!(broker["name"], "broker");
    assert!(broker["detail"].as_str().is_some_and(|d| !d.is_empty()));

    // A bound listener clears the first check; the broker stays down.
    server
        .bind(im_connect::session::Transport::Tcp, "127.0.0.1", 0)
        .await
        .unwrap();
    let body = get(addr, "/ready").await.json();
    assert_eq!(body["notReady"], json!(["broker"]));
    assert_eq!(server.readiness().not_ready(), ["broker"]);

    let text = scrape(addr).await;
    assert_eq!(metric(&text, "im_backend_up{backend=\"broker\"}"), 0.0);
    assert_eq!(metric(&text, "im_backend_up{backend=\"routes\"}"), 1.0);
    server.shutdown_with(WAIT).await;
}

#[tokio::test]
async fn admin_token_is_required_when_configured() {
    let mut config = config();
    config.admin.token = Some(Secret::new("admin-secret-1"));
    let srv = TestServer::with(config).await;
    let addr = admin(&srv);

    for path in [
        "/metrics",
        "/ready",
        "/admin/ports",
        "/admin/stats",
        "/admin/users/u1",
    ] {
        let denied = get(addr, path).await;
        assert_eq!(denied.status, 401, "{path}: {}", denied.body);
        assert!(denied.headers.contains("www-authenticate: bearer"));
        assert!(denied.json()["error"]
            .as_str()
            .unwrap()
            .contains("admin token"));
    }
    let wrong = http(addr, "GET", "/metrics", Some("admin-secret-2"), None).await;
    assert_eq!(wrong.status, 401);
    let kick = http(addr, "POST", "/admin/kick", None, Some(r#"{"user":"u1"}"#)).await;
    assert_eq!(kick.status, 401);

    let allowed = http(addr, "GET", "/metrics", Some("admin-secret-1"), None).await;
    assert_eq!(allowed.status, 200);
    assert!(allowed.body.contains("im_online_users"));
    // Liveness and the console page load without it.
    assert_eq!(get(addr, "/health").await.status, 200);
    let page = get(addr, "/").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("\"tokenRequired\":true"));
    srv.server.shutdown_with(WAIT).await;
}

#[tokio::test]
async fn ports_are_bound_and_closed_at_run_time() {
    let srv = TestServer::start().await;
    let addr = admin(&srv);

    let bound = http(
        addr,
        "POST",
        "/admin/ports/0",
        None,
        Some(r#"{"transport":"tcp"}"#),
    )
    .await;
    assert_eq!(bound.status, 201, "{}", bound.body);
    let body = bound.json();
    assert_eq!(body["transport"], "tcp");
    let port = body["port"].as_u64().unwrap() as u16;
    let tcp_addr: SocketAddr = body["addr"].as_str().unwrap().parse().unwrap();

    // A client logs in on the new port and is counted there.
    let mut client = Tcp::connect(tcp_addr).await;
    client
        .send_proto(&proto_register(&srv.token("runtime-1"), "ios"))
        .await;
    assert_eq!(client.recv_proto().await.message, "ok");
    let listed = get(addr, "/admin/ports").await.json();
    let entry = listed["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["port"] == port)
        .cloned()
        .expect("the new port is listed");
    assert_eq!(
        (entry["transport"].clone(), entry["connections"].clone()),
        (json!("tcp"), json!(1))
    );
    assert_eq!(listed["ports"].as_array().unwrap().len(), 3);

    // The same port again is a conflict.
    let again = http(
        addr,
        "POST",
        &format!("/admin/ports/{port}?transport=tcp"),
        None,
        None,
    )
    .await;
    assert_eq!(again.status, 409, "{}", again.body);

    // Closing it drains its connection and stops accepting.
    let closed = http(addr, "DELETE", &format!("/admin/ports/{port}"), None, None).await;
    assert_eq!(closed.status, 200, "{}", closed.body);
    assert_eq!(closed.json()["draining"], 1);
    client.closed().await;
    // The accept task drops its socket as soon as it sees the stop; give it that moment.
    let deadline = tokio::time::Instant::now() + WAIT;
    while TcpStream::connect(tcp_addr).await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "port still accepts");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(srv.server.ports().iter().all(|p| p.addr.port() != port));
    let gone = http(addr, "DELETE", &format!("/admin/ports/{port}"), None, None).await;
    assert_eq!(gone.status, 404);

    // A WebSocket port, transport named in the query.
    let ws = http(addr, "POST", "/admin/ports/0?transport=ws", None, None).await;
    assert_eq!(ws.status, 201, "{}", ws.body);
    let ws_addr = ws.json()["addr"].as_str().unwrap().to_owned();
    let url = format!("ws://{ws_addr}/im?token={}", srv.token("runtime-2"));
    let mut client = ws_connect(&url, Some("json")).await.expect("handshake");
    ws_send_json(&mut client, json!({"code": 1, "deviceType": "web"})).await;
    assert_eq!(ws_json(&mut client).await["message"], "ok");
    let ws_port = ws_addr.rsplit(':').next().unwrap();
    let closed = http(
        addr,
        "DELETE",
        &format!("/admin/ports/{ws_port}"),
        None,
        None,
    )
    .await;
    assert_eq!(closed.status, 200);
    assert_eq!(ws_close(&mut client).await.0, 1001);
    srv.server.shutdown_with(WAIT).await;
}

#[tokio::test]
async fn bad_port_requests_get_clear_errors() {
    let srv = TestServer::start().await;
    let addr = admin(&srv);
    let cases = [
        (
            "POST",
            "/admin/ports/abc",
            Some(r#"{"transport":"tcp"}"#),
            400,
            "not a port",
        ),
        (
            "POST",
            "/admin/ports/70000",
            Some(r#"{"transport":"tcp"}"#),
            400,
            "not a port",
        ),
        ("POST", "/admin/ports/0", None, 400, "which transport"),
        (
            "POST",
            "/admin/ports/0",
            Some(r#"{"transport":"udp"}"#),
            400,
            "unknown transport",
        ),
        ("POST", "/admin/ports/0", Some("{not json"), 400, "bad JSON"),
        (
            "POST",
            "/admin/ports/0",
            Some(r#"{"transport":"tcp","x":1}"#),
            400,
            "unknown field",
        ),
        ("DELETE", "/admin/ports/-1", None, 400, "not a port"),
        ("DELETE", "/admin/ports/1", None, 404, "nothing is bound"),
        ("GET", "/admin/ports/1", None, 405, "not allowed"),
    ];
    for (method, path, body, status, says) in cases {
        let answer = http(addr, method, path, None, body).await;
        assert_eq!(answer.status, status, "{method} {path}: {}", answer.body);
        let error = answer.json()["error"].as_str().unwrap().to_owned();
        assert!(error.contains(says), "{method} {path}: {error}");
    }
    let taken = srv.tcp.port();
    let conflict = http(
        addr,
        "POST",
        &format!("/admin/ports/{taken}"),
        None,
        Some(r#"{"transport":"ws"}"#),
    )
    .await;
    assert_eq!(conflict.status, 409, "{}", conflict.body);
    assert!(conflict.json()["error"]
        .as_str()
        .unwrap()
        .contains(&taken.to_string()));
    srv.server.shutdown_with(WAIT).await;
}

#[tokio::test]
async fn kick_sends_force_logout_with_reason_admin_then_4001() {
    let srv = TestServer::start().await;
    let addr = admin(&srv);
    let mut web = ws_login(&srv, "kick-1", "web").await;
    let mut phone = tcp_login(&srv, "kick-1", "ios").await;

    let kicked = http(
        addr,
        "POST",
        "/admin/kick",
        None,
        Some(r#"{"user":"kick-1","group":"web"}"#),
    )
    .await;
    assert_eq!(kicked.status, 200, "{}", kicked.body);
    assert_eq!(kicked.json()["kicked"], 1);
    let frame = ws_json(&mut web).await;
    assert_eq!(frame["code"], 6, "FORCE_LOGOUT: {frame}");
    assert_eq!(frame["data"]["reason"], "admin");
    assert_eq!(ws_close(&mut web).await.0, 4001);

    // The phone stays until it is kicked by device type.
    let users = get(addr, "/admin/users/kick-1").await.json();
    assert_eq!(users["connections"].as_array().unwrap().len(), 1);
    let kicked = http(
        addr,
        "POST",
        "/admin/kick",
        None,
        Some(r#"{"user":"kick-1","deviceType":"android"}"#),
    )
    .await;
    assert_eq!(kicked.json()["kicked"], 1);
    let frame = phone.recv_proto().await;
    assert_eq!(frame.code, 6);
    assert_eq!(proto_data(&frame)["reason"], "admin");
    phone.closed().await;

    let text = scrape(addr).await;
    assert_eq!(metric(&text, "im_kicks_total"), 2.0);

    let cases = [
        (Some(r#"{"user":"kick-1"}"#), 404, "no matching connection"),
        (Some(r#"{"user":"nobody"}"#), 404, "no matching connection"),
        (None, 400, "JSON body is required"),
        (Some(r#"{"group":"web"}"#), 400, "missing field `user`"),
        (Some(r#"{"user":" "}"#), 400, "must not be empty"),
        (
            Some(r#"{"user":"kick-1","group":"car"}"#),
            400,
            "unknown group",
        ),
        (Some("[1,2"), 400, "bad JSON"),
    ];
    for (body, status, says) in cases {
        let answer = http(addr, "POST", "/admin/kick", None, body).await;
        assert_eq!(answer.status, status, "{body:?}: {}", answer.body);
        let error = answer.json()["error"].as_str().unwrap().to_owned();
        assert!(error.contains(says), "{body:?}: {error}");
    }
    srv.server.shutdown_with(WAIT).await;
}

#[tokio::test]
async fn user_lookup_lists_the_connections_on_this_node() {
    let srv = TestServer::start().await;
    let addr = admin(&srv);
    let _web = ws_login(&srv, "lookup-1", "web").await;
    let _phone = tcp_login(&srv, "lookup-1", "android").await;

    let answer = get(addr, "/admin/users/lookup-1").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let body = answer.json();
    assert_eq!(body["user"], "lookup-1");
    let mut list: Vec<(String, String, String, String)> = body["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap().to_owned();
            (s("transport"), s("codec"), s("group"), s("deviceType"))
        })
        .collect();
    list.sort();
    let want = |t: &str, c: &str, g: &str, d: &str| (t.into(), c.into(), g.into(), d.into());
    assert_eq!(
        list,
        [
            want("tcp", "proto", "MOBILE", "android"),
            want("ws", "json", "WEB", "web")
        ]
    );

    let unknown = get(addr, "/admin/users/nobody").await;
    assert_eq!(unknown.status, 404);
    assert!(unknown.json()["error"].as_str().unwrap().contains("nobody"));
    srv.server.shutdown_with(WAIT).await;
}

#[tokio::test]
async fn metrics_move_when_clients_connect_and_send() {
    let srv = TestServer::start().await;
    let addr = admin(&srv);
    let before = scrape(addr).await;
    assert_eq!(metric(&before, "im_online_users"), 0.0);

    let mut alice = ws_login(&srv, "metrics-a", "web").await;
    let mut bob = ws_login(&srv, "metrics-b", "web").await;
    let mut carol = tcp_login(&srv, "metrics-c", "ios").await;
    ws_send_json(
        &mut alice,
        json!({"code": 3, "ids": ["metrics-b", "metrics-c"], "requestId": "m-1", "data": {"text": "hi"}}),
    )
    .await;
    assert_eq!(ws_json(&mut alice).await["code"], 0, "ACK");
    assert_eq!(ws_json(&mut bob).await["data"]["text"], "hi");
    assert_eq!(carol.recv_proto().await.code, 3);
    ws_send_json(&mut bob, json!({"code": 2})).await;
    assert_eq!(ws_json(&mut bob).await["code"], 2, "heartbeat reply");
    // The same request id again is acknowledged but not delivered twice.
    ws_send_json(
        &mut alice,
        json!({"code": 3, "ids": ["metrics-b"], "requestId": "m-1", "data": {"text": "again"}}),
    )
    .await;
    assert_eq!(ws_json(&mut alice).await["code"], 0, "ACK");

    let after = scrape(addr).await;
    let delta = |series: &str| metric(&after, series) - metric(&before, series);
    assert_eq!(metric(&after, "im_online_users"), 3.0);
    assert_eq!(
        metric(&after, "im_connections{transport=\"ws\",codec=\"json\"}"),
        2.0
    );
    assert_eq!(
        metric(&after, "im_connections{transport=\"tcp\",codec=\"proto\"}"),
        1.0
    );
    assert_eq!(metric(&after, "im_open_connections{transport=\"ws\"}"), 2.0);
    assert_eq!(delta("im_logins_total"), 3.0);
    assert_eq!(delta("im_frames_in_total{kind=\"register\"}"), 3.0);
    assert_eq!(delta("im_frames_in_total{kind=\"single_message\"}"), 2.0);
    assert_eq!(delta("im_frames_in_total{kind=\"heart_beat\"}"), 1.0);
    assert_eq!(delta("im_frames_out_total{kind=\"ack\"}"), 2.0);
    assert_eq!(delta("im_frames_out_total{kind=\"single_message\"}"), 2.0);
    assert_eq!(delta("im_upstream_publishes_total"), 2.0);
    assert_eq!(delta("im_upstream_acks_total"), 2.0);
    assert_eq!(delta("im_upstream_errors_total"), 0.0);
    assert_eq!(delta("im_downstream_deliveries_total"), 2.0);
    assert_eq!(delta("im_dedup_hits_total"), 1.0);
    assert_eq!(delta("im_frame_handling_seconds_count"), 6.0);
    assert!(
        !after.contains("im_frames_in_total{kind=\"ack\"}"),
        "server kinds counted in"
    );
    assert!(delta("im_delivery_write_seconds_count") >= 1.0, "{after}");
    assert_eq!(metric(&after, "im_backend_up{backend=\"broker\"}"), 1.0);

    let stats = get(addr, "/admin/stats").await.json();
    assert_eq!(
        (stats["users"].clone(), stats["connections"].clone()),
        (json!(3), json!(3))
    );
    assert_eq!(
        (stats["upstream"].clone(), stats["downstream"].clone()),
        (json!(2), json!(2))
    );

    // Leaving shows too.
    drop(carol);
    let deadline = tokio::time::Instant::now() + WAIT;
    while srv.server.node().sessions.online_users() != 2 {
        assert!(tokio::time::Instant::now() < deadline, "carol never left");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let text = scrape(addr).await;
    assert_eq!(metric(&text, "im_online_users"), 2.0);
    srv.server.shutdown_with(WAIT).await;
}

#[tokio::test]
async fn closes_and_refusals_are_counted() {
    let mut config = config();
    config.netty.config.heart_beat_time = 1000;
    let rate = &mut config.netty.config.rate_limit;
    rate.enable = true;
    rate.per_second = 0.5;
    rate.burst = 2;
    rate.max_violations = 100;
    let srv = TestServer::with(config).await;
    let addr = admin(&srv);

    let mut chatty = ws_login(&srv, "counted-1", "web").await;
    // Heartbeats are exempt from the limit; business messages are not.
    let mut refused = 0;
    for i in 0..4 {
        let frame = json!({"code": 3, "ids": ["counted-nobody"], "requestId": format!("m-{i}")});
        ws_send_json(&mut chatty, frame).await;
        let reply = ws_json(&mut chatty).await;
        if reply["metadata"]["reason"] == "rate_limited" {
            refused += 1;
        }
    }
    assert!(refused >= 1, "the rate limit refused nothing");
    // Silence past the heartbeat time closes with 4002.
    assert_eq!(ws_close(&mut chatty).await.0, 4002);

    let text = scrape(addr).await;
    assert_eq!(
        metric(&text, "im_rate_limited_frames_total"),
        f64::from(refused)
    );
    assert_eq!(metric(&text, "im_heartbeat_timeouts_total"), 1.0);
    srv.server.shutdown_with(WAIT).await;
}

#[tokio::test]
async fn admin_endpoint_can_be_turned_off() {
    let mut config = config();
    config.admin.enable = false;
    let srv = TestServer::with(config).await;
    assert_eq!(srv.server.admin_addr(), None);
    srv.server.shutdown_with(WAIT).await;
}
