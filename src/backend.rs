//! Pieces shared by the backend traits ([`Broker`](crate::broker::Broker),
//! [`RouteStore`](crate::route::RouteStore), [`Registry`](crate::registry::Registry)).

use std::future::Future;
use std::pin::Pin;

/// The error type that crosses layer and backend boundaries.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A boxed, sendable future: what backend trait methods return, so the traits stay
/// object-safe and backends are chosen at run time.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Whether a backend can currently do its job, as readiness reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Working.
    Up,
    /// Not working, with a short explanation.
    Down(String),
}

impl Health {
    /// True when up.
    pub fn is_up(&self) -> bool {
        matches!(self, Health::Up)
    }
}
