//! A gateway whose layer stack is composed in code, with a layer of our own among the
//! crate's: a content filter that refuses chat messages containing a banned word.
//!
//! The stack is the packaged one (auth → rate limit → heartbeat → device binding → dispatch)
//! with [`ContentFilterLayer`] between device binding and dispatch, so it only ever sees
//! frames of logged-in connections, and heartbeats never reach it. A refused message gets an
//! ERROR reply with `metadata.reason` `content_refused` and is never published; the
//! connection stays open.
//!
//! [`ServerBuilder::stack`](im_connect::server::ServerBuilder::stack) hands the stack to the
//! packaged transports, so WebSocket and TCP clients, the handshake checks, the deadlines and
//! the graceful shutdown are the server's own.
//!
//! ```sh
//! cargo run --example custom_stack -- --ban spam --ban scam
//! # then, in two more terminals (tokens from `cargo run -- token --user alice`):
//! cargo run --example chat_client -- --url ws://127.0.0.1:19000/im --token "$ALICE"
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::task::{Context, Poll};

use clap::Parser;
use futures_util::future::{Either, Ready};
use im_connect::config::Config;
use im_connect::layer::TokenVerifier;
use im_connect::protocol::Kind;
use im_connect::request::{Reply, Request};
use im_connect::server::{Node, Server, StandardLayers};
use im_connect::transport::StackFactory;
use tower::util::BoxService;
use tower::{Layer, Service, ServiceBuilder};

/// The `metadata.reason` of a refused message.
pub const CONTENT_REFUSED: &str = "content_refused";

/// Applies [`ContentFilter`]: business messages whose text contains one of the banned words
/// (compared case-insensitively) are refused.
#[derive(Debug, Clone)]
pub struct ContentFilterLayer {
    banned: Arc<[String]>,
}

impl ContentFilterLayer {
    /// A filter refusing `banned` words.
    pub fn new<I, W>(banned: I) -> Self
    where
        I: IntoIterator<Item = W>,
        W: AsRef<str>,
    {
        let banned = banned
            .into_iter()
            .map(|w| w.as_ref().trim().to_lowercase())
            .filter(|w| !w.is_empty())
            .collect();
        ContentFilterLayer { banned }
    }

    /// The first banned word in `text`, if any.
    fn find_in(&self, text: &str) -> Option<&str> {
        let text = text.to_lowercase();
        self.banned
            .iter()
            .find(|w| text.contains(w.as_str()))
            .map(String::as_str)
    }

    /// The first banned word anywhere in the frame's `message` or in a string of its `data`.
    fn find_in_frame(&self, req: &Request) -> Option<&str> {
        let frame = &req.frame;
        let message = frame.message.as_deref().and_then(|m| self.find_in(m));
        message.or_else(|| frame.data.as_ref().and_then(|d| self.find_in_json(d)))
    }

    fn find_in_json(&self, value: &serde_json::Value) -> Option<&str> {
        use serde_json::Value;
        match value {
            Value::String(s) => self.find_in(s),
            Value::Array(items) => items.iter().find_map(|v| self.find_in_json(v)),
            Value::Object(map) => map.values().find_map(|v| self.find_in_json(v)),
            _ => None,
        }
    }
}

impl<S> Layer<S> for ContentFilterLayer {
    type Service = ContentFilter<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ContentFilter {
            inner,
            layer: self.clone(),
        }
    }
}

/// Refuses business messages that contain a banned word; passes everything else on.
#[derive(Debug, Clone)]
pub struct ContentFilter<S> {
    inner: S,
    layer: ContentFilterLayer,
}

impl<S> Service<Request> for ContentFilter<S>
where
    S: Service<Request, Response = Reply>,
{
    type Response = Reply;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<Reply, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        if !req.kind().is_business() {
            return Either::Left(self.inner.call(req));
        }
        let Some(word) = self.layer.find_in_frame(&req) else {
            return Either::Left(self.inner.call(req));
        };
        tracing::debug!(banned.word = word, "message refused by the content filter");
        // Every request gets exactly one reply carrying its requestId, refusals included.
        req.frame.ensure_request_id();
        let mut refusal = req.frame.reply(Kind::Error);
        refusal.message = Some(format!(
            "message refused: it contains the banned word `{word}`"
        ));
        refusal
            .metadata
            .insert("reason".into(), CONTENT_REFUSED.into());
        Either::Right(futures_util::future::ready(Ok(Reply::frame(refusal))))
    }
}

/// The packaged stack with `filter` in front of dispatch: the standard layers, configured
/// from the node exactly as the server's default stack is, with one of our own among them.
pub fn filtered_stack(
    node: &Arc<Node>,
    verifier: Arc<dyn TokenVerifier>,
    filter: ContentFilterLayer,
) -> StackFactory {
    let parts = StandardLayers::from_node(node, verifier);

    // One fresh stack per connection: the rate limiter's bucket lives in it.
    Arc::new(move || {
        let svc = ServiceBuilder::new()
            .layer(parts.auth.clone())
            .option_layer(parts.rate_limit)
            .layer(parts.heartbeat)
            .layer(parts.device_binding.clone())
            .layer(filter.clone())
            .service(parts.dispatch.clone());
        BoxService::new(svc)
    })
}

/// Command line of the example.
#[derive(Debug, Parser)]
#[command(about = "im-connect with a content filter in its layer stack")]
struct Args {
    /// Configuration file (default: config/application.yml if present).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// A word to refuse (repeatable).
    #[arg(long = "ban", value_name = "WORD", default_value = "spam")]
    banned: Vec<String>,
}

#[tokio::main]
async fn main() -> Result<(), im_connect::BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let config: Config = Config::load(args.config.as_deref())?.config;
    let filter = ContentFilterLayer::new(&args.banned);

    let server = Server::builder()
        .stack(move |node, verifier| filtered_stack(node, verifier, filter))
        .start(config)
        .await?;
    for port in server.ports() {
        tracing::info!(transport = port.transport.as_str(), addr = %port.addr, "serving");
    }
    tokio::signal::ctrl_c().await?;
    server.shutdown().await;
    Ok(())
}
