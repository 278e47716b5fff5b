//! `app`, `spring` and `admin`: the node's identity, profiles and admin endpoint.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{de, secret, Secret};

const DEFAULT_APP_NAME: &str = "im-connect";
const DEFAULT_PROFILES: &str = "dev";
const DEFAULT_ADMIN_PORT: u16 = 19100;
const DEFAULT_ADMIN_HOST: &str = "127.0.0.1";

/// `app`: the service's identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct AppConfig {
    /// Service name in logs and the default Nacos service name.
    #[serde(deserialize_with = "de::string")]
    pub name: String,
}

impl Default for AppConfig {
    fn default() -> Self {
        Self {
            name: DEFAULT_APP_NAME.to_owned(),
        }
    }
}

/// `spring`: kept under its Spring name so existing files load unchanged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct SpringConfig {
    /// Profile selection.
    pub profiles: ProfilesConfig,
}

impl SpringConfig {
    /// The active profiles in the order they are applied: `profiles.active` split at commas,
    /// trimmed, empty names dropped.
    pub fn active_profiles(&self) -> Vec<&str> {
        self.profiles
            .active
            .split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .collect()
    }
}

/// `spring.profiles`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ProfilesConfig {
    /// Comma-separated profiles; each overlays `application-{profile}.yml`, in order. A YAML
    /// list is accepted too.
    #[serde(deserialize_with = "de::profiles")]
    pub active: String,
}

impl Default for ProfilesConfig {
    fn default() -> Self {
        Self {
            active: DEFAULT_PROFILES.to_owned(),
        }
    }
}

/// `admin`: the HTTP endpoint for health, readiness and operator actions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct AdminConfig {
    /// Whether the endpoint runs.
    pub enable: bool,
    /// Port it listens on. Configuration files need 1 to 65535; code may set 0 for any free
    /// port (tests), read back with `Server::admin_addr`.
    pub port: u16,
    /// Address it binds to. Anything but a loopback address requires `token`.
    #[serde(deserialize_with = "de::string")]
    pub host: String,
    /// Bearer token that requests must present (`Authorization: Bearer <token>`). `/health`
    /// and the console page at `/` are served without it; the page asks for it and sends it
    /// with its API calls.
    #[serde(deserialize_with = "secret::optional")]
    pub token: Option<Secret>,
}

impl AdminConfig {
    /// Whether `host` only accepts connections from this machine.
    pub fn is_loopback(&self) -> bool {
        let host = self
            .host
            .trim()
            .trim_start_matches('[')
            .trim_end_matches(']');
        host.eq_ignore_ascii_case("localhost")
            || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enable: true,
            port: DEFAULT_ADMIN_PORT,
            host: DEFAULT_ADMIN_HOST.to_owned(),
            token: None,
        }
    }
}
