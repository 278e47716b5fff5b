//! Lenient readers for scalar values.
//!
//! YAML and environment variables type scalars by their look: `version: 1.0`, a numeric
//! password or `port: 9000` where a list is expected. These helpers accept what an operator
//! obviously meant instead of failing on the type.

use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};

/// Reads a string, or a number or boolean as its text.
pub(crate) struct TextVisitor;

impl<'de> Visitor<'de> for TextVisitor {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
        Ok(v)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
        // `{:?}` keeps the fractional part, so `1.0` stays "1.0" rather than "1".
        Ok(format!("{v:?}"))
    }
}

/// Deserializes a string field, accepting numbers and booleans as their text.
pub(crate) fn string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    deserializer.deserialize_any(TextVisitor)
}

/// Deserializes an optional string field where null, an empty or an all-blank string mean
/// "not set". A set value is kept as written.
pub(crate) fn opt_string<'de, D>(deserializer: D) -> Result<Option<String>, D::Error>
where
    D: Deserializer<'de>,
{
    struct OptText;

    impl<'de> Visitor<'de> for OptText {
        type Value = Option<String>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string or nothing")
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            let text = d.deserialize_any(TextVisitor)?;
            Ok((!text.trim().is_empty()).then_some(text))
        }
    }

    deserializer.deserialize_option(OptText)
}

/// Deserializes a port list from a sequence, a single number or a comma-separated string
/// (`9000,9001`), the last two being what environment variables naturally carry.
pub(crate) fn ports<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u16>, D::Error> {
    struct Ports;

    impl<'de> Visitor<'de> for Ports {
        type Value = Vec<u16>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of ports")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut ports = Vec::with_capacity(seq.size_hint().unwrap_or(0));
            while let Some(port) = seq.next_element::<u16>()? {
                ports.push(port);
            }
            Ok(ports)
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            port(v).map(|p| vec![p])
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            let v = u64::try_from(v).map_err(|_| invalid_port(v))?;
            port(v).map(|p| vec![p])
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| s.parse::<u16>().map_err(|_| invalid_port(s)))
                .collect()
        }
    }

    fn port<E: de::Error>(v: u64) -> Result<u16, E> {
        u16::try_from(v).map_err(|_| invalid_port(v))
    }

    fn invalid_port<E: de::Error>(v: impl fmt::Display) -> E {
        E::custom(format_args!("`{v}` is not a port number (1 to 65535)"))
    }

    deserializer.deserialize_any(Ports)
}

/// Deserializes a profile list from a comma-separated string or a YAML sequence, always
/// producing the comma-separated form.
pub(crate) fn profiles<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    struct Profiles;

    impl<'de> Visitor<'de> for Profiles {
        type Value = String;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a comma-separated list of profiles")
        }

        fn visit_unit<E: de::Error>(self) -> Result<String, E> {
            Ok(String::new())
        }

        fn visit_none<E: de::Error>(self) -> Result<String, E> {
            Ok(String::new())
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_owned())
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<String, A::Error> {
            let mut names = Vec::new();
            while let Some(name) = seq.next_element::<String>()? {
                names.push(name);
            }
            Ok(names.join(","))
        }
    }

    deserializer.deserialize_any(Profiles)
}
