use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use super::AuthError;
use crate::backend::BoxFuture;
use crate::route::RouteStore;
use crate::session::Identity;

/// Checks a token and says whose it is. Implement it to accept tokens other than JWTs.
pub trait TokenVerifier: Send + Sync + 'static {
    /// The identity `token` proves.
    fn verify<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Identity, AuthError>>;
}

impl<T: TokenVerifier + ?Sized> TokenVerifier for Arc<T> {
    fn verify<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Identity, AuthError>> {
        (**self).verify(token)
    }
}

/// Verifies JWTs: signature with one fixed algorithm (so `alg: none` and algorithm confusion
/// are refused), `exp` and `nbf` with leeway, and the user id from a configurable claim.
#[derive(Clone)]
pub struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
    user_claim: Arc<str>,
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("algorithms", &self.validation.algorithms)
            .field("user_claim", &self.user_claim)
            .finish_non_exhaustive()
    }
}

impl JwtVerifier {
    /// HS256 with a shared secret, which must not be empty.
    pub fn hs256(secret: &[u8], user_claim: &str, leeway_secs: u64) -> Result<Self, AuthError> {
        let key = DecodingKey::from_secret(secret)
            .map_err(|e| AuthError::Invalid(format!("bad secret: {e}")))?;
        Ok(Self::with_key(
            key,
            Algorithm::HS256,
            user_claim,
            leeway_secs,
        ))
    }

    /// RS256 or ES256 with a PEM public key.
    pub fn public_key(
        pem: &str,
        algorithm: Algorithm,
        user_claim: &str,
        leeway_secs: u64,
    ) -> Result<Self, AuthError> {
        let key = match algorithm {
            Algorithm::RS256 => DecodingKey::from_rsa_pem(pem.as_bytes()),
            Algorithm::ES256 => DecodingKey::from_ec_pem(pem.as_bytes()),
            other => {
                return Err(AuthError::Invalid(format!(
                    "unsupported public key algorithm {other:?}"
                )))
            }
        }
        .map_err(|e| AuthError::Invalid(format!("bad public key: {e}")))?;
        Ok(Self::with_key(key, algorithm, user_claim, leeway_secs))
    }

    fn with_key(key: DecodingKey, alg: Algorithm, user_claim: &str, leeway: u64) -> Self {
        let mut validation = Validation::new(alg);
        validation.leeway = leeway;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.required_spec_claims = HashSet::from(["exp".to_string()]);
        JwtVerifier {
            key,
            validation,
            user_claim: user_claim.into(),
        }
    }

    /// Also require this issuer.
    pub fn with_issuer(mut self, issuer: &str) -> Self {
        self.validation.set_issuer(&[issuer]);
        self
    }

    /// Also require this audience.
    pub fn with_audience(mut self, audience: &str) -> Self {
        self.validation.set_audience(&[audience]);
        self
    }

    /// Verifies synchronously.
    pub fn verify_now(&self, token: &str) -> Result<Identity, AuthError> {
        let data = jsonwebtoken::decode::<serde_json::Map<String, Value>>(
            token,
            &self.key,
            &self.validation,
        )
        .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
            _ => AuthError::Invalid(e.to_string()),
        })?;
        let claims = data.claims;
        let user_id = match claims.get(&*self.user_claim) {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => {
                return Err(AuthError::Invalid(format!(
                    "no `{}` claim",
                    self.user_claim
                )))
            }
        };
        Ok(Identity {
            user_id: user_id.into(),
            expires_at: claims.get("exp").and_then(Value::as_u64),
            token: token.into(),
        })
    }
}

impl TokenVerifier for JwtVerifier {
    fn verify<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Identity, AuthError>> {
        Box::pin(std::future::ready(self.verify_now(token)))
    }
}

/// Wraps a verifier with a revocation check in the route store's blacklist.
#[derive(Debug, Clone)]
pub struct Revocable<V> {
    inner: V,
    store: Arc<dyn RouteStore>,
}

