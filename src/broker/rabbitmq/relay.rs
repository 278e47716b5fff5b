//! The reference backend: routes upstream messages to the nodes holding their targets.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::Channel;
use parking_lot::Mutex;
use serde_json::Value;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use super::link::{self, unavailable, Endpoint, LinkState};
use super::publisher::Publisher;
use super::BrokerError;
use crate::backend::Health;
use crate::config::RabbitMqConfig;
use crate::protocol::Kind;
use crate::route::RouteStore;

/// How long a message whose routing failed for a transient reason (route store or broker
/// down) waits before it is handed back to RabbitMQ, so an outage does not spin.
const RETRY_DELAY: Duration = Duration::from_secs(1);
/// How long shutdown waits for messages being routed.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Settings of a [`Relay`].
#[derive(Clone)]
pub struct RelayConfig {
    /// AMQP URI (`amqp://user:password@host:port/vhost`); never logged.
    pub uri: String,
    /// The gateways' exchange.
    pub exchange: String,
    /// The gateways' `routingKeyPrefix`: node queues are `{prefix}{brokerId}`.
    pub routing_key_prefix: String,
    /// The gateways' `upstreamPrefix`: upstream keys are `{prefix}{kind}`.
    pub upstream_prefix: String,
    /// The relay's own durable queue, bound to the upstream key of every business kind.
    pub queue: String,
    /// Where unparseable upstream messages go.
    pub error_queue: String,
    /// Messages routed at once.
    pub prefetch: u16,
    /// Connect deadline.
    pub connection_timeout: Duration,
    /// Publisher confirm deadline.
    pub confirm_timeout: Duration,
}

impl RelayConfig {
    /// The default name of the relay's queue.
    pub const DEFAULT_QUEUE: &'static str = "im.relay";

    /// A relay for gateways configured with `config`, consuming from
    /// [`RelayConfig::DEFAULT_QUEUE`].
    pub fn new(config: &RabbitMqConfig) -> Self {
        RelayConfig {
            uri: config.uri(),
            exchange: config.exchange.clone(),
            routing_key_prefix: config.routing_key_prefix.clone(),
            upstream_prefix: config.upstream_prefix.clone(),
            queue: Self::DEFAULT_QUEUE.to_string(),
            error_queue: config.error_queue.clone(),
            prefetch: config.prefetch.max(1),
            connection_timeout: Duration::from_millis(config.connection_timeout.max(1)),
            confirm_timeout: Duration::from_millis(config.confirm_timeout_ms.max(1)),
        }
    }

    /// The upstream routing keys the relay's queue is bound to: one per business kind.
    pub fn upstream_keys(&self) -> Vec<String> {
        Kind::ALL
            .into_iter()
            .filter(|kind| kind.is_business())
            .map(|kind| format!("{}{}", self.upstream_prefix, kind.snake_name()))
            .collect()
    }
}

impl fmt::Debug for RelayConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayConfig")
            .field("exchange", &self.exchange)
            .field("routing_key_prefix", &self.routing_key_prefix)
            .field("upstream_prefix", &self.upstream_prefix)
            .field("queue", &self.queue)
            .field("error_queue", &self.error_queue)
            .field("prefetch", &self.prefetch)
            .finish_non_exhaustive()
    }
}

