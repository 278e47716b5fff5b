//! The packaged server with a `redis` section: routes land in the real Redis on
//! 127.0.0.1:6379, and a Redis that stops answering fails new logins without holding up the
//! users already logged in.
//!
//! The server reaches Redis through a proxy of the test's own, so the test can make "Redis"
//! stall without pausing the shared server under other tests.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use im_connect::config::RedisConfig;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const REDIS_DOWN: &str = "Redis is not reachable on 127.0.0.1:6379; these tests need it. \
    Start it with scripts/services, or: redis-server --daemonize yes --bind 127.0.0.1 \
    --port 6379 --save \"\" --appendonly no";

/// A TCP proxy to the real Redis whose traffic can be held back: while `stalled` is set it
/// forwards nothing in either direction, like a Redis that hangs.
struct StallingProxy {
    addr: std::net::SocketAddr,
    stalled: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl StallingProxy {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stalled = Arc::new(AtomicBool::new(false));
        let flag = stalled.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let upstream = TcpStream::connect("127.0.0.1:6379")
                    .await
                    .expect(REDIS_DOWN);
                let (cr, cw) = client.into_split();
                let (ur, uw) = upstream.into_split();
                tokio::spawn(pump(cr, uw, flag.clone()));
                tokio::spawn(pump(ur, cw, flag.clone()));
            }
        });
        StallingProxy {
            addr,
            stalled,
            task,
        }
    }

    fn stall(&self, on: bool) {
        self.stalled.store(on, Ordering::SeqCst);
    }
}

impl Drop for StallingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    stalled: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while stalled.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

async fn redis() -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open("redis://127.0.0.1:6379/").unwrap();
    tokio::time::timeout(
        Duration::from_secs(3),
        client.get_multiplexed_async_connection(),
    )
    .await
    .expect(REDIS_DOWN)
    .expect(REDIS_DOWN)
}

async fn record(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> Option<Value> {
    let raw: Option<String> = redis::cmd("GET").arg(key).query_async(conn).await.unwrap();
    raw.map(|s| serde_json::from_str(&s).unwrap())
}

async fn delete_prefix(conn: &mut redis::aio::MultiplexedConnection, prefix: &str) {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(conn)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL").arg(keys).query_async(conn).await.unwrap();
    }
}

#[tokio::test]
async fn logged_in_users_keep_chatting_while_redis_stalls_and_new_logins_fail_clearly() {
    let mut plain = redis().await;
    let proxy = StallingProxy::start().await;
    let prefix = format!("test-gw-{:08x}-", rand::random::<u32>());
    let mut config = common::config();
    config.netty.config.broker_id = Some("node-redis".into());
    config.redis = Some(RedisConfig {
        host: "127.0.0.1".into(),
        port: proxy.addr.port(),
        timeout: 2_000,
        key_prefix: prefix.clone(),
        ..RedisConfig::default()
    });
    // Built from configuration alone: the `redis` section must select the Redis store.
    let srv = common::TestServer::with(config).await;

    let mut alice = common::ws_login(&srv, "alice", "web").await;
    let mut bob = common::ws_login(&srv, "bob", "android").await;
    let alice_record = record(&mut plain, &format!("{prefix}IM-USER-alice"))
        .await
        .expect("the login wrote alice's route record to Redis");
    assert_eq!(alice_record["drivers"]["WEB"]["brokerId"], "node-redis");
    assert_eq!(alice_record["userId"], "alice");

    proxy.stall(true);

    // Heartbeats and messages of logged-in users never wait on Redis.
    let started = Instant::now();
    common::ws_send_json(&mut alice, json!({"code": 2, "requestId": "hb-1"})).await;
    let beat = common::ws_json(&mut alice).await;
    assert_eq!(
        (beat["code"].clone(), beat["requestId"].clone()),
        (json!(2), json!("hb-1"))
    );
    let message = json!({"code": 3, "requestId": "m-1", "ids": ["bob"], "data": {"text": "hi"}});
    common::ws_send_json(&mut alice, message).await;
    let ack = common::ws_json(&mut alice).await;
    assert_eq!(
        (ack["code"].clone(), ack["requestId"].clone()),
        (json!(0), json!("m-1"))
    );
    let got = common::ws_json(&mut bob).await;
    assert_eq!(got["data"], json!({"text": "hi"}));
    assert!(
        started.elapsed() < Duration::from_millis(1_500),
        "heartbeat and message waited {:?}, as long as the Redis timeout",
        started.elapsed()
    );

    // A new login cannot write its route: a clear ERROR and a close, within the timeout.
    let url = srv.ws_url(&format!("token={}", srv.token("carol")));
    let mut carol = common::ws_connect(&url, Some("json")).await.unwrap();
    let started = Instant::now();
    common::ws_send_json(&mut carol, json!({"code": 1, "requestId": "reg-carol"})).await;
    let refused = common::ws_json(&mut carol).await;
    assert_eq!(refused["code"], -1, "{refused}");
    assert_eq!(refused["metadata"]["reason"], "route_unavailable");
    assert_eq!(refused["requestId"], "reg-carol");
    assert!(started.elapsed() < Duration::from_secs(4), "REGISTER hung");
    let (code, _) = common::ws_close(&mut carol).await;
    assert_eq!(code, 1011, "route store unavailable");
    assert!(!srv.server.node().routes.health().is_up());

    // Once Redis answers again, logins work again without restarting anything.
    proxy.stall(false);
    let _carol = tokio::time::timeout(
        Duration::from_secs(5),
        common::ws_login(&srv, "carol", "ios"),
    )
    .await
    .expect("login after Redis came back");
    assert!(record(&mut plain, &format!("{prefix}IM-USER-carol"))
        .await
        .is_some());

    srv.server.shutdown_with(Duration::from_secs(1)).await;
    delete_prefix(&mut plain, &prefix).await;
}

#[tokio::test]
async fn a_token_listed_under_the_blacklist_prefix_is_refused_at_the_handshake() {
    let mut plain = redis().await;
    let prefix = format!("test-bl-{:08x}-", rand::random::<u32>());
    let mut config = common::config();
    config.auth.blacklist_prefix = Some(format!("{prefix}REVOKED-"));
    config.redis = Some(RedisConfig {
        key_prefix: prefix.clone(),
        ..RedisConfig::default()
    });
    let srv = common::TestServer::with(config).await;

    let (kept, revoked) = (srv.token("alice"), srv.token("mallory"));
    let _: () = redis::cmd("SET")
        .arg(format!("{prefix}REVOKED-{revoked}"))
        .arg("1")
        .query_async(&mut plain)
        .await
        .unwrap();
    let url = |token: &str| srv.ws_url(&format!("token={token}"));
    assert_eq!(
        common::ws_connect(&url(&revoked), None).await.err(),
        Some(401)
    );
    assert!(common::ws_connect(&url(&kept), None).await.is_ok());

    srv.server.shutdown_with(Duration::from_secs(1)).await;
    delete_prefix(&mut plain, &prefix).await;
}
