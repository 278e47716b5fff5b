//! The per-connection loop both transports share.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tower::{Service, ServiceExt};

use super::{ConnectionService, TransportSettings};
use crate::protocol::{Codec, Envelope, FrameError};
use crate::request::{Reply, Request};
use crate::session::{Close, Connection};

/// What the read half of a transport produced.
#[derive(Debug)]
pub(crate) enum Inbound {
    /// A complete frame; `codec` is set when the transport knows it from framing (WebSocket
    /// text or binary), else the connection's codec applies.
    Frame(Option<Codec>, Bytes),
    /// Traffic that proves liveness but carries no frame (ping, pong).
    Alive,
    /// The client started the closing handshake (a WebSocket Close frame).
    PeerClosed,
    /// The stream is unusable: answer with `error` if given, then close.
    Fail(Option<FrameError>, Close),
}

/// The write half of a transport.
pub(crate) trait FrameSink: Send {
    /// Writes every frame in `batch` (encoded with `codec`) and flushes once.
    fn write_batch(
        &mut self,
        codec: Codec,
        batch: &mut Vec<Bytes>,
    ) -> impl Future<Output = std::io::Result<()>> + Send;

    /// Sends the close (a Close frame on WebSocket) and shuts the socket down. `None`
    /// completes a closing handshake the client started.
    fn close(&mut self, close: Option<&Close>) -> impl Future<Output = ()> + Send;
}

