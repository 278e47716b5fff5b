//! Registration against a real Nacos-compatible server (rnacos): instances and their metadata,
//! live connection counts, ports bound and closed at run time, deregistration on shutdown,
//! namespaces and credentials, a node that starts before Nacos does, and a Nacos that restarts.
//!
//! Instances are read back through the Nacos HTTP API (`/nacos/v1/ns/instance/list`), not
//! through the client under test. Each test uses its own service name, so the tests share the
//! rnacos on 8848 (started by `scripts/services`) with each other and with other suites; the
//! tests that need Nacos down, restarted or requiring credentials run an rnacos of their own
//! on fixed ports of their own.

mod common;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{config, tcp_login, ws_close, ws_json, ws_login, ws_send_json, TestServer};
use im_connect::backend::Health;
use im_connect::config::{Config, NacosConfig};
use im_connect::server::Server;
use im_connect::session::Transport;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The shared rnacos that `scripts/services` starts.
const NACOS_HTTP: u16 = 8848;
const NACOS_GRPC: u16 = 9848;

/// HTTP ports of the rnacos servers single tests run themselves (gRPC is 1000 above, the
/// console 2000 above).
const LATE_HTTP: u16 = 18848;
const AUTH_HTTP: u16 = 13848;
const RESTART_HTTP: u16 = 23848;

const REFRESH_MS: u64 = 1_000;

/// How long registration may take to show: generous, the machine is shared.
const SETTLE: Duration = Duration::from_secs(20);

fn listening(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    StdTcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}

fn require_nacos() {
    assert!(
        listening(NACOS_HTTP) && listening(NACOS_GRPC),
        "rnacos is not running on 127.0.0.1:{NACOS_HTTP} (HTTP) and :{NACOS_GRPC} (gRPC): \
         start it with scripts/services"
    );
}

/// A name no other test run uses.
fn unique(what: &str) -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    format!(
        "im-connect-test-{what}-{}-{nanos}-{seq}",
        std::process::id()
    )
}

fn nacos_section(service: &str, port: u16) -> NacosConfig {
    NacosConfig {
        name: service.to_owned(),
        address: "127.0.0.1".into(),
        port,
        version: "9.8.7".into(),
        region: "test-region".into(),
        priority: 3,
        refresh_interval_ms: REFRESH_MS,
        ip: Some("127.0.0.1".into()),
        ..NacosConfig::default()
    }
}

fn config_with(nacos: NacosConfig) -> Config {
    let mut config = config();
    config.nacos = Some(nacos);
    config
}

/// One registered instance as the HTTP API lists it.
#[derive(Debug, Clone)]
struct Listed {
    ip: String,
    port: u16,
    metadata: BTreeMap<String, String>,
}

/// Lists the instances of `service` in `group` and `namespace` (empty: public) through the
/// Nacos HTTP API on `http_port`.
async fn list(http_port: u16, namespace: &str, group: &str, service: &str) -> Vec<Listed> {
    list_as(http_port, namespace, group, service, None).await
}

