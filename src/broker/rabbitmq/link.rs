//! Connecting to RabbitMQ, keeping a connection alive, and the topology, shared by the
//! gateway's publisher and consumer and by the reference relay.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Event};
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::BrokerError;
use crate::backend::Health;

/// AMQP heartbeat we ask for, in seconds: a broker that vanished without closing the socket
/// is noticed within two of them, not after the server default of a minute.
const HEARTBEAT_SECS: u16 = 10;
/// First reconnect delay; it doubles up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest reconnect delay.
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How often a live connection's status is polled, besides its error events.
const STATUS_POLL: Duration = Duration::from_millis(500);

/// `delivery_mode` of a persistent message.
pub(super) const PERSISTENT: u8 = 2;

/// Where to connect and how long to try: the parsed URI, never printed whole because it holds
/// the password.
pub(super) struct Endpoint {
    uri: AMQPUri,
    timeout: Duration,
    name: String,
}

impl Endpoint {
    /// Parses `uri`; `name` labels the connections in RabbitMQ's connection list.
    pub(super) fn new(uri: &str, timeout: Duration, name: String) -> Result<Self, BrokerError> {
        let mut uri: AMQPUri = uri
            .parse()
            .map_err(|e: String| BrokerError::Config(format!("invalid AMQP URI: {e}")))?;
        uri.query.heartbeat.get_or_insert(HEARTBEAT_SECS);
        uri.query
            .connection_timeout
            .get_or_insert(timeout.as_millis() as u64);
        Ok(Endpoint { uri, timeout, name })
    }

    /// The connect deadline, which also bounds declaring the topology.
    pub(super) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Opens a connection for `role` (`publish`, `consume`), within the connect deadline.
    pub(super) async fn connect(&self, role: &str) -> Result<Connection, BrokerError> {
        let name = format!("{} {role}", self.name);
        let props = ConnectionProperties::default().with_connection_name(name.into());
        let connect = Connection::connect_uri(self.uri.clone(), props);
        match tokio::time::timeout(self.timeout, connect).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(unavailable(e)),
            Err(_) => Err(BrokerError::Unavailable(format!(
                "connecting timed out after {:?}",
                self.timeout
            ))),
        }
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let auth = &self.uri.authority;
        f.debug_struct("Endpoint")
            .field("host", &auth.host)
            .field("port", &auth.port)
            .field("user", &auth.userinfo.username)
            .field("vhost", &self.uri.vhost)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A lapin failure, as the outage it means to us.
pub(super) fn unavailable(e: lapin::Error) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}

/// Whether one AMQP link (the publishing or the consuming connection) is working, for
/// readiness, plus a count of connection attempts so start-up can wait for the first one.
#[derive(Debug)]
pub(super) struct LinkState {
    role: &'static str,
    up: AtomicBool,
    reason: Mutex<String>,
    attempts: watch::Sender<u64>,
}

impl LinkState {
    /// A link that has not connected yet.
    pub(super) fn new(role: &'static str) -> Arc<Self> {
        Arc::new(LinkState {
            role,
            up: AtomicBool::new(false),
            reason: Mutex::new("not connected yet".into()),
            attempts: watch::Sender::new(0),
        })
    }

    /// Records a working link.
    pub(super) fn set_up(&self) {
        tracing::info!(rabbitmq.role = self.role, "rabbitmq connected");
        self.up.store(true, Ordering::Release);
        self.attempts.send_modify(|n| *n += 1);
    }

    /// Records a failed or lost link; returns whether it was up.
    pub(super) fn set_down(&self, reason: impl Into<String>) -> bool {
        *self.reason.lock() = reason.into();
        let was_up = self.up.swap(false, Ordering::AcqRel);
        self.attempts.send_modify(|n| *n += 1);
        was_up
    }

    /// True while connected.
    pub(super) fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Readiness of this link.
    pub(super) fn health(&self) -> Health {
        if self.is_up() {
            Health::Up
        } else {
            Health::Down(format!("rabbitmq {}: {}", self.role, self.reason.lock()))
        }
    }

    /// Why the link is down (meaningless while it is up).
    pub(super) fn reason(&self) -> String {
        self.reason.lock().clone()
    }

