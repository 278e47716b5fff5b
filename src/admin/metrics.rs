//! The node's Prometheus metrics.
//!
//! Each node owns a [`Metrics`] with its own recorder, never the process-wide one, so several
//! nodes in one process (tests, an embedding application) keep separate figures. The hot paths
//! hold cached handles: counting a frame is one atomic add, no lookup, lock or allocation.
//! Figures that other parts already keep (registry counts, delivery totals, backend health)
//! are read when `/metrics` is scraped, so they cost nothing per frame.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Level, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use crate::backend::Health;
use crate::protocol::{Codec, Kind};
use crate::session::Transport;

/// Latency buckets, in seconds: 50 µs to 5 s.
const LATENCY_BUCKETS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
];

/// One slot per [`Kind`] plus one for codes outside the table.
const KIND_SLOTS: usize = Kind::ALL.len() + 1;

const TRANSPORTS: [Transport; 2] = [Transport::WebSocket, Transport::Tcp];
const CODECS: [Codec; 2] = [Codec::Json, Codec::Proto];

/// Everything `/metrics` reads from the node when it is scraped.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Logged-in connections by transport and codec.
    pub sessions: Vec<(Transport, Codec, usize)>,
    /// Accepted connections by transport, logged in or not.
    pub open: Vec<(Transport, usize)>,
    /// Users with at least one logged-in connection.
    pub online_users: usize,
    /// Frames queued to connections by downstream delivery, since start.
    pub deliveries: u64,
    /// Downstream messages dropped as duplicates, since start.
    pub duplicates: u64,
    /// Health of each backend by name.
    pub backends: Vec<(&'static str, Health)>,
}

