//! Assembling the node from configuration: backends, token verifier and the layer stack.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use tower::util::BoxService;
use tower::ServiceBuilder;

use super::Node;
use crate::admin::Metrics;
use crate::backend::BoxError;
use crate::broker::{Broker, Delivery, EmbeddedBroker, RabbitBroker};
use crate::config::Config;
use crate::dispatch::Dispatch;
use crate::layer::auth::Revocable;
use crate::layer::{
    AuthLayer, DeviceBindingLayer, DeviceBindings, HeartbeatLayer, HeartbeatSettings, JwtVerifier,
    RateLimitLayer, TokenVerifier,
};
use crate::protocol::{DeviceParser, Wire};
use crate::registry::{NacosRegistry, NoRegistry, Registry};
use crate::route::{MemoryRouteStore, RedisRouteStore, RouteStore};
use crate::session::SessionRegistry;
use crate::transport::{StackFactory, TransportSettings};

/// The standard layers and the dispatch service, each configured from the node: the parts
/// [`default_stack`] composes, for stacks composed in code with layers of one's own among
/// them.
///
/// ```no_run
/// # use std::sync::Arc;
/// # use im_connect::server::{Node, StandardLayers};
/// # use im_connect::layer::TokenVerifier;
/// # fn stack(node: &Arc<Node>, verifier: Arc<dyn TokenVerifier>) {
/// let parts = StandardLayers::from_node(node, verifier);
/// let svc = tower::ServiceBuilder::new()
///     .layer(parts.auth.clone())
///     .option_layer(parts.rate_limit)
///     .layer(parts.heartbeat)
///     .layer(parts.device_binding.clone())
///     .service(parts.dispatch.clone());
/// # drop(svc);
/// # }
/// ```
#[derive(Clone)]
pub struct StandardLayers {
    /// Token verification; refuses frames of connections nobody logged in.
    pub auth: AuthLayer<Arc<dyn TokenVerifier>>,
    /// The per-connection token bucket, unless `netty.config.rateLimit.enable` is false.
    pub rate_limit: Option<RateLimitLayer>,
    /// Heartbeat replies, refresh hints and token expiry.
    pub heartbeat: HeartbeatLayer,
    /// REGISTER, kicks, routes and logout.
    pub device_binding: DeviceBindingLayer,
    /// The end of the stack: business messages to the broker, answered with ACK or ERROR.
    pub dispatch: Dispatch,
}

impl std::fmt::Debug for StandardLayers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StandardLayers")
            .field("rate_limit", &self.rate_limit)
            .field("heartbeat", &self.heartbeat)
            .finish_non_exhaustive()
    }
}

impl StandardLayers {
    /// The layers as the node's configuration sets them up, verifying tokens with `verifier`.
    pub fn from_node(node: &Arc<Node>, verifier: Arc<dyn TokenVerifier>) -> Self {
        let config = &node.config;
        let netty = &config.netty.config;
        let rate = &netty.rate_limit;
        let rate_limit = rate.enable.then(|| {
            RateLimitLayer::new(rate.per_second, rate.burst).max_violations(rate.max_violations)
        });
        let heartbeat = HeartbeatLayer::new(HeartbeatSettings {
            refresh_before: Duration::from_secs(config.auth.token_expired * 60),
            enforce_expiry: config.auth.enforce_expiry,
            leeway: Duration::from_secs(config.auth.jwt.leeway_seconds),
        });
        let bindings = DeviceBindings::new(
            node.sessions.clone(),
            node.routes.clone(),
            node.broker.clone(),
            &node.broker_id,
        )
        .devices(DeviceParser::new(&netty.device_aliases))
        .single_device(!netty.multi_device_enabled)
        .route_timeout(route_timeout(config));
        let confirm = config
            .rabbitmq
            .as_ref()
            .map_or(5_000, |r| r.confirm_timeout_ms);
        let dispatch = Dispatch::new(
            node.broker.clone(),
            &node.broker_id,
            Duration::from_millis(confirm),
        )
        .metrics(node.metrics.clone());

        StandardLayers {
            auth: AuthLayer::from_arc(Arc::new(verifier)),
            rate_limit,
            heartbeat,
            device_binding: DeviceBindingLayer::new(Arc::new(bindings)),
            dispatch,
        }
    }
}

/// The standard stack: auth → rate limit → heartbeat → device binding → dispatch, one fresh
/// instance per connection (the rate limiter's bucket lives in it).
pub fn default_stack(node: &Arc<Node>, verifier: Arc<dyn TokenVerifier>) -> StackFactory {
    let parts = StandardLayers::from_node(node, verifier);
    Arc::new(move || {
        let svc = ServiceBuilder::new()
            .layer(parts.auth.clone())
            .option_layer(parts.rate_limit)
            .layer(parts.heartbeat)
            .layer(parts.device_binding.clone())
            .service(parts.dispatch.clone());
        BoxService::new(svc)
    })
}

fn route_timeout(config: &Config) -> Duration {
    Duration::from_millis(config.redis.as_ref().map_or(3_000, |r| r.timeout))
}

