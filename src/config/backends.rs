//! The optional backends: `rabbitmq`, `redis` and `nacos`.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::{de, secret, Secret};

const DEFAULT_HOST: &str = "127.0.0.1";

const DEFAULT_RABBITMQ_PORT: u16 = 5672;
const DEFAULT_RABBITMQ_USER: &str = "guest";
const DEFAULT_RABBITMQ_VHOST: &str = "/";
const DEFAULT_EXCHANGE: &str = "IM-SERVER";
const DEFAULT_ROUTING_KEY_PREFIX: &str = "IM-";
const DEFAULT_ERROR_QUEUE: &str = "im.error";
const DEFAULT_CONNECTION_TIMEOUT_MS: u64 = 60_000;
const DEFAULT_PREFETCH: u16 = 256;
const DEFAULT_UPSTREAM_PREFIX: &str = "im.upstream.";
const DEFAULT_QUEUE_EXPIRES_MS: u64 = 600_000;
const DEFAULT_CONFIRM_TIMEOUT_MS: u64 = 5_000;

const DEFAULT_REDIS_PORT: u16 = 6379;
const DEFAULT_REDIS_TIMEOUT_MS: u64 = 3_000;
const DEFAULT_REDIS_POOL: u32 = 8;

const DEFAULT_NACOS_PORT: u16 = 8848;
const DEFAULT_NACOS_GROUP: &str = "DEFAULT_GROUP";
const DEFAULT_NACOS_VERSION: &str = "1.0.0";
const DEFAULT_NACOS_REFRESH_MS: u64 = 10_000;

/// `rabbitmq`: the broker between this node and the backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct RabbitMqConfig {
    /// Broker host name or address.
    #[serde(deserialize_with = "de::string")]
    pub address: String,
    /// Broker AMQP port.
    pub port: u16,
    /// AMQP user.
    #[serde(deserialize_with = "de::string")]
    pub username: String,
    /// AMQP password.
    pub password: Secret,
    /// Virtual host (YAML key `virtual`).
    #[serde(rename = "virtual", deserialize_with = "de::string")]
    pub virtual_host: String,
    /// Direct exchange that carries upstream and downstream messages.
    #[serde(deserialize_with = "de::string")]
    pub exchange: String,
    /// Prefix of this node's queue name and routing key: `{prefix}{brokerId}`.
    #[serde(deserialize_with = "de::string")]
    pub routing_key_prefix: String,
    /// Queue receiving messages that could not be delivered or parsed.
    #[serde(deserialize_with = "de::string")]
    pub error_queue: String,
    /// Milliseconds allowed for connecting to the broker.
    pub connection_timeout: u64,
    /// Reconnect and re-declare after losing the broker.
    pub automatic_recovery: bool,
    /// Unacknowledged downstream messages the consumer holds at once.
    pub prefetch: u16,
    /// Prefix of upstream routing keys: `{prefix}{kind}`, e.g. `im.upstream.single_message`.
    #[serde(deserialize_with = "de::string")]
    pub upstream_prefix: String,
    /// `x-expires` of this node's queue, in milliseconds: the queue of a node that does not
    /// come back disappears.
    pub queue_expires_ms: u64,
    /// Milliseconds to wait for a publisher confirm before an upstream message fails.
    pub confirm_timeout_ms: u64,
}

impl RabbitMqConfig {
    /// The AMQP URI `amqp://user:password@host:port/vhost`, every component percent-encoded
    /// (the default vhost `/` becomes `%2f`).
    ///
    /// It contains the password: never log it.
    pub fn uri(&self) -> String {
        let host = if self.address.contains(':') && !self.address.starts_with('[') {
            format!("[{}]", self.address)
        } else {
            self.address.clone()
        };

        format!(
            "amqp://{}:{}@{host}:{}/{}",
            percent_encode(&self.username),
            percent_encode(self.password.expose()),
            self.port,
            percent_encode(&self.virtual_host),
        )
    }
}