    /// Waits until the first connection attempt has succeeded or failed.
    pub(super) async fn first_attempt(&self) {
        let mut rx = self.attempts.subscribe();
        let _ = rx.wait_for(|n| *n > 0).await;
    }
}

/// Combined readiness of several links: up only when all are.
pub(super) fn combined_health(links: &[&LinkState]) -> Health {
    let down: Vec<String> = links
        .iter()
        .filter_map(|link| match link.health() {
            Health::Up => None,
            Health::Down(why) => Some(why),
        })
        .collect();
    if down.is_empty() {
        Health::Up
    } else {
        Health::Down(down.join("; "))
    }
}

/// Exponential reconnect delay with jitter, so a fleet of nodes does not reconnect in step
/// after a broker restart.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Self {
        Backoff { next: BACKOFF_MIN }
    }

    fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }

    fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (base * 2).min(BACKOFF_MAX);
        // Between half and all of the base delay.
        base / 2 + base.mul_f64(rand::random::<f64>() / 2.0)
    }
}

/// Runs `session` (connect, set up, work until the link is lost) again and again, with
/// backoff between attempts, until `cancel` fires.
///
/// A session returns `Ok(())` when it was cancelled and has closed cleanly, and the error that
/// ended it otherwise; it calls [`LinkState::set_up`] once it is ready. Without `recover` a
/// link that was up and is lost stays down (the first connection is still retried: a node
/// must be able to start before its broker).
pub(super) async fn supervise<F, Fut>(
    link: Arc<LinkState>,
    recover: bool,
    cancel: CancellationToken,
    mut session: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), BrokerError>>,
{
    let role = link.role;
    let mut backoff = Backoff::new();
    let mut failures = 0u32;
    loop {
        match session().await {
            Ok(()) => {
                link.set_down("closed");
                return;
            }
            Err(error) if link.set_down(error.to_string()) => {
                tracing::warn!(rabbitmq.role = role, %error, "rabbitmq connection lost");
                if !recover {
                    tracing::warn!(
                        rabbitmq.role = role,
                        "rabbitmq.automaticRecovery is off: not reconnecting"
                    );
                    return;
                }
                backoff.reset();
                failures = 0;
            }
            Err(error) => {
                failures += 1;
                // One warning per outage; the retries that follow are debug noise.
                if failures == 1 {
                    tracing::warn!(rabbitmq.role = role, %error, "cannot connect to rabbitmq");
                } else {
                    tracing::debug!(rabbitmq.role = role, %error, failures, "still unreachable");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = cancel.cancelled() => {
                link.set_down("closed");
                return;
            }
        }
    }
}

/// Resolves with the reason once `conn` (or `channel`, whose loss leaves the connection
/// useless to us) stops working.
pub(super) async fn lost(conn: &Connection, channel: &Channel) -> String {
    let mut events = std::pin::pin!(conn.events_listener());
    let mut poll = tokio::time::interval(STATUS_POLL);
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Event::Error(e)) => return e.to_string(),
                Some(_) => {}
                None => return "connection closed".into(),
            },
            _ = poll.tick() => {
                if !conn.status().connected() {
                    return "connection closed".into();
                }
                if !channel.status().connected() {
                    return "channel closed".into();
                }
            }
        }
    }
}

/// Closes `conn` politely; a connection that is already gone needs nothing.
pub(super) async fn close(conn: &Connection) {
    if conn.status().connected() {
        let _ = conn.close(200, "shutting down".into()).await;
    }
}

/// Declares the durable direct exchange.
pub(super) async fn declare_exchange(channel: &Channel, exchange: &str) -> lapin::Result<()> {
    let options = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            exchange.into(),
            lapin::ExchangeKind::Direct,
            options,
            FieldTable::default(),
        )
        .await
}

