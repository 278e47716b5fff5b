//! Service discovery: announcing this node's listeners so front proxies and backends find it.
//!
//! [`Registry`] is the seam; [`NoRegistry`] announces nothing (standalone server),
//! [`NacosRegistry`] registers one instance per listening port with Nacos.

mod nacos;

pub use nacos::NacosRegistry;

use std::fmt;

use crate::backend::{BoxError, BoxFuture, Health};
use crate::session::Transport;

/// One listening port as announced to discovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// WebSocket or TCP.
    pub transport: Transport,
    /// The port.
    pub port: u16,
    /// Live connections on the port.
    pub connections: usize,
}

/// Announces listeners to service discovery.
pub trait Registry: Send + Sync + fmt::Debug + 'static {
    /// Registers or updates the given instances (the full current set).
    fn publish(&self, instances: Vec<Instance>) -> BoxFuture<'static, Result<(), BoxError>>;

    /// Removes every instance of this node.
    fn deregister(&self) -> BoxFuture<'static, Result<(), BoxError>>;

    /// Whether registration currently holds.
    fn health(&self) -> Health {
        Health::Up
    }
}

/// Announces nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoRegistry;

impl Registry for NoRegistry {
    fn publish(&self, _instances: Vec<Instance>) -> BoxFuture<'static, Result<(), BoxError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn deregister(&self) -> BoxFuture<'static, Result<(), BoxError>> {
        Box::pin(std::future::ready(Ok(())))
    }
}
