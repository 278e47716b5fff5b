//! The reference backend: routes every upstream business message to the gateway nodes that
//! hold its target users.
//!
//! It consumes the upstream routing keys (`{upstreamPrefix}{kind}` for the five business kinds)
//! from its own durable queue, looks each target of `ids` up in the route store, and
//! republishes the message to `{routingKeyPrefix}{brokerId}` of every node holding one of
//! them, with `ids` narrowed to that node's users. See [`im_connect::broker::Relay`].
//!
//! Routes come from Redis (`--redis host:port`, the store the gateways write). Without Redis,
//! routes can be given by hand with `--route user=brokerId` (repeatable); any other user is
//! treated as offline.
//!
//! Two gateway nodes plus this relay on one machine (RabbitMQ and Redis on their default
//! ports; each node's configuration sets `rabbitmq` and `redis`, its own ports and
//! `netty.config.brokerId`):
//!
//! ```sh
//! cargo run --release -- --config node-a.yml &
//! cargo run --release -- --config node-b.yml &
//! cargo run --release --example relay_backend -- --redis 127.0.0.1:6379
//! ```

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use im_connect::broker::{Relay, RelayConfig};
use im_connect::config::{RabbitMqConfig, RedisConfig, Secret};
use im_connect::protocol::DeviceType;
use im_connect::route::{MemoryRouteStore, RedisRouteStore, RouteEntry, RouteStore};

/// Command line of the reference backend.
#[derive(Debug, Parser)]
#[command(about = "Routes upstream im-connect messages to the nodes holding their targets")]
struct Args {
    /// AMQP URI of RabbitMQ.
    #[arg(
        long,
        env = "AMQP_URI",
        hide_env_values = true,
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    amqp: String,
    /// Redis `host:port` holding the gateways' route records.
    #[arg(long)]
    redis: Option<String>,
    /// Redis password.
    #[arg(long, env = "REDIS_PASSWORD", hide_env_values = true)]
    redis_password: Option<String>,
    /// Redis database index.
    #[arg(long, default_value_t = 0)]
    redis_db: i64,
    /// Prefix of every Redis key, as the gateways' `redis.keyPrefix`.
    #[arg(long, default_value = "")]
    redis_key_prefix: String,
    /// A route given by hand, `user=brokerId`, when there is no Redis (repeatable).
    #[arg(long = "route", value_name = "USER=BROKER_ID")]
    routes: Vec<String>,
    /// The gateways' exchange (`rabbitmq.exchange`).
    #[arg(long)]
    exchange: Option<String>,
    /// The gateways' `rabbitmq.routingKeyPrefix`.
    #[arg(long)]
    routing_key_prefix: Option<String>,
    /// The gateways' `rabbitmq.upstreamPrefix`.
    #[arg(long)]
    upstream_prefix: Option<String>,
    /// The relay's own queue.
    #[arg(long, default_value = RelayConfig::DEFAULT_QUEUE)]
    queue: String,
    /// Where unparseable upstream messages go (`rabbitmq.errorQueue`).
    #[arg(long)]
    error_queue: Option<String>,
    /// Messages routed at once.
    #[arg(long, default_value_t = 256)]
    prefetch: u16,
}

#[tokio::main]
async fn main() -> Result<(), im_connect::BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,lapin=warn".into()),
        )
        .init();
    let args = Args::parse();

    let defaults = RabbitMqConfig::default();
    let config = RelayConfig {
        uri: args.amqp.clone(),
        exchange: args.exchange.clone().unwrap_or(defaults.exchange),
        routing_key_prefix: args
            .routing_key_prefix
            .clone()
            .unwrap_or(defaults.routing_key_prefix),
        upstream_prefix: args
            .upstream_prefix
            .clone()
            .unwrap_or(defaults.upstream_prefix),
        queue: args.queue.clone(),
        error_queue: args.error_queue.clone().unwrap_or(defaults.error_queue),
        prefetch: args.prefetch.max(1),
        connection_timeout: Duration::from_millis(defaults.connection_timeout),
        confirm_timeout: Duration::from_millis(defaults.confirm_timeout_ms),
    };
    let routes = route_store(&args).await?;

    let relay = Relay::start(config, routes).await?;
    if let im_connect::backend::Health::Down(why) = relay.health() {
        tracing::warn!(%why, "relay started without rabbitmq, retrying in the background");
    }
    tokio::signal::ctrl_c().await?;
    tracing::info!(routed = relay.routed_total(), "shutting down");
    relay.shutdown().await;
    Ok(())
}

/// Redis when `--redis` is given, else the `--route` table in memory.
async fn route_store(args: &Args) -> Result<Arc<dyn RouteStore>, im_connect::BoxError> {
    if let Some(redis) = &args.redis {
        let (host, port) = redis.rsplit_once(':').ok_or("--redis must be host:port")?;
        let config = RedisConfig {
            host: host.to_string(),
            port: port.parse().map_err(|_| "--redis: invalid port")?,
            password: args.redis_password.clone().map(Secret::new),
            database: args.redis_db,
            key_prefix: args.redis_key_prefix.clone(),
            ..RedisConfig::default()
        };
        // The relay only reads routes: the TTL is never used for writing.
        let store = RedisRouteStore::connect(&config, 35, None).await?;
        return Ok(Arc::new(store));
    }

    let store = MemoryRouteStore::new();
    for route in &args.routes {
        let (user, broker_id) = route
            .split_once('=')
            .ok_or_else(|| format!("--route {route}: expected user=brokerId"))?;
        let entry = RouteEntry {
            user_id: user.into(),
            token: "".into(),
            device_type: DeviceType::Web,
            device_id: format!("static-{user}"),
            broker_id: broker_id.into(),
        };
        store.register(entry).await?;
    }
    if args.routes.is_empty() {
        tracing::warn!("no --redis and no --route: every target is offline");
    }
    Ok(Arc::new(store))
}
