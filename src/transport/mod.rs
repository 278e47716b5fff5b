//! Transport adapters: sockets in, tower requests out.
//!
//! Each adapter owns its sockets and turns bytes into frames ([`tcp`]: 4-byte length prefix;
//! [`ws`]: WebSocket messages after an HTTP/1.1 upgrade). The shared connection driver decodes
//! frames into [`Request`]s, calls the connection's service stack, queues the replies, drains the
//! outbound queue in batches and enforces the deadlines. Adapters know nothing of login,
//! devices or brokers.
//!
//! [`Request`]: crate::request::Request

mod driver;
pub mod tcp;
pub mod ws;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tower::util::BoxService;

use crate::admin::Metrics;
use crate::backend::BoxError;
use crate::protocol::{Codec, Wire};
use crate::request::{Reply, Request};

/// The service stack of one connection.
pub type ConnectionService = BoxService<Request, Reply, BoxError>;

/// Builds a fresh stack for each connection, so per-connection state (a rate-limit bucket)
/// lives in the stack itself.
pub type StackFactory = Arc<dyn Fn() -> ConnectionService + Send + Sync>;

/// Limits and deadlines shared by both transports.
#[derive(Debug, Clone)]
pub struct TransportSettings {
    /// Wire settings (code table, protobuf data packing).
    pub wire: Wire,
    /// Codec of replies before one is known (no subprotocol offered, nothing received yet).
    pub default_codec: Codec,
    /// Largest frame or message accepted, in bytes.
    pub max_frame_size: usize,
    /// Close with 4002 after this long without inbound traffic.
    pub idle_timeout: Duration,
    /// TCP connect until REGISTER, or the HTTP upgrade, must finish within this.
    pub handshake_timeout: Duration,
    /// WebSocket upgrade until REGISTER.
    pub login_timeout: Duration,
    /// Frames of one connection handled at the same time.
    pub max_inflight: usize,
    /// Outbound queue capacity, in frames.
    pub outbound_queue: usize,
    /// Outbound queue capacity, in bytes.
    pub outbound_queue_bytes: usize,
    /// A write that cannot complete within this ends the connection.
    pub write_timeout: Duration,
    /// WebSocket path (`/im`).
    pub ws_path: String,
    /// tungstenite read buffer size.
    pub ws_read_buffer: usize,
    /// tungstenite write buffer size.
    pub ws_write_buffer: usize,
    /// Where frame counts and latencies go.
    pub metrics: Arc<Metrics>,
}

impl Default for TransportSettings {
    fn default() -> Self {
        TransportSettings {
            wire: Wire::default(),
            default_codec: Codec::Proto,
            max_frame_size: 65_536,
            idle_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            login_timeout: Duration::from_secs(10),
            max_inflight: 32,
            outbound_queue: 1024,
            outbound_queue_bytes: 4 * 1024 * 1024,
            write_timeout: Duration::from_secs(10),
            ws_path: "/im".into(),
            ws_read_buffer: 1024,
            ws_write_buffer: 1024,
            metrics: Metrics::detached(),
        }
    }
}

/// Live connection count of one listener, shared with whoever reports it.
#[derive(Debug, Default)]
pub struct PortGauge(AtomicUsize);

impl PortGauge {
    /// Connections open now.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    fn enter(self: &Arc<Self>) -> GaugeGuard {
        self.0.fetch_add(1, Ordering::Relaxed);
        GaugeGuard(self.clone())
    }
}

struct GaugeGuard(Arc<PortGauge>);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::Relaxed);
    }
}
