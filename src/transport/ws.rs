//! WebSocket: an HTTP/1.1 server (hyper) whose upgrades become `tokio-tungstenite` streams.
//!
//! The handshake is checked in the contract's order: path (`404`), method and upgrade headers
//! (`400`, or `426` for a version other than 13), then credentials (`401`, by the same
//! [`AuthLayer`](crate::layer::AuthLayer) that guards frames). Text frames are JSON, binary
//! frames protobuf; replies use the connection's codec, chosen by the `json`/`proto`
//! subprotocol or the configured default.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use http::{header, HeaderValue, Method, Request as HttpRequest, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::error::{CapacityError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::{Service, ServiceExt};
use tracing::Instrument;

use super::driver::{drive, FrameSink, Inbound};
use super::{PortGauge, StackFactory, TransportSettings};
use crate::layer::auth::{AuthTarget, TokenVerifier};
use crate::layer::AuthLayer;
use crate::protocol::{Codec, FrameError, Reason};
use crate::session::{Close, Connection, ConnectionInfo, Identity, Transport};

type Body = Full<Bytes>;
type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// What every WebSocket connection of a listener shares.
pub struct WsContext<V> {
    /// Builds each connection's stack.
    pub stack: StackFactory,
    /// Limits and deadlines.
    pub settings: Arc<TransportSettings>,
    /// Verifies handshake tokens.
    pub auth: AuthLayer<V>,
    /// Live connections of the listener.
    pub gauge: Arc<PortGauge>,
    /// Connection tasks, awaited at shutdown.
    pub tracker: TaskTracker,
    /// Cancelled at shutdown.
    pub shutdown: CancellationToken,
}

