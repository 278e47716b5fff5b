//! TCP: each frame is a 4-byte big-endian length (not counting itself) and that many payload
//! bytes, both directions. The payload codec is detected from the first frame.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::driver::{drive, FrameSink, Inbound};
use super::{PortGauge, StackFactory, TransportSettings};
use crate::protocol::{Codec, FrameError, Reason};
use crate::session::{Close, Connection, ConnectionInfo, Transport};

// Reads start small and grow only for large frames, so idle connections stay cheap.
const READ_BUFFER: usize = 256;

/// Accepts TCP connections on `listener` until `shutdown`, running each on `tracker`.
pub async fn serve(
    listener: TcpListener,
    stack: StackFactory,
    settings: Arc<TransportSettings>,
    gauge: Arc<PortGauge>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (socket, peer) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                // Out of file descriptors and similar: back off instead of spinning.
                tracing::warn!(%error, port, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let conn = connection(&stack, &settings, &gauge, &shutdown, port, socket, peer);
        tracker.spawn(conn);
    }
}

fn connection(
    stack: &StackFactory,
    settings: &Arc<TransportSettings>,
    gauge: &Arc<PortGauge>,
    shutdown: &CancellationToken,
    port: u16,
    socket: TcpStream,
    peer: SocketAddr,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let svc = stack();
    let settings = settings.clone();
    let shutdown = shutdown.clone();
    let guard = gauge.enter();
    let info = ConnectionInfo {
        transport: Transport::Tcp,
        peer,
        local_port: port,
        codec: None,
        handshake_device: None,
    };
    let conn = Arc::new(
        Connection::new(
            info,
            settings.default_codec,
            settings.wire,
            settings.outbound_queue,
        )
        .with_outbound_bytes(settings.outbound_queue_bytes),
    );
    let span = tracing::debug_span!(
        "conn",
        transport = "tcp",
        peer = %peer,
        conn.id = conn.id(),
        user.id = tracing::field::Empty,
        device.type = tracing::field::Empty,
    );
    async move {
        let _guard = guard;
        let _ = socket.set_nodelay(true);
        let (read, write) = socket.into_split();
        let codec = LengthDelimitedCodec::builder()
            .length_field_length(4)
            .max_frame_length(settings.max_frame_size)
            .new_codec();
        let reader = FramedRead::with_capacity(read, codec, READ_BUFFER).map(|item| match item {
            Ok(bytes) if bytes.is_empty() => Inbound::Fail(
                Some(frame_error(Reason::BadFrame, "empty frame")),
                Close::new(1008, "empty frame"),
            ),
            Ok(bytes) => Inbound::Frame(None, bytes.freeze()),
            Err(error) if error.kind() == io::ErrorKind::InvalidData => Inbound::Fail(
                Some(frame_error(
                    Reason::TooBig,
                    "frame larger than the size limit",
                )),
                Close::TOO_BIG,
            ),
            Err(_) => Inbound::Fail(None, Close::new(1002, "read error")),
        });
        tracing::debug!("accepted");
        // On TCP the first frame is the login, so it has the handshake deadline.
        let login = settings.handshake_timeout;
        drive(
            conn,
            svc,
            reader,
            TcpSink { write },
            &settings,
            login,
            shutdown,
        )
        .await;
        tracing::debug!("closed");
    }
    .instrument(span)
}

fn frame_error(reason: Reason, message: &str) -> FrameError {
    FrameError {
        reason,
        message: message.into(),
        request_id: None,
    }
}

struct TcpSink {
    write: OwnedWriteHalf,
}

impl FrameSink for TcpSink {
    async fn write_batch(&mut self, _codec: Codec, batch: &mut Vec<Bytes>) -> io::Result<()> {
        if let [single] = batch.as_slice() {
            let len = (single.len() as u32).to_be_bytes();
            let mut bufs = [io::IoSlice::new(&len), io::IoSlice::new(single)];
            return write_all_vectored(&mut self.write, &mut bufs).await;
        }
        let total: usize = batch.iter().map(|b| b.len() + 4).sum();
        let mut buf = BytesMut::with_capacity(total);
        for frame in batch.iter() {
            buf.put_u32(frame.len() as u32);
            buf.put_slice(frame);
        }
        self.write.write_all(&buf).await
    }

    async fn close(&mut self, _close: Option<&Close>) {
        let _ = self.write.shutdown().await;
    }
}

async fn write_all_vectored(
    write: &mut OwnedWriteHalf,
    mut bufs: &mut [io::IoSlice<'_>],
) -> io::Result<()> {
    while !bufs.is_empty() {
        let n = write.write_vectored(bufs).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        io::IoSlice::advance_slices(&mut bufs, n);
    }
    Ok(())
}
