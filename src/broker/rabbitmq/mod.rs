//! The RabbitMQ broker: upstream publishing with confirms, this node's queue drained into
//! [`Delivery`], the error queue, and a reference backend that routes between nodes.
//!
//! # Topology
//!
//! ```text
//! gateway ── {upstreamPrefix}{kind} ──> exchange (direct, durable) ──> backend queues
//! backend ── {routingKeyPrefix}{brokerId} ──> exchange ──> queue {routingKeyPrefix}{brokerId}
//!                                                          (durable, x-expires) ──> this node
//! unparseable downstream message ──> default exchange ──> error queue (x-error-reason header)
//! ```
//!
//! Publishing and consuming use separate AMQP connections, so a publisher throttled by the
//! broker's flow control never holds up the acks of the consumer. Each connection is owned by
//! a supervisor task that connects, declares what it needs, and reconnects with exponential
//! backoff when the connection is lost; meanwhile [`RabbitBroker::health`] is down and
//! publishes fail at once.
//!
//! Nothing confirmed is lost: upstream messages are persistent and the client is answered
//! only after the publisher confirm; downstream messages are acknowledged only after
//! [`Delivery::deliver`] queued them to the connections, so a cut in between redelivers them
//! and the `requestId` de-duplication drops the second copy.

mod consumer;
mod link;
mod publisher;
mod relay;

pub use relay::{Relay, RelayConfig};

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use self::consumer::NodeConsumer;
use self::link::{Endpoint, LinkState};
use self::publisher::Publisher;
use super::{Broker, Delivery};
use crate::backend::{BoxError, BoxFuture, Health};
use crate::config::RabbitMqConfig;
use crate::protocol::{Envelope, Kind, Wire};

/// Longest AMQP queue name or routing key (a short string).
const MAX_NAME_LEN: usize = 255;

/// Why RabbitMQ could not take a message, or could not be set up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The configuration cannot work (bad URI, empty exchange, ...).
    #[error("invalid rabbitmq configuration: {0}")]
    Config(String),
    /// Not connected, or the connection failed under the request.
    #[error("rabbitmq unavailable: {0}")]
    Unavailable(String),
    /// No confirm arrived within `rabbitmq.confirmTimeoutMs`.
    #[error("rabbitmq did not confirm the message within {0:?}")]
    ConfirmTimeout(Duration),
    /// The broker refused the message (a negative confirm).
    #[error("rabbitmq refused the message")]
    Nacked,
    /// No queue is bound for the routing key: nobody would ever read the message.
    #[error("no queue is bound to routing key `{0}`")]
    Unroutable(String),
}