impl<V> std::fmt::Debug for WsContext<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsContext")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Accepts WebSocket connections on `listener` until the context's shutdown.
pub async fn serve<V: TokenVerifier>(listener: TcpListener, ctx: Arc<WsContext<V>>) {
    let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
    loop {
        let accepted = tokio::select! {
            _ = ctx.shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((socket, peer)) => {
                let ctx2 = ctx.clone();
                ctx.tracker.spawn(handshake(socket, peer, port, ctx2));
            }
            Err(error) => {
                tracing::warn!(%error, port, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handshake<V: TokenVerifier>(
    socket: TcpStream,
    peer: SocketAddr,
    port: u16,
    ctx: Arc<WsContext<V>>,
) {
    let _ = socket.set_nodelay(true);
    let timeout = ctx.settings.handshake_timeout;
    let ctx2 = ctx.clone();
    let service = hyper::service::service_fn(move |req| upgrade(req, peer, port, ctx2.clone()));
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        .keep_alive(false)
        .serve_connection(TokioIo::new(socket), service)
        .with_upgrades();
    match tokio::time::timeout(timeout, conn).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::debug!(%peer, %error, "handshake failed"),
        Err(_) => tracing::debug!(%peer, "handshake timed out"),
    }
}

fn plain(status: StatusCode, text: &str) -> Response<Body> {
    let mut res = Response::new(Body::from(format!("{text}\n")));
    *res.status_mut() = status;
    res
}

fn has_token(value: Option<&HeaderValue>, token: &str) -> bool {
    value
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// Checks one upgrade request and, when it passes, answers 101 and starts the connection.
async fn upgrade<V: TokenVerifier>(
    req: HttpRequest<Incoming>,
    peer: SocketAddr,
    port: u16,
    ctx: Arc<WsContext<V>>,
) -> Result<Response<Body>, Infallible> {
    let path = ctx.settings.ws_path.trim_end_matches('/');
    let req_path = req.uri().path();
    if req_path != path && req_path.strip_suffix('/') != Some(path) {
        return Ok(plain(StatusCode::NOT_FOUND, "not found"));
    }
    let headers = req.headers();
    if req.method() != Method::GET
        || !has_token(headers.get(header::UPGRADE), "websocket")
        || !has_token(headers.get(header::CONNECTION), "upgrade")
        || !headers.contains_key(header::SEC_WEBSOCKET_KEY)
    {
        return Ok(plain(StatusCode::BAD_REQUEST, "websocket upgrade expected"));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
        != Some(b"13")
    {
        let mut res = plain(
            StatusCode::UPGRADE_REQUIRED,
            "websocket version 13 required",
        );
        res.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return Ok(res);
    }

    // Credentials go through the same layer that guards frames; its 401 is the answer.
    let accept = {
        let ctx = ctx.clone();
        tower::service_fn(move |req: HttpRequest<Incoming>| {
            let ctx = ctx.clone();
            async move { Ok::<_, Infallible>(accept(req, peer, port, ctx)) }
        })
    };
    let mut guarded = tower::Layer::layer(&ctx.auth, accept);
    let res = match guarded.ready().await {
        Ok(svc) => svc.call(req).await,
        Err(error) => Err(error),
    };
    Ok(res.unwrap_or_else(|error| {
        tracing::warn!(%error, "handshake service failed");
        plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    }))
}

fn accept<V: TokenVerifier>(
    mut req: HttpRequest<Incoming>,
    peer: SocketAddr,
    port: u16,
    ctx: Arc<WsContext<V>>,
) -> Response<Body> {
    let Some(identity) = req.extensions_mut().remove::<Identity>() else {
        return <HttpRequest<Incoming> as AuthTarget<Response<Body>>>::reject(
            &req,
            &crate::layer::auth::AuthError::Missing,
        );
    };
    let headers = req.headers();
    let offered = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find_map(|p| match p {
            "json" => Some(Codec::Json),
            "proto" => Some(Codec::Proto),
            _ => None,
        });
    let device = query_param(req.uri().query(), "deviceType").or_else(|| {
        let value = headers.get("x-device-type")?.to_str().ok()?;
        Some(value.to_string())
    });
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| tokio_tungstenite::tungstenite::handshake::derive_accept_key(k.as_bytes()))
        .unwrap_or_default();

    let mut res = Response::new(Body::default());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&key) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if let Some(codec) = offered {
        let name = match codec {
            Codec::Json => "json",
            Codec::Proto => "proto",
        };
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(name),
        );
    }

    let info = ConnectionInfo {
        transport: Transport::WebSocket,
        peer,
        local_port: port,
        codec: Some(offered.unwrap_or(ctx.settings.default_codec)),
        handshake_device: device,
    };
    let tracker = ctx.tracker.clone();
    tracker.spawn(run(req, info, identity, ctx));
    res
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| {
            percent_encoding::percent_decode_str(v)
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

async fn run<V: TokenVerifier>(
    req: HttpRequest<Incoming>,
    info: ConnectionInfo,
    identity: Identity,
    ctx: Arc<WsContext<V>>,
) {
    let settings = ctx.settings.clone();
    let conn = Arc::new(
        Connection::new(
            info,
            settings.default_codec,
            settings.wire,
            settings.outbound_queue,
        )
        .with_outbound_bytes(settings.outbound_queue_bytes),
    );
    let _ = conn.set_identity(identity);
    let span = tracing::debug_span!(
        "conn",
        transport = "ws",
        peer = %conn.info().peer,
        conn.id = conn.id(),
        user.id = tracing::field::Empty,
        device.type = tracing::field::Empty,
    );
    async move {
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(upgraded) => upgraded,
            Err(error) => {
                tracing::debug!(%error, "upgrade failed");
                return;
            }
        };
        let _guard = ctx.gauge.enter();
        let config = WebSocketConfig::default()
            .read_buffer_size(settings.ws_read_buffer)
            // Frames fed in one batch collect up to this size before a write; the flush at the
            // end of the batch writes the rest.
            .write_buffer_size(settings.ws_write_buffer)
            .max_write_buffer_size(usize::MAX)
            .max_message_size(Some(settings.max_frame_size))
            .max_frame_size(Some(settings.max_frame_size));
        let socket =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        let (sink, stream) = socket.split();
        tracing::debug!("accepted");
        let reader = WsReader { stream };
        let svc = (ctx.stack)();
        let login = settings.login_timeout;
        let shutdown = ctx.shutdown.clone();
        drive(
            conn,
            svc,
            reader,
            WsSink { sink },
            &settings,
            login,
            shutdown,
        )
        .await;
        tracing::debug!("closed");
    }
    .instrument(span)
    .await
}

struct WsReader {
    stream: SplitStream<Socket>,
}

impl futures_util::Stream for WsReader {
    type Item = Inbound;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Inbound>> {
        use std::task::Poll;
        loop {
            let item = match self.stream.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Ready(Some(item)) => item,
            };
            let inbound = match item {
                Ok(Message::Text(text)) => Inbound::Frame(Some(Codec::Json), Bytes::from(text)),
                Ok(Message::Binary(bytes)) => Inbound::Frame(Some(Codec::Proto), bytes),
                Ok(Message::Ping(_) | Message::Pong(_)) => Inbound::Alive,
                // Tungstenite has queued the answer to the client's Close (1002 for a code
                // that is not allowed); the writer still has to flush it.
                Ok(Message::Close(_)) => Inbound::PeerClosed,
                Ok(Message::Frame(_)) => continue,
                Err(error) => match failure(error) {
                    Some(inbound) => inbound,
                    None => return Poll::Ready(None),
                },
            };
            return Poll::Ready(Some(inbound));
        }
    }
}

/// Maps a read error to the close the contract asks for; `None` when the socket is gone.
fn failure(error: WsError) -> Option<Inbound> {
    let too_big = FrameError {
        reason: Reason::TooBig,
        message: "message larger than the size limit".into(),
        request_id: None,
    };
    match error {
        WsError::Capacity(CapacityError::MessageTooLong { .. }) => {
            Some(Inbound::Fail(Some(too_big), Close::TOO_BIG))
        }
        WsError::Utf8(_) => Some(Inbound::Fail(None, Close::INVALID_UTF8)),
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => None,
        WsError::Protocol(_) => Some(Inbound::Fail(None, Close::PROTOCOL_ERROR)),
        _ => None,
    }
}

struct WsSink {
    sink: SplitSink<Socket, Message>,
}

fn io_error(error: WsError) -> std::io::Error {
    std::io::Error::other(error)
}

impl FrameSink for WsSink {
    async fn write_batch(&mut self, codec: Codec, batch: &mut Vec<Bytes>) -> std::io::Result<()> {
        for frame in batch.drain(..) {
            let message = match codec {
                Codec::Json => match Utf8Bytes::try_from(frame) {
                    Ok(text) => Message::Text(text),
                    Err(_) => continue,
                },
                Codec::Proto => Message::Binary(frame),
            };
            self.sink.feed(message).await.map_err(io_error)?;
        }
        self.sink.flush().await.map_err(io_error)
    }

    async fn close(&mut self, close: Option<&Close>) {
        if let Some(close) = close {
            let frame = CloseFrame {
                code: CloseCode::from(close.code),
                reason: Utf8Bytes::from(close.reason.as_ref()),
            };
            let _ = self.sink.send(Message::Close(Some(frame))).await;
        }
        let _ = self.sink.close().await;
    }
}
