use http::header::{AUTHORIZATION, COOKIE};

use super::AuthError;
use crate::protocol::{Kind, Reason};
use crate::request::{Reply, Request};
use crate::session::{Close, Identity};

/// A request type [`Auth`](super::Auth) can guard, answering with responses of type `Res`.
pub trait AuthTarget<Res> {
    /// The token this request presents, if any.
    fn token(&self) -> Option<&str>;

    /// True when the request already carries an identity (a connection that logged in).
    fn is_authenticated(&self) -> bool;

    /// Attaches the verified identity. Fails when it conflicts with the one already there.
    fn authenticate(&mut self, identity: Identity) -> Result<(), AuthError>;

    /// The response refusing this request.
    fn reject(&self, error: &AuthError) -> Res;
}

impl AuthTarget<Reply> for Request {
    fn token(&self) -> Option<&str> {
        if self.kind() != Kind::Register {
            return None;
        }
        self.frame.token.as_deref().or_else(|| {
            let data = self.frame.data.as_ref()?;
            data.get("token")?.as_str().filter(|t| !t.is_empty())
        })
    }

    fn is_authenticated(&self) -> bool {
        self.conn.identity().is_some()
    }

    fn authenticate(&mut self, identity: Identity) -> Result<(), AuthError> {
        self.conn
            .set_identity(identity)
            .map_err(|_| AuthError::WrongUser)
    }

    fn reject(&self, error: &AuthError) -> Reply {
        let authenticated = self.is_authenticated();
        let (reason, close) = match error {
            // Frames other than REGISTER from a connection nobody logged in.
            AuthError::Missing if self.kind() != Kind::Register => {
                (Reason::NotLoggedIn, Close::NOT_LOGGED_IN)
            }
            _ => (Reason::Unauthenticated, Close::UNAUTHENTICATED),
        };
        let reply = self.error(reason, error.to_string());
        // A logged-in connection presenting a bad token keeps what it had; one without any
        // identity has nothing to keep.
        if authenticated {
            reply
        } else {
            reply.then_close(close)
        }
    }
}

impl<B, RB> AuthTarget<http::Response<RB>> for http::Request<B>
where
    RB: From<String>,
{
    fn token(&self) -> Option<&str> {
        http_token(self)
    }

    fn is_authenticated(&self) -> bool {
        self.extensions().get::<Identity>().is_some()
    }

    fn authenticate(&mut self, identity: Identity) -> Result<(), AuthError> {
        self.extensions_mut().insert(identity);
        Ok(())
    }

    fn reject(&self, error: &AuthError) -> http::Response<RB> {
        let mut res = http::Response::new(RB::from(format!("unauthorized: {error}\n")));
        *res.status_mut() = http::StatusCode::UNAUTHORIZED;
        res
    }
}

/// The token of an HTTP request, first match wins: query parameter `token` (percent-decoded;
/// `+` stays `+`), `Authorization: Bearer <token>` (or a bare value), cookie `token`.
pub fn http_token<B>(req: &http::Request<B>) -> Option<&str> {
    query_token(req.uri().query().unwrap_or(""))
        .or_else(|| {
            let value = req.headers().get(AUTHORIZATION)?.to_str().ok()?.trim();
            let token = match value.split_once(' ') {
                Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
                Some(_) => return None,
                None => value,
            };
            (!token.is_empty()).then_some(token)
        })
        .or_else(|| {
            req.headers()
                .get_all(COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|line| line.split(';'))
                .find_map(|pair| {
                    let (name, value) = pair.split_once('=')?;
                    let value = value.trim().trim_matches('"');
                    (name.trim() == "token" && !value.is_empty()).then_some(value)
                })
        })
}

fn query_token(query: &str) -> Option<&str> {
    // The raw value: JWTs are URL-safe, so only a token with an escape in it pays for
    // decoding, which `Auth` does.
    query.split('&').find_map(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        (name == "token" && !value.is_empty()).then_some(value)
    })
}

/// Decodes a query-string token: `%XX` escapes only, `+` is kept as it is.
pub(crate) fn decode_query_value(value: &str) -> String {
    percent_encoding::percent_decode_str(value)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str, headers: &[(&str, &str)]) -> http::Request<()> {
        let mut b = http::Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn query_wins_then_authorization_then_cookie() {
        let r = req(
            "/im?token=q1&token=q2",
            &[("authorization", "Bearer h"), ("cookie", "token=c")],
        );
        assert_eq!(http_token(&r), Some("q1"));
        let r = req(
            "/im",
            &[("Authorization", "bEaReR h"), ("cookie", "token=c")],
        );
        assert_eq!(http_token(&r), Some("h"));
        let r = req("/im", &[("authorization", "bare")]);
        assert_eq!(http_token(&r), Some("bare"));
        let r = req(
            "/im",
            &[("cookie", "xtoken=no; a=b"), ("cookie", "z=1; token=\"c\"")],
        );
        assert_eq!(http_token(&r), Some("c"));
        assert_eq!(http_token(&req("/im", &[("cookie", "xtoken=no")])), None);
    }

    #[test]
    fn query_values_decode_percent_but_keep_plus() {
        assert_eq!(decode_query_value("a%2Eb+c"), "a.b+c");
    }
}
