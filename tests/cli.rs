//! The `im-connect` binary: `check`, `token` and `serve` with a graceful stop on SIGTERM.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

fn im_connect(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_im-connect"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A configuration file of the test's own, removed when dropped.
struct ConfigFile(std::path::PathBuf);

impl ConfigFile {
    fn with(yaml: &str) -> ConfigFile {
        let name = format!("im-connect-cli-{:016x}.yml", rand::random::<u64>());
        let path = std::env::temp_dir().join(name);
        std::fs::write(&path, yaml).unwrap();
        ConfigFile(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn check_accepts_the_design_example_and_redacts_its_secrets() {
    let out = im_connect(&["check", "--config", "config/examples/design-example.yml"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("password: '***'"), "{stdout}");
    assert!(
        !stdout.contains("change-me"),
        "a secret was printed: {stdout}"
    );
    assert!(stderr.contains("bossThreadSize"), "{stderr}");
}

#[test]
fn check_names_the_bad_key_and_warns_about_unknown_ones() {
    let bad = ConfigFile::with("netty:\n  config:\n    heartBeatTime: soon\n");
    let out = im_connect(&["check", "--config", bad.path()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("netty.config.heartBeatTime"),
        "{}",
        text(&out.stderr)
    );

    let typo = ConfigFile::with("netty:\n  config:\n    heartbeatTme: 5\n");
    let out = im_connect(&["check", "--config", typo.path()]);
    assert!(out.status.success());
    assert!(
        text(&out.stderr).contains("netty.config.heartbeatTme"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn profiles_other_than_dev_refuse_the_built_in_secret() {
    let prod = ConfigFile::with("spring:\n  profiles:\n    active: prod\n");
    let out = im_connect(&["check", "--config", prod.path()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("auth.jwt.secret"),
        "{}",
        text(&out.stderr)
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn serve_accepts_tokens_from_token_and_closes_1001_on_sigterm() {
    let (ws, tcp) = (free_port(), free_port());
    let yaml = format!(
        "netty:\n  config:\n    host: 127.0.0.1\n    websocket:\n      port: [{ws}]\n    \
         tcp:\n      port: [{tcp}]\nadmin:\n  enable: false\n"
    );
    let file = ConfigFile::with(&yaml);
    let mut server = Command::new(env!("CARGO_BIN_EXE_im-connect"))
        .args(["serve", "--config", file.path()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let token = im_connect(&["token", "--user", "alice", "--config", file.path()]);
    assert!(token.status.success(), "{}", text(&token.stderr));
    let token = text(&token.stdout).trim().to_string();

    let started = Instant::now();
    let url = format!("ws://127.0.0.1:{ws}/im?token={token}");
    let mut client = loop {
        if std::net::TcpStream::connect(("127.0.0.1", ws)).is_ok() {
            break common::ws_connect(&url, Some("json"))
                .await
                .expect("handshake");
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the server did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    common::ws_send_json(&mut client, json!({"code": 1, "requestId": "r1"})).await;
    assert_eq!(common::ws_json(&mut client).await["message"], "ok");

    let kill = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    assert_eq!(common::ws_close(&mut client).await.0, 1001);
    let status = server.wait().unwrap();
    assert!(status.success(), "exit status {status}");
}
