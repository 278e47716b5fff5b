use std::fmt;

/// The stable machine-readable word an ERROR reply carries in `metadata.reason`.
///
/// Clients branch on these words, so they never change once released; the human-readable
/// `message` beside them may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// The token is missing, malformed, forged, expired or names another user.
    Unauthenticated,
    /// The connection sent faster than its rate limit allows.
    RateLimited,
    /// A frame larger than the message size limit.
    TooBig,
    /// A frame that cannot be decoded as an envelope.
    BadFrame,
    /// A code that is not in the code table, or a server-to-client kind sent by a client.
    UnknownCode,
    /// The broker is down or did not confirm the publish in time.
    BrokerUnavailable,
    /// A frame other than REGISTER on a connection that has not registered.
    NotLoggedIn,
    /// The route store could not record the login.
    RouteUnavailable,
    /// A business message without recipients where recipients are needed.
    NoRecipients,
    /// The server failed in a way the client cannot fix.
    Internal,
}

impl Reason {
    /// The wire word, as sent in `metadata.reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Unauthenticated => "unauthenticated",
            Reason::RateLimited => "rate_limited",
            Reason::TooBig => "too_big",
            Reason::BadFrame => "bad_frame",
            Reason::UnknownCode => "unknown_code",
            Reason::BrokerUnavailable => "broker_unavailable",
            Reason::NotLoggedIn => "not_logged_in",
            Reason::RouteUnavailable => "route_unavailable",
            Reason::NoRecipients => "no_recipients",
            Reason::Internal => "internal",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
