//! `netty.config`: listeners, codecs, timeouts and per-connection limits.
//!
//! The section keeps the name it has in the Java gateway's configuration so existing files
//! load unchanged; nothing here is specific to Netty.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::de;

const DEFAULT_HEART_BEAT_TIME_MS: u64 = 30_000;
const DEFAULT_TIMEOUT_MS: u64 = 5_000;
const DEFAULT_HOST: &str = "0.0.0.0";
const DEFAULT_TCP_PORTS: [u16; 3] = [9000, 9001, 9002];
const DEFAULT_WS_PORTS: [u16; 3] = [19000, 19001, 19002];
const DEFAULT_WS_PATH: &str = "/im";
const DEFAULT_MAX_FRAME_SIZE: usize = 64 * 1024;
const DEFAULT_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
const DEFAULT_LOGIN_TIMEOUT_MS: u64 = 10_000;
const DEFAULT_DEDUP_WINDOW_MS: u64 = 300_000;
const DEFAULT_OUTBOUND_QUEUE: usize = 1024;
const DEFAULT_OUTBOUND_QUEUE_BYTES: usize = 4 * 1024 * 1024;
const DEFAULT_WRITE_TIMEOUT_MS: u64 = 10_000;
const DEFAULT_MAX_INFLIGHT: usize = 32;
const DEFAULT_RATE_PER_SECOND: f64 = 50.0;
const DEFAULT_RATE_BURST: u32 = 100;
const DEFAULT_RATE_MAX_VIOLATIONS: u32 = 20;
const DEFAULT_WS_BUFFER: usize = 1024;

/// The device types that `netty.config.deviceAliases` may map to.
pub(crate) const DEVICE_TYPES: [&str; 6] = ["android", "ios", "web", "mac", "win", "linux"];

/// The `netty` section. It only holds `config`, the shape the Java gateway's files have.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct NettySection {
    /// Listener and connection settings.
    pub config: NettyConfig,
}

/// The payload encoding of a connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    /// JSON text.
    Json,
    /// Protobuf `IMessageWrap`.
    #[default]
    Proto,
}

/// Which numbering of message codes the codec layer speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CodeTableName {
    /// The numbering of the design document.
    #[default]
    Seed,
    /// The numbering the deployed Lucky Cloud clients and backends use.
    Lucky,
}

/// How the protobuf codec packs an envelope's `data` into its `google.protobuf.Any`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProtoData {
    /// UTF-8 JSON text with type URL `type.googleapis.com/json`.
    #[default]
    Json,
    /// A `google.protobuf.Struct` with the payload in field `value`, as the Java gateway
    /// packs it.
    Struct,
}

/// `netty.config`: listeners, codecs, timeouts and per-connection limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct NettyConfig {
    /// Codec of a WebSocket connection whose client offers no subprotocol, and of errors sent
    /// on TCP before the client's codec is known.
    pub protocol: Codec,
    /// Idle timeout in milliseconds: a connection without inbound traffic for this long is
    /// closed. At least 1000.
    pub heart_beat_time: u64,
    /// Grace in milliseconds added to `heart_beat_time` for the route record's TTL.
    pub timeout: u64,
    /// `false` allows one connection per user, whatever its device group.
    pub multi_device_enabled: bool,
    /// Accepted for compatibility and ignored: tokio accepts on its worker threads.
    pub boss_thread_size: Option<usize>,
    /// Tokio worker threads; `None` means one per core.
    pub work_thread_size: Option<usize>,
    /// Address every listener binds to.
    #[serde(deserialize_with = "de::string")]
    pub host: String,
    /// TCP listeners.
    pub tcp: TcpConfig,
    /// WebSocket listeners.
    pub websocket: WebSocketConfig,
    /// Largest message, in bytes, on either transport.
    pub max_frame_size: usize,
    /// Milliseconds from TCP connect until the TCP REGISTER or the WebSocket upgrade.
    pub handshake_timeout_ms: u64,
    /// Milliseconds from a WebSocket upgrade until its REGISTER.
    pub login_timeout_ms: u64,
    /// Numbering of message codes.
    pub code_table: CodeTableName,
    /// Packing of `data` in protobuf envelopes.
    pub proto_data: ProtoData,
    /// Extra device-type strings and the standard type each stands for, for example
    /// `desktop: win`. Keys are matched trimmed and lower-cased, like device types.
    pub device_aliases: BTreeMap<String, String>,
    /// Milliseconds during which a downstream message's `requestId` is remembered, so the same
    /// message is not delivered twice.
    pub dedup_window_ms: u64,
    /// Frames a connection's outbound queue holds before the connection counts as a slow
    /// consumer.
    pub outbound_queue: usize,
    /// Bytes a connection's outbound queue holds before the connection counts as a slow
    /// consumer, so large messages cannot make one stalled reader hold
    /// `outboundQueue × maxFrameSize` of memory.
    pub outbound_queue_bytes: usize,
    /// A socket write that cannot complete for this long (a client that stopped reading while
    /// its receive window is full) ends the connection without a Close frame, which could not
    /// be written either.
    pub write_timeout_ms: u64,
    /// Requests of one connection handled concurrently.
    pub max_inflight: usize,
    /// This node's identity in route records and queue names; `None` derives a stable one at
    /// start-up.
    #[serde(deserialize_with = "de::opt_string")]
    pub broker_id: Option<String>,
    /// Per-connection rate limit on inbound frames.
    pub rate_limit: RateLimitConfig,
    /// WebSocket read buffer per connection, in bytes.
    pub ws_read_buffer: usize,
    /// WebSocket write buffer per connection, in bytes.
    pub ws_write_buffer: usize,
}

