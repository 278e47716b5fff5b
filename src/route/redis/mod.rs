//! The route store on Redis, where every node and backend sees the same records.
//!
//! # Keys
//!
//! - `{keyPrefix}IM-USER-{userId}`: the user's [`RouteRecord`] as JSON,
//!   `{"userId","token","brokerId","drivers":{"GROUP":{"deviceId","deviceType","brokerId"}}}`,
//!   with a TTL of `ceil((heartBeatTime + timeout) / 1000)` seconds.
//! - `{keyPrefix}IM-ACTIVE-USERS-{yyyy-MM-dd}`: a HyperLogLog of the users who logged in on
//!   that UTC day, kept 30 days from its first login.
//! - `{auth.blacklistPrefix}{token}`: present when the token was revoked (read only).
//!
//! # Atomicity
//!
//! Logins and disconnects are Lua scripts (sent as `EVALSHA`), so two nodes updating one
//! user's record at once never lose each other's driver. A login merges its driver, points
//! the top-level `token` and `brokerId` at itself and returns the driver it replaced, which
//! the caller kicks if another node holds it. A disconnect removes its driver only while it is
//! still the recorded one, deletes the record once no driver is left and the record names this
//! node, and otherwise keeps the top-level `brokerId` on a node that still holds a device of
//! the user, since that is the field existing backends read.
//!
//! # Failure
//!
//! The pool connects lazily, so the server starts with Redis down. Checkout and command
//! together are bounded by `redis.timeout`: a stalled Redis gives [`RouteError::Timeout`],
//! never a hang. [`RedisRouteStore::health`] turns Down with the failure and Up with the next
//! success; the refresher sends a `PING` when it has nothing to refresh, so readiness follows
//! Redis even on an idle node. Broken connections are replaced as they are found.
//!
//! # Limits
//!
//! Needs Redis 6 or later (`SET ... KEEPTTL`). Redis Cluster is not supported: the login
//! script touches the user's key and the day's key, which may live in different slots.

mod error;
mod keys;
mod pool;
mod refresh;

pub use error::RouteError;
pub use refresh::RefreshStats;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ::redis::aio::MultiplexedConnection;
use ::redis::{Cmd, FromRedisValue, RedisResult, Script, ScriptInvocation};
use parking_lot::Mutex;
use tokio::task::JoinHandle;

use self::keys::Keys;
use self::pool::Pool;
use super::{Driver, RouteEntry, RouteRecord, RouteStore};
use crate::backend::{BoxError, BoxFuture, Health};
use crate::config::RedisConfig;
use crate::session::SessionRegistry;

/// How long a day's active-user key is kept after that day's first login.
const ACTIVE_USERS_TTL_SECS: u64 = 30 * 24 * 60 * 60;

/// The route scripts, hashed once; `EVALSHA` falls back to loading a script Redis lost.
struct Scripts {
    register: Script,
    unregister: Script,
    refresh: Script,
}

impl Scripts {
    fn new() -> Self {
        Scripts {
            register: Script::new(concat!(
                include_str!("lua/record.lua"),
                include_str!("lua/register.lua")
            )),
            unregister: Script::new(concat!(
                include_str!("lua/record.lua"),
                include_str!("lua/unregister.lua")
            )),
            refresh: Script::new(include_str!("lua/refresh.lua")),
        }
    }
}

/// What the store and its refresher share.
struct Inner {
    pool: Pool,
    keys: Keys,
    ttl_secs: u64,
    blacklist_prefix: Option<String>,
    scripts: Scripts,
    health: Mutex<Health>,
}

/// Route records in Redis, shared by every node and backend.
///
/// Cloning is cheap; clones share the pool and the health state.
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use im_connect::config::RedisConfig;
/// use im_connect::route::RedisRouteStore;
/// use im_connect::session::SessionRegistry;
///
/// let sessions = Arc::new(SessionRegistry::new());
/// let store = RedisRouteStore::connect(&RedisConfig::default(), 35, None).await?;
/// let _refresher = store.spawn_refresher(sessions, "node-a".into(), store.refresh_period());
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisRouteStore {
    inner: Arc<Inner>,
}