/// A minimal backend: consumes every upstream business message and republishes it to the
/// queue of each node that holds one of its target users, with `ids` narrowed to the users on
/// that node.
///
/// Targets are the message's `ids`; where they are is read from the route store (every
/// driver's `brokerId`, or the record's top-level `brokerId` when it has no drivers). A target
/// with no route record is offline and skipped: a real backend would store the message for
/// later. A group message is routed to the ids it names; expanding a group into its members
/// is a real backend's job. Messages are acknowledged after every node's copy was confirmed;
/// a copy for a node whose queue is gone is dropped with a warning.
///
/// The `relay_backend` example runs one from the command line.
pub struct Relay {
    publisher: Publisher,
    consumer: Arc<LinkState>,
    stats: Arc<Stats>,
    cancel: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

#[derive(Debug, Default)]
struct Stats {
    routed: AtomicU64,
    copies: AtomicU64,
}

struct Router {
    config: RelayConfig,
    routes: Arc<dyn RouteStore>,
    publisher: Publisher,
    endpoint: Arc<Endpoint>,
    link: Arc<LinkState>,
    stats: Arc<Stats>,
}

/// Why one message could not be routed.
enum Failure {
    /// It never will be: it goes to the error queue.
    Malformed(String),
    /// It may be later: it goes back to RabbitMQ.
    Retry(String),
}

impl Relay {
    /// Connects, declares the relay's queue and bindings, and starts routing. Like
    /// [`RabbitBroker::start`](super::RabbitBroker::start) it returns while RabbitMQ is down
    /// and keeps retrying.
    pub async fn start(
        config: RelayConfig,
        routes: Arc<dyn RouteStore>,
    ) -> Result<Relay, BrokerError> {
        if config.exchange.is_empty() || config.queue.is_empty() || config.error_queue.is_empty() {
            return Err(BrokerError::Config(
                "the relay needs an exchange, a queue and an error queue".into(),
            ));
        }
        let endpoint = Arc::new(Endpoint::new(
            &config.uri,
            config.connection_timeout,
            format!("im-relay {}", config.queue),
        )?);
        let publisher = Publisher::new(
            endpoint.clone(),
            config.exchange.clone(),
            config.confirm_timeout,
        );
        let stats = Arc::new(Stats::default());
        let connect_timeout = config.connection_timeout;
        let router = Arc::new(Router {
            config,
            routes,
            publisher: publisher.clone(),
            endpoint,
            link: LinkState::new("relay consumer"),
            stats: stats.clone(),
        });

        let cancel = CancellationToken::new();
        let publishing = {
            let (publisher, cancel) = (publisher.clone(), cancel.clone());
            let link = publisher.link().clone();
            tokio::spawn(link::supervise(link, true, cancel.clone(), move || {
                let (publisher, cancel) = (publisher.clone(), cancel.clone());
                async move { publisher.session(&cancel).await }
            }))
        };
        let consuming = {
            let (router, cancel) = (router.clone(), cancel.clone());
            let link = router.link.clone();
            tokio::spawn(link::supervise(link, true, cancel.clone(), move || {
                let (router, cancel) = (router.clone(), cancel.clone());
                async move { router.session(&cancel).await }
            }))
        };

        let relay = Relay {
            publisher,
            consumer: router.link.clone(),
            stats,
            cancel,
            tasks: Mutex::new(vec![publishing, consuming]),
        };
        let first = async {
            relay.publisher.link().first_attempt().await;
            relay.consumer.first_attempt().await;
        };
        let _ = tokio::time::timeout(connect_timeout * 2 + Duration::from_secs(1), first).await;
        tracing::info!(
            relay.queue = %router.config.queue,
            up = relay.health().is_up(),
            "relay started"
        );
        Ok(relay)
    }

    /// Whether both connections are up.
    pub fn health(&self) -> Health {
        link::combined_health(&[self.publisher.link(), &self.consumer])
    }

    /// Upstream messages routed so far (including those whose targets were all offline).
    pub fn routed_total(&self) -> u64 {
        self.stats.routed.load(Ordering::Relaxed)
    }

    /// Copies published to node queues so far.
    pub fn copies_total(&self) -> u64 {
        self.stats.copies.load(Ordering::Relaxed)
    }