impl<V> Revocable<V> {
    /// Refuses tokens `store` reports revoked, after `inner` accepts them.
    pub fn new(inner: V, store: Arc<dyn RouteStore>) -> Self {
        Revocable { inner, store }
    }
}

impl<V: TokenVerifier> TokenVerifier for Revocable<V> {
    fn verify<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Identity, AuthError>> {
        Box::pin(async move {
            let identity = self.inner.verify(token).await?;
            match self.store.is_revoked(token).await {
                Ok(false) => Ok(identity),
                Ok(true) => Err(AuthError::Revoked),
                Err(e) => Err(AuthError::Unavailable(e.to_string())),
            }
        })
    }
}

/// Signs a token for `user` with the configured key: the HS256 secret, or
/// `auth.jwt.privateKey` for RS256/ES256. For development and load generation; production
/// tokens come from the auth service.
pub fn mint_token(
    config: &crate::config::Config,
    user: &str,
    device: Option<&str>,
    ttl_secs: u64,
) -> Result<String, AuthError> {
    use jsonwebtoken::{EncodingKey, Header};

    let jwt = &config.auth.jwt;
    let bad = |e: jsonwebtoken::errors::Error| AuthError::Invalid(e.to_string());
    let (alg, key) = match (&jwt.private_key, &jwt.secret) {
        (Some(pem), _) => {
            let pem = pem.expose().as_bytes();
            match jwt.algorithm.as_deref() {
                Some("ES256") => (
                    Algorithm::ES256,
                    EncodingKey::from_ec_pem(pem).map_err(bad)?,
                ),
                _ => (
                    Algorithm::RS256,
                    EncodingKey::from_rsa_pem(pem).map_err(bad)?,
                ),
            }
        }
        (None, Some(secret)) => (
            Algorithm::HS256,
            EncodingKey::from_secret(secret.expose().as_bytes()).map_err(bad)?,
        ),
        (None, None) => {
            return Err(AuthError::Invalid(
                "no signing key: set auth.jwt.secret or auth.jwt.privateKey".into(),
            ))
        }
    };
    let now = crate::protocol::now_millis() as u64 / 1000;
    let mut claims = serde_json::Map::new();
    claims.insert(jwt.user_id_claim.clone(), Value::String(user.into()));
    claims.insert("iat".into(), now.into());
    claims.insert("exp".into(), (now + ttl_secs).into());
    if let Some(device) = device {
        claims.insert("deviceType".into(), Value::String(device.into()));
    }
    jsonwebtoken::encode(&Header::new(alg), &claims, &key).map_err(bad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn sign(claims: Value, secret: &[u8]) -> String {
        jsonwebtoken::encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn accepts_valid_token_and_reads_numeric_user_claim() {
        let v = JwtVerifier::hs256(b"k", "username", 30).unwrap();
        let id = v
            .verify_now(&sign(json!({"username": 42, "exp": now() + 60}), b"k"))
            .unwrap();
        assert_eq!(&*id.user_id, "42");
    }

    #[test]
    fn refuses_forged_expired_and_unsigned_tokens() {
        let v = JwtVerifier::hs256(b"k", "username", 0).unwrap();
        let forged = sign(json!({"username": "a", "exp": now() + 60}), b"other");
        assert!(matches!(v.verify_now(&forged), Err(AuthError::Invalid(_))));
        let expired = sign(json!({"username": "a", "exp": now() - 100}), b"k");
        assert_eq!(v.verify_now(&expired).unwrap_err(), AuthError::Expired);
        // alg: none, hand-built.
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let none = format!(
            "{}.{}.",
            b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(format!(r#"{{"username":"a","exp":{}}}"#, now() + 60))
        );
        assert!(v.verify_now(&none).is_err());
    }

    #[test]
    fn leeway_admits_recently_expired_tokens() {
        let v = JwtVerifier::hs256(b"k", "username", 30).unwrap();
        let t = sign(json!({"username": "a", "exp": now() - 5}), b"k");
        assert!(v.verify_now(&t).is_ok());
    }
}