/// The [`Broker`] on RabbitMQ.
///
/// Built by [`RabbitBroker::start`], which returns even when RabbitMQ is down: background
/// tasks keep (re)connecting until the broker is dropped or [`RabbitBroker::shutdown`] is
/// called.
///
/// Upstream messages go to the exchange with routing key `{upstreamPrefix}{kind}`
/// (`im.upstream.single_message`), persistent and `mandatory`: the returned future resolves
/// after the publisher confirm, and fails when RabbitMQ is down, does not confirm within
/// `confirmTimeoutMs`, refuses the message, or has no queue bound for it.
///
/// With `rabbitmq.automaticRecovery: false` a connection that was up and is lost is not
/// re-established (the broker stays down until restarted); the first connection is retried
/// either way, so a node can start before RabbitMQ.
pub struct RabbitBroker {
    broker_id: String,
    queue: String,
    upstream_prefix: String,
    routing_key_prefix: String,
    wire: Wire,
    publisher: Publisher,
    consumer: Arc<LinkState>,
    cancel: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl RabbitBroker {
    /// Header of an error-queue message saying why it could not be delivered.
    pub const ERROR_REASON_HEADER: &'static str = link::ERROR_REASON_HEADER;
    /// Header of an error-queue message with the routing key it arrived under.
    pub const ORIGINAL_ROUTING_KEY_HEADER: &'static str = link::ORIGINAL_ROUTING_KEY_HEADER;
    /// Header of an error-queue message with the exchange it arrived through.
    pub const ORIGINAL_EXCHANGE_HEADER: &'static str = link::ORIGINAL_EXCHANGE_HEADER;

    /// Connects to RabbitMQ as node `broker_id`, declares the exchange, this node's queue
    /// `{routingKeyPrefix}{brokerId}` and the error queue, and starts consuming into
    /// `delivery`.
    ///
    /// Waits for the first connection attempt (at most about twice the connect timeout), so in
    /// the usual case the broker is ready when this returns. When RabbitMQ is unreachable it
    /// still returns, with [`Broker::health`] down, and keeps retrying in the background. Only
    /// a configuration that can never work is an error.
    pub async fn start(
        config: &RabbitMqConfig,
        broker_id: String,
        wire: Wire,
        delivery: Arc<Delivery>,
    ) -> Result<RabbitBroker, BrokerError> {
        let broker = Self::spawn(config, broker_id, wire, delivery)?;
        let connect_timeout = Duration::from_millis(config.connection_timeout.max(1));
        let first = async {
            broker.publisher.link().first_attempt().await;
            broker.consumer.first_attempt().await;
        };
        let _ = tokio::time::timeout(connect_timeout * 2 + Duration::from_secs(1), first).await;
        tracing::info!(
            broker.id = %broker.broker_id,
            rabbitmq.queue = %broker.queue,
            rabbitmq.exchange = %config.exchange,
            up = broker.health().is_up(),
            "rabbitmq broker started"
        );
        Ok(broker)
    }

    /// [`RabbitBroker::start`] without waiting for the first connection: the links come up in
    /// the background (see [`RabbitBroker::ready`]). For callers that cannot await, such as a
    /// synchronous broker factory; it must run inside a Tokio runtime.
    pub fn spawn(
        config: &RabbitMqConfig,
        broker_id: String,
        wire: Wire,
        delivery: Arc<Delivery>,
    ) -> Result<RabbitBroker, BrokerError> {
        validate(config, &broker_id)?;
        let connect_timeout = Duration::from_millis(config.connection_timeout.max(1));
        let confirm_timeout = Duration::from_millis(config.confirm_timeout_ms.max(1));
        let endpoint = Arc::new(Endpoint::new(
            &config.uri(),
            connect_timeout,
            format!("im-connect {broker_id}"),
        )?);
        let queue = format!("{}{broker_id}", config.routing_key_prefix);

        let publisher = Publisher::new(endpoint.clone(), config.exchange.clone(), confirm_timeout);
        let consumer = Arc::new(NodeConsumer {
            endpoint,
            exchange: config.exchange.clone(),
            queue: queue.clone(),
            error_queue: config.error_queue.clone(),
            queue_expires_ms: config.queue_expires_ms,
            prefetch: config.prefetch,
            confirm_timeout,
            wire,
            delivery,
            link: LinkState::new("consumer"),
        });

        let cancel = CancellationToken::new();
        let recover = config.automatic_recovery;
        let tasks = vec![
            spawn_publisher(&publisher, recover, &cancel),
            spawn_consumer(&consumer, recover, &cancel),
        ];
        Ok(RabbitBroker {
            broker_id,
            queue,
            upstream_prefix: config.upstream_prefix.clone(),
            routing_key_prefix: config.routing_key_prefix.clone(),
            wire,
            publisher,
            consumer: consumer.link.clone(),
            cancel,
            tasks: Mutex::new(tasks),
        })
    }

    /// Waits until both connections are up (publishing, and consuming this node's queue), at
    /// most `timeout`. True when they are.
    pub async fn ready(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.health().is_up() {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// This node's broker id.
    pub fn broker_id(&self) -> &str {
        &self.broker_id
    }

    /// This node's queue, `{routingKeyPrefix}{brokerId}`, which is also its routing key.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// Stops consuming (after acknowledging what was delivered), closes both connections and
    /// waits for the background tasks to end. Publishing fails afterwards.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        let tasks = std::mem::take(&mut *self.tasks.lock());
        for task in tasks {
            let _ = task.await;
        }
    }

    fn publish_to(
        &self,
        routing_key: String,
        envelope: &Envelope,
    ) -> BoxFuture<'static, Result<(), BoxError>> {
        let body = self.wire.encode_broker(envelope);
        let mut properties = link::json_properties();
        if let Some(id) = &envelope.request_id {
            properties = properties.with_message_id(id.as_str().into());
        }
        let publisher = self.publisher.clone();
        Box::pin(async move {
            publisher
                .publish(&routing_key, &body, properties)
                .await
                .map_err(BoxError::from)
        })
    }
}

impl Broker for RabbitBroker {
    fn publish(&self, kind: Kind, envelope: Envelope) -> BoxFuture<'static, Result<(), BoxError>> {
        let routing_key = format!("{}{}", self.upstream_prefix, kind.snake_name());
        self.publish_to(routing_key, &envelope)
    }