impl Default for RabbitMqConfig {
    fn default() -> Self {
        Self {
            address: DEFAULT_HOST.to_owned(),
            port: DEFAULT_RABBITMQ_PORT,
            username: DEFAULT_RABBITMQ_USER.to_owned(),
            password: Secret::new(DEFAULT_RABBITMQ_USER),
            virtual_host: DEFAULT_RABBITMQ_VHOST.to_owned(),
            exchange: DEFAULT_EXCHANGE.to_owned(),
            routing_key_prefix: DEFAULT_ROUTING_KEY_PREFIX.to_owned(),
            error_queue: DEFAULT_ERROR_QUEUE.to_owned(),
            connection_timeout: DEFAULT_CONNECTION_TIMEOUT_MS,
            automatic_recovery: true,
            prefetch: DEFAULT_PREFETCH,
            upstream_prefix: DEFAULT_UPSTREAM_PREFIX.to_owned(),
            queue_expires_ms: DEFAULT_QUEUE_EXPIRES_MS,
            confirm_timeout_ms: DEFAULT_CONFIRM_TIMEOUT_MS,
        }
    }
}

/// Encodes everything but RFC 3986 unreserved characters.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02x}");
        }
    }
    out
}

/// `redis`: the route store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct RedisConfig {
    /// Redis host name or address.
    #[serde(deserialize_with = "de::string")]
    pub host: String,
    /// Redis port.
    pub port: u16,
    /// `AUTH` password; an empty string means none.
    #[serde(deserialize_with = "secret::optional")]
    pub password: Option<Secret>,
    /// Milliseconds allowed for a command, a route write included.
    pub timeout: u64,
    /// Database index.
    pub database: i64,
    /// Connection pool size.
    pub max_total: u32,
    /// Idle connections the pool keeps at most.
    pub max_idle: u32,
    /// Idle connections the pool keeps at least.
    pub min_idle: u32,
    /// Prepended to every key the gateway writes, so tests and tenants can share one Redis.
    #[serde(deserialize_with = "de::string")]
    pub key_prefix: String,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            host: DEFAULT_HOST.to_owned(),
            port: DEFAULT_REDIS_PORT,
            password: None,
            timeout: DEFAULT_REDIS_TIMEOUT_MS,
            database: 0,
            max_total: DEFAULT_REDIS_POOL,
            max_idle: DEFAULT_REDIS_POOL,
            min_idle: 0,
            key_prefix: String::new(),
        }
    }
}

/// `nacos.config`: service registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct NacosConfig {
    /// Service name; after loading, `app.name` when not set.
    #[serde(deserialize_with = "de::string")]
    pub name: String,
    /// Nacos server host name or address.
    #[serde(deserialize_with = "de::string")]
    pub address: String,
    /// Nacos HTTP port.
    pub port: u16,
    /// Service group.
    #[serde(deserialize_with = "de::string")]
    pub group: String,
    /// User for Nacos authentication; `None` disables it.
    #[serde(deserialize_with = "de::opt_string")]
    pub username: Option<String>,
    /// Password for Nacos authentication.
    #[serde(deserialize_with = "secret::optional")]
    pub password: Option<Secret>,
    /// `version` instance metadata.
    #[serde(deserialize_with = "de::string")]
    pub version: String,
    /// Namespace id; empty is the public namespace.
    #[serde(deserialize_with = "de::string")]
    pub namespace: String,
    /// `region` instance metadata.
    #[serde(deserialize_with = "de::string")]
    pub region: String,
    /// `priority` instance metadata.
    pub priority: i32,
    /// Milliseconds between checks whether the instances' metadata changed (and between
    /// probes of Nacos while registered).
    pub refresh_interval_ms: u64,
    /// Address advertised for the instances; `None` detects this host's address.
    #[serde(deserialize_with = "de::opt_string")]
    pub ip: Option<String>,
}

impl Default for NacosConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            address: DEFAULT_HOST.to_owned(),
            port: DEFAULT_NACOS_PORT,
            group: DEFAULT_NACOS_GROUP.to_owned(),
            username: None,
            password: None,
            version: DEFAULT_NACOS_VERSION.to_owned(),
            namespace: String::new(),
            region: String::new(),
            priority: 0,
            refresh_interval_ms: DEFAULT_NACOS_REFRESH_MS,
            ip: None,
        }
    }
}
