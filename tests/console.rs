//! The web console in a real browser: headless Chromium driven over WebDriver logs in with a
//! user token, shows live counts, receives a message from a test client and sends one back.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`scripts/browser` installs them).

mod common;

use std::net::{SocketAddr, TcpListener};
use std::panic::AssertUnwindSafe;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use futures_util::FutureExt;
use im_connect::config::Secret;
use serde_json::{json, Value};
use std::process::{Child, Command};

const ADMIN_TOKEN: &str = "console-admin-token";
const BROWSER_WAIT: Duration = Duration::from_secs(20);

/// chromedriver on a free port, ended when dropped.
struct Driver {
    child: Child,
    url: String,
    profile: TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory removed when dropped: the browser's fresh profile.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn find_binary(names: &[&str]) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

fn install_hint(what: &str) -> String {
    format!(
        "{what} not found: the console test needs Debian's chromium and chromium-driver; \
         install them with `scripts/browser` (apt-get update && apt-get install -y chromium \
         chromium-driver)"
    )
}

async fn start_driver() -> (Driver, std::path::PathBuf) {
    let driver = find_binary(&["chromedriver"])
        .unwrap_or_else(|| panic!("{}", install_hint("chromedriver")));
    let browser = find_binary(&["chromium", "chromium-browser"])
        .unwrap_or_else(|| panic!("{}", install_hint("chromium")));
    let port = {
        let probe = TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let child = Command::new(driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = tokio::time::Instant::now() + BROWSER_WAIT;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "chromedriver did not listen on {addr}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let profile =
        std::env::temp_dir().join(format!("im-connect-console-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&profile).unwrap();
    let driver = Driver {
        child,
        url: format!("http://{addr}"),
        profile: TempDir(profile.clone()),
    };
    (driver, browser)
}

async fn browser(driver: &Driver, binary: &std::path::Path, profile: &std::path::Path) -> Client {
    let args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
    ]
    .iter()
    .map(|a| a.to_string())
    .chain([format!("--user-data-dir={}", profile.display())])
    .collect::<Vec<_>>();
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({"args": args, "binary": binary}),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a WebDriver session in headless Chromium")
}

/// Waits until the element's text satisfies `ok`, returning it.
async fn wait_text(client: &Client, id: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + BROWSER_WAIT;
    let mut last = String::new();
    while tokio::time::Instant::now() < deadline {
        if let Ok(element) = client.find(Locator::Id(id)).await {
            last = element.text().await.unwrap_or_default();
            if ok(&last) {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("#{id} never showed what was expected; last text: {last:?}");
}

async fn type_into(client: &Client, id: &str, text: &str) {
    let element = client.find(Locator::Id(id)).await.expect("input exists");
    element.clear().await.unwrap();
    element.send_keys(text).await.unwrap();
}

/// The next frame of `code` the test client receives, skipping others (ACKs).
async fn next_of(ws: &mut Ws, code: i64) -> Value {
    loop {
        let frame = ws_json(ws).await;
        if frame["code"] == code {
            return frame;
        }
    }
}

#[tokio::test]
async fn console_chats_with_a_test_client() {
    let mut config = config();
    config.admin.token = Some(Secret::new(ADMIN_TOKEN));
    let srv = TestServer::with(config).await;
    let admin = srv.server.admin_addr().expect("admin endpoint");

    let (driver, binary) = start_driver().await;
    let client = browser(&driver, &binary, &driver.profile.0).await;
    // Close the browser whatever happens, so no Chromium outlives the test.
    let result = AssertUnwindSafe(drive(&client, &srv, admin))
        .catch_unwind()
        .await;
    let _ = client.close().await;
    srv.server.shutdown_with(WAIT).await;
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

async fn drive(client: &Client, srv: &TestServer, admin: SocketAddr) {
    client.goto(&format!("http://{admin}/")).await.unwrap();
    assert_eq!(client.title().await.unwrap(), "im-connect console");

    // Without the admin token the counts stay unavailable; with it they fill in.
    wait_text(client, "stats-error", |t| t.contains("admin token")).await;
    type_into(client, "admin-token", ADMIN_TOKEN).await;
    wait_text(client, "stat-users", |t| t == "0").await;

    // The page proposes this node's WebSocket listener.
    let url = client
        .find(Locator::Id("ws-url"))
        .await
        .unwrap()
        .prop("value")
        .await
        .unwrap();
    assert_eq!(url.as_deref(), Some(format!("ws://{}/im", srv.ws).as_str()));

    type_into(client, "user-token", &srv.token("console-alice")).await;
    client
        .find(Locator::Id("connect"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(client, "chat-status", |t| t.starts_with("registered")).await;

    let mut bob = ws_login(srv, "console-bob", "ios").await;
    wait_text(client, "stat-users", |t| t == "2").await;
    wait_text(client, "stat-connections", |t| t == "2").await;

    // Bob writes; the browser shows it.
    ws_send_json(
        &mut bob,
        json!({"code": 3, "ids": ["console-alice"], "requestId": "to-alice", "data": {"text": "hello from bob"}}),
    )
    .await;
    assert_eq!(ws_json(&mut bob).await["code"], 0, "ACK");
    wait_text(client, "messages", |t| t.contains("hello from bob")).await;
    let shown = wait_text(client, "messages", |t| t.contains("console-bob")).await;
    assert!(shown.contains("single_message"), "{shown}");

    // The browser answers; Bob gets it, stamped with the browser user's id.
    type_into(client, "to", "console-bob").await;
    type_into(client, "text", "hello from the browser").await;
    client
        .find(Locator::Id("send"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let frame = next_of(&mut bob, 3).await;
    assert_eq!(frame["data"]["text"], "hello from the browser");
    assert_eq!(frame["metadata"]["userId"], "console-alice");
    assert!(
        frame.get("ids").is_none(),
        "ids never reach clients: {frame}"
    );

    // Both messages went to the broker, and the page shows a message rate.
    assert_eq!(srv.server.node().metrics.publishes(), 2);
    wait_text(client, "stat-rate", |t| t.parse::<f64>().is_ok()).await;
}
