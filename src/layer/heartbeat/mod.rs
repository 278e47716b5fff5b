//! Heartbeats and token lifetime.
//!
//! HEART_BEAT frames are answered here, without going further down the stack, with a
//! HEART_BEAT reply or, when the connection's token expires within the configured window, a
//! REFRESH_TOKEN. Every frame is checked against the token's expiry: once `exp` plus leeway has
//! passed (and no REGISTER brought a fresh token) the connection is closed with 4003. Liveness
//! itself (the idle timeout) is the transport's: any inbound traffic counts.
//!
//! ```
//! use im_connect::layer::{HeartbeatLayer, HeartbeatSettings};
//! use im_connect::request::{Reply, Request};
//! use tower::ServiceBuilder;
//!
//! let svc = ServiceBuilder::new()
//!     .layer(HeartbeatLayer::new(HeartbeatSettings::default()))
//!     .service_fn(|_req: Request| async move { Ok::<_, im_connect::BoxError>(Reply::none()) });
//! # drop(svc);
//! ```

use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::{Either, Ready};
use tower::{Layer, Service};

use crate::backend::BoxError;
use crate::protocol::{Kind, Reason};
use crate::request::{Reply, Request};
use crate::session::Close;

/// What the heartbeat layer enforces.
#[derive(Debug, Clone, Copy)]
pub struct HeartbeatSettings {
    /// Answer REFRESH_TOKEN when the token expires within this.
    pub refresh_before: Duration,
    /// Close 4003 once the token has expired.
    pub enforce_expiry: bool,
    /// Grace after `exp`, as for verification.
    pub leeway: Duration,
}

impl Default for HeartbeatSettings {
    fn default() -> Self {
        HeartbeatSettings {
            refresh_before: Duration::from_secs(180),
            enforce_expiry: true,
            leeway: Duration::from_secs(30),
        }
    }
}

/// Applies [`Heartbeat`].
#[derive(Debug, Clone, Copy, Default)]
pub struct HeartbeatLayer {
    settings: HeartbeatSettings,
}

impl HeartbeatLayer {
    /// A layer with `settings`.
    pub fn new(settings: HeartbeatSettings) -> Self {
        HeartbeatLayer { settings }
    }
}

impl<S> Layer<S> for HeartbeatLayer {
    type Service = Heartbeat<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Heartbeat {
            inner,
            settings: self.settings,
        }
    }
}

/// Answers heartbeats and enforces token expiry.
#[derive(Debug, Clone)]
pub struct Heartbeat<S> {
    inner: S,
    settings: HeartbeatSettings,
}

impl<S> Heartbeat<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, settings: HeartbeatSettings) -> Self {
        Heartbeat { inner, settings }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    fn answer(&self, req: &Request, expires_in: Option<i64>) -> Reply {
        let refresh =
            expires_in.is_some_and(|left| left <= self.settings.refresh_before.as_secs() as i64);
        let mut reply = req.frame.reply(if refresh {
            Kind::RefreshToken
        } else {
            Kind::HeartBeatReply
        });
        let device = match req.conn.bound() {
            Some((_, device)) => device,
            None => crate::protocol::DeviceParser::default()
                .parse(req.conn.info().handshake_device.as_deref()),
        };
        reply
            .metadata
            .insert("platform".into(), device.group().as_str().into());
        reply
            .metadata
            .insert("deviceType".into(), device.as_str().into());
        if refresh {
            reply.message = Some("token expires soon: send REGISTER with a new token".into());
        }
        Reply::frame(reply)
    }
}

fn now_secs() -> i64 {
    crate::protocol::now_millis() / 1000
}

impl<S> Service<Request> for Heartbeat<S>
where
    S: Service<Request, Response = Reply>,
    S::Error: Into<BoxError>,
{
    type Response = Reply;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<Reply, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let expires_in = req
            .conn
            .identity()
            .and_then(|id| id.expires_at)
            .map(|exp| exp as i64 - now_secs());
        let expired =
            expires_in.is_some_and(|left| left + (self.settings.leeway.as_secs() as i64) < 0);
        if expired && self.settings.enforce_expiry {
            tracing::debug!("token expired");
            let reply = req
                .error(Reason::Unauthenticated, "token expired")
                .then_close(Close::TOKEN_EXPIRED);
            return Either::Right(futures_util::future::ready(Ok(reply)));
        }
        if req.kind() == Kind::HeartBeat {
            let reply = self.answer(&req, expires_in);
            return Either::Right(futures_util::future::ready(Ok(reply)));
        }
        Either::Left(self.inner.call(req))
    }
}
