//! The admin endpoint: health, readiness, Prometheus metrics, operator actions and a web
//! console, over plain HTTP/1.1 on `admin.host:admin.port`.
//!
//! | method and path | what |
//! |---|---|
//! | `GET /` | the web console (one page, no token needed to load it) |
//! | `GET /health` | 200 while the process runs (no token needed) |
//! | `GET /ready` | 200 when listeners are bound and the backends are up, else 503 naming what is not |
//! | `GET /metrics` | Prometheus text exposition |
//! | `GET /admin/stats` | live counts as JSON, what the console polls |
//! | `GET /admin/ports` | bound ports |
//! | `POST /admin/ports/{port}` | binds a port; `{"transport": "ws" \| "tcp"}` or `?transport=` |
//! | `DELETE /admin/ports/{port}` | stops accepting there and closes its connections with 1001 |
//! | `POST /admin/kick` | `{"user": .., "group"?: "MOBILE", "deviceType"?: "ios"}`: FORCE_LOGOUT then 4001 |
//! | `GET /admin/users/{id}` | that user's connections on this node |
//!
//! With `admin.token` set, every path but `/` and `/health` needs
//! `Authorization: Bearer <token>`. Errors are JSON: `{"error": "...", "status": 404}`.
//!
//! # Metrics
//!
//! | series | type | what |
//! |---|---|---|
//! | `im_connections{transport,codec}` | gauge | logged-in connections |
//! | `im_open_connections{transport}` | gauge | accepted connections, logged in or not |
//! | `im_online_users` | gauge | users with a logged-in connection |
//! | `im_logins_total` | counter | successful REGISTERs |
//! | `im_kicks_total` | counter | closes with 4001 |
//! | `im_heartbeat_timeouts_total` | counter | closes with 4002 |
//! | `im_slow_consumer_closes_total` | counter | closes with 4004 |
//! | `im_rate_limited_frames_total` | counter | frames refused by the rate limiter |
//! | `im_frames_in_total{kind}` | counter | decoded client frames (`other`: codes outside the table) |
//! | `im_frames_out_total{kind}` | counter | replies and downstream deliveries queued to clients |
//! | `im_upstream_publishes_total`, `im_upstream_acks_total`, `im_upstream_errors_total` | counter | business messages to the broker, confirmed, refused or unconfirmed |
//! | `im_downstream_deliveries_total` | counter | downstream frames queued to connections |
//! | `im_dedup_hits_total` | counter | downstream messages dropped as duplicates |
//! | `im_backend_up{backend}` | gauge | 1 when `broker`, `routes` or `registry` is healthy |
//! | `im_frame_handling_seconds` | histogram | decoded client frame to its reply |
//! | `im_delivery_write_seconds` | histogram | downstream message reaching the node to its socket write |
//!
//! Gauges are read from the node when `/metrics` is scraped (the connection gauges walk the
//! session registry, so a scrape costs time in proportion to the connections held).
//!
//! The same operations are a library API on [`Server`]: [`Server::bind`],
//! [`Server::close_port`], [`Server::ports`], [`Server::readiness`], and the node's
//! [`Metrics`].

mod api;
mod auth;
mod metrics;
mod ready;

pub use auth::AdminAuth;
pub use metrics::{Metrics, Snapshot};
pub use ready::{Check, Readiness};

use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use tower_http::validate_request::ValidateRequestHeaderLayer;

use crate::backend::BoxError;
use crate::config::AdminConfig;
use crate::server::Server;

/// A request, body included, must be answered within this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A client must send its request head within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How often histogram samples are folded into their buckets.
const UPKEEP_PERIOD: Duration = Duration::from_secs(5);

/// Binds the admin endpoint's socket, or nothing when `admin.enable` is false. Port 0 takes
/// any free port (tests).
pub(crate) async fn bind(config: &AdminConfig) -> Result<Option<TcpListener>, BoxError> {
    if !config.enable {
        return Ok(None);
    }
    let (host, port) = (config.host.as_str(), config.port);
    let listener = TcpListener::bind((host, port))
        .await
        .map_err(|e| format!("admin.port: cannot bind {host}:{port}: {e}"))?;
    Ok(Some(listener))
}

/// Serves the admin endpoint on `listener` until `server` shuts down.
pub(crate) fn serve(listener: TcpListener, server: &Server) -> Result<SocketAddr, BoxError> {
    let addr = listener.local_addr()?;
    let token = server.node().config.admin.token.clone();
    let service = ServiceBuilder::new()
        .layer(TraceLayer::new_for_http())
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(ValidateRequestHeaderLayer::custom(AdminAuth::new(token)))
        .service(api::Api::new(server.clone()));

    let shutdown = server.shutdown_token().clone();
    let handle = server.clone();
    server.spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors, most likely: back off instead of spinning.
                    tracing::warn!(%error, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let service = TowerToHyperService::new(service.clone());
            let shutdown = shutdown.clone();
            handle.spawn(async move {
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                tokio::pin!(conn);
                let result = tokio::select! {
                    result = conn.as_mut() => result,
                    () = shutdown.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                };
                if let Err(error) = result {
                    tracing::debug!(%error, "admin connection ended");
                }
            });
        }
    });

    tracing::info!(%addr, "admin endpoint listening");
    Ok(addr)
}

/// Folds histogram samples into their buckets every few seconds until `server` shuts down,
/// so they never pile up, whether or not anything scrapes `/metrics`.
pub(crate) fn spawn_upkeep(server: &Server) {
    let metrics = server.node().metrics.clone();
    let shutdown = server.shutdown_token().clone();
    server.spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP_PERIOD);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => metrics.upkeep(),
            }
        }
    });
}
