use std::sync::Arc;

use super::{Broker, Delivery};
use crate::backend::{BoxError, BoxFuture};
use crate::protocol::{Envelope, Kind};

/// The standalone relay: an upstream message is delivered straight to the users its `ids`
/// name, on this node.
#[derive(Debug, Clone)]
pub struct EmbeddedBroker {
    delivery: Arc<Delivery>,
}

/// An upstream message with no recipients, which the embedded relay cannot route.
#[derive(Debug, thiserror::Error)]
#[error("the embedded relay needs `ids` naming the recipients")]
pub struct NoRecipients;

impl EmbeddedBroker {
    /// A relay delivering through `delivery`.
    pub fn new(delivery: Arc<Delivery>) -> Self {
        EmbeddedBroker { delivery }
    }
}

impl Broker for EmbeddedBroker {
    fn publish(&self, _kind: Kind, envelope: Envelope) -> BoxFuture<'static, Result<(), BoxError>> {
        let result = if envelope.ids.is_empty() {
            Err(NoRecipients.into())
        } else {
            self.delivery.deliver(envelope);
            Ok(())
        };
        Box::pin(std::future::ready(result))
    }

    fn send_to_node(
        &self,
        _broker_id: &str,
        envelope: Envelope,
    ) -> BoxFuture<'static, Result<(), BoxError>> {
        // There is only this node: a kick meant for "another" node is for us.
        self.delivery.deliver(envelope);
        Box::pin(std::future::ready(Ok(())))
    }
}
