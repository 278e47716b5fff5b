//! The publishing link: its own connection with one confirm-mode channel, replaced by the
//! supervisor whenever it is lost.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use lapin::options::ConfirmSelectOptions;
use lapin::{BasicProperties, Channel, ConnectionStatus};
use parking_lot::RwLock;
use tokio_util::sync::CancellationToken;

use super::link::{self, unavailable, Endpoint, LinkState};
use super::BrokerError;

/// Why publishing is refused while RabbitMQ blocks the connection.
pub(super) const BLOCKED: &str = "rabbitmq blocks publishing (memory or disk alarm)";

/// Publishes to one exchange with publisher confirms. Cloning shares the link.
#[derive(Clone)]
pub(super) struct Publisher {
    inner: Arc<Inner>,
}

struct Inner {
    endpoint: Arc<Endpoint>,
    exchange: String,
    confirm_timeout: Duration,
    /// The live channel; `None` while disconnected, so a publish fails at once instead of
    /// waiting for a reconnect the client cannot see.
    live: RwLock<Option<Live>>,
    link: Arc<LinkState>,
}

#[derive(Clone)]
struct Live {
    channel: Channel,
    status: ConnectionStatus,
}

impl Publisher {
    /// A publisher to `exchange` that is not connected yet; [`Publisher::session`] connects.
    pub(super) fn new(
        endpoint: Arc<Endpoint>,
        exchange: String,
        confirm_timeout: Duration,
    ) -> Self {
        Publisher {
            inner: Arc::new(Inner {
                endpoint,
                exchange,
                confirm_timeout,
                live: RwLock::new(None),
                link: LinkState::new("publisher"),
            }),
        }
    }

    /// The link's state, for readiness and the supervisor.
    pub(super) fn link(&self) -> &Arc<LinkState> {
        &self.inner.link
    }

    /// True while RabbitMQ blocks this connection's publishes (a memory or disk alarm).
    pub(super) fn blocked(&self) -> bool {
        let live = self.inner.live.read();
        live.as_ref().is_some_and(|live| live.status.blocked())
    }

    /// Publishes `body` under `routing_key`; resolves once the broker confirmed it.
    pub(super) async fn publish(
        &self,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), BrokerError> {
        let live = self.inner.live.read().clone();
        let Some(live) = live else {
            return Err(BrokerError::Unavailable(self.inner.link.reason()));
        };
        // A blocked connection accepts the publish and then sits on it until the alarm
        // clears; failing now tells the client at once.
        if live.status.blocked() {
            return Err(BrokerError::Unavailable(BLOCKED.into()));
        }
        link::publish_confirmed(
            &live.channel,
            &self.inner.exchange,
            routing_key,
            body,
            properties,
            self.inner.confirm_timeout,
        )
        .await
    }

    /// One connection's life: connect, enable confirms, declare the exchange, serve publishes
    /// until the connection is lost (`Err`) or `cancel` fires (`Ok`, after closing).
    pub(super) async fn session(&self, cancel: &CancellationToken) -> Result<(), BrokerError> {
        let inner = &self.inner;
        let setup = async {
            let conn = inner.endpoint.connect("publish").await?;
            let channel = conn.create_channel().await.map_err(unavailable)?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(unavailable)?;
            link::declare_exchange(&channel, &inner.exchange)
                .await
                .map_err(unavailable)?;
            Ok::<_, BrokerError>((conn, channel))
        };
        let timed_out = || BrokerError::Unavailable("setting up the channel timed out".into());
        let (conn, channel) = tokio::select! {
            result = tokio::time::timeout(inner.endpoint.timeout() * 2, setup) => {
                result.map_err(|_| timed_out())??
            }
            _ = cancel.cancelled() => return Ok(()),
        };

        let status = conn.status().clone();
        *inner.live.write() = Some(Live {
            channel: channel.clone(),
            status,
        });
        inner.link.set_up();
        let lost = tokio::select! {
            reason = link::lost(&conn, &channel) => Some(reason),
            _ = cancel.cancelled() => None,
        };
        *inner.live.write() = None;

        match lost {
            Some(reason) => Err(BrokerError::Unavailable(reason)),
            None => {
                link::close(&conn).await;
                Ok(())
            }
        }
    }
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("endpoint", &self.inner.endpoint)
            .field("exchange", &self.inner.exchange)
            .field("up", &self.inner.link.is_up())
            .finish()
    }
}