/// Counters, gauges and histograms of one node.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    frames_in: [Counter; KIND_SLOTS],
    frames_out: [Counter; KIND_SLOTS],
    frame_seconds: Histogram,
    delivery_seconds: Histogram,
    logins: Counter,
    kicks: Counter,
    heartbeat_timeouts: Counter,
    slow_consumers: Counter,
    rate_limited: Counter,
    // Kept as a plain atomic as well, since the console's message rate reads it.
    publishes: AtomicU64,
    publishes_total: Counter,
    acks: Counter,
    publish_errors: Counter,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("publishes", &self.publishes)
            .finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh set of metrics with its own recorder.
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&LATENCY_BUCKETS)
            .expect("the bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        let r = Register(&recorder);

        // Clients cannot send the server's kinds (they are refused before counting), so those
        // get no series in.
        let frames_in = kind_counters(&r, "im_frames_in_total", Kind::from_client);
        let frames_out = kind_counters(&r, "im_frames_out_total", |_| true);
        r.describe(
            "im_frames_in_total",
            "Frames received from clients and decoded, by kind",
        );
        r.describe(
            "im_frames_out_total",
            "Frames queued to clients, replies and deliveries, by kind",
        );
        let metrics = Metrics {
            frame_seconds: r.histogram(
                "im_frame_handling_seconds",
                "Time from a decoded client frame to its reply",
            ),
            delivery_seconds: r.histogram(
                "im_delivery_write_seconds",
                "Time from a downstream message reaching the node to its socket write",
            ),
            logins: r.counter("im_logins_total", "Successful REGISTERs"),
            kicks: r.counter("im_kicks_total", "Connections closed with 4001 (kicked)"),
            heartbeat_timeouts: r.counter(
                "im_heartbeat_timeouts_total",
                "Connections closed with 4002 (no traffic within the heartbeat time)",
            ),
            slow_consumers: r.counter(
                "im_slow_consumer_closes_total",
                "Connections closed with 4004 (outbound queue full)",
            ),
            rate_limited: r.counter(
                "im_rate_limited_frames_total",
                "Frames refused by the rate limiter",
            ),
            publishes: AtomicU64::new(0),
            publishes_total: r.counter(
                "im_upstream_publishes_total",
                "Business messages handed to the broker",
            ),
            acks: r.counter(
                "im_upstream_acks_total",
                "Business messages the broker confirmed (ACK sent)",
            ),
            publish_errors: r.counter(
                "im_upstream_errors_total",
                "Business messages the broker refused or did not confirm in time",
            ),
            frames_in,
            frames_out,
            recorder,
            handle,
        };
        metrics.describe_snapshot();
        metrics
    }

    /// A shared set that belongs to no server, for parts built on their own (a delivery or
    /// transport outside [`Server`](crate::server::Server)). Nothing scrapes it, and its
    /// histograms discard their samples: nothing runs its upkeep, so they would pile up.
    pub fn detached() -> Arc<Metrics> {
        static DETACHED: OnceLock<Arc<Metrics>> = OnceLock::new();
        DETACHED
            .get_or_init(|| {
                let mut metrics = Metrics::new();
                metrics.frame_seconds = Histogram::noop();
                metrics.delivery_seconds = Histogram::noop();
                Arc::new(metrics)
            })
            .clone()
    }

    /// A client frame of `kind` (`None`: a code outside the table) was decoded.
    #[inline]
    pub fn frame_in(&self, kind: Option<Kind>) {
        self.frames_in[slot(kind)].increment(1);
    }

    /// `n` frames of `kind` were queued to clients.
    #[inline]
    pub fn frames_out(&self, kind: Option<Kind>, n: u64) {
        if n > 0 {
            self.frames_out[slot(kind)].increment(n);
        }
    }

    /// A reply is queued: counts it, and logins and rate-limit refusals among them.
    #[inline]
    pub fn reply(&self, kind: Option<Kind>, reason: Option<&str>) {
        self.frames_out(kind, 1);
        match kind {
            Some(Kind::RegisterReply) => self.logins.increment(1),
            Some(Kind::Error) if reason == Some("rate_limited") => self.rate_limited.increment(1),
            _ => {}
        }
    }

    /// A client frame was answered `elapsed` after it was decoded.
    #[inline]
    pub fn frame_handled(&self, elapsed: Duration) {
        self.frame_seconds.record(elapsed.as_secs_f64());
    }

    /// A socket write carried a downstream message `elapsed` after it reached the node.
    #[inline]
    pub fn delivery_written(&self, elapsed: Duration) {
        self.delivery_seconds.record(elapsed.as_secs_f64());
    }

    /// The server closed a connection with WebSocket close `code`.
    #[inline]
    pub fn closed(&self, code: u16) {
        match code {
            4001 => self.kicks.increment(1),
            4002 => self.heartbeat_timeouts.increment(1),
            4004 => self.slow_consumers.increment(1),
            _ => {}
        }
    }

    /// A business message went to the broker.
    #[inline]
    pub fn published(&self) {
        self.publishes.fetch_add(1, Ordering::Relaxed);
        self.publishes_total.increment(1);
    }

    /// The broker confirmed a business message.
    #[inline]
    pub fn acked(&self) {
        self.acks.increment(1);
    }

    /// The broker refused a business message or did not confirm it in time.
    #[inline]
    pub fn publish_failed(&self) {
        self.publish_errors.increment(1);
    }

    /// Business messages handed to the broker since start.
    pub fn publishes(&self) -> u64 {
        self.publishes.load(Ordering::Relaxed)
    }

    /// Drains histogram samples into their buckets; run it periodically, or samples pile up
    /// between scrapes.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// The Prometheus text exposition, after recording `snapshot`.
    pub fn render(&self, snapshot: &Snapshot) -> String {
        let r = Register(&self.recorder);
        for transport in TRANSPORTS {
            for codec in CODECS {
                let count = snapshot
                    .sessions
                    .iter()
                    .find(|(t, c, _)| *t == transport && *c == codec)
                    .map_or(0, |(_, _, n)| *n);
                let labels = [
                    ("transport", transport.as_str()),
                    ("codec", codec_name(codec)),
                ];
                r.gauge_with("im_connections", &labels).set(count as f64);
            }
            let open = snapshot
                .open
                .iter()
                .filter(|(t, _)| *t == transport)
                .map(|(_, n)| *n)
                .sum::<usize>();
            let labels = [("transport", transport.as_str())];
            r.gauge_with("im_open_connections", &labels)
                .set(open as f64);
        }
        r.gauge_with("im_online_users", &[])
            .set(snapshot.online_users as f64);
        r.counter_with("im_downstream_deliveries_total", &[])
            .absolute(snapshot.deliveries);
        r.counter_with("im_dedup_hits_total", &[])
            .absolute(snapshot.duplicates);
        for (name, health) in &snapshot.backends {
            let up = if health.is_up() { 1.0 } else { 0.0 };
            r.gauge_with("im_backend_up", &[("backend", name)]).set(up);
        }
        self.handle.render()
    }

    fn describe_snapshot(&self) {
        let r = Register(&self.recorder);
        let gauges = [
            (
                "im_connections",
                "Logged-in connections by transport and codec",
            ),
            (
                "im_open_connections",
                "Accepted connections by transport, logged in or not",
            ),
            ("im_online_users", "Users with a logged-in connection"),
            ("im_backend_up", "1 when the backend is reachable, else 0"),
        ];
        for (name, help) in gauges {
            self.recorder
                .describe_gauge(KeyName::from(name), None, help.into());
        }
        r.describe(
            "im_downstream_deliveries_total",
            "Frames queued to connections by downstream delivery",
        );
        r.describe(
            "im_dedup_hits_total",
            "Downstream messages dropped as duplicates of one seen within the window",
        );
    }
}

