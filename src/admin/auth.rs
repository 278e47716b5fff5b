//! Bearer-token check for the admin endpoint.

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use tower_http::validate_request::ValidateRequest;

use super::api::json_error;
use crate::config::Secret;

/// Paths served without the token: the liveness probe and the console page (which asks for
/// the token itself and sends it with every API call).
const PUBLIC_PATHS: [&str; 2] = ["/", "/health"];

/// Requires `Authorization: Bearer <token>` on every path but the public ones; with no token
/// configured every request passes (the endpoint is then bound to loopback only, which
/// configuration validation enforces).
#[derive(Debug, Clone)]
pub struct AdminAuth {
    token: Option<Secret>,
}

impl AdminAuth {
    /// Checks for `token`, or nothing when `None`.
    pub fn new(token: Option<Secret>) -> Self {
        AdminAuth { token }
    }

    fn allows(&self, value: Option<&[u8]>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let Some(value) = value else {
            return false;
        };
        let presented = match value.get(..7) {
            Some(scheme) if scheme.eq_ignore_ascii_case(b"bearer ") => &value[7..],
            _ => return false,
        };
        constant_time_eq(presented, token.expose().as_bytes())
    }
}

impl<B> ValidateRequest<B> for AdminAuth {
    type ResponseBody = Full<Bytes>;

    fn validate(&mut self, request: &mut Request<B>) -> Result<(), Response<Full<Bytes>>> {
        if PUBLIC_PATHS.contains(&request.uri().path()) {
            return Ok(());
        }
        let value = request.headers().get(header::AUTHORIZATION);
        if self.allows(value.map(|v| v.as_bytes())) {
            return Ok(());
        }

        tracing::debug!(
            path = request.uri().path(),
            "admin request without a valid token"
        );
        let mut response = json_error(
            StatusCode::UNAUTHORIZED,
            "a valid admin token is required: send Authorization: Bearer <admin.token>",
        );
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("valid"));
        Err(response)
    }
}

/// Compares without returning early at the first difference, so the time taken does not
/// tell how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_the_bearer_token() {
        let auth = AdminAuth::new(Some(Secret::new("s3cret")));
        assert!(auth.allows(Some(b"Bearer s3cret")));
        assert!(auth.allows(Some(b"bearer s3cret")));
        assert!(!auth.allows(Some(b"Bearer s3cre")));
        assert!(!auth.allows(Some(b"s3cret")));
        assert!(!auth.allows(None));
        assert!(AdminAuth::new(None).allows(None));
    }
}
