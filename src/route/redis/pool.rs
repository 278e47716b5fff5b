//! The bb8 pool of multiplexed Redis connections, and the one place commands run.
//!
//! `bb8-redis`'s manager never reports a connection as broken, so it relies on a `PING` at
//! every checkout to notice a dead socket: one extra round trip per route write. This manager
//! marks a connection broken when a command on it fails with an I/O error or times out, and
//! the pool replaces it on return; checkouts cost nothing.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::MultiplexedConnection;
use ::redis::{AsyncConnectionConfig, Client, ConnectionAddr, IntoConnectionInfo, RedisError};
use ::redis::{RedisConnectionInfo, RedisResult};
use bb8::{ErrorSink, RunError};
use parking_lot::Mutex;
use tokio::time::{timeout_at, Instant};

use super::RouteError;
use crate::config::RedisConfig;

/// A pooled connection and whether a failed command condemned it.
pub(super) struct Conn {
    inner: MultiplexedConnection,
    broken: bool,
}

/// Opens connections with the configured password, database and deadlines.
pub(super) struct Manager {
    client: Client,
    options: AsyncConnectionConfig,
}

impl fmt::Debug for Manager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Manager").finish_non_exhaustive()
    }
}

impl bb8::ManageConnection for Manager {
    type Connection = Conn;
    type Error = RedisError;

    async fn connect(&self) -> Result<Conn, RedisError> {
        let inner = self
            .client
            .get_multiplexed_async_connection_with_config(&self.options)
            .await?;
        Ok(Conn {
            inner,
            broken: false,
        })
    }

    async fn is_valid(&self, conn: &mut Conn) -> Result<(), RedisError> {
        ::redis::cmd("PING").query_async(&mut conn.inner).await
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        conn.broken
    }
}

/// Keeps the pool's latest connection error, so a checkout that timed out can say why.
#[derive(Debug, Clone, Default)]
struct LastError(Arc<Mutex<Option<String>>>);

impl ErrorSink<RedisError> for LastError {
    fn sink(&self, error: RedisError) {
        *self.0.lock() = Some(error.to_string());
    }

    fn boxed_clone(&self) -> Box<dyn ErrorSink<RedisError>> {
        Box::new(self.clone())
    }
}

impl LastError {
    /// Forgets the error once a command went through, so a later timeout is not blamed on it.
    fn clear(&self) {
        *self.0.lock() = None;
    }
}

/// The connection pool, with every command bounded by the configured timeout.
#[derive(Clone)]
pub(super) struct Pool {
    pool: bb8::Pool<Manager>,
    timeout: Duration,
    last_error: LastError,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("state", &self.pool.state())
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Pool {
    /// A pool for `config` that connects lazily: building it never waits for Redis.
    ///
    /// `maxTotal` is the pool size and `minIdle` its floor. bb8 has no ceiling on idle
    /// connections, so `maxIdle` has no effect: idle connections close after bb8's idle
    /// timeout instead.
    pub(super) fn new(config: &RedisConfig) -> Result<Self, RouteError> {
        let timeout = Duration::from_millis(config.timeout.max(1));
        let mut redis = RedisConnectionInfo::default().set_db(config.database);
        if let Some(password) = config.password.as_ref().map(|p| p.expose()) {
            if !password.is_empty() {
                redis = redis.set_password(password);
            }
        }
        let info = ConnectionAddr::Tcp(config.host.clone(), config.port)
            .into_connection_info()
            .map_err(|e| RouteError::Config(e.to_string()))?
            .set_redis_settings(redis);
        let client = Client::open(info).map_err(|e| RouteError::Config(e.to_string()))?;

        let options = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        let last_error = LastError::default();
        let pool = bb8::Pool::builder()
            .max_size(config.max_total.max(1))
            .min_idle((config.min_idle > 0).then_some(config.min_idle))
            .connection_timeout(timeout)
            .test_on_check_out(false)
            .error_sink(Box::new(last_error.clone()))
            .build_unchecked(Manager { client, options });

        Ok(Pool {
            pool,
            timeout,
            last_error,
        })
    }

    /// Runs `op` on a pooled connection; checkout and command together get one timeout.
    ///
    /// `op` gets its own handle to the multiplexed connection, so a command that outlives the
    /// deadline is simply dropped while the pooled connection is marked broken. A connection
    /// found dead (Redis restarted, or closed it while idle) is replaced and `op` tried once
    /// more within the same deadline, so an idle pool costs no failed login; the route
    /// commands are idempotent, which makes the second try safe.
    pub(super) async fn run<T, F, Fut>(&self, op: F) -> Result<T, RouteError>
    where
        F: Fn(MultiplexedConnection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let deadline = Instant::now() + self.timeout;
        match self.attempt(deadline, &op).await {
            Err(Failure::Dropped(_)) => self.attempt(deadline, &op).await,
            outcome => outcome,
        }
        .map_err(Failure::into_error)
    }

    async fn attempt<T, F, Fut>(&self, deadline: Instant, op: &F) -> Result<T, Failure>
    where
        F: Fn(MultiplexedConnection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let mut conn = match timeout_at(deadline, self.pool.get()).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(RunError::User(err))) => {
                return Err(Failure::Other(RouteError::from_redis(&err)))
            }
            Ok(Err(RunError::TimedOut)) | Err(_) => {
                return Err(Failure::Other(self.checkout_timed_out()))
            }
        };

        match timeout_at(deadline, op(conn.inner.clone())).await {
            Ok(Ok(value)) => {
                self.last_error.clear();
                Ok(value)
            }
            Ok(Err(err)) => {
                let error = RouteError::from_redis(&err);
                if err.is_io_error() || err.is_timeout() || err.is_unrecoverable_error() {
                    conn.broken = true;
                }
                if err.is_connection_dropped() {
                    Err(Failure::Dropped(error))
                } else {
                    Err(Failure::Other(error))
                }
            }
            Err(_) => {
                // A connection that let a command stall may be half-open: replace it.
                conn.broken = true;
                Err(Failure::Other(RouteError::Timeout(self.timeout)))
            }
        }
    }

    fn checkout_timed_out(&self) -> RouteError {
        match self.last_error.0.lock().clone() {
            Some(cause) => RouteError::Unavailable(cause),
            None => RouteError::Timeout(self.timeout),
        }
    }
}

/// How an attempt failed: on a connection that turned out dead, or otherwise.
enum Failure {
    Dropped(RouteError),
    Other(RouteError),
}

impl Failure {
    fn into_error(self) -> RouteError {
        match self {
            Failure::Dropped(err) | Failure::Other(err) => err,
        }
    }
}