fn slot(kind: Option<Kind>) -> usize {
    kind.map_or(Kind::ALL.len(), |k| k as usize)
}

fn codec_name(codec: Codec) -> &'static str {
    match codec {
        Codec::Json => "json",
        Codec::Proto => "proto",
    }
}

fn kind_counters(
    r: &Register<'_>,
    name: &'static str,
    counted: impl Fn(Kind) -> bool,
) -> [Counter; KIND_SLOTS] {
    std::array::from_fn(|i| {
        let kind = Kind::ALL.iter().copied().find(|k| *k as usize == i);
        match kind {
            Some(kind) if !counted(kind) => Counter::noop(),
            Some(kind) => r.counter_with(name, &[("kind", kind.snake_name())]),
            None => r.counter_with(name, &[("kind", "other")]),
        }
    })
}

/// Registration shorthand over a recorder.
struct Register<'a>(&'a PrometheusRecorder);

impl Register<'_> {
    fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
        let labels: Vec<Label> = labels
            .iter()
            .map(|(k, v)| Label::new(*k, v.to_string()))
            .collect();
        Key::from_parts(name, labels)
    }

    fn metadata() -> Metadata<'static> {
        Metadata::new(module_path!(), Level::INFO, Some(module_path!()))
    }

    fn describe(&self, name: &'static str, help: &'static str) {
        self.0
            .describe_counter(KeyName::from(name), None, help.into());
    }

    fn counter(&self, name: &'static str, help: &'static str) -> Counter {
        self.describe(name, help);
        self.counter_with(name, &[])
    }

    fn counter_with(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Counter {
        self.0
            .register_counter(&Self::key(name, labels), &Self::metadata())
    }

    fn gauge_with(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Gauge {
        self.0
            .register_gauge(&Self::key(name, labels), &Self::metadata())
    }

    fn histogram(&self, name: &'static str, help: &'static str) -> Histogram {
        self.0
            .describe_histogram(KeyName::from(name), Some(Unit::Seconds), help.into());
        self.0
            .register_histogram(&Self::key(name, &[]), &Self::metadata())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{series} not in:\n{text}"))
    }

    #[test]
    fn counts_frames_by_kind_per_instance() {
        let a = Metrics::new();
        let b = Metrics::new();
        a.frame_in(Some(Kind::SingleMessage));
        a.frame_in(Some(Kind::SingleMessage));
        a.frame_in(None);
        a.reply(Some(Kind::RegisterReply), None);
        a.closed(4001);

        let text = a.render(&Snapshot::default());
        assert_eq!(
            value(&text, "im_frames_in_total{kind=\"single_message\"}"),
            2.0
        );
        assert_eq!(value(&text, "im_frames_in_total{kind=\"other\"}"), 1.0);
        assert_eq!(value(&text, "im_logins_total"), 1.0);
        assert_eq!(value(&text, "im_kicks_total"), 1.0);
        let other = b.render(&Snapshot::default());
        assert_eq!(
            value(&other, "im_frames_in_total{kind=\"single_message\"}"),
            0.0
        );
    }

    #[test]
    fn the_detached_set_keeps_no_samples() {
        let detached = Metrics::detached();
        detached.frame_handled(Duration::from_micros(10));
        detached.delivery_written(Duration::from_micros(10));
        let text = detached.render(&Snapshot::default());
        assert_eq!(value(&text, "im_frame_handling_seconds_count"), 0.0);
        assert_eq!(value(&text, "im_delivery_write_seconds_count"), 0.0);
    }

    #[test]
    fn renders_snapshot_and_histograms() {
        let m = Metrics::new();
        m.frame_handled(Duration::from_micros(300));
        let snapshot = Snapshot {
            sessions: vec![(Transport::Tcp, Codec::Proto, 3)],
            online_users: 2,
            backends: vec![("broker", Health::Down("gone".into()))],
            ..Snapshot::default()
        };
        let text = m.render(&snapshot);
        assert_eq!(
            value(&text, "im_connections{transport=\"tcp\",codec=\"proto\"}"),
            3.0
        );
        assert_eq!(value(&text, "im_online_users"), 2.0);
        assert_eq!(value(&text, "im_backend_up{backend=\"broker\"}"), 0.0);
        assert_eq!(value(&text, "im_frame_handling_seconds_count"), 1.0);
        assert_eq!(
            value(&text, "im_frame_handling_seconds_bucket{le=\"0.0005\"}"),
            1.0
        );
    }
}