    fn send_to_node(
        &self,
        broker_id: &str,
        envelope: Envelope,
    ) -> BoxFuture<'static, Result<(), BoxError>> {
        let routing_key = format!("{}{broker_id}", self.routing_key_prefix);
        self.publish_to(routing_key, &envelope)
    }

    fn health(&self) -> Health {
        match link::combined_health(&[self.publisher.link(), &self.consumer]) {
            Health::Up if self.publisher.blocked() => Health::Down(publisher::BLOCKED.into()),
            health => health,
        }
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.shutdown())
    }
}

impl Drop for RabbitBroker {
    fn drop(&mut self) {
        // The supervisors close their connections when they see this.
        self.cancel.cancel();
    }
}

impl fmt::Debug for RabbitBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitBroker")
            .field("broker_id", &self.broker_id)
            .field("queue", &self.queue)
            .field("publisher", &self.publisher)
            .field("consumer_up", &self.consumer.is_up())
            .finish_non_exhaustive()
    }
}

fn spawn_publisher(
    publisher: &Publisher,
    recover: bool,
    cancel: &CancellationToken,
) -> JoinHandle<()> {
    let (publisher, cancel) = (publisher.clone(), cancel.clone());
    let link = publisher.link().clone();
    tokio::spawn(link::supervise(link, recover, cancel.clone(), move || {
        let (publisher, cancel) = (publisher.clone(), cancel.clone());
        async move { publisher.session(&cancel).await }
    }))
}

fn spawn_consumer(
    consumer: &Arc<NodeConsumer>,
    recover: bool,
    cancel: &CancellationToken,
) -> JoinHandle<()> {
    let (consumer, cancel) = (consumer.clone(), cancel.clone());
    let link = consumer.link.clone();
    tokio::spawn(link::supervise(link, recover, cancel.clone(), move || {
        let (consumer, cancel) = (consumer.clone(), cancel.clone());
        async move { consumer.session(&cancel).await }
    }))
}

/// Rejects settings that could never work, naming the key.
fn validate(config: &RabbitMqConfig, broker_id: &str) -> Result<(), BrokerError> {
    let bad = |message: String| Err(BrokerError::Config(message));
    if config.exchange.is_empty() {
        return bad("rabbitmq.exchange must not be empty".into());
    }
    if config.error_queue.is_empty() {
        return bad("rabbitmq.errorQueue must not be empty".into());
    }
    if broker_id.is_empty() {
        return bad("the broker id must not be empty".into());
    }
    if config.prefetch == 0 {
        // 0 means "unlimited" to AMQP, which would let a backlog flood memory.
        return bad("rabbitmq.prefetch must be at least 1".into());
    }
    let queue_len = config.routing_key_prefix.len() + broker_id.len();
    let longest_kind = Kind::ALL
        .iter()
        .map(|k| k.snake_name().len())
        .max()
        .unwrap_or(0);
    if queue_len > MAX_NAME_LEN || config.upstream_prefix.len() + longest_kind > MAX_NAME_LEN {
        return bad(format!(
            "rabbitmq.routingKeyPrefix or upstreamPrefix: names over {MAX_NAME_LEN} bytes"
        ));
    }
    Ok(())
}