/// The token verifier the configuration describes: HS256 with `auth.jwt.secret`, or RS256 /
/// ES256 with `auth.jwt.publicKey`; wrapped in the revocation check when
/// `auth.blacklistPrefix` is set.
pub fn verifier_from_config(
    config: &Config,
    routes: &Arc<dyn RouteStore>,
) -> Result<Arc<dyn TokenVerifier>, BoxError> {
    let jwt = &config.auth.jwt;
    let leeway = jwt.leeway_seconds;
    let claim = jwt.user_id_claim.as_str();
    // Loading settles the algorithm (explicit, or detected from the configured key).
    let mut verifier = match (jwt.algorithm.as_deref(), &jwt.secret, &jwt.public_key) {
        (Some("HS256") | None, Some(secret), _) => {
            JwtVerifier::hs256(secret.expose().as_bytes(), claim, leeway)
                .map_err(|e| format!("auth.jwt.secret: {e}"))?
        }
        (Some(alg @ ("RS256" | "ES256")), _, Some(pem)) => {
            let alg = if alg == "ES256" {
                Algorithm::ES256
            } else {
                Algorithm::RS256
            };
            JwtVerifier::public_key(pem, alg, claim, leeway)
                .map_err(|e| format!("auth.jwt.publicKey: {e}"))?
        }
        (Some(other), _, _) => {
            return Err(format!("auth.jwt.algorithm: `{other}` has no matching key").into())
        }
        (None, None, _) => return Err("auth.jwt.secret: no token key is configured".into()),
    };
    if let Some(issuer) = &jwt.issuer {
        verifier = verifier.with_issuer(issuer);
    }
    if let Some(audience) = &jwt.audience {
        verifier = verifier.with_audience(audience);
    }
    Ok(match config.auth.blacklist_prefix {
        Some(_) => Arc::new(Revocable::new(verifier, routes.clone())),
        None => Arc::new(verifier),
    })
}

/// The broker the configuration names: RabbitMQ when a `rabbitmq` section is on, else the
/// embedded relay. A RabbitMQ that is down at start-up is not an error: the broker keeps
/// reconnecting and reports itself down meanwhile.
pub(super) async fn broker_from_config(
    config: &Config,
    broker_id: &str,
    wire: Wire,
    delivery: &Arc<Delivery>,
) -> Result<Arc<dyn Broker>, BoxError> {
    match &config.rabbitmq {
        Some(rabbit) => {
            let broker = RabbitBroker::start(rabbit, broker_id.into(), wire, delivery.clone())
                .await
                .map_err(|e| format!("rabbitmq: {e}"))?;
            Ok(Arc::new(broker))
        }
        None => Ok(Arc::new(EmbeddedBroker::new(delivery.clone()))),
    }
}

/// The route store the configuration names: Redis when a `redis` section is on (with its
/// TTL refresher over `sessions`), else in memory.
pub(super) async fn routes_from_config(
    config: &Config,
    sessions: &Arc<SessionRegistry>,
    broker_id: &Arc<str>,
) -> Result<Arc<dyn RouteStore>, BoxError> {
    let Some(redis) = &config.redis else {
        return Ok(Arc::new(MemoryRouteStore::new()));
    };
    let ttl = config.netty.config.route_ttl_secs();
    let blacklist = config.auth.blacklist_prefix.clone();
    let store = RedisRouteStore::connect(redis, ttl, blacklist)
        .await
        .map_err(|e| format!("redis: {e}"))?;
    // The task ends by itself once the store is dropped with the node.
    drop(store.spawn_refresher(sessions.clone(), broker_id.clone(), store.refresh_period()));
    Ok(Arc::new(store))
}

/// The registry the configuration names: Nacos when a `nacos` section is on, else none. A
/// Nacos that is down at start-up is not an error: registration keeps retrying in the
/// background and the registry reports itself down meanwhile.
pub(super) fn registry_from_config(config: &Config, broker_id: &str) -> Arc<dyn Registry> {
    match &config.nacos {
        Some(nacos) => {
            let ws_path = &config.netty.config.websocket.path;
            Arc::new(NacosRegistry::start(nacos, broker_id, ws_path))
        }
        None => Arc::new(NoRegistry),
    }
}

/// How often connection counts are compared with what discovery was last told.
pub(super) fn registry_refresh(config: &Config) -> Duration {
    let millis = config
        .nacos
        .as_ref()
        .map_or(DEFAULT_REGISTRY_REFRESH_MS, |n| n.refresh_interval_ms);
    Duration::from_millis(millis)
}

const DEFAULT_REGISTRY_REFRESH_MS: u64 = 10_000;

/// Transport limits from `netty.config`.
pub(super) fn transport_settings(
    config: &Config,
    wire: Wire,
    metrics: Arc<Metrics>,
) -> TransportSettings {
    let netty = &config.netty.config;
    TransportSettings {
        wire,
        default_codec: netty.protocol,
        max_frame_size: netty.max_frame_size,
        idle_timeout: Duration::from_millis(netty.heart_beat_time),
        handshake_timeout: Duration::from_millis(netty.handshake_timeout_ms),
        login_timeout: Duration::from_millis(netty.login_timeout_ms),
        max_inflight: netty.max_inflight,
        outbound_queue: netty.outbound_queue,
        outbound_queue_bytes: netty.outbound_queue_bytes,
        write_timeout: Duration::from_millis(netty.write_timeout_ms),
        ws_path: netty.websocket.path.clone(),
        ws_read_buffer: netty.ws_read_buffer,
        ws_write_buffer: netty.ws_write_buffer,
        metrics,
    }
}