/// Declares a durable queue (with `x-expires` when given) and binds it to `exchange` under
/// each of `keys`.
pub(super) async fn declare_queue(
    channel: &Channel,
    queue: &str,
    expires_ms: Option<u64>,
    exchange: &str,
    keys: &[String],
) -> lapin::Result<()> {
    let mut args = FieldTable::default();
    if let Some(ms) = expires_ms {
        args.insert("x-expires".into(), AMQPValue::LongLongInt(ms as i64));
    }
    let options = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel.queue_declare(queue.into(), options, args).await?;
    for key in keys {
        channel
            .queue_bind(
                queue.into(),
                exchange.into(),
                key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

/// Properties of everything we publish: persistent JSON.
pub(super) fn json_properties() -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_content_type("application/json".into())
}

/// Publishes `body` on `channel` (in confirm mode) and waits for the broker's verdict.
///
/// `mandatory` is set, so a message no queue is bound for comes back as
/// [`BrokerError::Unroutable`] instead of vanishing behind a positive confirm.
pub(super) async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
    timeout: Duration,
) -> Result<(), BrokerError> {
    let options = BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    };
    let confirmed = async {
        channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                options,
                body,
                properties,
            )
            .await?
            .await
    };
    match tokio::time::timeout(timeout, confirmed).await {
        Err(_) => Err(BrokerError::ConfirmTimeout(timeout)),
        Ok(Err(e)) => Err(unavailable(e)),
        Ok(Ok(Confirmation::Ack(None))) => Ok(()),
        Ok(Ok(Confirmation::Ack(Some(_)))) => Err(BrokerError::Unroutable(routing_key.to_string())),
        Ok(Ok(Confirmation::Nack(_))) => Err(BrokerError::Nacked),
        Ok(Ok(Confirmation::NotRequested)) => Err(BrokerError::Unavailable(
            "the channel is not in confirm mode".into(),
        )),
    }
}

/// Header naming why a message went to the error queue.
pub(super) const ERROR_REASON_HEADER: &str = "x-error-reason";
/// Header carrying the routing key the failed message arrived with.
pub(super) const ORIGINAL_ROUTING_KEY_HEADER: &str = "x-original-routing-key";
/// Header carrying the exchange the failed message arrived through.
pub(super) const ORIGINAL_EXCHANGE_HEADER: &str = "x-original-exchange";

/// Parks an unusable message in `error_queue` (through the default exchange) with headers
/// saying why and where it came from, and waits for the confirm.
pub(super) async fn to_error_queue(
    channel: &Channel,
    error_queue: &str,
    delivery: &lapin::message::Delivery,
    reason: &str,
    timeout: Duration,
) -> Result<(), BrokerError> {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    let mut put = |key: &str, value: &str| {
        let key: ShortString = key.into();
        let value: LongString = value.into();
        headers.insert(key, AMQPValue::LongString(value));
    };
    put(ERROR_REASON_HEADER, reason);
    put(ORIGINAL_ROUTING_KEY_HEADER, delivery.routing_key.as_str());
    put(ORIGINAL_EXCHANGE_HEADER, delivery.exchange.as_str());

    let mut properties = BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_headers(headers);
    if let Some(content_type) = delivery.properties.content_type() {
        properties = properties.with_content_type(content_type.clone());
    }
    publish_confirmed(
        channel,
        "",
        error_queue,
        &delivery.data,
        properties,
        timeout,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap_and_resets() {
        let mut backoff = Backoff::new();
        let first = backoff.next_delay();
        assert!(first <= BACKOFF_MIN && first >= BACKOFF_MIN / 2);
        for _ in 0..20 {
            assert!(backoff.next_delay() <= BACKOFF_MAX);
        }
        assert!(backoff.next_delay() >= BACKOFF_MAX / 2);
        backoff.reset();
        assert!(backoff.next_delay() <= BACKOFF_MIN);
    }

    #[test]
    fn endpoint_debug_hides_the_password() {
        let endpoint = Endpoint::new(
            "amqp://guest:s3cret@127.0.0.1:5672/%2f",
            Duration::from_secs(1),
            "test".into(),
        )
        .unwrap();
        let shown = format!("{endpoint:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("127.0.0.1"));
    }

    #[test]
    fn link_health_says_which_link_is_down() {
        let publish = LinkState::new("publisher");
        let consume = LinkState::new("consumer");
        publish.set_up();
        consume.set_down("connection refused");
        let health = combined_health(&[&publish, &consume]);
        assert_eq!(
            health,
            Health::Down("rabbitmq consumer: connection refused".into())
        );
        consume.set_up();
        assert!(combined_health(&[&publish, &consume]).is_up());
    }
}
