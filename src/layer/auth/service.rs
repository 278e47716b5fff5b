use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Layer, Service};

use super::credentials::decode_query_value;
use super::{AuthError, AuthTarget, TokenVerifier};
use crate::backend::{BoxError, BoxFuture};

/// Applies [`Auth`] to a service. Holds only the verifier.
#[derive(Clone)]
pub struct AuthLayer<V> {
    verifier: Arc<V>,
}

impl<V> std::fmt::Debug for AuthLayer<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthLayer").finish_non_exhaustive()
    }
}

impl<V: TokenVerifier> AuthLayer<V> {
    /// Authenticates with `verifier`.
    pub fn new(verifier: V) -> Self {
        AuthLayer {
            verifier: Arc::new(verifier),
        }
    }

    /// Shares an already shared verifier.
    pub fn from_arc(verifier: Arc<V>) -> Self {
        AuthLayer { verifier }
    }
}

impl<S, V> Layer<S> for AuthLayer<V> {
    type Service = Auth<S, V>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            verifier: self.verifier.clone(),
        }
    }
}

/// Verifies the credentials a request presents before passing it on; refuses requests that
/// present none and carry no identity.
pub struct Auth<S, V> {
    inner: S,
    verifier: Arc<V>,
}

impl<S: Clone, V> Clone for Auth<S, V> {
    fn clone(&self) -> Self {
        Auth {
            inner: self.inner.clone(),
            verifier: self.verifier.clone(),
        }
    }
}

impl<S: std::fmt::Debug, V> std::fmt::Debug for Auth<S, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, V> Auth<S, V> {
    /// Wraps `inner`.
    pub fn new(inner: S, verifier: Arc<V>) -> Self {
        Auth { inner, verifier }
    }

    /// A layer producing this service.
    pub fn layer(verifier: V) -> AuthLayer<V> {
        AuthLayer {
            verifier: Arc::new(verifier),
        }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, V, R> Service<R> for Auth<S, V>
where
    S: Service<R> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    S::Response: Send,
    V: TokenVerifier,
    R: AuthTarget<S::Response> + Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<S::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: R) -> Self::Future {
        // The clone is the one that was not driven to readiness; call the ready one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let verifier = self.verifier.clone();
        Box::pin(async move {
            let token = req.token().map(|t| {
                if t.contains('%') {
                    decode_query_value(t)
                } else {
                    t.to_owned()
                }
            });
            match token {
                Some(token) => {
                    let outcome = verifier.verify(&token).await;
                    match outcome.and_then(|identity| req.authenticate(identity)) {
                        Ok(()) => {}
                        Err(error) => {
                            tracing::debug!(%error, "credentials refused");
                            return Ok(req.reject(&error));
                        }
                    }
                }
                None if !req.is_authenticated() => return Ok(req.reject(&AuthError::Missing)),
                None => {}
            }
            inner.call(req).await.map_err(Into::into)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::JwtVerifier;
    use jsonwebtoken::{EncodingKey, Header};
    use tower::ServiceExt;

    fn token(user: &str) -> String {
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 60;
        jsonwebtoken::encode(
            &Header::default(),
            &serde_json::json!({"username": user, "exp": exp}),
            &EncodingKey::from_secret(b"k").unwrap(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn guards_http_services_with_401() {
        let svc = AuthLayer::new(JwtVerifier::hs256(b"k", "username", 0).unwrap()).layer(
            tower::service_fn(|req: http::Request<()>| async move {
                let who = req
                    .extensions()
                    .get::<crate::session::Identity>()
                    .map(|i| i.user_id.to_string())
                    .unwrap_or_default();
                Ok::<_, BoxError>(http::Response::new(who))
            }),
        );
        let bad = http::Request::builder().uri("/x").body(()).unwrap();
        let res = svc.clone().oneshot(bad).await.unwrap();
        assert_eq!(res.status(), 401);
        let good = http::Request::builder()
            .uri(format!("/x?token={}", token("alice")))
            .body(())
            .unwrap();
        let res = svc.oneshot(good).await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.body(), "alice");
    }
}