/// How long a closed connection keeps reading (and discarding) what the client still sends.
/// Closing a socket with unread input makes the kernel answer with a reset, which can destroy
/// the Close frame or ERROR just written before the client reads it.
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs one connection until it closes: reads frames through `svc`, writes replies and
/// deliveries, enforces the idle and login deadlines, and obeys `shutdown`.
pub(crate) async fn drive<R, W>(
    conn: Arc<Connection>,
    mut svc: ConnectionService,
    mut reader: R,
    mut writer: W,
    settings: &TransportSettings,
    login_timeout: std::time::Duration,
    shutdown: CancellationToken,
) where
    R: futures_util::Stream<Item = Inbound> + Unpin,
    W: FrameSink,
{
    let metrics = &*settings.metrics;
    let mut inflight: FuturesUnordered<Timed<<ConnectionService as Service<Request>>::Future>> =
        FuturesUnordered::new();
    let mut batch = Vec::new();
    let mut delivered_at = None;
    let started = Instant::now();
    let mut last_seen = started;
    let login_deadline = started + login_timeout;
    let timer = sleep_until(login_deadline.min(started + settings.idle_timeout));
    tokio::pin!(timer);
    let mut linger = false;

    loop {
        let reading = !conn.outbox().is_closing() && inflight.len() < settings.max_inflight;
        tokio::select! {
            biased;
            _ = shutdown.cancelled(), if !conn.outbox().is_closing() => {
                conn.close(Close::GOING_AWAY);
            }
            close = conn.outbox().next_batch_marked(&mut batch, &mut delivered_at) => {
                let codec = conn.codec();
                let written = tokio::time::timeout(
                    settings.write_timeout,
                    writer.write_batch(codec, &mut batch),
                ).await;
                batch.clear();
                if !matches!(written, Ok(Ok(()))) {
                    tracing::debug!("write failed or timed out");
                    break;
                }
                if let Some(at) = delivered_at.take() {
                    metrics.delivery_written(at.elapsed());
                }
                if let Some(close) = close {
                    metrics.closed(close.code);
                    tracing::debug!(close.code = close.code, close.reason = %close.reason, "closing");
                    let closing = writer.close(Some(&close));
                    let _ = tokio::time::timeout(settings.write_timeout, closing).await;
                    linger = true;
                    break;
                }
            }
            Some((result, arrived)) = inflight.next() => {
                let reply = result.unwrap_or_else(|error| {
                    tracing::warn!(%error, "request failed");
                    Reply::frame(Envelope::error(crate::protocol::Reason::Internal, "internal error"))
                });
                metrics.frame_handled(arrived.elapsed());
                if let Some(frame) = &reply.frame {
                    metrics.reply(frame.kind(), reply.reason());
                }
                send_reply(&conn, reply);
            }
            inbound = reader.next(), if reading => {
                match inbound {
                    Some(Inbound::Frame(codec, bytes)) => {
                        last_seen = Instant::now();
                        let codec = codec.unwrap_or_else(|| conn.detect_codec(detect(&bytes)));
                        match conn.wire().decode_client(codec, &bytes) {
                            Ok(mut frame) => {
                                // Every reply carries a request id, so give one to requests
                                // that came without.
                                frame.ensure_request_id();
                                tracing::trace!(kind = ?frame.kind(), "frame");
                                metrics.frame_in(frame.kind());
                                if svc.ready().await.is_err() {
                                    break;
                                }
                                inflight.push(Timed {
                                    inner: svc.call(Request::new(frame, conn.clone())),
                                    arrived: last_seen,
                                });
                            }
                            Err(error) => {
                                metrics.frame_in(None);
                                metrics.reply(Some(crate::protocol::Kind::Error), Some(error.reason.as_str()));
                                refuse(&conn, error);
                            }
                        }
                    }
                    Some(Inbound::Alive) => last_seen = Instant::now(),
                    Some(Inbound::PeerClosed) => {
                        tracing::debug!("closed by the client");
                        let closing = writer.close(None);
                        let _ = tokio::time::timeout(settings.write_timeout, closing).await;
                        break;
                    }
                    Some(Inbound::Fail(error, close)) => {
                        if let Some(error) = error {
                            let _ = conn.send(&error.to_envelope());
                        }
                        conn.close(close);
                    }
                    None => break,
                }
            }
            () = &mut timer => {
                let now = Instant::now();
                let idle_at = last_seen + settings.idle_timeout;
                let bound = conn.is_bound();
                if !bound && now >= login_deadline {
                    conn.close(Close::new(1008, "login timeout"));
                } else if now >= idle_at {
                    conn.close(Close::HEARTBEAT_TIMEOUT);
                }
                let next = if bound { idle_at } else { idle_at.min(login_deadline) };
                timer.as_mut().reset(next.max(now + std::time::Duration::from_millis(10)));
            }
        }
    }
    // Whichever way it ended, the connection's binding goes with it.
    drop(conn.unbind());
    if linger {
        let drained = async { while reader.next().await.is_some() {} };
        let _ = tokio::time::timeout(LINGER, drained).await;
    }
}

pin_project_lite::pin_project! {
    /// A request in flight, yielding its result with the instant its frame arrived (for the
    /// frame handling latency).
    struct Timed<F> {
        #[pin]
        inner: F,
        arrived: Instant,
    }
}

impl<F: Future> Future for Timed<F> {
    type Output = (F::Output, Instant);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let output = ready!(this.inner.poll(cx));
        Poll::Ready((output, *this.arrived))
    }
}

/// A frame that could not be decoded gets its ERROR; a connection nobody has logged in is
/// also closed, since nothing it sends can be trusted to be a client of ours.
fn refuse(conn: &Connection, error: FrameError) {
    tracing::debug!(reason = %error.reason, %error, "frame refused");
    let _ = conn.send(&error.to_envelope());
    if conn.identity().is_none() {
        conn.close(Close::new(1008, "bad first frame"));
    }
}

fn send_reply(conn: &Connection, reply: Reply) {
    if let Some(frame) = &reply.frame {
        let _ = conn.send(frame);
    }
    if let Some(close) = reply.close {
        conn.close(close);
    }
}

/// A payload whose first non-whitespace byte is `{` is JSON; a protobuf envelope never starts
/// that way.
pub(crate) fn detect(bytes: &[u8]) -> Codec {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => Codec::Json,
        _ => Codec::Proto,
    }
}