impl fmt::Debug for RedisRouteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRouteStore")
            .field("pool", &self.inner.pool)
            .field("ttl_secs", &self.inner.ttl_secs)
            .field("health", &*self.inner.health.lock())
            .finish_non_exhaustive()
    }
}

impl RedisRouteStore {
    /// A store for `config` whose records live `ttl_secs` seconds unless refreshed
    /// ([`NettyConfig::route_ttl_secs`](crate::config::NettyConfig::route_ttl_secs)), checking
    /// revoked tokens under `blacklist_prefix` when set.
    ///
    /// Fails only on a configuration that cannot name a Redis server. Redis being down is not
    /// an error: it is probed once (within `redis.timeout`), reported by
    /// [`health`](RouteStore::health), and connected to as soon as it answers.
    pub async fn connect(
        config: &RedisConfig,
        ttl_secs: u64,
        blacklist_prefix: Option<String>,
    ) -> Result<Self, RouteError> {
        let inner = Inner {
            pool: Pool::new(config)?,
            keys: Keys::new(&config.key_prefix),
            ttl_secs: ttl_secs.max(1),
            blacklist_prefix,
            scripts: Scripts::new(),
            health: Mutex::new(Health::Down("not connected yet".into())),
        };
        let store = RedisRouteStore {
            inner: Arc::new(inner),
        };

        match store.inner.ping().await {
            Ok(()) => tracing::info!(
                redis.host = %config.host,
                redis.port = config.port,
                redis.database = config.database,
                "route store connected"
            ),
            Err(err) => tracing::warn!(
                redis.host = %config.host,
                redis.port = config.port,
                error = %err,
                "route store starting without redis"
            ),
        }
        Ok(store)
    }

    /// The route record TTL in seconds.
    pub fn ttl_secs(&self) -> u64 {
        self.inner.ttl_secs
    }

    /// The refresh period to use: a third of the TTL, so a record outlives two missed or late
    /// rounds before it expires under a live device.
    pub fn refresh_period(&self) -> Duration {
        Duration::from_millis(self.inner.ttl_secs * 1000 / 3)
    }

    /// Starts the background task that keeps the records of `sessions`' users alive, one
    /// round every `period` (normally [`refresh_period`](Self::refresh_period)). `broker_id`
    /// is this node's, written into records it has to re-create.
    ///
    /// The task ends when the store and all its clones are dropped, or when the handle is
    /// aborted.
    pub fn spawn_refresher(
        &self,
        sessions: Arc<SessionRegistry>,
        broker_id: Arc<str>,
        period: Duration,
    ) -> JoinHandle<()> {
        refresh::spawn(Arc::downgrade(&self.inner), sessions, broker_id, period)
    }

    /// One refresh round now: what the refresher does every period.
    pub async fn refresh_once(
        &self,
        sessions: &SessionRegistry,
        broker_id: &str,
    ) -> Result<RefreshStats, RouteError> {
        self.inner.refresh(sessions, broker_id).await
    }
}

impl Inner {
    /// Runs a command and keeps the health state in step with its outcome.
    async fn run<T, F, Fut>(&self, op: F) -> Result<T, RouteError>
    where
        F: Fn(MultiplexedConnection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let result = self.pool.run(op).await;
        match &result {
            Ok(_) => self.set_health(Health::Up),
            Err(err) if err.is_outage() => self.set_health(Health::Down(err.to_string())),
            Err(_) => {}
        }
        result
    }

    fn set_health(&self, health: Health) {
        let mut current = self.health.lock();
        if *current == health {
            return;
        }
        match &health {
            Health::Up => tracing::info!("redis reachable"),
            Health::Down(why) => tracing::warn!(error = %why, "redis unreachable"),
        }
        *current = health;
    }

