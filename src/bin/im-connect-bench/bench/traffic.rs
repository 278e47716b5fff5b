//! Moving messages: one reader task per connection counts and times what arrives, and one
//! pacer task writes every connection's messages, so sending costs one task however many
//! connections there are.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::sync::CancellationToken;

use super::client::Target;
use super::stats::{Clock, Counters, Latency};
use super::wire::{self, FrameKind, Template};

/// Bytes a connection may have waiting in the generator before the pacer stops adding to it:
/// past this the server is not keeping up, and queueing more would only measure our buffer.
const MAX_PENDING: usize = 256 * 1024;

/// Per-message record of a fan-out: how many receivers got it and the slowest one's latency.
#[derive(Debug)]
pub(crate) struct Arrivals {
    count: Vec<AtomicU32>,
    slowest_ns: Vec<AtomicU64>,
}

impl Arrivals {
    /// Room for messages `0..capacity`; later ones are counted but not tracked.
    pub(crate) fn new(capacity: usize) -> Self {
        Arrivals {
            count: (0..capacity).map(|_| AtomicU32::new(0)).collect(),
            slowest_ns: (0..capacity).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn record(&self, seq: u64, latency_ns: u64) {
        let Ok(seq) = usize::try_from(seq) else {
            return;
        };
        if let (Some(count), Some(slowest)) = (self.count.get(seq), self.slowest_ns.get(seq)) {
            count.fetch_add(1, Ordering::Relaxed);
            slowest.fetch_max(latency_ns, Ordering::Relaxed);
        }
    }

    /// For messages `0..sent`: the latency to the last receiver of each message every one of
    /// `receivers` got, and how many messages some receiver missed.
    pub(crate) fn last_receiver(&self, sent: u64, receivers: u32) -> (Vec<u64>, u64) {
        let tracked = (sent as usize).min(self.count.len());
        let mut complete = Vec::with_capacity(tracked);
        let mut incomplete = 0;
        for seq in 0..tracked {
            if self.count[seq].load(Ordering::Relaxed) >= receivers {
                complete.push(self.slowest_ns[seq].load(Ordering::Relaxed));
            } else {
                incomplete += 1;
            }
        }
        (complete, incomplete)
    }
}

/// What every reader of a run shares.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Codec, transport and code numbers.
    pub(crate) target: Arc<Target>,
    /// Run counters.
    pub(crate) counters: Arc<Counters>,
    /// End-to-end latency of every delivery.
    pub(crate) latency: Latency,
    /// The stamp clock.
    pub(crate) clock: Clock,
    /// Messages stamped before this are warm-up: counted, not timed.
    pub(crate) record_from_ns: AtomicU64,
    /// The code deliveries carry (SINGLE_MESSAGE or GROUP_MESSAGE).
    pub(crate) delivery_code: i32,
    /// ACKs received per connection, for the pacer's window.
    pub(crate) acks: Vec<AtomicU64>,
    /// Per-message fan-out tracking.
    pub(crate) arrivals: Option<Arrivals>,
    /// Stops the readers.
    pub(crate) stop: CancellationToken,
}

impl Shared {
    /// State for `connections` readers.
    pub(crate) fn new(
        target: Arc<Target>,
        delivery_code: i32,
        connections: usize,
        arrivals: Option<Arrivals>,
    ) -> Arc<Shared> {
        Arc::new(Shared {
            target,
            counters: Arc::default(),
            latency: Latency::default(),
            clock: Clock::start(),
            record_from_ns: AtomicU64::new(0),
            delivery_code,
            acks: (0..connections).map(|_| AtomicU64::new(0)).collect(),
            arrivals,
            stop: CancellationToken::new(),
        })
    }

