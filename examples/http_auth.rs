//! im-connect's `AuthLayer` and `RateLimitLayer` guarding a plain hyper HTTP service.
//!
//! The layers are generic over the request type: for `http::Request<B>` the token comes from
//! the `token` query parameter, an `Authorization: Bearer` header or a `token` cookie, the
//! verified identity lands in the request extensions, and refusals are `401 Unauthorized` and
//! `429 Too Many Requests`. The rate limiter sits outside the authentication, so a flood of
//! bad tokens is refused before any signature is checked; its bucket is shared by every
//! connection of this server.
//!
//! ```sh
//! export IM_CONNECT_AUTH__JWT__SECRET=an-example-secret-of-32-bytes-or-more
//! cargo run --example http_auth -- --listen 127.0.0.1:8080 &
//! curl -i http://127.0.0.1:8080/                       # 401
//! TOKEN=$(cargo run -q -- token --user alice)
//! curl -i -H "Authorization: Bearer $TOKEN" http://127.0.0.1:8080/   # 200 hello, alice
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;

use clap::Parser;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use im_connect::layer::{AuthLayer, RateLimitLayer, TokenVerifier};
use im_connect::session::Identity;
use tokio::net::TcpListener;
use tower::{ServiceBuilder, ServiceExt};

/// The guarded service: greets the authenticated user.
async fn hello(req: http::Request<Incoming>) -> Result<http::Response<String>, Infallible> {
    let user = req
        .extensions()
        .get::<Identity>()
        .map(|identity| identity.user_id.to_string())
        .unwrap_or_default();
    Ok(http::Response::new(format!("hello, {user}\n")))
}

/// Serves `hello` on `listener`, behind a rate limit of `per_second` with bursts of `burst`
/// and then authentication with `verifier`, until the task is dropped.
pub async fn serve<V>(listener: TcpListener, verifier: V, per_second: f64, burst: u32)
where
    V: TokenVerifier + 'static,
{
    let service = ServiceBuilder::new()
        .layer(RateLimitLayer::new(per_second, burst))
        .layer(AuthLayer::new(verifier))
        .service_fn(hello);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors, for instance: wait instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        // Clones share the rate limiter's bucket, so the limit holds across connections.
        let service = service.clone();
        tokio::spawn(async move {
            let hyper_service = hyper::service::service_fn(move |req| service.clone().oneshot(req));
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), hyper_service);
            if let Err(error) = conn.await {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
}

/// Command line of the example.
#[derive(Debug, Parser)]
#[command(about = "A hyper service behind im-connect's auth and rate-limit layers")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// HS256 secret the tokens are signed with (the gateway's `auth.jwt.secret`).
    #[arg(long, env = "IM_CONNECT_AUTH__JWT__SECRET", hide_env_values = true)]
    secret: String,
    /// Claim holding the user id.
    #[arg(long, default_value = "username")]
    user_claim: String,
    /// Sustained requests per second, for the whole server.
    #[arg(long, default_value_t = 5.0)]
    per_second: f64,
    /// Requests allowed in a burst.
    #[arg(long, default_value_t = 10)]
    burst: u32,
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
    let verifier =
        im_connect::layer::JwtVerifier::hs256(args.secret.as_bytes(), &args.user_claim, 30)?;
    let listener = TcpListener::bind(args.listen).await?;
    tracing::info!(addr = %listener.local_addr()?, "listening");

    tokio::select! {
        () = serve(listener, verifier, args.per_second, args.burst) => {}
        result = tokio::signal::ctrl_c() => result?,
    }
    Ok(())
}