    async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, RouteError> {
        self.run(|mut conn| async move { cmd.query_async(&mut conn).await })
            .await
    }

    async fn invoke<T: FromRedisValue>(
        &self,
        call: &ScriptInvocation<'_>,
    ) -> Result<T, RouteError> {
        self.run(|mut conn| async move { call.invoke_async(&mut conn).await })
            .await
    }

    async fn ping(&self) -> Result<(), RouteError> {
        self.query(&::redis::cmd("PING")).await
    }

    async fn register(&self, entry: &RouteEntry) -> Result<Option<Driver>, RouteError> {
        let mut call = self.scripts.register.prepare_invoke();
        call.key(self.keys.user(&entry.user_id))
            .key(self.keys.active_users(SystemTime::now()))
            .arg(&*entry.user_id)
            .arg(&*entry.token)
            .arg(&*entry.broker_id)
            .arg(entry.group().as_str())
            .arg(&entry.device_id)
            .arg(entry.device_type.as_str())
            .arg(self.ttl_secs)
            .arg(ACTIVE_USERS_TTL_SECS);

        let replaced: Option<String> = self.invoke(&call).await?;
        // The login is recorded whatever the old driver looked like; one that is not the
        // contract's shape cannot be kicked, so it is only reported.
        Ok(replaced.and_then(|json| match serde_json::from_str(&json) {
            Ok(driver) => Some(driver),
            Err(err) => {
                tracing::debug!(user.id = %entry.user_id, error = %err, "unreadable replaced driver");
                None
            }
        }))
    }

    async fn unregister(&self, entry: &RouteEntry) -> Result<(), RouteError> {
        let mut call = self.scripts.unregister.prepare_invoke();
        call.key(self.keys.user(&entry.user_id))
            .arg(entry.group().as_str())
            .arg(&entry.device_id)
            .arg(&*entry.broker_id);

        let _outcome: i64 = self.invoke(&call).await?;
        Ok(())
    }

    async fn lookup(&self, user_id: &str) -> Result<Option<RouteRecord>, RouteError> {
        let mut get = ::redis::cmd("GET");
        get.arg(self.keys.user(user_id));
        let raw: Option<String> = self.query(&get).await?;
        raw.map(|json| serde_json::from_str(&json))
            .transpose()
            .map_err(|e| RouteError::BadRecord(e.to_string()))
    }

    async fn is_revoked(&self, token: &str) -> Result<bool, RouteError> {
        let Some(prefix) = &self.blacklist_prefix else {
            return Ok(false);
        };
        let mut exists = ::redis::cmd("EXISTS");
        exists.arg(format!("{prefix}{token}"));
        self.query(&exists).await
    }
}

impl RouteStore for RedisRouteStore {
    fn register(&self, entry: RouteEntry) -> BoxFuture<'static, Result<Option<Driver>, BoxError>> {
        let inner = self.inner.clone();
        Box::pin(async move { Ok(inner.register(&entry).await?) })
    }

    fn unregister(&self, entry: RouteEntry) -> BoxFuture<'static, Result<(), BoxError>> {
        let inner = self.inner.clone();
        Box::pin(async move { Ok(inner.unregister(&entry).await?) })
    }

    fn lookup(&self, user_id: &str) -> BoxFuture<'static, Result<Option<RouteRecord>, BoxError>> {
        let inner = self.inner.clone();
        let user_id = user_id.to_owned();
        Box::pin(async move { Ok(inner.lookup(&user_id).await?) })
    }

    fn is_revoked(&self, token: &str) -> BoxFuture<'static, Result<bool, BoxError>> {
        let inner = self.inner.clone();
        let token = token.to_owned();
        Box::pin(async move { Ok(inner.is_revoked(&token).await?) })
    }

    fn health(&self) -> Health {
        self.inner.health.lock().clone()
    }
}