/// [`list`] with an access token from [`login`].
async fn list_as(
    http_port: u16,
    namespace: &str,
    group: &str,
    service: &str,
    token: Option<&str>,
) -> Vec<Listed> {
    let mut path = format!(
        "/nacos/v1/ns/instance/list?serviceName={service}&groupName={group}\
         &namespaceId={namespace}&healthyOnly=false"
    );
    if let Some(token) = token {
        path.push_str(&format!("&accessToken={token}"));
    }
    let body = http_request(http_port, "GET", &path).await;
    let value: Value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("instance list is not JSON ({e}): {body}"));
    let hosts = value["hosts"].as_array().cloned().unwrap_or_default();
    let mut listed: Vec<Listed> = hosts
        .iter()
        .map(|host| Listed {
            ip: host["ip"].as_str().unwrap_or_default().to_owned(),
            port: host["port"].as_u64().unwrap_or_default() as u16,
            metadata: host["metadata"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect();
    listed.sort_by_key(|l| l.port);
    listed
}

/// Logs in to the Nacos HTTP API and returns the access token, or the refusal.
async fn try_login(http_port: u16, username: &str, password: &str) -> Result<String, String> {
    let path = format!("/nacos/v1/auth/login?username={username}&password={password}");
    let (status, body) = http_exchange(http_port, "POST", &path).await;
    let value: Value = serde_json::from_str(&body).map_err(|_| format!("{status}: {body}"))?;
    value["accessToken"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("no accessToken in {body}"))
}

async fn http_request(port: u16, method: &str, path: &str) -> String {
    let (status, body) = http_exchange(port, method, path).await;
    assert_eq!(status, 200, "{method} {path}: {body}");
    body
}

/// One HTTP/1.0 request; the status code and the body.
async fn http_exchange(port: u16, method: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("the Nacos HTTP port accepts");
    let request =
        format!("{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("Nacos answers within 10s")
        .unwrap();
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("malformed HTTP response: {response}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("malformed status line: {head}"));
    (status, body.to_owned())
}

/// Polls the listing until `done` holds, panicking with the last listing after `limit`.
async fn wait_listing(
    http_port: u16,
    namespace: &str,
    service: &str,
    limit: Duration,
    done: impl Fn(&[Listed]) -> bool,
) -> Vec<Listed> {
    let start = Instant::now();
    loop {
        let listed = list(http_port, namespace, "DEFAULT_GROUP", service).await;
        if done(&listed) {
            return listed;
        }
        assert!(
            start.elapsed() < limit,
            "listing of {service} did not settle within {limit:?}: {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn ports(listed: &[Listed]) -> Vec<u16> {
    listed.iter().map(|l| l.port).collect()
}

fn sorted(mut ports: Vec<u16>) -> Vec<u16> {
    ports.sort_unstable();
    ports
}

fn count_on(listed: &[Listed], port: u16) -> Option<&str> {
    listed
        .iter()
        .find(|l| l.port == port)
        .and_then(|l| l.metadata.get("connection"))
        .map(String::as_str)
}

/// Polls until the `connection` metadata of the two ports reads as given.
async fn wait_counts(
    service: &str,
    (ws_port, ws): (u16, &str),
    (tcp_port, tcp): (u16, &str),
    limit: Duration,
) -> Vec<Listed> {
    let start = Instant::now();
    loop {
        let listed = list(NACOS_HTTP, "", "DEFAULT_GROUP", service).await;
        if count_on(&listed, ws_port) == Some(ws) && count_on(&listed, tcp_port) == Some(tcp) {
            return listed;
        }
        assert!(
            start.elapsed() < limit,
            "connection counts not updated within {limit:?} (the rnacos must run with \
             RNACOS_NAMING_INSTANCE_METADATA_PERSISTENCE_ENABLE=false, as scripts/services \
             starts it): {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_health_up(server: &Server) {
    let start = Instant::now();
    loop {
        let health = server.node().registry.health();
        if health.is_up() {
            return;
        }
        assert!(start.elapsed() < SETTLE, "registry still {health:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn instances_are_listed_with_address_ports_and_metadata() {
    require_nacos();
    let service = unique("metadata");
    let srv = TestServer::with(config_with(nacos_section(&service, NACOS_HTTP))).await;
    let expected = sorted(vec![srv.ws.port(), srv.tcp.port()]);

    let listed = wait_listing(NACOS_HTTP, "", &service, SETTLE, |l| ports(l) == expected).await;
    wait_health_up(&srv.server).await;

    let broker_id = srv.server.node().broker_id.to_string();
    for instance in &listed {
        let transport = if instance.port == srv.ws.port() {
            "ws"
        } else {
            "tcp"
        };
        assert_eq!(instance.ip, "127.0.0.1");
        let m = &instance.metadata;
        assert_eq!(m["brokerId"], broker_id);
        assert_eq!(m["version"], "9.8.7");
        assert_eq!(m["wsPath"], srv.config.netty.config.websocket.path);
        assert_eq!(m["transport"], transport, "{instance:?}");
        let protocols: Vec<String> = serde_json::from_str(&m["protocols"]).unwrap();
        assert_eq!(protocols, ["json", "proto"]);
        assert_eq!(m["connection"], "0");
        assert_eq!(m["connection_count"], "0");
        assert_eq!(m["region"], "test-region");
        assert_eq!(m["priority"], "3");
    }

    srv.server.shutdown_with(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn advertised_address_is_detected_when_not_configured() {
    require_nacos();
    let service = unique("detect");
    let mut nacos = nacos_section(&service, NACOS_HTTP);
    nacos.ip = None;
    let srv = TestServer::with(config_with(nacos)).await;

    let listed = wait_listing(NACOS_HTTP, "", &service, SETTLE, |l| l.len() == 2).await;

    let ip: std::net::IpAddr = listed[0].ip.parse().expect("an IP address is advertised");
    assert!(!ip.is_unspecified());
    // Only an address of one of this host's interfaces can be bound.
    std::net::TcpListener::bind((ip, 0)).expect("the advertised address is this host's");
    assert_eq!(listed[0].ip, listed[1].ip);

    srv.server.shutdown_with(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn connection_counts_follow_clients_within_a_refresh_period() {
    require_nacos();
    let service = unique("counts");
    let srv = TestServer::with(config_with(nacos_section(&service, NACOS_HTTP))).await;
    let (ws_port, tcp_port) = (srv.ws.port(), srv.tcp.port());
    wait_listing(NACOS_HTTP, "", &service, SETTLE, |l| l.len() == 2).await;

    let ws = ws_login(&srv, "nacos-u1", "ios").await;
    let tcp_a = tcp_login(&srv, "nacos-u2", "android").await;
    let tcp_b = tcp_login(&srv, "nacos-u3", "android").await;

    // A refresh period of one second; the bound leaves room for a loaded machine yet stays
    // below the ten-second default, so only the configured period can satisfy it.
    let within = Duration::from_millis(REFRESH_MS * 8);
    let listed = wait_counts(&service, (ws_port, "1"), (tcp_port, "2"), within).await;
    let tcp = listed.iter().find(|l| l.port == tcp_port).unwrap();
    assert_eq!(tcp.metadata["connection_count"], "2");

    drop((ws, tcp_a, tcp_b));
    wait_counts(&service, (ws_port, "0"), (tcp_port, "0"), within).await;

    srv.server.shutdown_with(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn instances_follow_ports_bound_and_closed_at_run_time() {
    require_nacos();
    let service = unique("ports");
    let srv = TestServer::with(config_with(nacos_section(&service, NACOS_HTTP))).await;
    let (ws_port, tcp_port) = (srv.ws.port(), srv.tcp.port());
    wait_listing(NACOS_HTTP, "", &service, SETTLE, |l| l.len() == 2).await;

    assert!(srv.server.close_port(tcp_port));
    wait_listing(NACOS_HTTP, "", &service, SETTLE, |l| ports(l) == [ws_port]).await;

    let extra = srv
        .server
        .bind(Transport::Tcp, "127.0.0.1", 0)
        .await
        .unwrap()
        .port();
    let expected = sorted(vec![ws_port, extra]);
    let listed = wait_listing(NACOS_HTTP, "", &service, SETTLE, |l| ports(l) == expected).await;
    let added = listed.iter().find(|l| l.port == extra).unwrap();
    assert_eq!(added.metadata["transport"], "tcp");

    srv.server.shutdown_with(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn graceful_shutdown_deregisters_before_closing_connections() {
    require_nacos();
    let service = unique("shutdown");
    let srv = TestServer::with(config_with(nacos_section(&service, NACOS_HTTP))).await;
    wait_listing(NACOS_HTTP, "", &service, SETTLE, |l| l.len() == 2).await;
    let mut ws = ws_login(&srv, "nacos-leaver", "ios").await;

    let TestServer { server, .. } = srv;
    let shutdown = tokio::spawn(async move {
        server.shutdown_with(Duration::from_secs(5)).await;
        server
    });

    // Connections are closed only after deregistration, so by the time this client is told
    // to go away the node is already out of discovery.
    let (code, _) = ws_close(&mut ws).await;
    assert_eq!(code, 1001);
    let listed = list(NACOS_HTTP, "", "DEFAULT_GROUP", &service).await;
    assert!(listed.is_empty(), "still registered: {listed:?}");

    let server = shutdown.await.unwrap();
    assert!(!server.node().registry.health().is_up());
}

#[tokio::test]
async fn a_namespace_other_than_the_default_is_honoured() {
    require_nacos();
    let service = unique("namespace");
    let namespace = unique("ns");
    let mut nacos = nacos_section(&service, NACOS_HTTP);
    nacos.namespace = namespace.clone();
    nacos.group = "IM_TEST_GROUP".into();
    let srv = TestServer::with(config_with(nacos)).await;

    let start = Instant::now();
    let listed = loop {
        let listed = list(NACOS_HTTP, &namespace, "IM_TEST_GROUP", &service).await;
        if listed.len() == 2 {
            break listed;
        }
        assert!(
            start.elapsed() < SETTLE,
            "not registered in {namespace}: {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        sorted(ports(&listed)),
        sorted(vec![srv.ws.port(), srv.tcp.port()])
    );

    for (ns, group) in [
        ("", "IM_TEST_GROUP"),
        ("", "DEFAULT_GROUP"),
        (namespace.as_str(), "DEFAULT_GROUP"),
    ] {
        let elsewhere = list(NACOS_HTTP, ns, group, &service).await;
        assert!(
            elsewhere.is_empty(),
            "found in {ns:?}/{group}: {elsewhere:?}"
        );
    }

    srv.server.shutdown_with(Duration::from_secs(2)).await;
    let listed = list(NACOS_HTTP, &namespace, "IM_TEST_GROUP", &service).await;
    assert!(listed.is_empty(), "still registered: {listed:?}");
}

/// An rnacos of this test's own, killed (and its data removed) when dropped.
struct OwnNacos {
    child: Child,
    dir: PathBuf,
}

impl OwnNacos {
    /// Starts rnacos on `http` (gRPC on `http + 1000`, console on `http + 2000`) with the
    /// extra settings in `env`.
    fn start(http: u16, env: &[(&str, &str)]) -> OwnNacos {
        let (grpc, console) = (http + 1000, http + 2000);
        let binary = rnacos_binary();
        let dir = std::env::temp_dir().join(unique("rnacos"));
        std::fs::create_dir_all(&dir).unwrap();
        let log = std::fs::File::create(dir.join("rnacos.log")).unwrap();
        let child = Command::new(binary)
            .current_dir(&dir)
            .env("RNACOS_HTTP_PORT", http.to_string())
            .env("RNACOS_GRPC_PORT", grpc.to_string())
            .env("RNACOS_HTTP_CONSOLE_PORT", console.to_string())
            .env("RNACOS_CONFIG_DB_DIR", dir.join("db"))
            .env("RNACOS_RAFT_NODE_ADDR", format!("127.0.0.1:{grpc}"))
            // As in scripts/services: let client metadata updates through, as Nacos does.
            .env(
                "RNACOS_NAMING_INSTANCE_METADATA_PERSISTENCE_ENABLE",
                "false",
            )
            .envs(env.iter().copied())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("rnacos starts");
        OwnNacos { child, dir }
    }

    async fn wait_listening(&self, http: u16) {
        let start = Instant::now();
        while !(listening(http) && listening(http + 1000)) {
            assert!(
                start.elapsed() < SETTLE,
                "this test's rnacos did not start listening"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn require_free(http: u16) {
    let ports = [http, http + 1000, http + 2000];
    assert!(
        ports.iter().all(|p| !listening(*p)),
        "ports {ports:?} must be free for this test's rnacos"
    );
}

impl Drop for OwnNacos {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn rnacos_binary() -> PathBuf {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join("rnacos"))
                .collect()
        })
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".cargo/bin/rnacos"));
    }
    candidates
        .into_iter()
        .find(|c| c.is_file())
        .expect("the rnacos binary is not installed: run scripts/services (it installs rnacos)")
}

#[tokio::test]
async fn a_node_started_before_nacos_serves_and_registers_once_nacos_is_up() {
    rnacos_binary();
    require_free(LATE_HTTP);
    let service = unique("late");
    // Start-up does not contact Nacos at all; the bound only catches a start-up that waits
    // for the client's connection attempts (seconds each).
    let started = Instant::now();
    let srv = TestServer::with(config_with(nacos_section(&service, LATE_HTTP))).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "start-up waited on the unreachable Nacos"
    );

    // Serving while Nacos is unreachable, and saying so.
    let mut ws = ws_login(&srv, "early-bird", "ios").await;
    let tcp = tcp_login(&srv, "early-tcp", "android").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    match srv.server.node().registry.health() {
        Health::Down(reason) => assert!(reason.contains("nacos"), "{reason}"),
        Health::Up => panic!("registry reports up with Nacos unreachable"),
    }

    let nacos = OwnNacos::start(LATE_HTTP, &[]);
    nacos.wait_listening(LATE_HTTP).await;
    let listed = wait_listing(LATE_HTTP, "", &service, Duration::from_secs(60), |l| {
        l.len() == 2
    })
    .await;
    assert_eq!(
        sorted(ports(&listed)),
        sorted(vec![srv.ws.port(), srv.tcp.port()])
    );
    wait_health_up(&srv.server).await;
    // The counts include the clients that logged in during the outage.
    let listed = wait_listing(LATE_HTTP, "", &service, SETTLE, |l| {
        count_on(l, srv.ws.port()) == Some("1") && count_on(l, srv.tcp.port()) == Some("1")
    })
    .await;
    assert_eq!(listed[0].ip, "127.0.0.1");

    // The client that logged in during the outage is still served.
    ws_send_json(&mut ws, serde_json::json!({"code": 2, "requestId": "hb"})).await;
    let reply = ws_json(&mut ws).await;
    assert_eq!(
        (reply["code"].as_i64(), reply["requestId"].as_str()),
        (Some(2), Some("hb"))
    );
    drop(tcp);
    srv.server.shutdown_with(Duration::from_secs(2)).await;
    let listed = list(LATE_HTTP, "", "DEFAULT_GROUP", &service).await;
    assert!(listed.is_empty(), "still registered: {listed:?}");
    drop(nacos);
}

#[tokio::test]
async fn shutdown_does_not_wait_long_on_an_unreachable_nacos() {
    // Nothing listens here (checked), so every call to Nacos fails.
    let (http, grpc) = (28848, 29848);
    assert!(
        !listening(http) && !listening(grpc),
        "ports {http}/{grpc} must be free"
    );
    let service = unique("unreachable");
    let srv = TestServer::with(config_with(nacos_section(&service, http))).await;
    let _ws = ws_login(&srv, "lonely", "ios").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!srv.server.node().registry.health().is_up());

    // Deregistration is bounded (5 s) and the grace period is 1 s: a hang shows as a timeout.
    let shutdown = srv.server.shutdown_with(Duration::from_secs(1));
    tokio::time::timeout(Duration::from_secs(30), shutdown)
        .await
        .expect("shutdown finishes although Nacos is unreachable");
}

#[tokio::test]
async fn credentials_are_honoured_by_a_nacos_that_requires_them() {
    rnacos_binary();
    require_free(AUTH_HTTP);
    let (user, password) = ("im-tester", "s3cret-pass");
    let env = [
        ("RNACOS_ENABLE_OPEN_API_AUTH", "true"),
        ("RNACOS_INIT_ADMIN_USERNAME", user),
        ("RNACOS_INIT_ADMIN_PASSWORD", password),
    ];
    // rnacos creates its first user a moment after it starts listening, and rnacos 0.8
    // sometimes loses the actor that stores users while it starts (a panic in its log,
    // "Mailbox has closed" on login); a fresh start then works.
    let mut attempt = 0;
    let (nacos, token) = 'started: loop {
        attempt += 1;
        let nacos = OwnNacos::start(AUTH_HTTP, &env);
        nacos.wait_listening(AUTH_HTTP).await;
        let since = Instant::now();
        let error = loop {
            match try_login(AUTH_HTTP, user, password).await {
                Ok(token) => break 'started (nacos, token),
                Err(error) if error.contains("Mailbox") => break error,
                Err(error) if since.elapsed() > SETTLE => break error,
                Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
            }
        };
        assert!(attempt < 5, "cannot log in to this test's rnacos: {error}");
        eprintln!("rnacos login failed ({error}), restarting it");
        drop(nacos);
    };

    let anonymous = unique("anonymous");
    let without = TestServer::with(config_with(nacos_section(&anonymous, AUTH_HTTP))).await;
    let service = unique("auth");
    let mut section = nacos_section(&service, AUTH_HTTP);
    section.username = Some(user.into());
    section.password = Some(im_connect::config::Secret::new(password));
    let with = TestServer::with(config_with(section)).await;

    let start = Instant::now();
    let listed = loop {
        let listed = list_as(AUTH_HTTP, "", "DEFAULT_GROUP", &service, Some(&token)).await;
        if listed.len() == 2 {
            break listed;
        }
        assert!(
            start.elapsed() < SETTLE,
            "not registered with credentials: {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        sorted(ports(&listed)),
        sorted(vec![with.ws.port(), with.tcp.port()])
    );
    wait_health_up(&with.server).await;

    // The node without credentials is refused, says so, and keeps serving.
    let start = Instant::now();
    loop {
        match without.server.node().registry.health() {
            Health::Down(reason) if reason.contains("failed") => break,
            Health::Down(_) => {}
            Health::Up => panic!("registry without credentials reports up"),
        }
        assert!(start.elapsed() < SETTLE, "no failed registration reported");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused = list_as(AUTH_HTTP, "", "DEFAULT_GROUP", &anonymous, Some(&token)).await;
    assert!(
        refused.is_empty(),
        "registered without credentials: {refused:?}"
    );
    ws_login(&without, "anonymous-user", "ios").await;

    with.server.shutdown_with(Duration::from_secs(2)).await;
    without.server.shutdown_with(Duration::from_secs(2)).await;
    let listed = list_as(AUTH_HTTP, "", "DEFAULT_GROUP", &service, Some(&token)).await;
    assert!(listed.is_empty(), "still registered: {listed:?}");
    drop(nacos);
}

#[tokio::test]
async fn registration_comes_back_after_nacos_restarts_empty() {
    rnacos_binary();
    require_free(RESTART_HTTP);
    let service = unique("restart");
    let first = OwnNacos::start(RESTART_HTTP, &[]);
    first.wait_listening(RESTART_HTTP).await;
    let srv = TestServer::with(config_with(nacos_section(&service, RESTART_HTTP))).await;
    wait_listing(RESTART_HTTP, "", &service, SETTLE, |l| l.len() == 2).await;
    wait_health_up(&srv.server).await;

    // Nacos goes away while nothing changes on the node: health follows.
    drop(first);
    let start = Instant::now();
    while srv.server.node().registry.health().is_up() {
        assert!(
            start.elapsed() < SETTLE,
            "registry still up with Nacos gone"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A fresh server (no data) on the same ports: the node registers again.
    let second = OwnNacos::start(RESTART_HTTP, &[]);
    second.wait_listening(RESTART_HTTP).await;
    let expected = sorted(vec![srv.ws.port(), srv.tcp.port()]);
    wait_listing(RESTART_HTTP, "", &service, Duration::from_secs(60), |l| {
        ports(l) == expected
    })
    .await;
    wait_health_up(&srv.server).await;

    srv.server.shutdown_with(Duration::from_secs(2)).await;
    let listed = list(RESTART_HTTP, "", "DEFAULT_GROUP", &service).await;
    assert!(listed.is_empty(), "still registered: {listed:?}");
    drop(second);
}
