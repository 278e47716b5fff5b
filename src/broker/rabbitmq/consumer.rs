//! The consuming link: this node's queue, drained into [`Delivery`] with manual acks.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{Acker, Channel, Consumer};
use tokio_util::sync::CancellationToken;

use super::link::{self, unavailable, Endpoint, LinkState};
use super::BrokerError;
use crate::broker::Delivery;
use crate::protocol::Wire;

/// What the node consumer needs to know; one per [`RabbitBroker`](super::RabbitBroker).
pub(super) struct NodeConsumer {
    pub(super) endpoint: Arc<Endpoint>,
    pub(super) exchange: String,
    pub(super) queue: String,
    pub(super) error_queue: String,
    pub(super) queue_expires_ms: u64,
    pub(super) prefetch: u16,
    pub(super) confirm_timeout: Duration,
    pub(super) wire: Wire,
    pub(super) delivery: Arc<Delivery>,
    pub(super) link: Arc<LinkState>,
}

/// Deliveries handled but not yet acknowledged: acks are sent as one `multiple` ack when the
/// queue momentarily runs dry or half the prefetch window is used, instead of one frame per
/// message.
struct PendingAck {
    last: Option<Acker>,
    count: usize,
    every: usize,
}

impl PendingAck {
    fn push(&mut self, acker: Acker) {
        self.last = Some(acker);
        self.count += 1;
    }

    fn is_due(&self) -> bool {
        self.count >= self.every
    }

    async fn flush(&mut self) -> Result<(), BrokerError> {
        let Some(acker) = self.last.take() else {
            return Ok(());
        };
        self.count = 0;
        let multiple = BasicAckOptions { multiple: true };
        match acker.ack(multiple).await {
            Ok(true) => Ok(()),
            // The channel died under us: the broker requeues what we could not ack.
            Ok(false) => Err(BrokerError::Unavailable(
                "channel closed before the ack".into(),
            )),
            Err(e) => Err(unavailable(e)),
        }
    }
}

impl NodeConsumer {
    /// One connection's life: connect, declare the topology, consume until the connection is
    /// lost (`Err`) or `cancel` fires (`Ok`, after acking what was handled and closing).
    pub(super) async fn session(&self, cancel: &CancellationToken) -> Result<(), BrokerError> {
        let setup = async {
            let conn = self.endpoint.connect("consume").await?;
            let channel = conn.create_channel().await.map_err(unavailable)?;
            let consumer = self
                .declare_and_consume(&channel)
                .await
                .map_err(unavailable)?;
            Ok::<_, BrokerError>((conn, channel, consumer))
        };
        let timed_out = || BrokerError::Unavailable("setting up the consumer timed out".into());
        let (conn, channel, mut consumer) = tokio::select! {
            result = tokio::time::timeout(self.endpoint.timeout() * 2, setup) => {
                result.map_err(|_| timed_out())??
            }
            _ = cancel.cancelled() => return Ok(()),
        };

        self.link.set_up();
        let result = self.consume(&channel, &mut consumer, cancel).await;
        if result.is_ok() {
            link::close(&conn).await;
        }
        result
    }

    async fn declare_and_consume(&self, channel: &Channel) -> lapin::Result<Consumer> {
        channel
            .basic_qos(self.prefetch, BasicQosOptions::default())
            .await?;
        // Confirms only matter for parking bad messages in the error queue.
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        link::declare_exchange(channel, &self.exchange).await?;
        let binding = [self.queue.clone()];
        let expires = Some(self.queue_expires_ms);
        link::declare_queue(channel, &self.queue, expires, &self.exchange, &binding).await?;
        link::declare_queue(channel, &self.error_queue, None, &self.exchange, &[]).await?;
        channel
            .basic_consume(
                self.queue.as_str().into(),
                "im-connect".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
    }

    async fn consume(
        &self,
        channel: &Channel,
        consumer: &mut Consumer,
        cancel: &CancellationToken,
    ) -> Result<(), BrokerError> {
        let mut pending = PendingAck {
            last: None,
            count: 0,
            every: usize::from(self.prefetch / 2).max(1),
        };
        loop {
            if cancel.is_cancelled() {
                return pending.flush().await;
            }
            let next = match consumer.next().now_or_never() {
                Some(next) => next,
                None => {
                    pending.flush().await?;
                    tokio::select! {
                        next = consumer.next() => next,
                        _ = cancel.cancelled() => return Ok(()),
                    }
                }
            };
            let delivery = match next {
                Some(Ok(delivery)) => delivery,
                Some(Err(e)) => return Err(unavailable(e)),
                None => {
                    return Err(BrokerError::Unavailable(
                        "the broker cancelled the consumer".into(),
                    ))
                }
            };

            self.handle(channel, &delivery).await?;
            pending.push(delivery.acker);
            if pending.is_due() {
                pending.flush().await?;
            }
        }
    }

    /// Delivers one message, or parks it in the error queue when it does not parse. Only
    /// queues into outboxes, so the consumer never waits on a client.
    async fn handle(
        &self,
        channel: &Channel,
        delivery: &lapin::message::Delivery,
    ) -> Result<(), BrokerError> {
        match self.wire.decode_broker(&delivery.data) {
            Ok(envelope) => {
                let report = self.delivery.deliver(envelope);
                tracing::trace!(
                    delivered = report.delivered,
                    kicked = report.kicked,
                    duplicate = report.duplicate,
                    "broker message delivered"
                );
                Ok(())
            }
            Err(error) => {
                let reason = format!("{}: {}", error.reason.as_str(), error.message);
                tracing::warn!(
                    rabbitmq.routing_key = %delivery.routing_key,
                    %reason,
                    "unparseable broker message moved to the error queue"
                );
                link::to_error_queue(
                    channel,
                    &self.error_queue,
                    delivery,
                    &reason,
                    self.confirm_timeout,
                )
                .await
            }
        }
    }
}

impl fmt::Debug for NodeConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeConsumer")
            .field("endpoint", &self.endpoint)
            .field("queue", &self.queue)
            .field("up", &self.link.is_up())
            .finish_non_exhaustive()
    }
}
