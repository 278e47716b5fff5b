//! Optional backend sections (`rabbitmq`, `redis`, `nacos`) and the rule that decides
//! whether one is present.
//!
//! A section is on when it says `enable: true`, or when it has no `enable` key but names a
//! server (`rabbitmq.address`, `redis.host`, `nacos.config.address`). `enable: false` turns
//! it off whatever else it holds. The rule lets a profile tune a section
//! (`rabbitmq.routingKeyPrefix: ""`) without switching the backend on for configurations
//! that never configured one.

use std::fmt;
use std::marker::PhantomData;

use serde::de::value::MapAccessDeserializer;
use serde::de::{self, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use super::{NacosConfig, RabbitMqConfig, RedisConfig};

/// A section as written: its fields, its `enable` switch and the keys it contained.
struct Probe<T, const STRIP_ENABLE: bool> {
    value: T,
    enable: Option<bool>,
    keys: Vec<String>,
}

impl<T, const S: bool> Probe<T, S> {
    fn has_key(&self, key: &str) -> bool {
        self.keys.iter().any(|k| k == key)
    }
}

impl<'de, T: Deserialize<'de>, const S: bool> Deserialize<'de> for Probe<T, S> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(ProbeVisitor::<T, S>(PhantomData))
    }
}

struct ProbeVisitor<T, const S: bool>(PhantomData<T>);

impl<'de, T: Deserialize<'de>, const S: bool> Visitor<'de> for ProbeVisitor<T, S> {
    type Value = Probe<T, S>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let mut filter = Filter {
            map,
            strip_enable: S,
            enable: None,
            keys: Vec::new(),
        };
        let value = T::deserialize(MapAccessDeserializer::new(&mut filter))?;

        Ok(Probe {
            value,
            enable: filter.enable,
            keys: filter.keys,
        })
    }
}

/// Passes a map through to the section's own deserializer, taking out `enable` and noting
/// every key. Keys and values still flow through the outer deserializer, so error paths and
/// unknown-key tracking see the real nesting.
struct Filter<A> {
    map: A,
    strip_enable: bool,
    enable: Option<bool>,
    keys: Vec<String>,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Filter<A> {
    type Error = A::Error;

    fn next_key_seed<K>(&mut self, seed: K) -> Result<Option<K::Value>, A::Error>
    where
        K: DeserializeSeed<'de>,
    {
        loop {
            let Some(key) = self.map.next_key::<String>()? else {
                return Ok(None);
            };
            if self.strip_enable && key == "enable" {
                self.enable = Some(self.map.next_value()?);
                continue;
            }

            self.keys.push(key.clone());
            let key: de::value::StringDeserializer<A::Error> = key.into_deserializer();
            return seed.deserialize(key).map(Some);
        }
    }

    fn next_value_seed<V>(&mut self, seed: V) -> Result<V::Value, A::Error>
    where
        V: DeserializeSeed<'de>,
    {
        self.map.next_value_seed(seed)
    }
}

fn flat<'de, D, T>(deserializer: D, server_key: &str) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    let Some(probe) = Option::<Probe<T, true>>::deserialize(deserializer)? else {
        return Ok(None);
    };
    let on = probe.enable.unwrap_or_else(|| probe.has_key(server_key));

    Ok(on.then_some(probe.value))
}

/// Deserializes the `rabbitmq` section.
pub(crate) fn rabbitmq<'de, D>(deserializer: D) -> Result<Option<RabbitMqConfig>, D::Error>
where
    D: Deserializer<'de>,
{
    flat(deserializer, "address")
}

/// Deserializes the `redis` section.
pub(crate) fn redis<'de, D>(deserializer: D) -> Result<Option<RedisConfig>, D::Error>
where
    D: Deserializer<'de>,
{
    flat(deserializer, "host")
}

/// Deserializes the `nacos` section, whose settings sit one level down under `config`.
pub(crate) fn nacos<'de, D>(deserializer: D) -> Result<Option<NacosConfig>, D::Error>
where
    D: Deserializer<'de>,
{
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Shape {
        config: Option<Probe<NacosConfig, false>>,
    }

    let Some(probe) = Option::<Probe<Shape, true>>::deserialize(deserializer)? else {
        return Ok(None);
    };
    let inner = probe.value.config;
    let names_server = inner.as_ref().is_some_and(|c| c.has_key("address"));
    let on = probe.enable.unwrap_or(names_server);

    Ok(on.then(|| inner.map(|c| c.value).unwrap_or_default()))
}

/// Serializes a flat section in the shape it is read from: `enable` plus its fields.
pub(crate) fn serialize_flat<T, S>(section: &Option<T>, serializer: S) -> Result<S::Ok, S::Error>
where
    T: Serialize,
    S: Serializer,
{
    #[derive(Serialize)]
    struct On<'a, T> {
        enable: bool,
        #[serde(flatten)]
        fields: &'a T,
    }

    match section {
        Some(fields) => On {
            enable: true,
            fields,
        }
        .serialize(serializer),
        None => Off { enable: false }.serialize(serializer),
    }
}

/// Serializes the `nacos` section as `enable` plus `config`.
pub(crate) fn serialize_nacos<S>(
    section: &Option<NacosConfig>,
    serializer: S,
) -> Result<S::Ok, S::Error>
where
    S: Serializer,
{
    #[derive(Serialize)]
    struct On<'a> {
        enable: bool,
        config: &'a NacosConfig,
    }

    match section {
        Some(config) => On {
            enable: true,
            config,
        }
        .serialize(serializer),
        None => Off { enable: false }.serialize(serializer),
    }
}

#[derive(Serialize)]
struct Off {
    enable: bool,
}
