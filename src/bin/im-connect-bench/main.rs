//! `im-connect-bench`: a load generator for im-connect.
//!
//! It logs in many clients, each a distinct user with a token it signs itself from the
//! configured key, over WebSocket or TCP and JSON or protobuf, from several source addresses
//! in 127.0.0.0/8, and runs one scenario: `idle` (login rate and server memory per
//! connection), `relay` (pairs exchanging messages: throughput and latency) or `fanout` (one
//! sender, group messages: deliveries per second and latency to the last member). The
//! generator runs on one thread so that, pinned to one core, it leaves the other to the
//! server. BENCHMARKS.md has the method and the figures.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand, ValueEnum};
use im_connect::config::{Codec, Config};

mod bench;

use bench::client::Target;
use bench::fanout::FanoutOptions;
use bench::idle::IdleOptions;
use bench::relay::RelayOptions;
use bench::wire::Transport;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Longest sending or holding time a run may ask for, so a typo cannot load the machine for
/// hours.
const MAX_RUN_SECS: u64 = 600;
/// Most connections one run may open: the per-process open-file limit here is 20,000.
const MAX_CONNECTIONS: usize = 19_000;

/// Load generator for im-connect.
#[derive(Debug, Parser)]
#[command(name = "im-connect-bench", version, about)]
struct Cli {
    /// The server's configuration (for its signing key, ports, path and code table).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// Server host; must be in 127.0.0.0/8.
    #[arg(long, default_value = "127.0.0.1", global = true)]
    host: Ipv4Addr,
    /// Server ports (default: the configuration's ports of the transport).
    #[arg(long = "port", global = true, value_delimiter = ',')]
    ports: Vec<u16>,
    /// WebSocket or TCP.
    #[arg(long, value_enum, default_value_t = TransportArg::Ws, global = true)]
    transport: TransportArg,
    /// Wire format.
    #[arg(long, value_enum, default_value_t = CodecArg::Proto, global = true)]
    codec: CodecArg,
    /// Number of source addresses, counting up from --source-base.
    #[arg(long, default_value_t = 8, global = true)]
    sources: u8,
    /// First source address; must be in 127.0.0.0/8.
    #[arg(long, default_value = "127.0.1.1", global = true)]
    source_base: Ipv4Addr,
    /// Logins in flight at once.
    #[arg(long, default_value_t = 256, global = true)]
    concurrency: usize,
    /// Seconds between progress lines on stderr (0: none).
    #[arg(long, default_value_t = 1.0, global = true)]
    progress: f64,
    /// The server's process id (`pgrep -x im-connect`), for its memory and CPU use.
    #[arg(long, global = true)]
    pid: Option<u32>,
    /// Print the summary as JSON.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum TransportArg {
    Ws,
    Tcp,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum CodecArg {
    Proto,
    Json,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Log in N clients, hold them with heartbeats; login rate and server memory.
    Idle {
        /// Clients to log in.
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// Seconds to hold them once logged in.
        #[arg(long, default_value_t = 10)]
        hold: u64,
        /// Seconds between heartbeats.
        #[arg(long, default_value_t = 10)]
        heartbeat: u64,
        /// Seconds to wait after the logins before reading the server's memory.
        #[arg(long, default_value_t = 2)]
        settle: u64,
    },
    /// Pairs of users exchange SINGLE_MESSAGEs; throughput and latency.
    Relay {
        /// Pairs of users.
        #[arg(long, default_value_t = 500)]
        pairs: usize,
        /// Messages per second over all connections (0: as fast as --window allows).
        #[arg(long, default_value_t = 50_000.0)]
        rate: f64,
        /// Unacknowledged messages per connection when --rate is 0.
        #[arg(long, default_value_t = 16)]
        window: u64,
        /// Measured seconds.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Seconds of sending before the measurement.
        #[arg(long, default_value_t = 2)]
        warmup: u64,
    },
    /// One sender, GROUP_MESSAGEs to every member of a group; deliveries/s and latency.
    Fanout {
        /// Members of the group.
        #[arg(long, default_value_t = 1000)]
        group: usize,
        /// Group messages per second (0: as fast as --window allows).
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        /// Unacknowledged group messages when --rate is 0.
        #[arg(long, default_value_t = 8)]
        window: u64,
        /// Measured seconds.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Seconds of sending before the measurement.
        #[arg(long, default_value_t = 2)]
        warmup: u64,
    },
}

const PAYLOAD: &str = r#"{"text":"hello from im-connect-bench"}"#;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let loaded = Config::load(cli.config.as_deref()).context("configuration")?;
    let config = loaded.config;
    let target = target(&cli, &config)?;
    let progress = (cli.progress > 0.0).then(|| Duration::from_secs_f64(cli.progress));
    let secs = Duration::from_secs;
    let (summary, json) = match cli.scenario {
        Scenario::Idle {
            connections,
            hold,
            heartbeat,
            settle,
        } => {
            check_bounds(connections, hold)?;
            let opts = IdleOptions {
                connections,
                concurrency: cli.concurrency,
                hold: secs(hold),
                heartbeat: secs(heartbeat.max(1)),
                settle: secs(settle),
                pid: cli.pid,
                progress,
            };
            let budget = secs(hold + settle + 120);
            let report = bounded(budget, bench::idle::run(&config, target, &opts)).await?;
            (idle_text(&report), serde_json::to_value(&report)?)
        }
        Scenario::Relay {
            pairs,
            rate,
            window,
            duration,
            warmup,
        } => {
            check_bounds(pairs * 2, duration + warmup)?;
            let opts = RelayOptions {
                pairs,
                rate,
                window,
                duration: secs(duration),
                warmup: secs(warmup),
                concurrency: cli.concurrency,
                progress,
                data: PAYLOAD.into(),
                drain: secs(10),
                pid: cli.pid,
            };
            let budget = secs(duration + warmup + 120);
            let report = bounded(budget, bench::relay::run(&config, target, &opts)).await?;
            (report.to_string(), serde_json::to_value(&report)?)
        }
        Scenario::Fanout {
            group,
            rate,
            window,
            duration,
            warmup,
        } => {
            check_bounds(group + 1, duration + warmup)?;
            let opts = FanoutOptions {
                group,
                rate,
                window,
                duration: secs(duration),
                warmup: secs(warmup),
                concurrency: cli.concurrency,
                progress,
                data: PAYLOAD.into(),
                drain: secs(10),
                pid: cli.pid,
            };
            let budget = secs(duration + warmup + 120);
            let report = bounded(budget, bench::fanout::run(&config, target, &opts)).await?;
            (report.to_string(), serde_json::to_value(&report)?)
        }
    };
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        println!("{summary}");
    }
    Ok(())
}

