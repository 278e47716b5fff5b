use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::de::TextVisitor;

/// A configuration value that must never be printed: a password, a signing key.
///
/// `Debug` and `Serialize` write `***`, so a secret never reaches a log line or the output of
/// `im-connect check`. The value is read with [`Secret::expose`], only where it is used.
///
/// It deserializes from a string; a number is read as its text, so `password: 123456` works.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// Returns the secret text.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("***")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TextVisitor).map(Secret)
    }
}

/// Deserializes an optional secret where an empty string means "not set", as a
/// `password: ""` in YAML usually does.
pub(crate) fn optional<'de, D>(deserializer: D) -> Result<Option<Secret>, D::Error>
where
    D: Deserializer<'de>,
{
    let text = super::de::opt_string(deserializer)?;
    Ok(text.map(Secret))
}
