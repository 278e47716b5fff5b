//! The Redis route store against the real Redis on 127.0.0.1:6379.
//!
//! Every test writes under its own random key prefix and removes its keys when it ends, so
//! the tests run in parallel and leave nothing behind. A test that finds Redis down fails and
//! says how to start it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use im_connect::backend::Health;
use im_connect::config::RedisConfig;
use im_connect::protocol::{Codec, DeviceGroup, DeviceType, Wire};
use im_connect::route::{RedisRouteStore, RouteEntry, RouteError, RouteStore};
use im_connect::session::{
    Binding, Connection, ConnectionInfo, Identity, SessionRegistry, Transport,
};
use redis::aio::MultiplexedConnection;
use serde_json::Value;

const REDIS_DOWN: &str = "Redis is not reachable on 127.0.0.1:6379; these tests need it. \
    Start it with: redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save \"\" \
    --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log";

/// A key prefix of its own, and a plain Redis connection to look behind the store's back.
struct Fixture {
    prefix: String,
    redis: MultiplexedConnection,
}

impl Fixture {
    async fn new() -> Self {
        let prefix = format!("test-{:016x}-", rand::random::<u64>());
        let client = redis::Client::open("redis://127.0.0.1:6379/").expect(REDIS_DOWN);
        let redis = tokio::time::timeout(
            Duration::from_secs(3),
            client.get_multiplexed_async_connection(),
        )
        .await
        .expect(REDIS_DOWN)
        .expect(REDIS_DOWN);
        Fixture { prefix, redis }
    }

    fn config(&self) -> RedisConfig {
        RedisConfig {
            host: "127.0.0.1".into(),
            port: 6379,
            timeout: 2_000,
            key_prefix: self.prefix.clone(),
            ..RedisConfig::default()
        }
    }

    async fn store(&self, ttl_secs: u64) -> RedisRouteStore {
        let store = RedisRouteStore::connect(&self.config(), ttl_secs, None)
            .await
            .expect("a store for 127.0.0.1:6379");
        assert_eq!(store.health(), Health::Up, "{REDIS_DOWN}");
        store
    }

    fn key(&self, user: &str) -> String {
        format!("{}IM-USER-{user}", self.prefix)
    }

    async fn raw(&self, user: &str) -> Option<Value> {
        let raw: Option<String> = redis::cmd("GET")
            .arg(self.key(user))
            .query_async(&mut self.redis.clone())
            .await
            .unwrap();
        raw.map(|json| serde_json::from_str(&json).expect("the record is JSON"))
    }

    async fn ttl(&self, key: &str) -> i64 {
        redis::cmd("TTL")
            .arg(key)
            .query_async(&mut self.redis.clone())
            .await
            .unwrap()
    }
}

impl Drop for Fixture {
    // Runs on failure too, so a failed test leaves no keys behind. Drop cannot await, so it
    // uses a blocking connection of its own.
    fn drop(&mut self) {
        let Ok(client) = redis::Client::open("redis://127.0.0.1:6379/") else {
            return;
        };
        let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_secs(2)) else {
            return;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", self.prefix))
            .query(&mut conn)
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: Result<(), _> = redis::cmd("DEL").arg(keys).query(&mut conn);
        }
    }
}

fn entry(user: &str, device: DeviceType, device_id: &str, node: &str) -> RouteEntry {
    RouteEntry {
        user_id: user.into(),
        token: format!("token-of-{device_id}").into(),
        device_type: device,
        device_id: device_id.into(),
        broker_id: node.into(),
    }
}

fn keys_of(value: &Value) -> BTreeSet<&str> {
    value
        .as_object()
        .expect("a JSON object")
        .keys()
        .map(String::as_str)
        .collect()
}

fn groups(record: &Value) -> BTreeSet<&str> {
    keys_of(&record["drivers"])
}

/// A connection bound as `device` of `user`, as the device binding layer leaves it.
fn bound_connection(user: &str, device: DeviceType, device_id: &str) -> Arc<Connection> {
    let info = ConnectionInfo {
        transport: Transport::Tcp,
        peer: "127.0.0.1:1".parse().unwrap(),
        local_port: 9000,
        codec: None,
        handshake_device: None,
    };
    let conn = Arc::new(Connection::new(info, Codec::Json, Wire::default(), 8));
    let identity = Identity {
        user_id: user.into(),
        expires_at: None,
        token: format!("token-of-{device_id}").into(),
    };
    conn.set_identity(identity).unwrap();
    conn.bind(Binding::new(user.into(), device, device_id.into(), || {}));
    conn
}

