use std::borrow::Cow;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use super::{Outbox, PushError};
use crate::protocol::{Codec, DeviceGroup, DeviceType, Envelope, Kind, Wire};

/// Which adapter owns a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// Length-prefixed frames over TCP.
    Tcp,
    /// WebSocket over HTTP/1.1.
    WebSocket,
}

impl Transport {
    /// `tcp` or `ws`.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::WebSocket => "ws",
        }
    }
}

/// A close the server starts: a WebSocket close code and a short reason. On TCP only the
/// socket closes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    /// WebSocket close code.
    pub code: u16,
    /// Short reason sent in the Close frame.
    pub reason: Cow<'static, str>,
}

impl Close {
    /// The client logged out.
    pub const LOGGED_OUT: Close = Close::new(1000, "logged out");
    /// The server is shutting down.
    pub const GOING_AWAY: Close = Close::new(1001, "server shutting down");
    /// WebSocket protocol error.
    pub const PROTOCOL_ERROR: Close = Close::new(1002, "protocol error");
    /// A text message that is not valid UTF-8.
    pub const INVALID_UTF8: Close = Close::new(1007, "invalid utf-8");
    /// Repeated rate-limit violations.
    pub const RATE_LIMITED: Close = Close::new(1008, "rate limit exceeded");
    /// A frame other than REGISTER before login, or no login in time.
    pub const NOT_LOGGED_IN: Close = Close::new(1008, "not logged in");
    /// A token that failed verification.
    pub const UNAUTHENTICATED: Close = Close::new(1008, "unauthenticated");
    /// Frame or message too big.
    pub const TOO_BIG: Close = Close::new(1009, "message too big");
    /// Kicked by another login.
    pub const KICKED: Close = Close::new(4001, "kicked by another login");
    /// No inbound traffic within the heartbeat time.
    pub const HEARTBEAT_TIMEOUT: Close = Close::new(4002, "heartbeat timeout");
    /// Token expired or revoked.
    pub const TOKEN_EXPIRED: Close = Close::new(4003, "token expired");
    /// Outbound queue full.
    pub const SLOW_CONSUMER: Close = Close::new(4004, "slow consumer");
    /// The route store could not record the login.
    pub const ROUTE_UNAVAILABLE: Close = Close::new(1011, "route store unavailable");

    /// A close with a static reason.
    pub const fn new(code: u16, reason: &'static str) -> Self {
        Close {
            code,
            reason: Cow::Borrowed(reason),
        }
    }
}

