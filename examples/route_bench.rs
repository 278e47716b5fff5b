//! Measures the Redis route store against the Redis on 127.0.0.1:6379:
//!
//! - a login storm: route writes per second with many logins in flight at once;
//! - TTL refresh: the Redis commands one refresh round costs for 15,000 connected users, and
//!   what that comes to per second with a 30 s heartbeat.
//!
//! ```sh
//! cargo run --release --example route_bench -- [logins] [in-flight] [pool size]
//! ```
//!
//! Keys go under a random `bench-…-` prefix and are removed at the end.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use im_connect::config::{NettyConfig, RedisConfig};
use im_connect::protocol::{Codec, DeviceType, Wire};
use im_connect::route::{RedisRouteStore, RouteEntry, RouteStore};
use im_connect::session::{
    Binding, Connection, ConnectionInfo, Identity, SessionRegistry, Transport,
};
use redis::aio::MultiplexedConnection;
use tokio::sync::Semaphore;

const REFRESH_USERS: usize = 15_000;
const DEVICES: [DeviceType; 3] = [DeviceType::Android, DeviceType::Win, DeviceType::Web];

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>());
    let logins = args.next().transpose()?.unwrap_or(50_000);
    let in_flight = args.next().transpose()?.unwrap_or(256);
    let pool = args.next().transpose()?.unwrap_or(8);

    let prefix = format!("bench-{:08x}-", rand::random::<u32>());
    let netty = NettyConfig::default();
    let ttl = netty.route_ttl_secs();
    let config = RedisConfig {
        max_total: u32::try_from(pool)?,
        key_prefix: prefix.clone(),
        ..RedisConfig::default()
    };
    let store = RedisRouteStore::connect(&config, ttl, None).await?;
    if !store.health().is_up() {
        return Err("redis is not reachable on 127.0.0.1:6379".into());
    }
    let mut redis = redis::Client::open("redis://127.0.0.1:6379/")?
        .get_multiplexed_async_connection()
        .await?;

    login_storm(&store, logins, in_flight, pool).await?;
    refresh(&store, &mut redis, &netty).await?;

    let removed = remove_keys(&mut redis, &prefix).await?;
    println!("\nremoved {removed} bench keys");
    Ok(())
}

async fn login_storm(
    store: &RedisRouteStore,
    logins: usize,
    in_flight: usize,
    pool: usize,
) -> Result<(), BoxError> {
    let entries: Vec<RouteEntry> = (0..logins).map(|i| entry(i / 3, i % 3)).collect();
    println!(
        "login storm: {logins} logins ({} users x 3 device groups), {in_flight} in flight, \
         pool of {pool}",
        logins.div_ceil(3)
    );

    let elapsed = storm(store, entries.clone(), in_flight, |store, e| {
        Box::pin(async move { store.register(e).await.map(drop) })
    })
    .await?;
    report("route writes (REGISTER)", logins, elapsed);

    let elapsed = storm(store, entries, in_flight, |store, e| {
        Box::pin(async move { store.unregister(e).await })
    })
    .await?;
    report("route removals (disconnect)", logins, elapsed);
    Ok(())
}

type Op = fn(
    RedisRouteStore,
    RouteEntry,
) -> im_connect::backend::BoxFuture<'static, Result<(), BoxError>>;