    /// Waits until `delivered` and `acks` reach their expected totals, or `limit` passes.
    pub(crate) async fn drain(&self, delivered: u64, acks: u64, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            let c = &self.counters;
            if Counters::get(&c.delivered) >= delivered && Counters::get(&c.acks) >= acks {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Reads connection `index` until the run stops or the server closes it.
pub(crate) async fn read_loop(
    shared: Arc<Shared>,
    index: usize,
    mut read: OwnedReadHalf,
    mut buf: BytesMut,
) {
    let target = &shared.target;
    let counters = &shared.counters;
    let mut samples = Vec::new();
    loop {
        let now = shared.clock.now_ns();
        let record_from = shared.record_from_ns.load(Ordering::Relaxed);
        let (mut delivered, mut acks, mut beats) = (0, 0, 0);
        loop {
            let parsed = match wire::parse(target.transport, &buf) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => break,
                Err(_) => {
                    Counters::add(&counters.closed, 1);
                    return;
                }
            };
            if parsed.kind == FrameKind::Close {
                Counters::add(&counters.closed, 1);
                return;
            }
            let head = match parsed.kind {
                FrameKind::Data => wire::head(target.codec, &buf[parsed.payload.clone()]),
                _ => None,
            };
            buf.advance(parsed.consumed);
            let Some(head) = head else { continue };
            let codes = &target.codes;
            if head.code == shared.delivery_code {
                delivered += 1;
                if let Some((seq, sent_ns)) = head.stamp {
                    let latency = now.saturating_sub(sent_ns);
                    if sent_ns >= record_from {
                        samples.push(latency);
                    }
                    if let Some(arrivals) = &shared.arrivals {
                        arrivals.record(seq, latency);
                    }
                }
            } else if head.code == codes.ack {
                acks += 1;
            } else if head.code == codes.heart_beat_reply || head.code == codes.refresh_token {
                beats += 1;
            } else if head.code == codes.error {
                Counters::add(&counters.errors, 1);
            }
        }
        Counters::add(&counters.delivered, delivered);
        Counters::add(&counters.acks, acks);
        Counters::add(&counters.heartbeat_replies, beats);
        shared.acks[index].fetch_add(acks, Ordering::Relaxed);
        shared.latency.record_all(&samples);
        samples.clear();

        buf.reserve(8 * 1024);
        tokio::select! {
            _ = shared.stop.cancelled() => return,
            read = read.read_buf(&mut buf) => if !matches!(read, Ok(n) if n > 0) {
                Counters::add(&counters.closed, 1);
                return;
            },
        }
    }
}

/// One connection's sending side.
#[derive(Debug)]
pub(crate) struct Outlet {
    /// The socket's write half.
    pub(crate) write: OwnedWriteHalf,
    /// The message this connection sends.
    pub(crate) template: Option<Template>,
    /// Bytes stamped and not yet written.
    pub(crate) pending: BytesMut,
}

/// How the pacer sends.
#[derive(Debug, Clone)]
pub(crate) struct Pace {
    /// Messages per second over all connections; 0 sends as fast as the window allows.
    pub(crate) rate: f64,
    /// Unacknowledged messages each connection may have when `rate` is 0.
    pub(crate) window: u64,
    /// How long to send.
    pub(crate) duration: Duration,
    /// Sending time whose messages are not timed.
    pub(crate) warmup: Duration,
    /// A heartbeat frame, sent on every connection this often.
    pub(crate) heartbeat: (Vec<u8>, Duration),
}

/// What the pacer did.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Paced {
    /// Messages stamped (and, once it returns, written).
    pub(crate) sent: u64,
    /// Nanoseconds on the run clock when the warm-up ended, and deliveries by then.
    pub(crate) warm: (u64, u64),
    /// Nanoseconds on the run clock when sending stopped, and deliveries by then.
    pub(crate) end: (u64, u64),
}

/// Writes messages on `outlets` as `pace` says, every millisecond, batching whatever is due
/// on a connection into one write.
pub(crate) async fn pace(
    outlets: &mut [Outlet],
    pace: &Pace,
    shared: &Shared,
) -> std::io::Result<Paced> {
    let clock = shared.clock;
    let counters = &shared.counters;
    let start = clock.now_ns();
    let warm_at = start + pace.warmup.as_nanos() as u64;
    let end_at = start + (pace.warmup + pace.duration).as_nanos() as u64;
    shared.record_from_ns.store(warm_at, Ordering::Relaxed);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut sent_by = vec![0u64; outlets.len()];
    let (mut seq, mut next) = (0u64, 0usize);
    let mut warm = None;
    let beat_every = pace.heartbeat.1.as_nanos() as u64;
    let mut next_beat = start + beat_every;

    loop {
        tick.tick().await;
        let now = clock.now_ns();
        if now >= end_at {
            break;
        }
        if warm.is_none() && now >= warm_at {
            warm = Some((now, Counters::get(&counters.delivered)));
        }
        if pace.rate > 0.0 {
            let due = ((now - start) as f64 * pace.rate / 1e9) as u64;
            let mut idle = 0;
            while seq < due && idle < outlets.len() {
                let i = next;
                next = (next + 1) % outlets.len();
                let outlet = &mut outlets[i];
                match &outlet.template {
                    Some(t) if outlet.pending.len() < MAX_PENDING => {
                        t.stamp_into(&mut outlet.pending, seq, now);
                        seq += 1;
                        idle = 0;
                    }
                    _ => idle += 1,
                }
            }
        } else {
            for (i, outlet) in outlets.iter_mut().enumerate() {
                let Some(t) = &outlet.template else { continue };
                let acked = shared.acks[i].load(Ordering::Relaxed);
                while sent_by[i] - acked.min(sent_by[i]) < pace.window
                    && outlet.pending.len() < MAX_PENDING
                {
                    t.stamp_into(&mut outlet.pending, seq, now);
                    sent_by[i] += 1;
                    seq += 1;
                }
            }
        }
        if now >= next_beat {
            for outlet in outlets.iter_mut() {
                outlet.pending.extend_from_slice(&pace.heartbeat.0);
            }
            Counters::add(&counters.heartbeats, outlets.len() as u64);
            next_beat += beat_every;
        }
        counters.sent.store(seq, Ordering::Relaxed);
        for outlet in outlets.iter_mut().filter(|o| !o.pending.is_empty()) {
            match outlet.write.try_write(&outlet.pending) {
                Ok(n) => outlet.pending.advance(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }
    let end = (clock.now_ns(), Counters::get(&counters.delivered));
    for outlet in outlets.iter_mut() {
        use tokio::io::AsyncWriteExt;
        outlet.write.write_all(&outlet.pending).await?;
        outlet.pending.clear();
    }
    Ok(Paced {
        sent: seq,
        warm: warm.unwrap_or((start, 0)),
        end,
    })
}

/// Splits each client: its read half goes to a reader task, its write half (with the message
/// it is to send) to the returned outlets.
pub(crate) fn start(
    clients: Vec<super::client::Client>,
    mut templates: Vec<Option<Template>>,
    shared: &Arc<Shared>,
) -> (Vec<Outlet>, Vec<tokio::task::JoinHandle<()>>) {
    let mut outlets = Vec::with_capacity(clients.len());
    let mut readers = Vec::with_capacity(clients.len());
    for (index, client) in clients.into_iter().enumerate() {
        let (read, write) = client.stream.into_split();
        readers.push(tokio::spawn(read_loop(
            shared.clone(),
            index,
            read,
            client.buf,
        )));
        outlets.push(Outlet {
            write,
            template: templates.get_mut(index).and_then(Option::take),
            pending: BytesMut::new(),
        });
    }
    (outlets, readers)
}

/// Stops the readers and waits for them.
pub(crate) async fn stop(shared: &Shared, readers: Vec<tokio::task::JoinHandle<()>>) {
    shared.stop.cancel();
    for reader in readers {
        let _ = reader.await;
    }
}
