use std::time::Duration;

/// Why the Redis route store could not do what was asked.
///
/// Redis client errors are kept as text, so no client type leaks out of the route module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    /// The configuration cannot describe a Redis connection.
    #[error("invalid redis configuration: {0}")]
    Config(String),
    /// No connection to Redis could be had: refused, reset, authentication failed.
    #[error("redis unavailable: {0}")]
    Unavailable(String),
    /// Redis did not answer within the configured timeout.
    #[error("redis did not answer within {} ms", .0.as_millis())]
    Timeout(Duration),
    /// Redis answered with an error.
    #[error("redis command failed: {0}")]
    Command(String),
    /// A route record that is not the contract's JSON.
    #[error("malformed route record: {0}")]
    BadRecord(String),
}

impl RouteError {
    /// True when the error says Redis is unreachable or stalled, rather than that one record
    /// is malformed.
    pub fn is_outage(&self) -> bool {
        !matches!(self, RouteError::BadRecord(_))
    }

    pub(super) fn from_redis(err: &::redis::RedisError) -> Self {
        if err.is_io_error() || err.is_connection_dropped() || err.is_connection_refusal() {
            RouteError::Unavailable(err.to_string())
        } else {
            RouteError::Command(err.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_lower_case_and_name_redis() {
        let err = RouteError::Timeout(Duration::from_millis(250));
        assert_eq!(err.to_string(), "redis did not answer within 250 ms");
        assert!(err.is_outage());
        assert!(!RouteError::BadRecord("x".into()).is_outage());
    }
}