    /// Stops consuming, lets messages in flight finish (a few seconds at most), closes the
    /// connections and waits for the background tasks.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        let tasks = std::mem::take(&mut *self.tasks.lock());
        for task in tasks {
            let _ = task.await;
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl fmt::Debug for Relay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Relay")
            .field("publisher", &self.publisher)
            .field("consumer_up", &self.consumer.is_up())
            .field("routed", &self.routed_total())
            .finish_non_exhaustive()
    }
}

impl Router {
    async fn session(self: &Arc<Self>, cancel: &CancellationToken) -> Result<(), BrokerError> {
        let config = &self.config;
        let setup = async {
            let conn = self.endpoint.connect("relay consume").await?;
            let channel = conn.create_channel().await.map_err(unavailable)?;
            let consumer = async {
                channel
                    .basic_qos(config.prefetch, BasicQosOptions::default())
                    .await?;
                channel
                    .confirm_select(ConfirmSelectOptions::default())
                    .await?;
                link::declare_exchange(&channel, &config.exchange).await?;
                let keys = config.upstream_keys();
                link::declare_queue(&channel, &config.queue, None, &config.exchange, &keys).await?;
                link::declare_queue(&channel, &config.error_queue, None, &config.exchange, &[])
                    .await?;
                channel
                    .basic_consume(
                        config.queue.as_str().into(),
                        "im-relay".into(),
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await
            }
            .await
            .map_err(unavailable)?;
            Ok::<_, BrokerError>((conn, channel, consumer))
        };
        let timed_out = || BrokerError::Unavailable("setting up the relay timed out".into());
        let (conn, channel, mut consumer) = tokio::select! {
            result = tokio::time::timeout(self.endpoint.timeout() * 2, setup) => {
                result.map_err(|_| timed_out())??
            }
            _ = cancel.cancelled() => return Ok(()),
        };
        self.link.set_up();

        let cancelled = || BrokerError::Unavailable("the broker cancelled the consumer".into());
        // Prefetch bounds the messages in flight, so one task per message is bounded too.
        let mut in_flight = JoinSet::new();
        let ended = loop {
            tokio::select! {
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        in_flight.spawn(self.clone().relay_one(channel.clone(), delivery));
                    }
                    Some(Err(e)) => break Err(unavailable(e)),
                    None => break Err(cancelled()),
                },
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
                _ = cancel.cancelled() => break Ok(()),
            }
        };
        if ended.is_ok() {
            let drain = async { while in_flight.join_next().await.is_some() {} };
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, drain).await;
            link::close(&conn).await;
        }
        ended
    }

    async fn relay_one(self: Arc<Self>, channel: Channel, delivery: lapin::message::Delivery) {
        let outcome = match self.route(&delivery.data).await {
            Ok(()) => Ok(()),
            Err(Failure::Malformed(reason)) => {
                tracing::warn!(%reason, "unroutable upstream message moved to the error queue");
                let timeout = self.config.confirm_timeout;
                link::to_error_queue(
                    &channel,
                    &self.config.error_queue,
                    &delivery,
                    &reason,
                    timeout,
                )
                .await
                .map_err(|e| e.to_string())
            }
            Err(Failure::Retry(reason)) => Err(reason),
        };
        let acked = match outcome {
            Ok(()) => delivery.acker.ack(BasicAckOptions::default()).await,
            Err(reason) => {
                tracing::warn!(%reason, "routing failed, the message goes back to the queue");
                tokio::time::sleep(RETRY_DELAY).await;
                let requeue = BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                };
                delivery.acker.nack(requeue).await
            }
        };
        // A failed ack means the channel is gone; RabbitMQ redelivers the message and the
        // gateways' de-duplication absorbs the copies already sent.
        if let Err(error) = acked {
            tracing::debug!(%error, "could not settle an upstream message");
        }
    }

    async fn route(&self, body: &[u8]) -> Result<(), Failure> {
        let mut message: Value = serde_json::from_slice(body)
            .map_err(|e| Failure::Malformed(format!("not a JSON envelope: {e}")))?;
        let ids = target_ids(&message)?;
        let nodes = self.nodes_of(&ids).await?;
        if nodes.is_empty() {
            tracing::debug!(targets = ids.len(), "no target online");
        }

        for (node, users) in nodes {
            message["ids"] = Value::from(users.into_iter().collect::<Vec<_>>());
            let body = serde_json::to_vec(&message).expect("a JSON value serializes");
            let routing_key = format!("{}{node}", self.config.routing_key_prefix);
            match self
                .publisher
                .publish(&routing_key, &body, link::json_properties())
                .await
            {
                Ok(()) => {
                    self.stats.copies.fetch_add(1, Ordering::Relaxed);
                }
                Err(BrokerError::Unroutable(_)) => {
                    tracing::warn!(broker.id = %node, "node queue is gone, its copy is dropped");
                }
                Err(e) => return Err(Failure::Retry(e.to_string())),
            }
        }
        self.stats.routed.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The nodes holding any of `ids`, each with the users it holds.
    async fn nodes_of(
        &self,
        ids: &[String],
    ) -> Result<BTreeMap<String, BTreeSet<String>>, Failure> {
        let lookups = ids.iter().map(|id| self.routes.lookup(id));
        let records = futures_util::future::join_all(lookups).await;

        let mut nodes: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (id, record) in ids.iter().zip(records) {
            let record = record.map_err(|e| Failure::Retry(format!("route store: {e}")))?;
            let Some(record) = record else { continue };
            let mut holders: BTreeSet<&str> = record
                .drivers
                .values()
                .map(|driver| driver.broker_id.as_str())
                .collect();
            if holders.is_empty() {
                holders.insert(record.broker_id.as_str());
            }
            for node in holders.into_iter().filter(|node| !node.is_empty()) {
                nodes
                    .entry(node.to_string())
                    .or_default()
                    .insert(id.clone());
            }
        }
        Ok(nodes)
    }
}

/// The target users of an upstream message: its `ids`, numbers read as their decimal text.
fn target_ids(message: &Value) -> Result<Vec<String>, Failure> {
    let Some(object) = message.as_object() else {
        return Err(Failure::Malformed(
            "the envelope is not a JSON object".into(),
        ));
    };
    let ids: Vec<String> = match object.get("ids") {
        Some(Value::Array(ids)) => ids
            .iter()
            .filter_map(|id| match id {
                Value::String(s) if !s.is_empty() => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if ids.is_empty() {
        return Err(Failure::Malformed("no target ids".into()));
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_ids_accept_strings_and_numbers() {
        let message = serde_json::json!({"code": 3, "ids": ["a", 42, "", null]});
        let ids = target_ids(&message).ok().unwrap();
        assert_eq!(ids, vec!["a".to_string(), "42".to_string()]);
    }

    #[test]
    fn messages_without_targets_are_malformed() {
        for message in [serde_json::json!({"code": 3}), serde_json::json!([1])] {
            assert!(matches!(target_ids(&message), Err(Failure::Malformed(_))));
        }
    }

    #[test]
    fn relay_binds_every_business_kind() {
        let config = RelayConfig::new(&RabbitMqConfig::default());
        let keys = config.upstream_keys();
        assert_eq!(keys.len(), 5);
        assert!(keys.contains(&format!("{}single_message", config.upstream_prefix)));
    }
}
