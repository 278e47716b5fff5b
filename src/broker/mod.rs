//! The message broker: where upstream business messages go and where downstream deliveries
//! come from.
//!
//! [`Broker`] is the seam. [`EmbeddedBroker`] relays in-process (the standalone server and
//! tests); the RabbitMQ implementation lives behind the same trait. Whatever the broker,
//! downstream messages end in [`Delivery`], which finds the target users' connections on this
//! node.

mod delivery;
mod embedded;
mod rabbitmq;

pub use delivery::{Dedup, Delivery, DeliveryReport};
pub use embedded::{EmbeddedBroker, NoRecipients};
pub use rabbitmq::{broker_id_from, BrokerError, RabbitBroker, Relay, RelayConfig};

use std::fmt;

use crate::backend::{BoxError, BoxFuture, Health};
use crate::protocol::{Envelope, Kind};

/// Carries messages between this node, the backends and other nodes.
pub trait Broker: Send + Sync + fmt::Debug + 'static {
    /// Publishes an upstream business message of `kind`, already stamped with its sender.
    /// Resolves once the broker has taken responsibility for it (a publisher confirm); an
    /// error means the client must be told it was not accepted.
    fn publish(&self, kind: Kind, envelope: Envelope) -> BoxFuture<'static, Result<(), BoxError>>;

    /// Sends `envelope` (a FORCE_LOGOUT) to the node whose broker id is `broker_id`.
    fn send_to_node(
        &self,
        broker_id: &str,
        envelope: Envelope,
    ) -> BoxFuture<'static, Result<(), BoxError>>;

    /// Whether the broker is reachable.
    fn health(&self) -> Health {
        Health::Up
    }

    /// Stops consuming and closes the broker's connections; called once the node's
    /// connections are drained at shutdown. Publishing fails afterwards.
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }
}