#[tokio::test]
async fn login_writes_the_contract_record() {
    let fx = Fixture::new().await;
    let store = fx.store(35).await;

    let replaced = store
        .register(entry("u1", DeviceType::Ios, "req-1", "node-a"))
        .await
        .unwrap();
    assert!(replaced.is_none());

    let record = fx.raw("u1").await.expect("a record");
    assert_eq!(
        keys_of(&record),
        BTreeSet::from(["userId", "token", "brokerId", "drivers"])
    );
    assert_eq!(record["userId"], "u1");
    assert_eq!(record["token"], "token-of-req-1");
    assert_eq!(record["brokerId"], "node-a");
    assert_eq!(groups(&record), BTreeSet::from(["MOBILE"]));
    let driver = &record["drivers"]["MOBILE"];
    assert_eq!(
        keys_of(driver),
        BTreeSet::from(["deviceId", "deviceType", "brokerId"])
    );
    assert_eq!(driver["deviceId"], "req-1");
    assert_eq!(driver["deviceType"], "ios");
    assert_eq!(driver["brokerId"], "node-a");

    let ttl = fx.ttl(&fx.key("u1")).await;
    assert!((34..=35).contains(&ttl), "ttl {ttl}");

    let looked_up = store.lookup("u1").await.unwrap().unwrap();
    assert_eq!(looked_up.drivers["MOBILE"].device_id, "req-1");
    assert!(store.lookup("nobody").await.unwrap().is_none());
}

#[tokio::test]
async fn second_login_of_a_group_returns_the_driver_it_replaced() {
    let fx = Fixture::new().await;
    let store = fx.store(35).await;

    store
        .register(entry("u1", DeviceType::Android, "d1", "node-a"))
        .await
        .unwrap();
    store
        .register(entry("u1", DeviceType::Web, "w1", "node-a"))
        .await
        .unwrap();
    let replaced = store
        .register(entry("u1", DeviceType::Ios, "d2", "node-b"))
        .await
        .unwrap()
        .expect("the mobile driver of node-a");
    assert_eq!(
        (replaced.device_id.as_str(), replaced.device_type.as_str()),
        ("d1", "android")
    );
    assert_eq!(replaced.broker_id, "node-a");

    let record = fx.raw("u1").await.unwrap();
    assert_eq!(record["brokerId"], "node-b");
    assert_eq!(record["token"], "token-of-d2");
    assert_eq!(record["drivers"]["MOBILE"]["brokerId"], "node-b");
    assert_eq!(record["drivers"]["WEB"]["deviceId"], "w1");
}

#[tokio::test]
async fn disconnect_removes_only_its_own_driver() {
    let fx = Fixture::new().await;
    let store = fx.store(35).await;
    let mobile = entry("u1", DeviceType::Ios, "d1", "node-a");
    let web = entry("u1", DeviceType::Web, "w1", "node-a");
    store.register(mobile.clone()).await.unwrap();
    store.register(web.clone()).await.unwrap();

    // A stale disconnect of an older mobile login changes nothing.
    store
        .unregister(entry("u1", DeviceType::Ios, "d0", "node-a"))
        .await
        .unwrap();
    assert_eq!(
        groups(&fx.raw("u1").await.unwrap()),
        BTreeSet::from(["MOBILE", "WEB"])
    );

    store.unregister(mobile).await.unwrap();
    let record = fx.raw("u1").await.unwrap();
    assert_eq!(groups(&record), BTreeSet::from(["WEB"]));
    assert!(fx.ttl(&fx.key("u1")).await > 0, "the record keeps its ttl");

    store.unregister(web).await.unwrap();
    assert!(fx.raw("u1").await.is_none(), "no driver left: deleted");
}

#[tokio::test]
async fn late_disconnect_leaves_the_login_that_replaced_it() {
    let fx = Fixture::new().await;
    let store = fx.store(35).await;
    let old = entry("u1", DeviceType::Ios, "d1", "node-a");
    store.register(old.clone()).await.unwrap();
    store
        .register(entry("u1", DeviceType::Android, "d2", "node-b"))
        .await
        .unwrap();

    store.unregister(old).await.unwrap();
    let record = fx.raw("u1").await.expect("kept");
    assert_eq!(record["drivers"]["MOBILE"]["deviceId"], "d2");
    assert_eq!(record["brokerId"], "node-b");
}

