//! Rate limiting: a token bucket per service instance.
//!
//! The server builds one stack per connection, so each connection gets its own bucket.
//! Clones of a service share their bucket, which makes a single `RateLimit` in front of a
//! hyper service a limit for all its connections. Over the limit a frame gets ERROR
//! `rate_limited`; after `max_violations` refusals in a row the connection is closed 1008. An
//! HTTP request gets `429 Too Many Requests`.
//!
//! ```
//! use im_connect::layer::RateLimitLayer;
//! use tower::ServiceBuilder;
//!
//! let svc = ServiceBuilder::new()
//!     .layer(RateLimitLayer::new(50.0, 100))
//!     .service_fn(|_req: http::Request<String>| async move {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
//!     });
//! # drop(svc);
//! ```

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{Either, Ready};
use parking_lot::Mutex;
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::protocol::{Kind, Reason};
use crate::request::{Reply, Request};
use crate::session::Close;

/// A request type [`RateLimit`] can refuse with a response of type `Res`.
pub trait RateLimitTarget<Res> {
    /// Requests that are never limited (heartbeats keep a connection alive whatever it did).
    fn exempt(&self) -> bool {
        false
    }

    /// The refusal; `close` is set once refusals reached the configured maximum in a row.
    fn rate_limited(&self, close: bool) -> Res;
}

impl RateLimitTarget<Reply> for Request {
    fn exempt(&self) -> bool {
        self.kind() == Kind::HeartBeat
    }

    fn rate_limited(&self, close: bool) -> Reply {
        let reply = self.error(Reason::RateLimited, "rate limit exceeded");
        if close {
            reply.then_close(Close::RATE_LIMITED)
        } else {
            reply
        }
    }
}

impl<B, RB: From<String>> RateLimitTarget<http::Response<RB>> for http::Request<B> {
    fn rate_limited(&self, _close: bool) -> http::Response<RB> {
        let mut res = http::Response::new(RB::from("rate limit exceeded\n".to_string()));
        *res.status_mut() = http::StatusCode::TOO_MANY_REQUESTS;
        res
    }
}

/// Applies [`RateLimit`]: `per_second` sustained, bursts up to `burst`.
#[derive(Debug, Clone, Copy)]
pub struct RateLimitLayer {
    per_second: f64,
    burst: u32,
    max_violations: u32,
}

impl RateLimitLayer {
    /// A limit of `per_second` requests per second with bursts of `burst`.
    pub fn new(per_second: f64, burst: u32) -> Self {
        RateLimitLayer {
            per_second: per_second.max(f64::MIN_POSITIVE),
            burst: burst.max(1),
            max_violations: u32::MAX,
        }
    }

    /// Ask for a close after this many refusals in a row.
    pub fn max_violations(mut self, n: u32) -> Self {
        self.max_violations = n.max(1);
        self
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            config: *self,
            bucket: Arc::new(Mutex::new(Bucket {
                tokens: f64::from(self.burst),
                last: Instant::now(),
                violations: 0,
            })),
        }
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
    violations: u32,
}

/// Refuses requests beyond the configured rate.
#[derive(Debug, Clone)]
pub struct RateLimit<S> {
    inner: S,
    config: RateLimitLayer,
    bucket: Arc<Mutex<Bucket>>,
}

impl<S> RateLimit<S> {
    /// Wraps `inner` with a fresh bucket.
    pub fn new(inner: S, layer: RateLimitLayer) -> Self {
        layer.layer(inner)
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

    /// Takes a token; `Err(violations)` when there is none.
    fn take(&self) -> Result<(), u32> {
        let mut b = self.bucket.lock();
        let now = Instant::now();
        let refill = now.duration_since(b.last).as_secs_f64() * self.config.per_second;
        b.tokens = (b.tokens + refill).min(f64::from(self.config.burst));
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            b.violations = 0;
            Ok(())
        } else {
            b.violations = b.violations.saturating_add(1);
            Err(b.violations)
        }
    }
}

impl<S, R> Service<R> for RateLimit<S>
where
    S: Service<R>,
    R: RateLimitTarget<S::Response>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        if req.exempt() {
            return Either::Left(self.inner.call(req));
        }
        match self.take() {
            Ok(()) => Either::Left(self.inner.call(req)),
            Err(violations) => {
                tracing::debug!(violations, "rate limited");
                let close = violations >= self.config.max_violations;
                Either::Right(futures_util::future::ready(Ok(req.rate_limited(close))))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    #[tokio::test(start_paused = true)]
    async fn refuses_past_the_burst_and_refills_with_time() {
        let svc = RateLimitLayer::new(1.0, 2).layer(tower::service_fn(
            |_req: http::Request<()>| async move {
                Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
            },
        ));
        let call = |svc: RateLimit<_>| async move {
            let req = http::Request::new(());
            let res: http::Response<String> = svc.oneshot(req).await.unwrap();
            res.status().as_u16()
        };
        assert_eq!(call(svc.clone()).await, 200);
        assert_eq!(call(svc.clone()).await, 200);
        assert_eq!(call(svc.clone()).await, 429);
        tokio::time::advance(std::time::Duration::from_millis(1100)).await;
        assert_eq!(call(svc.clone()).await, 200);
    }
}