/// Runs `op` for every entry with at most `in_flight` at once; returns the wall time.
async fn storm(
    store: &RedisRouteStore,
    entries: Vec<RouteEntry>,
    in_flight: usize,
    op: Op,
) -> Result<Duration, BoxError> {
    let permits = Arc::new(Semaphore::new(in_flight));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(entries.len());
    for e in entries {
        let permit = permits.clone().acquire_owned().await?;
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let result = op(store, e).await;
            drop(permit);
            result
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(started.elapsed())
}

fn report(what: &str, count: usize, elapsed: Duration) {
    println!(
        "  {what}: {count} in {:.2} s = {:.0}/s",
        elapsed.as_secs_f64(),
        count as f64 / elapsed.as_secs_f64()
    );
}

async fn refresh(
    store: &RedisRouteStore,
    redis: &mut MultiplexedConnection,
    netty: &NettyConfig,
) -> Result<(), BoxError> {
    let sessions = SessionRegistry::new();
    let mut entries = Vec::with_capacity(REFRESH_USERS);
    for user in 0..REFRESH_USERS {
        let e = entry(1_000_000 + user, user % 3);
        let conn = bound(&e);
        sessions.bind(&e.user_id, e.group(), &conn, false).unwrap();
        entries.push(e);
    }
    storm(store, entries, 256, |store, e| {
        Box::pin(async move { store.register(e).await.map(drop) })
    })
    .await?;

    let period = store.refresh_period();
    println!(
        "\nttl refresh: {REFRESH_USERS} connected users, heartbeat {} s, ttl {} s, \
         one round every {:.1} s",
        netty.heart_beat_time / 1000,
        store.ttl_secs(),
        period.as_secs_f64()
    );

    let before = command_stats(redis).await?;
    let started = Instant::now();
    let stats = store.refresh_once(&sessions, "bench-node").await?;
    let elapsed = started.elapsed();
    let after = command_stats(redis).await?;

    let delta = |name: &str| {
        let get = |m: &HashMap<String, (u64, u64)>| m.get(name).copied().unwrap_or_default();
        let (calls_a, usec_a) = get(&after);
        let (calls_b, usec_b) = get(&before);
        (calls_a - calls_b, usec_a - usec_b)
    };
    let (evalsha, script_usec) = delta("evalsha");
    let (expire, _) = delta("expire");
    let per_sec = |n: u64| n as f64 / period.as_secs_f64();

    println!(
        "  one round: {} users in {} script calls, {:.1} ms wall, {:.1} ms of redis time, \
         {} records written back",
        stats.users,
        stats.batches,
        elapsed.as_secs_f64() * 1e3,
        script_usec as f64 / 1e3,
        stats.restored
    );
    println!(
        "  redis commands sent: {evalsha} EVALSHA per round = {:.1}/s",
        per_sec(evalsha)
    );
    println!(
        "  commands run inside the scripts: {expire} EXPIRE per round = {:.0}/s",
        per_sec(expire)
    );
    println!(
        "  redis busy {:.3} % of the time on refresh",
        script_usec as f64 / 1e6 / period.as_secs_f64() * 100.0
    );
    Ok(())
}

/// `INFO commandstats` as command → (calls, microseconds).
async fn command_stats(
    redis: &mut MultiplexedConnection,
) -> Result<HashMap<String, (u64, u64)>, BoxError> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(redis)
        .await?;
    let mut stats = HashMap::new();
    for line in info.lines() {
        let Some((name, fields)) = line
            .strip_prefix("cmdstat_")
            .and_then(|l| l.split_once(':'))
        else {
            continue;
        };
        let field = |key: &str| {
            fields
                .split(',')
                .find_map(|f| f.strip_prefix(key)?.strip_prefix('='))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or_default()
        };
        stats.insert(name.to_owned(), (field("calls"), field("usec")));
    }
    Ok(stats)
}

fn entry(user: usize, device: usize) -> RouteEntry {
    let device_type = DEVICES[device];
    RouteEntry {
        user_id: format!("user-{user}").into(),
        token: format!("bench-token-{user}").into(),
        device_type,
        device_id: format!("req-{user}-{device}"),
        broker_id: "bench-node".into(),
    }
}

fn bound(e: &RouteEntry) -> Arc<Connection> {
    let info = ConnectionInfo {
        transport: Transport::Tcp,
        peer: "127.0.0.1:1".parse().expect("an address"),
        local_port: 9000,
        codec: None,
        handshake_device: None,
    };
    let conn = Arc::new(Connection::new(info, Codec::Json, Wire::default(), 8));
    let identity = Identity {
        user_id: e.user_id.clone(),
        expires_at: None,
        token: e.token.clone(),
    };
    let _ = conn.set_identity(identity);
    conn.bind(Binding::new(
        e.user_id.clone(),
        e.device_type,
        e.device_id.clone(),
        || {},
    ));
    conn
}

async fn remove_keys(redis: &mut MultiplexedConnection, prefix: &str) -> Result<usize, BoxError> {
    let mut cursor = 0u64;
    let mut removed = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1_000)
            .query_async(redis)
            .await?;
        if !keys.is_empty() {
            removed += keys.len();
            let _: () = redis::cmd("UNLINK").arg(keys).query_async(redis).await?;
        }
        if next == 0 {
            return Ok(removed);
        }
        cursor = next;
    }
}