#[tokio::test]
async fn record_is_kept_while_another_node_holds_a_device() {
    let fx = Fixture::new().await;
    let node_a = fx.store(35).await;
    let node_b = fx.store(35).await;
    let phone = entry("u1", DeviceType::Ios, "d1", "node-a");
    let desktop = entry("u1", DeviceType::Mac, "m1", "node-b");

    // Latest login on B: A's phone leaves, the record still names B.
    node_a.register(phone.clone()).await.unwrap();
    node_b.register(desktop.clone()).await.unwrap();
    node_a.unregister(phone.clone()).await.unwrap();
    let record = fx.raw("u1").await.expect("kept for node-b's desktop");
    assert_eq!(groups(&record), BTreeSet::from(["DESKTOP"]));
    assert_eq!(record["brokerId"], "node-b");

    // Latest login on A: when A's phone leaves, the record moves to the node that still
    // holds a device, since that is where backends reading `brokerId` must send.
    node_a.register(phone.clone()).await.unwrap();
    assert_eq!(fx.raw("u1").await.unwrap()["brokerId"], "node-a");
    node_a.unregister(phone).await.unwrap();
    let record = fx.raw("u1").await.expect("kept for node-b's desktop");
    assert_eq!(groups(&record), BTreeSet::from(["DESKTOP"]));
    assert_eq!(record["brokerId"], "node-b");

    node_b.unregister(desktop).await.unwrap();
    assert!(fx.raw("u1").await.is_none());
}

#[tokio::test]
async fn concurrent_logins_from_two_nodes_are_all_present() {
    let fx = Fixture::new().await;
    let node_a = fx.store(35).await;
    let node_b = fx.store(35).await;
    let users: Vec<String> = (0..200).map(|i| format!("u{i}")).collect();

    // Every user logs in three device groups at once, from two nodes with their own pools.
    let mut tasks = Vec::new();
    for user in &users {
        let logins = [
            (node_a.clone(), DeviceType::Ios, "node-a"),
            (node_b.clone(), DeviceType::Win, "node-b"),
            (node_a.clone(), DeviceType::Web, "node-a"),
        ];
        for (store, device, node) in logins {
            let login = entry(user, device, &format!("{user}-{device}"), node);
            tasks.push(tokio::spawn(async move { store.register(login).await }));
        }
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }

    for user in &users {
        let record = fx.raw(user).await.expect("a record");
        assert_eq!(
            groups(&record),
            BTreeSet::from(["DESKTOP", "MOBILE", "WEB"]),
            "{user}"
        );
        assert_eq!(record["drivers"]["DESKTOP"]["brokerId"], "node-b");
        assert_eq!(record["drivers"]["MOBILE"]["brokerId"], "node-a");
    }
}

#[tokio::test]
async fn ttl_is_refreshed_for_a_long_lived_connection() {
    let fx = Fixture::new().await;
    let store = fx.store(2).await;
    let sessions = Arc::new(SessionRegistry::new());
    let conn = bound_connection("alive", DeviceType::Ios, "d1");
    sessions
        .bind(&"alive".into(), DeviceGroup::Mobile, &conn, false)
        .unwrap();

    store
        .register(entry("alive", DeviceType::Ios, "d1", "node-a"))
        .await
        .unwrap();
    // A user with no connection on this node is not refreshed.
    store
        .register(entry("gone", DeviceType::Ios, "g1", "node-a"))
        .await
        .unwrap();
    let refresher = store.spawn_refresher(
        sessions.clone(),
        "node-a".into(),
        Duration::from_millis(500),
    );

    tokio::time::sleep(Duration::from_millis(4_500)).await;
    let record = fx.raw("alive").await.expect("refreshed past its 2 s ttl");
    assert_eq!(record["drivers"]["MOBILE"]["deviceId"], "d1");
    assert!(fx.ttl(&fx.key("alive")).await > 0);
    assert!(fx.raw("gone").await.is_none(), "expired without refresh");

    refresher.abort();
}

