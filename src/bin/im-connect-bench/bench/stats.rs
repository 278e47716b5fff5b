//! Counters, latency histograms and the server's memory.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use parking_lot::Mutex;

/// Latencies are recorded in nanoseconds up to this bound; longer ones are clamped to it.
const MAX_LATENCY_NS: u64 = 120_000_000_000;

/// Percentiles of one latency histogram, in microseconds.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct LatencySummary {
    /// Values recorded.
    pub(crate) count: u64,
    /// Median.
    pub(crate) p50_us: f64,
    /// 99th percentile.
    pub(crate) p99_us: f64,
    /// 99.9th percentile.
    pub(crate) p999_us: f64,
    /// Largest value.
    pub(crate) max_us: f64,
    /// Mean.
    pub(crate) mean_us: f64,
}

impl std::fmt::Display for LatencySummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50 {:.0} us, p99 {:.0} us, p99.9 {:.0} us, max {:.0} us ({} samples)",
            self.p50_us, self.p99_us, self.p999_us, self.max_us, self.count
        )
    }
}

/// A histogram shared by the tasks of one run. The generator runs on one thread, so the lock
/// is never contended there; readers record a whole read's worth of samples per lock.
#[derive(Debug)]
pub(crate) struct Latency {
    hist: Mutex<Histogram<u64>>,
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            hist: Mutex::new(
                Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).expect("valid histogram bounds"),
            ),
        }
    }
}

impl Latency {
    /// Records every sample in `ns`.
    pub(crate) fn record_all(&self, ns: &[u64]) {
        if ns.is_empty() {
            return;
        }
        let mut hist = self.hist.lock();
        for &value in ns {
            hist.saturating_record(value.clamp(1, MAX_LATENCY_NS));
        }
    }

    /// The percentiles so far.
    pub(crate) fn summary(&self) -> LatencySummary {
        let hist = self.hist.lock();
        let us = |ns: u64| ns as f64 / 1000.0;
        LatencySummary {
            count: hist.len(),
            p50_us: us(hist.value_at_quantile(0.5)),
            p99_us: us(hist.value_at_quantile(0.99)),
            p999_us: us(hist.value_at_quantile(0.999)),
            max_us: us(hist.max()),
            mean_us: hist.mean() / 1000.0,
        }
    }
}

/// The clock every stamp is measured against.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    epoch: Instant,
}

impl Clock {
    /// A clock starting now.
    pub(crate) fn start() -> Self {
        Clock {
            epoch: Instant::now(),
        }
    }

    /// Nanoseconds since the start.
    pub(crate) fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Time since the start.
    pub(crate) fn elapsed(&self) -> Duration {
        self.epoch.elapsed()
    }
}

/// Message counters of one run, read by the progress line and the summary.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Messages written.
    pub(crate) sent: AtomicU64,
    /// Messages received by their recipients.
    pub(crate) delivered: AtomicU64,
    /// ACKs received by senders.
    pub(crate) acks: AtomicU64,
    /// ERROR frames received.
    pub(crate) errors: AtomicU64,
    /// Heartbeats written.
    pub(crate) heartbeats: AtomicU64,
    /// Heartbeat replies (or REFRESH_TOKEN) received.
    pub(crate) heartbeat_replies: AtomicU64,
    /// Connections the server closed during the run.
    pub(crate) closed: AtomicU64,
}

impl Counters {
    /// Reads one counter.
    pub(crate) fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Adds to one counter.
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Resident memory of process `pid` in KiB (`VmRSS` of `/proc/<pid>/status`).
pub(crate) fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status =
        std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("cannot read {path}: {e}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS line in {path}"))
}

/// Prints a progress line to stderr every `every` until the returned task is aborted.
pub(crate) fn progress(
    every: Option<Duration>,
    label: &'static str,
    clock: Clock,
    counters: std::sync::Arc<Counters>,
) -> Option<tokio::task::JoinHandle<()>> {
    let every = every?;
    Some(tokio::spawn(async move {
        let mut last = (0u64, clock.elapsed());
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            let delivered = Counters::get(&counters.delivered);
            let now = clock.elapsed();
            let rate = (delivered - last.0) as f64 / (now - last.1).as_secs_f64();
            eprintln!(
                "{label}: {:6.1} s  sent {}  delivered {} ({rate:.0}/s)  acks {}  errors {}",
                now.as_secs_f64(),
                Counters::get(&counters.sent),
                delivered,
                Counters::get(&counters.acks),
                Counters::get(&counters.errors),
            );
            last = (delivered, now);
        }
    }))
}

/// CPU time (user + system) process `pid` has used, in seconds; `None` for `pid` `None`.
pub(crate) fn cpu_secs(pid: Option<u32>) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid?)).ok()?;
    // The command name may hold spaces; the fields after its closing parenthesis do not.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<f64>().ok();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name; the
    // kernel counts them in USER_HZ, which is 100 on Linux.
    Some((ticks(11)? + ticks(12)?) / 100.0)
}

/// Share of one core processes used between two [`CpuMark`]s.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuMark {
    at: Instant,
    server: Option<f64>,
    generator: Option<f64>,
}

impl CpuMark {
    /// CPU times of the server (`pid`) and of this process now.
    pub(crate) fn now(pid: Option<u32>) -> Self {
        CpuMark {
            at: Instant::now(),
            server: cpu_secs(pid),
            generator: cpu_secs(Some(std::process::id())),
        }
    }

    /// Cores used by (server, generator) from `self` until `later`.
    pub(crate) fn until(&self, later: &CpuMark) -> (Option<f64>, Option<f64>) {
        let wall = later.at.duration_since(self.at).as_secs_f64().max(1e-9);
        let share = |a: Option<f64>, b: Option<f64>| Some((b? - a?) / wall);
        (
            share(self.server, later.server),
            share(self.generator, later.generator),
        )
    }
}