fn target(cli: &Cli, config: &Config) -> anyhow::Result<Target> {
    let netty = &config.netty.config;
    let (transport, default_ports) = match cli.transport {
        TransportArg::Ws => (Transport::Ws, &netty.websocket.port),
        TransportArg::Tcp => (Transport::Tcp, &netty.tcp.port),
    };
    let ports = if cli.ports.is_empty() {
        default_ports.clone()
    } else {
        cli.ports.clone()
    };
    let servers = ports
        .iter()
        .map(|&port| SocketAddr::from((cli.host, port)))
        .collect();
    let base = u32::from(cli.source_base);
    let sources = (0..u32::from(cli.sources.max(1)))
        .map(|i| Ipv4Addr::from(base + i))
        .collect();
    let codec = match cli.codec {
        CodecArg::Proto => Codec::Proto,
        CodecArg::Json => Codec::Json,
    };
    Target::new(config, transport, codec, servers, sources)
}

fn check_bounds(connections: usize, secs: u64) -> anyhow::Result<()> {
    if connections > MAX_CONNECTIONS {
        bail!("{connections} connections is over the limit of {MAX_CONNECTIONS}");
    }
    if secs > MAX_RUN_SECS {
        bail!("{secs} s is over the limit of {MAX_RUN_SECS} s");
    }
    Ok(())
}

/// Runs `run` for at most `budget`: every run ends, whatever the server does.
async fn bounded<T>(
    budget: Duration,
    run: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::time::timeout(budget, run)
        .await
        .map_err(|_| anyhow::anyhow!("the run did not finish within {} s", budget.as_secs()))?
}

fn idle_text(r: &bench::idle::IdleReport) -> String {
    let kib = |v: Option<u64>| v.map_or("-".into(), |v| format!("{v} KiB"));
    let per = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0} bytes"));
    let mut out = format!(
        "idle: {} of {} logged in ({} failed) in {:.2} s: {:.0} connect+logins/s\n  \
         login latency {}\n  server RSS before {}, loaded {}, end {}\n  \
         per connection: {} loaded, {} at the end\n  \
         cores used while logging in: server {}, generator {}\n  heartbeats {} sent, {} answered, {} closed",
        r.logged_in,
        r.connections,
        r.failed,
        r.login_secs,
        r.logins_per_sec,
        r.login_latency,
        kib(r.rss_before_kib),
        kib(r.rss_loaded_kib),
        kib(r.rss_end_kib),
        per(r.rss_per_connection_bytes),
        per(r.rss_per_connection_end_bytes),
        r.login_server_cores.map_or("-".into(), |v| format!("{v:.2}")),
        r.login_generator_cores.map_or("-".into(), |v| format!("{v:.2}")),
        r.heartbeats,
        r.heartbeat_replies,
        r.closed,
    );
    if let Some(error) = &r.first_error {
        out.push_str(&format!("\n  first failure: {error}"));
    }
    out
}