#[tokio::test]
async fn refresh_writes_back_a_record_that_vanished() {
    let fx = Fixture::new().await;
    let store = fx.store(30).await;
    let sessions = SessionRegistry::new();
    let phone = bound_connection("u1", DeviceType::Android, "d1");
    let desktop = bound_connection("u1", DeviceType::Linux, "l1");
    sessions
        .bind(&"u1".into(), DeviceGroup::Mobile, &phone, false)
        .unwrap();
    sessions
        .bind(&"u1".into(), DeviceGroup::Desktop, &desktop, false)
        .unwrap();
    store
        .register(entry("u1", DeviceType::Android, "d1", "node-a"))
        .await
        .unwrap();

    let _: () = redis::cmd("DEL")
        .arg(fx.key("u1"))
        .query_async(&mut fx.redis.clone())
        .await
        .unwrap();
    let stats = store.refresh_once(&sessions, "node-a").await.unwrap();
    assert_eq!((stats.users, stats.batches, stats.restored), (1, 1, 1));

    let record = fx.raw("u1").await.expect("written back");
    assert_eq!(record["userId"], "u1");
    assert_eq!(record["brokerId"], "node-a");
    assert_eq!(
        record["token"], "token-of-l1",
        "the newest connection's token"
    );
    assert_eq!(groups(&record), BTreeSet::from(["DESKTOP", "MOBILE"]));
    assert_eq!(record["drivers"]["DESKTOP"]["deviceType"], "linux");
    assert_eq!(record["drivers"]["MOBILE"]["deviceId"], "d1");
    let ttl = fx.ttl(&fx.key("u1")).await;
    assert!((29..=30).contains(&ttl), "ttl {ttl}");

    // Present records are only extended.
    let stats = store.refresh_once(&sessions, "node-a").await.unwrap();
    assert_eq!(stats.restored, 0);
}

#[tokio::test]
async fn login_counts_the_user_as_active_today() {
    let fx = Fixture::new().await;
    let store = fx.store(35).await;
    for (user, id) in [("a", "1"), ("b", "2"), ("a", "3"), ("c", "4")] {
        store
            .register(entry(user, DeviceType::Web, id, "node-a"))
            .await
            .unwrap();
    }

    let day_key: String = {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}IM-ACTIVE-USERS-*", fx.prefix))
            .query_async(&mut fx.redis.clone())
            .await
            .unwrap();
        assert_eq!(keys.len(), 1, "{keys:?}");
        keys.into_iter().next().unwrap()
    };
    let date = day_key.rsplit("IM-ACTIVE-USERS-").next().unwrap();
    assert!(is_iso_date(date), "{date}");

    let count: u64 = redis::cmd("PFCOUNT")
        .arg(&day_key)
        .query_async(&mut fx.redis.clone())
        .await
        .unwrap();
    assert_eq!(count, 3);
    let thirty_days = 30 * 24 * 3600;
    let ttl = fx.ttl(&day_key).await;
    assert!((thirty_days - 60..=thirty_days).contains(&ttl), "ttl {ttl}");

    // The TTL is set once per day key, not pushed back by every login.
    let _: () = redis::cmd("EXPIRE")
        .arg(&day_key)
        .arg(100)
        .query_async(&mut fx.redis.clone())
        .await
        .unwrap();
    store
        .register(entry("d", DeviceType::Web, "5", "node-a"))
        .await
        .unwrap();
    assert!(fx.ttl(&day_key).await <= 100);
}

fn is_iso_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
}

#[tokio::test]
async fn revoked_tokens_are_found_under_the_blacklist_prefix() {
    let fx = Fixture::new().await;
    let blacklist = format!("{}BLACKLIST-", fx.prefix);
    let store = RedisRouteStore::connect(&fx.config(), 35, Some(blacklist.clone()))
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(format!("{blacklist}revoked-token"))
        .arg("1")
        .query_async(&mut fx.redis.clone())
        .await
        .unwrap();

    assert!(store.is_revoked("revoked-token").await.unwrap());
    assert!(!store.is_revoked("good-token").await.unwrap());
    let without = fx.store(35).await;
    assert!(!without.is_revoked("revoked-token").await.unwrap());
}

#[tokio::test]
async fn unreadable_record_is_reported_and_replaced_by_the_next_login() {
    let fx = Fixture::new().await;
    let store = fx.store(35).await;
    let _: () = redis::cmd("SET")
        .arg(fx.key("u1"))
        .arg("not json")
        .query_async(&mut fx.redis.clone())
        .await
        .unwrap();

    let err = store.lookup("u1").await.unwrap_err();
    assert!(matches!(
        err.downcast_ref::<RouteError>(),
        Some(RouteError::BadRecord(_))
    ));
    assert_eq!(
        store.health(),
        Health::Up,
        "one bad record is not an outage"
    );

    store
        .register(entry("u1", DeviceType::Ios, "d1", "node-a"))
        .await
        .unwrap();
    let record = store.lookup("u1").await.unwrap().unwrap();
    assert_eq!(record.drivers["MOBILE"].device_id, "d1");
}