/// Who a connection belongs to, established from a verified token.
#[derive(Clone)]
pub struct Identity {
    /// The user id claim.
    pub user_id: Arc<str>,
    /// `exp` of the token, seconds since the epoch.
    pub expires_at: Option<u64>,
    /// The token itself, kept for the route record; never logged.
    pub token: Arc<str>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("user_id", &self.user_id)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Why a connection is kicked; sent to the client in `data.reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KickReason {
    /// Another login of the same user and device group.
    SameGroupLogin,
    /// Another login of the same user, single-device mode.
    SingleDevice,
    /// An operator asked for it.
    Admin,
    /// The backend asked for it through the broker.
    Backend,
}

impl KickReason {
    /// The wire word.
    pub fn as_str(self) -> &'static str {
        match self {
            KickReason::SameGroupLogin => "same_group_login",
            KickReason::SingleDevice => "single_device",
            KickReason::Admin => "admin",
            KickReason::Backend => "backend",
        }
    }

    fn message(self) -> &'static str {
        match self {
            KickReason::SameGroupLogin => "logged in on another device of the same kind",
            KickReason::SingleDevice => "logged in on another device",
            KickReason::Admin => "logged out by an administrator",
            KickReason::Backend => "logged out by the server",
        }
    }
}

/// A device binding: the connection is registered as `device` of `user`. Dropping it runs the
/// release hook (registry and route clean-up), so a binding is released exactly once whether
/// the connection logs out, is kicked or just goes away.
pub struct Binding {
    /// The bound user.
    pub user_id: Arc<str>,
    /// The device type it registered as.
    pub device: DeviceType,
    /// The REGISTER's request id, recorded as the route's `deviceId`.
    pub device_id: String,
    release: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl Binding {
    /// A binding whose `release` hook runs when it is dropped.
    pub fn new(
        user_id: Arc<str>,
        device: DeviceType,
        device_id: String,
        release: impl FnOnce() + Send + Sync + 'static,
    ) -> Self {
        Binding {
            user_id,
            device,
            device_id,
            release: Some(Box::new(release)),
        }
    }

    /// Drops the binding without running its release hook (the caller has cleaned up).
    pub fn forget(mut self) {
        self.release = None;
    }
}

impl Drop for Binding {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            release();
        }
    }
}

impl fmt::Debug for Binding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Binding")
            .field("user_id", &self.user_id)
            .field("device", &self.device)
            .field("device_id", &self.device_id)
            .finish_non_exhaustive()
    }
}

/// Facts about a connection known when it was accepted.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// The adapter.
    pub transport: Transport,
    /// The client's address.
    pub peer: SocketAddr,
    /// The local port it connected to.
    pub local_port: u16,
    /// Codec, when fixed at accept time (WebSocket subprotocol); TCP detects it from the first
    /// frame.
    pub codec: Option<Codec>,
    /// Device type the handshake named, applied when REGISTER names none.
    pub handshake_device: Option<String>,
}

const CODEC_UNKNOWN: u8 = 0;
const CODEC_JSON: u8 = 1;
const CODEC_PROTO: u8 = 2;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The shared context of one client connection.
///
/// The transport owns the socket; everything else (layers, registry, delivery) reaches the
/// client through [`Connection::send`], which only queues.
pub struct Connection {
    id: u64,
    info: ConnectionInfo,
    codec: AtomicU8,
    default_codec: Codec,
    wire: Wire,
    outbox: Outbox,
    state: Mutex<State>,
    /// Set, under the registry's lock, when another login took this connection's place: a
    /// REGISTER of its own still in flight must not bind it again and displace the winner.
    displaced: AtomicBool,
}

#[derive(Debug, Default)]
struct State {
    identity: Option<Identity>,
    binding: Option<Binding>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.id)
            .field("transport", &self.info.transport)
            .field("peer", &self.info.peer)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// A new connection context with a process-unique id.
    pub fn new(info: ConnectionInfo, default_codec: Codec, wire: Wire, queue: usize) -> Self {
        let codec = match info.codec {
            Some(codec) => codec_tag(codec),
            None => CODEC_UNKNOWN,
        };
        Connection {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            info,
            codec: AtomicU8::new(codec),
            default_codec,
            wire,
            outbox: Outbox::new(queue),
            state: Mutex::new(State::default()),
            displaced: AtomicBool::new(false),
        }
    }

    /// Process-unique connection id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// What was known at accept time.
    pub fn info(&self) -> &ConnectionInfo {
        &self.info
    }

    /// The wire settings (code table, protobuf data packing).
    pub fn wire(&self) -> &Wire {
        &self.wire
    }

    /// The codec replies use: fixed, detected, or the configured default until detection.
    pub fn codec(&self) -> Codec {
        match self.codec.load(Ordering::Relaxed) {
            CODEC_JSON => Codec::Json,
            CODEC_PROTO => Codec::Proto,
            _ => self.default_codec,
        }
    }

    /// Fixes the codec if it is not known yet; returns the codec in force.
    pub fn detect_codec(&self, codec: Codec) -> Codec {
        let _ = self.codec.compare_exchange(
            CODEC_UNKNOWN,
            codec_tag(codec),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        self.codec()
    }

    /// The outbound queue.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Encodes `env` with this connection's codec and queues it.
    pub fn send(&self, env: &Envelope) -> Result<(), PushError> {
        self.send_bytes(self.wire.encode(self.codec(), env))
    }

    /// Queues already-encoded bytes (they must match [`Connection::codec`]).
    pub fn send_bytes(&self, bytes: Bytes) -> Result<(), PushError> {
        self.outbox.push(bytes)
    }

    /// Queues an encoded downstream delivery that reached the node at `at` (for the delivery
    /// latency metric).
    pub fn send_delivery(&self, bytes: Bytes, at: std::time::Instant) -> Result<(), PushError> {
        self.outbox.push_delivery(bytes, at)
    }

    /// Sends what is queued, then closes.
    pub fn close(&self, close: Close) {
        self.outbox.close(close);
    }

    /// The verified identity, once there is one.
    pub fn identity(&self) -> Option<Identity> {
        self.state.lock().identity.clone()
    }

    /// Sets the identity. Fails, changing nothing, when the connection already belongs to
    /// another user.
    pub fn set_identity(&self, identity: Identity) -> Result<(), Identity> {
        let mut state = self.state.lock();
        match &state.identity {
            Some(current) if current.user_id != identity.user_id => Err(identity),
            _ => {
                state.identity = Some(identity);
                Ok(())
            }
        }
    }

    /// The device this connection is bound as, with its user.
    pub fn bound(&self) -> Option<(Arc<str>, DeviceType)> {
        let state = self.state.lock();
        let binding = state.binding.as_ref()?;
        Some((binding.user_id.clone(), binding.device))
    }

    /// The route `deviceId` of the binding (the REGISTER's request id), if bound.
    pub fn device_id(&self) -> Option<String> {
        let state = self.state.lock();
        state.binding.as_ref().map(|b| b.device_id.clone())
    }

    /// True once REGISTER bound the connection.
    pub fn is_bound(&self) -> bool {
        self.state.lock().binding.is_some()
    }

    /// Replaces the binding; the previous one, if any, is returned for the caller to drop
    /// outside the lock.
    pub fn bind(&self, binding: Binding) -> Option<Binding> {
        self.state.lock().binding.replace(binding)
    }

    /// Removes the binding (it is released when the returned value drops).
    pub fn unbind(&self) -> Option<Binding> {
        self.state.lock().binding.take()
    }

    /// Tells the client it was logged out because of `reason`, then closes with 4001. The
    /// binding is released; the registry entry was already taken over by the caller.
    pub fn kick(&self, reason: KickReason) {
        let mut env = Envelope::new(Kind::ForceLogout);
        env.message = Some(reason.message().to_string());
        env.timestamp = Some(crate::protocol::now_millis());
        env.data = Some(serde_json::json!({
            "reason": reason.as_str(),
            "message": reason.message(),
        }));
        if let Some((_, device)) = self.bound() {
            env.device_type = Some(device.as_str().to_string());
        }
        let _ = self.send(&env);
        self.close(Close::KICKED);
        drop(self.unbind());
    }

    /// Bounds the outbound queue by bytes as well as frames (see
    /// [`Outbox::with_byte_limit`]).
    pub fn with_outbound_bytes(mut self, bytes: usize) -> Self {
        self.outbox = self.outbox.with_byte_limit(bytes);
        self
    }

    /// True once another login displaced this connection from the session registry; it is
    /// being kicked and can never be bound again.
    pub fn is_displaced(&self) -> bool {
        self.displaced.load(Ordering::Acquire)
    }

    pub(super) fn displace(&self) {
        self.displaced.store(true, Ordering::Release);
    }

    /// The device group of the binding, if bound.
    pub fn group(&self) -> Option<DeviceGroup> {
        self.bound().map(|(_, device)| device.group())
    }
}

fn codec_tag(codec: Codec) -> u8 {
    match codec {
        Codec::Json => CODEC_JSON,
        Codec::Proto => CODEC_PROTO,
    }
}