/// This node's broker id: `config_broker_id` when set (and not blank), else one derived from
/// the machine and the first WebSocket port, so a restarted node finds its queue again.
///
/// The derived id is `{hostname}-{hash}-{port}`: `hash` is eight hex digits of a hash of
/// `/etc/machine-id` (hashed, as systemd asks, because the raw id is meant to stay private)
/// and the hostname. Containers built from one image often share a machine id but not a
/// hostname, so both go in. Without either, the id is `im-connect-{port}`.
pub fn broker_id_from(config_broker_id: Option<&str>, first_ws_port: u16) -> String {
    if let Some(id) = config_broker_id.map(str::trim).filter(|id| !id.is_empty()) {
        return id.to_string();
    }
    let machine_id = ["/etc/machine-id", "/var/lib/dbus/machine-id"]
        .iter()
        .find_map(|path| read_trimmed(path));
    let hostname = read_trimmed("/proc/sys/kernel/hostname")
        .or_else(|| read_trimmed("/etc/hostname"))
        .or_else(|| {
            std::env::var("HOSTNAME")
                .ok()
                .filter(|h| !h.trim().is_empty())
        })
        .map(|h| sanitize(&h));
    derive_broker_id(machine_id.as_deref(), hostname.as_deref(), first_ws_port)
}

fn derive_broker_id(machine_id: Option<&str>, hostname: Option<&str>, port: u16) -> String {
    if machine_id.is_none() && hostname.is_none() {
        return format!("im-connect-{port}");
    }
    let seed = format!(
        "im-connect\0{}\0{}",
        machine_id.unwrap_or(""),
        hostname.unwrap_or("")
    );
    let hash = fnv1a(seed.as_bytes()) as u32;
    format!("{}-{hash:08x}-{port}", hostname.unwrap_or("node"))
}

fn read_trimmed(path: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

/// Keeps characters that are safe in queue names and log lines; the rest become `-`.
fn sanitize(name: &str) -> String {
    name.trim()
        .chars()
        .take(64)
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '_' | '.' => c,
            _ => '-',
        })
        .collect()
}

/// 64-bit FNV-1a: a hash whose value is fixed forever, unlike `std`'s hashers, so the derived
/// id survives a compiler upgrade.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_broker_id_wins_and_blank_is_ignored() {
        assert_eq!(broker_id_from(Some(" node-a "), 19000), "node-a");
        let derived = broker_id_from(Some("  "), 19000);
        assert!(derived.ends_with("-19000"), "{derived}");
        assert_eq!(
            derived,
            broker_id_from(None, 19000),
            "derived ids are stable"
        );
    }

    #[test]
    fn derived_broker_id_depends_on_machine_host_and_port() {
        let a = derive_broker_id(Some("abc"), Some("host"), 19000);
        assert_eq!(a, derive_broker_id(Some("abc"), Some("host"), 19000));
        assert!(a.starts_with("host-") && a.ends_with("-19000"), "{a}");
        assert_ne!(a, derive_broker_id(Some("abd"), Some("host"), 19000));
        assert_ne!(a, derive_broker_id(Some("abc"), Some("host"), 19001));
        assert_ne!(a, derive_broker_id(Some("abc"), Some("other"), 19000));
        assert!(!a.contains("abc"), "the machine id itself never shows");
        assert_eq!(derive_broker_id(None, None, 9), "im-connect-9");
    }

    #[test]
    fn fnv_matches_reference_values() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn hostnames_are_sanitized() {
        assert_eq!(sanitize("my host/1"), "my-host-1");
    }

    #[test]
    fn validation_names_the_key() {
        let mut config = RabbitMqConfig::default();
        assert!(validate(&config, "n1").is_ok());
        config.prefetch = 0;
        let err = validate(&config, "n1").unwrap_err().to_string();
        assert!(err.contains("rabbitmq.prefetch"), "{err}");
        config.prefetch = 1;
        config.exchange.clear();
        let err = validate(&config, "n1").unwrap_err().to_string();
        assert!(err.contains("rabbitmq.exchange"), "{err}");
    }
}
