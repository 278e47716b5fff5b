//! `idle`: many logged-in clients that only send heartbeats; measures the login rate and the
//! server's memory per connection.

use std::time::Duration;

use anyhow::bail;
use bytes::Buf;
use im_connect::config::Config;

use super::client::{self, Client, Target};
use super::stats::{self, LatencySummary};
use super::wire::{self, FrameKind};

/// The idle scenario's knobs.
#[derive(Debug, Clone)]
pub(crate) struct IdleOptions {
    /// Clients to log in.
    pub(crate) connections: usize,
    /// Logins in flight at once.
    pub(crate) concurrency: usize,
    /// How long to hold the clients after they are all logged in.
    pub(crate) hold: Duration,
    /// Interval between heartbeats of each client.
    pub(crate) heartbeat: Duration,
    /// Wait after the last login before reading the server's memory, so in-flight work has
    /// settled.
    pub(crate) settle: Duration,
    /// The server process, whose memory is read; `None` skips memory.
    pub(crate) pid: Option<u32>,
    /// Interval of progress lines on stderr; `None` prints none.
    pub(crate) progress: Option<Duration>,
}

/// What an idle run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct IdleReport {
    /// Clients attempted.
    pub(crate) connections: usize,
    /// Clients logged in.
    pub(crate) logged_in: usize,
    /// Failed logins, and the first failure.
    pub(crate) failed: usize,
    /// The first failure.
    pub(crate) first_error: Option<String>,
    /// Wall time of the login phase.
    pub(crate) login_secs: f64,
    /// Connect+logins per second over the login phase.
    pub(crate) logins_per_sec: f64,
    /// Time from connect to the REGISTER reply.
    pub(crate) login_latency: LatencySummary,
    /// Server RSS before the run, KiB.
    pub(crate) rss_before_kib: Option<u64>,
    /// Server RSS once every client is logged in and settled, KiB.
    pub(crate) rss_loaded_kib: Option<u64>,
    /// Server RSS at the end of the hold, KiB.
    pub(crate) rss_end_kib: Option<u64>,
    /// `(rss_loaded - rss_before) / logged_in`, bytes.
    pub(crate) rss_per_connection_bytes: Option<f64>,
    /// `(rss_end - rss_before) / logged_in`, bytes.
    pub(crate) rss_per_connection_end_bytes: Option<f64>,
    /// Cores the server used during the login phase (needs its pid).
    pub(crate) login_server_cores: Option<f64>,
    /// Cores the generator used during the login phase.
    pub(crate) login_generator_cores: Option<f64>,
    /// Heartbeats sent during the hold.
    pub(crate) heartbeats: u64,
    /// Heartbeat replies received.
    pub(crate) heartbeat_replies: u64,
    /// Connections the server closed during the hold.
    pub(crate) closed: u64,
}

