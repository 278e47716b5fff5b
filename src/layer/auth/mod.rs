//! Authentication: verifies the token a request presents and attaches the [`Identity`] it
//! proves.
//!
//! For frames, the token is the REGISTER's (`token` or `data.token`); other frames ride on the
//! connection's identity. For HTTP requests it is the `token` query parameter, an
//! `Authorization` header or a `token` cookie, and the identity lands in the request
//! extensions. A request with no valid credentials is answered by the request type's own
//! rejection: an ERROR frame (and a close when the connection has no identity at all) or an
//! HTTP `401`.
//!
//! ```
//! use im_connect::layer::{AuthLayer, JwtVerifier};
//! use tower::ServiceBuilder;
//!
//! let verifier = JwtVerifier::hs256(b"secret", "username", 30).unwrap();
//! let svc = ServiceBuilder::new()
//!     .layer(AuthLayer::new(verifier))
//!     .service_fn(|req: http::Request<String>| async move {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(String::from("hello")))
//!     });
//! # drop(svc);
//! ```
//!
//! [`Identity`]: crate::session::Identity

mod credentials;
mod jwt;
mod service;

pub use credentials::{http_token, AuthTarget};
pub use jwt::{mint_token, JwtVerifier, Revocable, TokenVerifier};
pub use service::{Auth, AuthLayer};

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token where one is needed.
    #[error("missing token")]
    Missing,
    /// Bad signature, malformed, wrong algorithm, not yet valid, or no user claim.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// `exp` (plus leeway) has passed.
    #[error("token expired")]
    Expired,
    /// Listed in the revocation blacklist.
    #[error("token revoked")]
    Revoked,
    /// Valid, but for another user than the connection's.
    #[error("token names another user")]
    WrongUser,
    /// The revocation check could not be made.
    #[error("token check unavailable: {0}")]
    Unavailable(String),
}
