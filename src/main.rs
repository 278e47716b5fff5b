//! The `im-connect` binary: runs the gateway, mints development tokens and checks
//! configurations.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use im_connect::config::{Config, Loaded};
use im_connect::server::Server;
use tracing_subscriber::EnvFilter;

/// nacos-sdk logs the Nacos password at debug level when it logs in; that target never goes
/// below info, whatever `RUST_LOG` asks for.
const NACOS_LOGIN_LOG: &str = "nacos_sdk::api::plugin::auth::auth_by_http=info";

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// IM gateway: holds clients' WebSocket and TCP connections.
#[derive(Debug, Parser)]
#[command(name = "im-connect", version, about)]
struct Cli {
    /// Configuration file (default: config/application.yml if present, else built-in defaults).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve,
    /// Print a token signed with the configured key, for trying the server by hand.
    Token {
        /// The user id to put in the token.
        #[arg(long)]
        user: String,
        /// Device type claim (android, ios, web, mac, win, linux).
        #[arg(long)]
        device: Option<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 86_400)]
        ttl: u64,
    },
    /// Validate a configuration and print the effective settings, secrets redacted.
    Check,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let loaded = match Config::load(cli.config.as_deref()) {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("configuration error: {error}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(loaded),
        Command::Token { user, device, ttl } => token(&loaded.config, &user, device, ttl),
        Command::Check => {
            for warning in &loaded.warnings {
                eprintln!("warning: {warning}");
            }
            for source in &loaded.sources {
                eprintln!("read {}", source.display());
            }
            print!("{}", loaded.config.to_redacted_yaml());
            ExitCode::SUCCESS
        }
    }
}

fn serve(loaded: Loaded) -> ExitCode {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter.add_directive(NACOS_LOGIN_LOG.parse().expect("valid directive")))
        .init();
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = loaded.config.netty.config.work_thread_size {
        runtime.worker_threads(threads);
    }
    let runtime = match runtime.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let server = Server::start(loaded.config).await?;
        tracing::info!(broker.id = %server.node().broker_id, "im-connect started");
        shutdown_signal().await;
        server.shutdown().await;
        Ok::<_, im_connect::BoxError>(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "im-connect stopped");
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

fn token(config: &Config, user: &str, device: Option<String>, ttl: u64) -> ExitCode {
    match im_connect::layer::auth::mint_token(config, user, device.as_deref(), ttl) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("cannot sign a token: {error}");
            ExitCode::FAILURE
        }
    }
}
