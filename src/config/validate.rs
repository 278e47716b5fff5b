//! Range and consistency checks, each failure naming its key.

use std::collections::BTreeMap;
use std::fmt::Display;

use super::netty::DEVICE_TYPES;
use super::{Config, ConfigError};

const MIB: usize = 1024 * 1024;
const DAY_MS: u64 = 24 * 60 * 60 * 1000;
const MAX_BROKER_ID_LEN: usize = 200;
const ALGORITHMS: [&str; 3] = ["HS256", "RS256", "ES256"];

impl Config {
    /// Checks every value against its range and the settings against each other.
    ///
    /// [`Config::load`] and [`Config::from_yaml`] call it; call it again after changing a
    /// loaded configuration in code. All failures are reported, not only the first.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut checks = Checks::default();

        checks.not_blank("app.name", &self.app.name);
        self.check_netty(&mut checks);
        self.check_auth(&mut checks);
        self.check_backends(&mut checks);
        self.check_admin(&mut checks);

        match ConfigError::from_list(checks.errors) {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    fn check_netty(&self, checks: &mut Checks) {
        let netty = &self.netty.config;
        let key = |name: &str| format!("netty.config.{name}");

        checks.range(&key("heartBeatTime"), netty.heart_beat_time, 1000, DAY_MS);
        checks.range(&key("timeout"), netty.timeout, 0, DAY_MS);
        if let Some(threads) = netty.work_thread_size {
            checks.range(&key("workThreadSize"), threads, 1, 1024);
        }
        checks.not_blank(&key("host"), &netty.host);
        if !netty.websocket.path.starts_with('/') {
            checks.fail(&key("websocket.path"), "must start with `/`");
        }
        checks.range(&key("maxFrameSize"), netty.max_frame_size, 64, 16 * MIB);
        checks.range(
            &key("handshakeTimeoutMs"),
            netty.handshake_timeout_ms,
            100,
            DAY_MS,
        );
        checks.range(&key("loginTimeoutMs"), netty.login_timeout_ms, 100, DAY_MS);
        checks.range(&key("dedupWindowMs"), netty.dedup_window_ms, 0, DAY_MS);
        checks.range(&key("outboundQueue"), netty.outbound_queue, 1, MIB);
        let bytes = netty.outbound_queue_bytes;
        checks.range(
            &key("outboundQueueBytes"),
            bytes,
            netty.max_frame_size,
            1024 * MIB,
        );
        checks.range(&key("writeTimeoutMs"), netty.write_timeout_ms, 100, DAY_MS);
        checks.range(&key("maxInflight"), netty.max_inflight, 1, 65_536);
        checks.range(&key("wsReadBuffer"), netty.ws_read_buffer, 256, 65_536);
        checks.range(&key("wsWriteBuffer"), netty.ws_write_buffer, 256, 65_536);

        let rate = &netty.rate_limit;
        if !(rate.per_second.is_finite() && rate.per_second > 0.0) {
            let message = format!("must be a positive number (got {})", rate.per_second);
            checks.fail(&key("rateLimit.perSecond"), message);
        }
        checks.range(&key("rateLimit.burst"), rate.burst, 1, u32::MAX);
        checks.range(
            &key("rateLimit.maxViolations"),
            rate.max_violations,
            1,
            u32::MAX,
        );

        if let Some(id) = &netty.broker_id {
            let safe = id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
            if !safe || id.len() > MAX_BROKER_ID_LEN {
                let message = format!(
                    "must be at most {MAX_BROKER_ID_LEN} letters, digits, `-`, `_`, `.` or `:` \
                     (got `{id}`)"
                );
                checks.fail(&key("brokerId"), message);
            }
        }

        for (alias, target) in &netty.device_aliases {
            let alias_key = key(&format!("deviceAliases.{alias}"));
            if alias.is_empty() {
                checks.fail(&key("deviceAliases"), "an alias cannot be empty");
            } else if DEVICE_TYPES.contains(&alias.as_str()) {
                checks.fail(&alias_key, "cannot redefine a standard device type");
            } else if !DEVICE_TYPES.contains(&target.as_str()) {
                let message = format!(
                    "must be one of {} (got `{target}`)",
                    DEVICE_TYPES.join(", ")
                );
                checks.fail(&alias_key, message);
            }
        }

        self.check_listeners(checks);
    }

    fn check_listeners(&self, checks: &mut Checks) {
        let netty = &self.netty.config;
        let listeners = [
            ("netty.config.tcp", netty.tcp.enable, &netty.tcp.port),
            (
                "netty.config.websocket",
                netty.websocket.enable,
                &netty.websocket.port,
            ),
        ];

        let mut used: BTreeMap<u16, String> = BTreeMap::new();
        for (section, _, ports) in listeners.iter().filter(|(_, enabled, _)| *enabled) {
            let key = format!("{section}.port");
            if ports.is_empty() {
                let message = format!("lists no port although {section}.enable is true");
                checks.fail(&key, message);
            }
            for &port in ports.iter() {
                checks.port(&key, port, &mut used);
            }
        }
        if !listeners
            .iter()
            .any(|(_, enabled, ports)| *enabled && !ports.is_empty())
        {
            checks.fail(
                "netty.config.tcp.enable",
                "no listener is enabled: enable netty.config.tcp or netty.config.websocket \
                 with at least one port",
            );
        }

        if self.admin.enable {
            checks.port("admin.port", self.admin.port, &mut used);
        }
    }

    fn check_auth(&self, checks: &mut Checks) {
        let auth = &self.auth;
        let jwt = &auth.jwt;

        checks.range("auth.tokenExpired", auth.token_expired, 0, 24 * 60);
        checks.range("auth.jwt.leewaySeconds", jwt.leeway_seconds, 0, 3600);
        checks.not_blank("auth.jwt.userIdClaim", &jwt.user_id_claim);

        let algorithm = jwt.algorithm.as_deref().map(str::to_ascii_uppercase);
        match algorithm.as_deref() {
            None => {}
            Some("HS256") if jwt.secret.is_none() => {
                checks.fail("auth.jwt.secret", "is required by algorithm HS256");
            }
            Some(name @ ("RS256" | "ES256")) if jwt.public_key.is_none() => {
                checks.fail(
                    "auth.jwt.publicKey",
                    format!("is required by algorithm {name}"),
                );
            }
            Some(name) if !ALGORITHMS.contains(&name) => {
                let message = format!("must be one of {} (got `{name}`)", ALGORITHMS.join(", "));
                checks.fail("auth.jwt.algorithm", message);
            }
            Some(_) => {}
        }
        if let Some(pem) = &jwt.public_key {
            if !pem.contains("-----BEGIN") {
                checks.fail("auth.jwt.publicKey", "is not PEM text");
            }
        }
    }

    fn check_backends(&self, checks: &mut Checks) {
        if let Some(mq) = &self.rabbitmq {
            checks.not_blank("rabbitmq.address", &mq.address);
            checks.range("rabbitmq.port", mq.port, 1, u16::MAX);
            checks.not_blank("rabbitmq.exchange", &mq.exchange);
            checks.not_blank("rabbitmq.errorQueue", &mq.error_queue);
            checks.range(
                "rabbitmq.connectionTimeout",
                mq.connection_timeout,
                1,
                DAY_MS,
            );
            checks.range("rabbitmq.prefetch", mq.prefetch, 1, u16::MAX);
            checks.range(
                "rabbitmq.queueExpiresMs",
                mq.queue_expires_ms,
                1000,
                30 * DAY_MS,
            );
            checks.range(
                "rabbitmq.confirmTimeoutMs",
                mq.confirm_timeout_ms,
                1,
                DAY_MS,
            );
        }

        if let Some(redis) = &self.redis {
            checks.not_blank("redis.host", &redis.host);
            checks.range("redis.port", redis.port, 1, u16::MAX);
            checks.range("redis.timeout", redis.timeout, 1, DAY_MS);
            checks.range("redis.database", redis.database, 0, i64::from(i32::MAX));
            checks.range("redis.maxTotal", redis.max_total, 1, 10_000);
            if redis.min_idle > redis.max_total {
                let message = format!(
                    "must not exceed redis.maxTotal ({}) (got {})",
                    redis.max_total, redis.min_idle
                );
                checks.fail("redis.minIdle", message);
            }
        }

        if let Some(nacos) = &self.nacos {
            checks.not_blank("nacos.config.address", &nacos.address);
            checks.range("nacos.config.port", nacos.port, 1, u16::MAX);
            checks.not_blank("nacos.config.group", &nacos.group);
            let refresh = nacos.refresh_interval_ms;
            checks.range("nacos.config.refreshIntervalMs", refresh, 1000, DAY_MS);
        }
    }

    fn check_admin(&self, checks: &mut Checks) {
        let admin = &self.admin;
        if !admin.enable {
            return;
        }

        checks.not_blank("admin.host", &admin.host);
        if admin.token.is_none() && !admin.is_loopback() {
            let message = format!(
                "is required when admin.host is not a loopback address (got `{}`)",
                admin.host
            );
            checks.fail("admin.token", message);
        }
    }
}

/// Collects failures so that one run reports them all.
#[derive(Default)]
struct Checks {
    errors: Vec<ConfigError>,
}

impl Checks {
    fn fail(&mut self, key: &str, message: impl Into<String>) {
        self.errors.push(ConfigError::invalid(key, message));
    }

    fn range<T: PartialOrd + Display + Copy>(&mut self, key: &str, value: T, min: T, max: T) {
        if value < min {
            self.fail(key, format!("must be at least {min} (got {value})"));
        } else if value > max {
            self.fail(key, format!("must be at most {max} (got {value})"));
        }
    }

    fn not_blank(&mut self, key: &str, value: &str) {
        if value.trim().is_empty() {
            self.fail(key, "must not be empty");
        }
    }

    /// Checks a listening port and that no other listener took it.
    fn port(&mut self, key: &str, port: u16, used: &mut BTreeMap<u16, String>) {
        if port == 0 {
            self.fail(key, "port must be between 1 and 65535 (got 0)");
            return;
        }
        match used.get(&port) {
            Some(owner) => {
                let message = format!("port {port} is already used by {owner}");
                self.fail(key, message);
            }
            None => {
                used.insert(port, key.to_owned());
            }
        }
    }
}