/// Logs in the clients, reads the server's memory, and holds them with heartbeats.
pub(crate) async fn run(
    config: &Config,
    target: Target,
    opts: &IdleOptions,
) -> anyhow::Result<IdleReport> {
    let rss = |pid: Option<u32>| pid.map(stats::rss_kib).transpose();
    let rss_before = rss(opts.pid)?;
    let tokens = client::tokens(config, &target, opts.connections)?;
    let logins: Vec<_> = (0..opts.connections)
        .map(|i| target.login_bytes(i, &tokens[i]))
        .collect();
    drop(tokens);
    let cpu = stats::CpuMark::now(opts.pid);
    let login = client::login_all(&target, &logins, opts.concurrency, opts.progress).await;
    let (login_server_cores, login_generator_cores) = cpu.until(&stats::CpuMark::now(opts.pid));
    drop(logins);
    let mut clients: Vec<Held> = login
        .clients
        .into_iter()
        .flatten()
        .map(|client| Held { client, open: true })
        .collect();
    let logged_in = clients.len();
    if logged_in == 0 {
        bail!(
            "no client logged in: {}",
            login.first_error.unwrap_or_default()
        );
    }

    tokio::time::sleep(opts.settle).await;
    let rss_loaded = rss(opts.pid)?;
    let per_conn = |after: Option<u64>| match (rss_before, after) {
        (Some(before), Some(after)) => {
            Some((after as f64 - before as f64) * 1024.0 / logged_in as f64)
        }
        _ => None,
    };
    if let (true, Some(loaded)) = (opts.progress.is_some(), rss_loaded) {
        eprintln!("idle: {logged_in} logged in, server RSS {loaded} KiB");
    }

    let beat = target.heartbeat();
    let (heartbeats, replies) = hold(&target, &mut clients, &beat, opts).await;
    let rss_end = rss(opts.pid)?;
    let closed = clients.iter().filter(|c| !c.open).count() as u64;
    Ok(IdleReport {
        connections: opts.connections,
        logged_in,
        failed: login.failed,
        first_error: login.first_error,
        login_secs: login.elapsed.as_secs_f64(),
        logins_per_sec: logged_in as f64 / login.elapsed.as_secs_f64(),
        login_latency: login.latency,
        rss_before_kib: rss_before,
        rss_loaded_kib: rss_loaded,
        rss_end_kib: rss_end,
        rss_per_connection_bytes: per_conn(rss_loaded),
        rss_per_connection_end_bytes: per_conn(rss_end),
        login_server_cores,
        login_generator_cores,
        heartbeats,
        heartbeat_replies: replies,
        closed,
    })
}

struct Held {
    client: Client,
    open: bool,
}

/// Sends every client a heartbeat each `opts.heartbeat` for `opts.hold`, all from this task,
/// and counts the replies; then waits briefly for the last replies.
async fn hold(
    target: &Target,
    clients: &mut [Held],
    beat: &[u8],
    opts: &IdleOptions,
) -> (u64, u64) {
    let deadline = tokio::time::Instant::now() + opts.hold;
    let (mut sent, mut replies) = (0u64, 0u64);
    let mut scratch = vec![0u8; 4096];
    loop {
        let now = tokio::time::Instant::now();
        if now >= deadline {
            break;
        }
        for held in clients.iter_mut().filter(|h| h.open) {
            // A heartbeat is tiny; a socket too full to take one at once is a dead client.
            match held.client.stream.try_write(beat) {
                Ok(n) if n == beat.len() => sent += 1,
                _ => held.open = false,
            }
        }
        let next = (now + opts.heartbeat).min(deadline);
        while tokio::time::Instant::now() < next {
            tokio::time::sleep(Duration::from_millis(100).min(opts.heartbeat)).await;
            replies += drain(target, clients, &mut scratch);
        }
        if opts.progress.is_some() {
            eprintln!("idle: holding, {sent} heartbeats sent, {replies} replies");
        }
    }
    let settle = tokio::time::Instant::now() + Duration::from_secs(5);
    while replies < sent && tokio::time::Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(20)).await;
        replies += drain(target, clients, &mut scratch);
    }
    (sent, replies)
}

/// Reads whatever has arrived on every open client without waiting; returns the heartbeat
/// replies found.
fn drain(target: &Target, clients: &mut [Held], scratch: &mut [u8]) -> u64 {
    let codes = &target.codes;
    let mut replies = 0;
    for held in clients.iter_mut().filter(|h| h.open) {
        loop {
            match held.client.stream.try_read(scratch) {
                Ok(0) => held.open = false,
                Ok(n) => {
                    held.client.buf.extend_from_slice(&scratch[..n]);
                    continue;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => held.open = false,
            }
            break;
        }
        let buf = &mut held.client.buf;
        while let Ok(Some(parsed)) = wire::parse(target.transport, buf) {
            if parsed.kind == FrameKind::Close {
                held.open = false;
            }
            if parsed.kind == FrameKind::Data {
                let head = wire::head(target.codec, &buf[parsed.payload.clone()]);
                if head.is_some_and(|h| {
                    h.code == codes.heart_beat_reply || h.code == codes.refresh_token
                }) {
                    replies += 1;
                }
            }
            buf.advance(parsed.consumed);
        }
        if buf.is_empty() && buf.capacity() > 4096 {
            *buf = bytes::BytesMut::new();
        }
    }
    replies
}