impl NettyConfig {
    /// TTL of the route record in seconds: `heart_beat_time` plus `timeout`, rounded up to
    /// whole seconds.
    pub fn route_ttl_secs(&self) -> u64 {
        self.heart_beat_time
            .saturating_add(self.timeout)
            .div_ceil(1000)
    }
}

impl Default for NettyConfig {
    fn default() -> Self {
        Self {
            protocol: Codec::default(),
            heart_beat_time: DEFAULT_HEART_BEAT_TIME_MS,
            timeout: DEFAULT_TIMEOUT_MS,
            multi_device_enabled: true,
            boss_thread_size: None,
            work_thread_size: None,
            host: DEFAULT_HOST.to_owned(),
            tcp: TcpConfig::default(),
            websocket: WebSocketConfig::default(),
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            handshake_timeout_ms: DEFAULT_HANDSHAKE_TIMEOUT_MS,
            login_timeout_ms: DEFAULT_LOGIN_TIMEOUT_MS,
            code_table: CodeTableName::default(),
            proto_data: ProtoData::default(),
            device_aliases: BTreeMap::new(),
            dedup_window_ms: DEFAULT_DEDUP_WINDOW_MS,
            outbound_queue: DEFAULT_OUTBOUND_QUEUE,
            outbound_queue_bytes: DEFAULT_OUTBOUND_QUEUE_BYTES,
            write_timeout_ms: DEFAULT_WRITE_TIMEOUT_MS,
            max_inflight: DEFAULT_MAX_INFLIGHT,
            broker_id: None,
            rate_limit: RateLimitConfig::default(),
            ws_read_buffer: DEFAULT_WS_BUFFER,
            ws_write_buffer: DEFAULT_WS_BUFFER,
        }
    }
}

/// `netty.config.tcp`: length-prefixed TCP listeners.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct TcpConfig {
    /// Whether the TCP listeners run.
    pub enable: bool,
    /// One listener per port.
    #[serde(deserialize_with = "de::ports")]
    pub port: Vec<u16>,
}

impl Default for TcpConfig {
    fn default() -> Self {
        Self {
            enable: true,
            port: DEFAULT_TCP_PORTS.to_vec(),
        }
    }
}

/// `netty.config.websocket`: WebSocket listeners.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct WebSocketConfig {
    /// Whether the WebSocket listeners run.
    pub enable: bool,
    /// Upgrade path; starts with `/`.
    #[serde(deserialize_with = "de::string")]
    pub path: String,
    /// One listener per port.
    #[serde(deserialize_with = "de::ports")]
    pub port: Vec<u16>,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        Self {
            enable: true,
            path: DEFAULT_WS_PATH.to_owned(),
            port: DEFAULT_WS_PORTS.to_vec(),
        }
    }
}

/// `netty.config.rateLimit`: a token bucket per connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct RateLimitConfig {
    /// Whether inbound frames are rate limited.
    pub enable: bool,
    /// Sustained frames per second.
    pub per_second: f64,
    /// Frames that may arrive at once above the sustained rate.
    pub burst: u32,
    /// Rejected frames in a row after which the connection is closed with 1008.
    pub max_violations: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            enable: true,
            per_second: DEFAULT_RATE_PER_SECOND,
            burst: DEFAULT_RATE_BURST,
            max_violations: DEFAULT_RATE_MAX_VIOLATIONS,
        }
    }
}
