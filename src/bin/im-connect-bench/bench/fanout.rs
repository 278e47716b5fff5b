//! `fanout`: one sender, GROUP_MESSAGEs whose `ids` name every member of a group.

use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use im_connect::config::Config;

use super::client::{self, Target};
use super::stats::{self, Counters, Latency, LatencySummary};
use super::traffic::{self, Arrivals, Pace, Shared};
use super::wire::Template;

/// Messages tracked one by one for the last-receiver latency when the rate is open-ended.
const TRACKED_MESSAGES: usize = 1 << 20;

/// The fan-out scenario's knobs.
#[derive(Debug, Clone)]
pub(crate) struct FanoutOptions {
    /// Receivers in the group.
    pub(crate) group: usize,
    /// Group messages per second; 0: as fast as `window` allows.
    pub(crate) rate: f64,
    /// Unacknowledged messages of the sender when `rate` is 0.
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

/// What a fan-out run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct FanoutReport {
    /// Receivers in the group.
    pub(crate) group: usize,
    /// Requested group messages per second (0: window-limited).
    pub(crate) rate_target: f64,
    /// Measured seconds (after the warm-up).
    pub(crate) measured_secs: f64,
    /// Group messages sent, warm-up included.
    pub(crate) sent: u64,
    /// ACKs the sender received.
    pub(crate) acks: u64,
    /// Deliveries: frames received by group members.
    pub(crate) delivered: u64,
    /// `sent * group`: the deliveries that should have happened.
    pub(crate) expected: u64,
    /// ERROR frames received.
    pub(crate) errors: u64,
    /// Connections the server closed.
    pub(crate) closed: u64,
    /// Deliveries per second over the measured time.
    pub(crate) deliveries_per_sec: f64,
    /// Send-to-receive latency of every delivery after the warm-up.
    pub(crate) latency: LatencySummary,
    /// Send to the last member's receipt, per message every member got.
    pub(crate) last_receiver: LatencySummary,
    /// Messages some member never got.
    pub(crate) incomplete: u64,
    /// Bytes of the sender's frame on the wire.
    pub(crate) frame_bytes: usize,
    /// Cores the server used while sending (needs its pid).
    pub(crate) server_cores: Option<f64>,
    /// Cores the generator used while sending.
    pub(crate) generator_cores: Option<f64>,
}

/// Logs in a sender and `group` receivers and sends the group messages.
pub(crate) async fn run(
    config: &Config,
    target: Target,
    opts: &FanoutOptions,
) -> anyhow::Result<FanoutReport> {
    if opts.group == 0 {
        bail!("fanout needs a group of at least one");
    }
    let connections = opts.group + 1;
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
    let members: Vec<String> = (1..connections).map(|i| target.user(i)).collect();
    let template = Template::new(
        target.transport,
        target.codec,
        target.codes.group,
        &members,
        &opts.data,
    );
    let frame_bytes = template.len();
    if frame_bytes > config.netty.config.max_frame_size {
        bail!(
            "a group message of {} members is {frame_bytes} bytes, over the server's \
             netty.config.maxFrameSize of {}",
            opts.group,
            config.netty.config.max_frame_size
        );
    }
    let capacity = if opts.rate > 0.0 {
        let total = opts.rate * (opts.duration + opts.warmup).as_secs_f64();
        (total.ceil() as usize + 1024).min(TRACKED_MESSAGES)
    } else {
        TRACKED_MESSAGES
    };
    let heartbeat = target.heartbeat();
    let target = Arc::new(target);
    let arrivals = Some(Arrivals::new(capacity));
    let shared = Shared::new(target.clone(), target.codes.group, connections, arrivals);
    let clients = login.clients.into_iter().flatten().collect();
    let (mut outlets, readers) = traffic::start(clients, vec![Some(template)], &shared);

    let progress = stats::progress(
        opts.progress,
        "fanout",
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
    let expected = paced.sent * opts.group as u64;
    shared.drain(expected, paced.sent, opts.drain).await;
    if let Some(progress) = progress {
        progress.abort();
    }
    traffic::stop(&shared, readers).await;
    drop(outlets);

    let c = &shared.counters;
    let last = Latency::default();
    let (complete, incomplete) = shared
        .arrivals
        .as_ref()
        .map(|a| a.last_receiver(paced.sent, opts.group as u32))
        .unwrap_or_default();
    last.record_all(&complete);
    let measured = (paced.end.0 - paced.warm.0) as f64 / 1e9;
    Ok(FanoutReport {
        group: opts.group,
        rate_target: opts.rate,
        measured_secs: measured,
        sent: paced.sent,
        acks: Counters::get(&c.acks),
        delivered: Counters::get(&c.delivered),
        expected,
        errors: Counters::get(&c.errors),
        closed: Counters::get(&c.closed),
        deliveries_per_sec: (paced.end.1 - paced.warm.1) as f64 / measured.max(1e-9),
        latency: shared.latency.summary(),
        last_receiver: last.summary(),
        incomplete,
        frame_bytes,
        server_cores,
        generator_cores,
    })
}

impl std::fmt::Display for FanoutReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "fanout: 1 sender, group of {}", self.group)?;
        writeln!(
            f,
            "  sent {}  acks {}  delivered {} of {}  incomplete {}  errors {}  closed {}",
            self.sent,
            self.acks,
            self.delivered,
            self.expected,
            self.incomplete,
            self.errors,
            self.closed
        )?;
        writeln!(
            f,
            "  {:.0} deliveries/s over {:.1} s (target rate {})",
            self.deliveries_per_sec,
            self.measured_secs,
            if self.rate_target > 0.0 {
                format!("{:.0} msgs/s", self.rate_target)
            } else {
                "max".into()
            }
        )?;
        writeln!(f, "  latency, every delivery:  {}", self.latency)?;
        writeln!(f, "  latency, last receiver:   {}", self.last_receiver)?;
        write!(f, "  sender frame {} bytes", self.frame_bytes)?;
        let cores = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
        write!(
            f,
            "\n  cores used while sending: server {}, generator {}",
            cores(self.server_cores),
            cores(self.generator_cores)
        )
    }
}
