//! The configuration tree, how it is loaded and how it is checked.
//!
//! One typed tree, [`Config`], read from YAML in the shape of the Java gateway's
//! `application.yml` (`netty.config.*`, `spring.profiles.active`, `nacos.config.*`), so existing
//! files load unchanged. [`Config::load`] layers, later layers winning key by key:
//!
//! 1. the base file, `config/application.yml` unless another is given (none: the defaults);
//! 2. `application-{profile}.yml` for each profile in `spring.profiles.active`, in order,
//!    found beside the base file or in `config/`; a missing profile file is skipped;
//! 3. environment variables: `IM_CONNECT_` then the key path with `__` between levels, matched
//!    without regard to case, e.g. `IM_CONNECT_NETTY__CONFIG__HEARTBEATTIME=10000`.
//!    `IM_CONNECT_PROFILES` or `SPRING_PROFILES_ACTIVE` select the profiles.
//!
//! The result is validated once; every error names the dotted key at fault. Unknown keys and
//! keys without effect are returned as warnings for the caller to log.
//!
//! `rabbitmq`, `redis` and `nacos` are optional: a section is on when it says `enable: true`,
//! or names its server (`rabbitmq.address`, `redis.host`, `nacos.config.address`) and does not
//! say `enable: false`. Without them the gateway runs as a standalone relay.
//!
//! `config/README.md` lists every key with its type and default.
//!
//! # Example
//!
//! ```
//! use im_connect::config::{Codec, Config};
//!
//! # fn main() -> Result<(), im_connect::config::ConfigError> {
//! let loaded = Config::from_yaml(
//!     "netty:\n  config:\n    protocol: json\n    heartBeatTime: 20000\n",
//! )?;
//! for warning in &loaded.warnings {
//!     eprintln!("{warning}");
//! }
//!
//! let netty = &loaded.config.netty.config;
//! assert_eq!(netty.protocol, Codec::Json);
//! assert_eq!(netty.route_ttl_secs(), 25);
//! assert!(loaded.config.rabbitmq.is_none());
//! # Ok(())
//! # }
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod app;
mod auth;
mod backends;
mod de;
mod error;
mod load;
mod netty;
mod secret;
mod section;
mod validate;

pub use app::{AdminConfig, AppConfig, ProfilesConfig, SpringConfig};
pub use auth::{AuthConfig, JwtConfig, DEV_JWT_SECRET};
pub use backends::{NacosConfig, RabbitMqConfig, RedisConfig};
pub use error::ConfigError;
pub use netty::{
    CodeTableName, Codec, NettyConfig, NettySection, ProtoData, RateLimitConfig, TcpConfig,
    WebSocketConfig,
};
pub use secret::Secret;

/// The whole configuration.
///
/// `Default` is the built-in configuration: every listener on its design port, no broker,
/// route store or registry (the standalone relay), and no JWT key. [`Config::load`] gives the
/// `dev` profile a development key; any other profile must configure one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Config {
    /// `app`: the service's identity.
    pub app: AppConfig,
    /// `spring`: the active profiles.
    pub spring: SpringConfig,
    /// `netty`: listeners and per-connection behaviour.
    pub netty: NettySection,
    /// `auth`: token verification.
    pub auth: AuthConfig,
    /// `rabbitmq`: the broker; `None` runs the embedded relay.
    #[serde(
        deserialize_with = "section::rabbitmq",
        serialize_with = "section::serialize_flat"
    )]
    pub rabbitmq: Option<RabbitMqConfig>,
    /// `redis`: the route store; `None` keeps routes in memory.
    #[serde(
        deserialize_with = "section::redis",
        serialize_with = "section::serialize_flat"
    )]
    pub redis: Option<RedisConfig>,
    /// `nacos`: service registration; `None` registers nowhere. The YAML nests the settings
    /// under `nacos.config`.
    #[serde(
        deserialize_with = "section::nacos",
        serialize_with = "section::serialize_nacos"
    )]
    pub nacos: Option<NacosConfig>,
    /// `admin`: the HTTP endpoint for health and operator actions.
    pub admin: AdminConfig,
}

/// A loaded configuration and what loading it had to say.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The validated configuration.
    pub config: Config,
    /// Things the operator should know, ready to log: unknown keys, keys without effect, the
    /// development secret.
    pub warnings: Vec<String>,
    /// The files read, in the order they were applied.
    pub sources: Vec<PathBuf>,
}

impl Config {
    /// Loads `path`, or `config/application.yml` under the current directory when `path` is
    /// `None` (the built-in defaults if that file does not exist), then overlays the profile
    /// files and the environment, then validates.
    ///
    /// Profiles come from `IM_CONNECT_PROFILES`, else `SPRING_PROFILES_ACTIVE`, else
    /// `spring.profiles.active` (the environment's `IM_CONNECT_SPRING__PROFILES__ACTIVE` before
    /// the base file's), else `dev`. Each is applied in order from `application-{profile}.yml`
    /// beside the base file, else in `config/`.
    ///
    /// Nothing is logged: warnings are returned in [`Loaded::warnings`].
    pub fn load(path: Option<&Path>) -> Result<Loaded, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars_os()
            .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
            .collect();
        load::load(path, &env)
    }

    /// Loads a configuration from YAML text alone: no profile files, no environment.
    pub fn from_yaml(text: &str) -> Result<Loaded, ConfigError> {
        load::from_yaml(text)
    }

    /// The effective settings as YAML in the shape of the configuration files, every secret
    /// written as `***`. Optional sections that are off show as `enable: false`.
    pub fn to_redacted_yaml(&self) -> String {
        serde_yaml::to_string(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }

    /// Whether the JWT secret is the built-in [`DEV_JWT_SECRET`].
    pub fn uses_dev_secret(&self) -> bool {
        self.auth.jwt.secret.as_ref().map(Secret::expose) == Some(DEV_JWT_SECRET)
    }
}

#[cfg(test)]
mod tests;
