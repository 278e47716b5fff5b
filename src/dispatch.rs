//! The end of the stack: business messages go to the broker, and the outcome becomes the
//! client's ACK or ERROR.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tower::Service;

use crate::admin::Metrics;
use crate::backend::{BoxError, BoxFuture};
use crate::broker::{Broker, NoRecipients};
use crate::protocol::{Envelope, Kind, Reason};
use crate::request::{Reply, Request};

/// Publishes business messages, stamped with their authenticated sender.
#[derive(Debug, Clone)]
pub struct Dispatch {
    broker: Arc<dyn Broker>,
    broker_id: Arc<str>,
    confirm_timeout: Duration,
    metrics: Arc<Metrics>,
}

impl Dispatch {
    /// Dispatch through `broker` for node `broker_id`; a publish not confirmed within
    /// `confirm_timeout` is reported to the client as failed.
    pub fn new(broker: Arc<dyn Broker>, broker_id: &str, confirm_timeout: Duration) -> Self {
        Dispatch {
            broker,
            broker_id: broker_id.into(),
            confirm_timeout,
            metrics: Metrics::detached(),
        }
    }

    /// Counts publishes, confirms and failures in `metrics`.
    pub fn metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }
}

impl Service<Request> for Dispatch {
    type Response = Reply;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Reply, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let kind = req.kind();
        if !kind.is_business() {
            let reply = req.error(
                Reason::UnknownCode,
                format!("{} is not handled here", kind.snake_name()),
            );
            return Box::pin(std::future::ready(Ok(reply)));
        }
        req.frame.ensure_request_id();
        if let Some((user, device)) = req.conn.bound() {
            // The server, not the client, says who sent it.
            let meta = &mut req.frame.metadata;
            meta.insert("userId".into(), user.to_string());
            meta.insert("deviceType".into(), device.as_str().into());
            meta.insert("platform".into(), device.group().as_str().into());
            meta.insert("brokerId".into(), self.broker_id.to_string());
            meta.insert("connectionId".into(), req.conn.id().to_string());
        }
        req.frame.token = None;
        let ack = Reply::frame(req.frame.reply(Kind::Ack));
        // The frame moves to the broker instead of being cloned: copying its metadata map,
        // payload and strings for every message stood out in profiles of the relay. An ERROR
        // reply needs only the request id, so that is all the request keeps.
        let request_id = req.frame.request_id.clone();
        let frame = std::mem::replace(
            &mut req.frame,
            Envelope {
                request_id,
                ..Envelope::default()
            },
        );
        let published = self.broker.publish(kind, frame);
        let timeout = self.confirm_timeout;
        let metrics = self.metrics.clone();
        metrics.published();
        Box::pin(async move {
            let outcome = tokio::time::timeout(timeout, published).await;
            match &outcome {
                Ok(Ok(())) => metrics.acked(),
                _ => metrics.publish_failed(),
            }
            let reply = match outcome {
                Ok(Ok(())) => ack,
                Ok(Err(error)) if error.is::<NoRecipients>() => {
                    req.error(Reason::NoRecipients, error.to_string())
                }
                Ok(Err(error)) => {
                    tracing::debug!(%error, "publish failed");
                    req.error(
                        Reason::BrokerUnavailable,
                        format!("message not accepted: {error}"),
                    )
                }
                Err(_) => req.error(Reason::BrokerUnavailable, "message not confirmed in time"),
            };
            Ok(reply)
        })
    }
}
