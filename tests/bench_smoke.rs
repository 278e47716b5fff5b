//! Small runs of every `im-connect-bench` scenario against an in-process server, so the load
//! generator stays correct: each asserts that everything sent arrived, never how fast.

#[allow(dead_code, unreachable_pub, missing_docs)]
#[path = "../src/bin/im-connect-bench/bench/mod.rs"]
mod bench;

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use bench::client::Target;
use bench::wire::Transport;
use common::TestServer;
use im_connect::config::{Codec, Config};

/// A server whose rate limit is far above what the smoke runs send.
async fn server() -> TestServer {
    let mut config = common::config();
    config.netty.config.rate_limit.per_second = 1_000_000.0;
    config.netty.config.rate_limit.burst = 100_000;
    TestServer::with(config).await
}

fn target(srv: &TestServer, transport: Transport, codec: Codec) -> Target {
    let addr = match transport {
        Transport::Ws => srv.ws,
        Transport::Tcp => srv.tcp,
    };
    let sources = (1..=4).map(|i| Ipv4Addr::new(127, 0, 2, i)).collect();
    Target::new(&srv.config, transport, codec, vec![addr], sources).expect("loopback target")
}

fn config(srv: &TestServer) -> &Config {
    &srv.config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_logs_everyone_in_and_every_heartbeat_is_answered() {
    let srv = server().await;
    let opts = bench::idle::IdleOptions {
        connections: 300,
        concurrency: 64,
        hold: Duration::from_secs(2),
        heartbeat: Duration::from_secs(1),
        settle: Duration::from_millis(100),
        pid: Some(std::process::id()),
        progress: None,
    };
    let target = target(&srv, Transport::Ws, Codec::Proto);
    let report = bench::idle::run(config(&srv), target, &opts).await.unwrap();
    assert_eq!(report.logged_in, 300, "{:?}", report.first_error);
    assert!(report.heartbeats >= 300, "{report:?}");
    assert_eq!(report.heartbeat_replies, report.heartbeats, "{report:?}");
    assert_eq!(report.closed, 0);
    assert!(report.rss_loaded_kib.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_delivers_and_acks_every_message() {
    let srv = server().await;
    for (transport, codec) in [(Transport::Tcp, Codec::Json), (Transport::Ws, Codec::Proto)] {
        let opts = bench::relay::RelayOptions {
            pairs: 100,
            rate: 4000.0,
            window: 0,
            duration: Duration::from_secs(2),
            warmup: Duration::from_millis(200),
            concurrency: 64,
            progress: None,
            data: r#"{"text":"smoke"}"#.into(),
            drain: Duration::from_secs(10),
            pid: None,
        };
        let mut target = target(&srv, transport, codec);
        target.user_prefix = format!("relay-{transport:?}-");
        let report = bench::relay::run(config(&srv), target, &opts)
            .await
            .unwrap();
        assert!(report.sent > 1000, "{report:?}");
        assert_eq!(report.delivered, report.sent, "{report:?}");
        assert_eq!(report.acks, report.sent, "{report:?}");
        assert_eq!(report.errors, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_with_a_window_delivers_every_message() {
    let srv = server().await;
    let opts = bench::relay::RelayOptions {
        pairs: 50,
        rate: 0.0,
        window: 4,
        duration: Duration::from_secs(1),
        warmup: Duration::ZERO,
        concurrency: 64,
        progress: None,
        data: r#"{"text":"smoke"}"#.into(),
        drain: Duration::from_secs(10),
        pid: None,
    };
    let target = target(&srv, Transport::Ws, Codec::Json);
    let report = bench::relay::run(config(&srv), target, &opts)
        .await
        .unwrap();
    assert!(report.sent > 100, "{report:?}");
    assert_eq!(report.delivered, report.sent, "{report:?}");
    assert_eq!(report.acks, report.sent, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_reaches_every_member_with_every_message() {
    let srv = server().await;
    let opts = bench::fanout::FanoutOptions {
        group: 200,
        rate: 100.0,
        window: 0,
        duration: Duration::from_secs(2),
        warmup: Duration::ZERO,
        concurrency: 64,
        progress: None,
        data: r#"{"text":"smoke"}"#.into(),
        drain: Duration::from_secs(10),
        pid: None,
    };
    let target = target(&srv, Transport::Ws, Codec::Proto);
    let report = bench::fanout::run(config(&srv), target, &opts)
        .await
        .unwrap();
    assert!(report.sent >= 100, "{report:?}");
    assert_eq!(report.acks, report.sent, "{report:?}");
    assert_eq!(report.delivered, report.sent * 200, "{report:?}");
    assert_eq!(report.incomplete, 0, "{report:?}");
    assert_eq!(report.last_receiver.count, report.sent, "{report:?}");
}