/// A "Redis" that accepts connections and never answers.
async fn silent_server() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (addr, task)
}

#[tokio::test]
async fn stalled_redis_fails_register_within_the_timeout() {
    let (addr, server) = silent_server().await;
    let config = RedisConfig {
        host: addr.ip().to_string(),
        port: addr.port(),
        timeout: 300,
        key_prefix: "never-written-".into(),
        ..RedisConfig::default()
    };

    let started = Instant::now();
    let store = RedisRouteStore::connect(&config, 35, Some("BL-".into()))
        .await
        .expect("start-up does not need redis");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "start-up waited"
    );
    assert!(!store.health().is_up());

    let started = Instant::now();
    let err = store
        .register(entry("u1", DeviceType::Ios, "d1", "node-a"))
        .await
        .unwrap_err();
    let waited = started.elapsed();
    assert!(waited < Duration::from_millis(1_500), "waited {waited:?}");
    let err = err.downcast_ref::<RouteError>().expect("a RouteError");
    assert!(err.is_outage(), "{err}");
    match store.health() {
        Health::Down(why) => assert!(why.contains("redis"), "{why}"),
        Health::Up => panic!("health must be down"),
    }

    // Every other operation gives up in time as well.
    let started = Instant::now();
    assert!(store.lookup("u1").await.is_err());
    assert!(store.is_revoked("t").await.is_err());
    let sessions = SessionRegistry::new();
    let conn = bound_connection("u1", DeviceType::Ios, "d1");
    sessions
        .bind(&"u1".into(), DeviceGroup::Mobile, &conn, false)
        .unwrap();
    assert!(store.refresh_once(&sessions, "node-a").await.is_err());
    assert!(started.elapsed() < Duration::from_secs(4));
    server.abort();
}

#[tokio::test]
async fn refused_connection_fails_register_and_reports_down() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let config = RedisConfig {
        host: "127.0.0.1".into(),
        port,
        timeout: 300,
        ..RedisConfig::default()
    };
    let store = RedisRouteStore::connect(&config, 35, None).await.unwrap();

    let started = Instant::now();
    let err = store
        .register(entry("u1", DeviceType::Ios, "d1", "node-a"))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(1_500));
    assert!(err.to_string().contains("redis"), "{err}");
    assert!(!store.health().is_up());
}

/// A redis-server of the test's own on a free port, so it can be stopped and started without
/// disturbing the shared one.
struct PrivateRedis {
    child: std::process::Child,
}

impl PrivateRedis {
    async fn start(port: u16) -> Self {
        // Owned from the start, so a failed start still stops the process.
        let server = PrivateRedis {
            child: std::process::Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--dir", "/tmp"])
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("redis-server on the PATH (the Redis package that runs 127.0.0.1:6379)"),
        };
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
        for _ in 0..100 {
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                let pong: Result<(), _> = redis::cmd("PING").query_async(&mut conn).await;
                if pong.is_ok() {
                    return server;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("a private redis-server on port {port} did not start");
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn store_reconnects_when_redis_comes_back() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let config = RedisConfig {
        host: "127.0.0.1".into(),
        port,
        timeout: 500,
        ..RedisConfig::default()
    };
    let login = entry("u1", DeviceType::Ios, "d1", "node-a");

    // Started before Redis: the store comes up and reports the outage.
    let store = RedisRouteStore::connect(&config, 35, None).await.unwrap();
    assert!(!store.health().is_up());

    let redis = PrivateRedis::start(port).await;
    store.register(login.clone()).await.unwrap();
    assert_eq!(store.health(), Health::Up);

    // A restart while the pool sits idle costs no failed command: the dead connection is
    // replaced within the call that finds it.
    drop(redis);
    let redis = PrivateRedis::start(port).await;
    store.register(login.clone()).await.unwrap();

    drop(redis);
    assert!(store.register(login.clone()).await.is_err());
    assert!(!store.health().is_up());

    // The pooled connections died with the server; new ones are made on demand.
    let _redis = PrivateRedis::start(port).await;
    store.register(login.clone()).await.unwrap();
    assert_eq!(store.health(), Health::Up);
    assert!(store.lookup("u1").await.unwrap().is_some());
}
