//! `relay`: pairs of users send each other SINGLE_MESSAGEs through the server.

use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use im_connect::config::Config;

use super::client::{self, Target};
use super::stats::{self, Counters, LatencySummary};
use super::traffic::{self, Pace, Shared};
use super::wire::Template;

/// The relay scenario's knobs.
#[derive(Debug, Clone)]
pub(crate) struct RelayOptions {
    /// Pairs of users; each user has one connection.
    pub(crate) pairs: usize,
    /// Messages per second over all connections; 0: as fast as `window` allows.
    pub(crate) rate: f64,
    /// Unacknowledged messages per connection when `rate` is 0.
    pub(crate) window: u64,
    /// Measured sending time.
    pub(crate) duration: Duration,
    /// Sending time before the measurement, not timed.
    pub(crate) warmup: Duration,
    /// Logins in flight at once.
    pub(crate) concurrency: usize,
    /// Interval of progress lines on stderr; `None` prints none.
    pub(crate) progress: Option<Duration>,
    /// The JSON payload of every message.
    pub(crate) data: String,
    /// How long to wait for stragglers after sending stops.
    pub(crate) drain: Duration,
    /// The server process, whose CPU use is reported; `None` skips it.
    pub(crate) pid: Option<u32>,
}

/// What a relay run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct RelayReport {
    /// Connections used (two per pair).
    pub(crate) connections: usize,
    /// Requested rate (0: window-limited).
    pub(crate) rate_target: f64,
    /// Measured seconds (after the warm-up).
    pub(crate) measured_secs: f64,
    /// Messages sent, warm-up included.
    pub(crate) sent: u64,
    /// Messages their recipient received.
    pub(crate) delivered: u64,
    /// ACKs the senders received.
    pub(crate) acks: u64,
    /// ERROR frames received.
    pub(crate) errors: u64,
    /// Connections the server closed.
    pub(crate) closed: u64,
    /// Deliveries per second over the measured time.
    pub(crate) delivered_per_sec: f64,
    /// Send-to-receive latency of messages sent after the warm-up.
    pub(crate) latency: LatencySummary,
    /// Bytes of one message frame on the wire.
    pub(crate) frame_bytes: usize,
    /// Cores the server used while sending (needs its pid).
    pub(crate) server_cores: Option<f64>,
    /// Cores the generator used while sending.
    pub(crate) generator_cores: Option<f64>,
}

/// Logs in `2 * pairs` clients and relays messages between each pair.
pub(crate) async fn run(
    config: &Config,
    target: Target,
    opts: &RelayOptions,
) -> anyhow::Result<RelayReport> {
    if opts.pairs == 0 {
        bail!("relay needs at least one pair");
    }
    let connections = opts.pairs * 2;
    let tokens = client::tokens(config, &target, connections)?;
    let logins: Vec<_> = (0..connections)
        .map(|i| target.login_bytes(i, &tokens[i]))
        .collect();
    let login = client::login_all(&target, &logins, opts.concurrency, opts.progress).await;
    if let Some(error) = login.first_error {
        bail!(
            "{} of {connections} logins failed, first: {error}",
            login.failed
        );
    }
    let templates: Vec<_> = (0..connections)
        .map(|i| {
            let peer = vec![target.user(i ^ 1)];
            Some(Template::new(
                target.transport,
                target.codec,
                target.codes.single,
                &peer,
                &opts.data,
            ))
        })
        .collect();
    let frame_bytes = templates[0].as_ref().map_or(0, Template::len);
    let heartbeat = target.heartbeat();
    let target = Arc::new(target);
    let shared = Shared::new(target.clone(), target.codes.single, connections, None);
    let clients = login.clients.into_iter().flatten().collect();
    let (mut outlets, readers) = traffic::start(clients, templates, &shared);

    let progress = stats::progress(
        opts.progress,
        "relay",
        shared.clock,
        shared.counters.clone(),
    );
    let pace = Pace {
        rate: opts.rate,
        window: opts.window,
        duration: opts.duration,
        warmup: opts.warmup,
        heartbeat: (heartbeat, Duration::from_secs(10)),
    };
    let cpu = stats::CpuMark::now(opts.pid);
    let paced = traffic::pace(&mut outlets, &pace, &shared).await?;
    let (server_cores, generator_cores) = cpu.until(&stats::CpuMark::now(opts.pid));
    shared.drain(paced.sent, paced.sent, opts.drain).await;
    if let Some(progress) = progress {
        progress.abort();
    }
    traffic::stop(&shared, readers).await;
    drop(outlets);

    let c = &shared.counters;
    let measured = (paced.end.0 - paced.warm.0) as f64 / 1e9;
    Ok(RelayReport {
        connections,
        rate_target: opts.rate,
        measured_secs: measured,
        sent: paced.sent,
        delivered: Counters::get(&c.delivered),
        acks: Counters::get(&c.acks),
        errors: Counters::get(&c.errors),
        closed: Counters::get(&c.closed),
        delivered_per_sec: (paced.end.1 - paced.warm.1) as f64 / measured.max(1e-9),
        latency: shared.latency.summary(),
        frame_bytes,
        server_cores,
        generator_cores,
    })
}

impl std::fmt::Display for RelayReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "relay: {} connections ({} pairs)",
            self.connections,
            self.connections / 2
        )?;
        writeln!(
            f,
            "  sent {}  delivered {}  acks {}  errors {}  closed {}",
            self.sent, self.delivered, self.acks, self.errors, self.closed
        )?;
        writeln!(
            f,
            "  delivered {:.0} msgs/s over {:.1} s (target rate {})",
            self.delivered_per_sec,
            self.measured_secs,
            if self.rate_target > 0.0 {
                format!("{:.0}/s", self.rate_target)
            } else {
                "max".into()
            }
        )?;
        writeln!(f, "  latency {}", self.latency)?;
        write!(f, "  frame {} bytes", self.frame_bytes)?;
        let cores = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
        write!(
            f,
            "\n  cores used while sending: server {}, generator {}",
            cores(self.server_cores),
            cores(self.generator_cores)
        )
    }
}
