//! Reading, layering and checking a configuration.
//!
//! Layers, later ones winning key by key: the base file, each profile's file in order, then
//! environment variables. Figment merges the layers; the merged tree is deserialized once,
//! through `serde_ignored` so unknown keys come back as warnings, then finished (defaults
//! that depend on other keys, key files, the development secret) and validated.

use std::path::{Path, PathBuf};

use figment::providers::{Format, Yaml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};

use super::{Config, ConfigError, Loaded, NacosConfig, RabbitMqConfig, RedisConfig, Secret};

/// The base file `Config::load(None)` reads, relative to the current directory.
pub(crate) const DEFAULT_FILE: &str = "config/application.yml";
/// Where profile files are looked for when they are not beside the base file.
const PROFILE_DIR: &str = "config";
/// Prefix of environment overrides; `__` separates levels.
const ENV_PREFIX: &str = "IM_CONNECT_";
const ENV_SEPARATOR: &str = "__";
/// Variables that select profiles, strongest first. They win over `spring.profiles.active`
/// from any file or from `IM_CONNECT_SPRING__PROFILES__ACTIVE`.
const PROFILE_VARS: [&str; 2] = ["IM_CONNECT_PROFILES", "SPRING_PROFILES_ACTIVE"];
const PROFILES_KEY: &str = "spring.profiles.active";
const DEV_PROFILE: &str = "dev";

/// One source of settings, named so that errors can say where a bad value came from.
struct Layer {
    name: String,
    dict: Dict,
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name.clone())
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}

impl Layer {
    fn parse(name: String, text: &str) -> Result<Self, ConfigError> {
        let dict = Yaml::from_str::<Dict>(text).map_err(|e| ConfigError::Parse {
            origin: name.clone(),
            message: e.to_string(),
        })?;
        Ok(Self { name, dict })
    }

    fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        Self::parse(path.display().to_string(), &text)
    }

    /// `spring.profiles.active` as this layer sets it.
    fn profiles(&self) -> Option<String> {
        let value = Value::from(self.dict.clone());
        let active = value.find_ref(PROFILES_KEY)?;
        super::de::profiles(active).ok()
    }
}

/// Loads `path` (or the default file), its profiles and the overrides in `env`.
pub(crate) fn load(path: Option<&Path>, env: &[(String, String)]) -> Result<Loaded, ConfigError> {
    let base = match path {
        Some(path) => Some(path.to_owned()),
        None => Some(PathBuf::from(DEFAULT_FILE)).filter(|p| p.is_file()),
    };
    let mut layers = Vec::new();
    let mut sources = Vec::new();
    if let Some(base) = &base {
        layers.push(Layer::read(base)?);
        sources.push(base.clone());
    }

    let env_layers = env_layers(env);
    let profiles = select_profiles(env, &env_layers, layers.first())?;
    let dirs = profile_dirs(base.as_deref());
    for profile in &profiles {
        let name = format!("application-{profile}.yml");
        if let Some(file) = dirs.iter().map(|d| d.join(&name)).find(|f| f.is_file()) {
            layers.push(Layer::read(&file)?);
            sources.push(file);
        }
    }
    layers.extend(env_layers);

    let mut loaded = build(layers, Some(profiles.join(",")))?;
    loaded.sources = sources;
    Ok(loaded)
}

/// Loads YAML text alone.
pub(crate) fn from_yaml(text: &str) -> Result<Loaded, ConfigError> {
    build(vec![Layer::parse("YAML text".to_owned(), text)?], None)
}

/// Merges `layers`, deserializes, finishes and validates. `profiles` replaces
/// `spring.profiles.active` when the caller has already resolved it.
fn build(layers: Vec<Layer>, profiles: Option<String>) -> Result<Loaded, ConfigError> {
    let figment = layers.into_iter().fold(Figment::new(), Figment::merge);
    let mut data = figment.data().map_err(|e| ConfigError::Parse {
        origin: "configuration".to_owned(),
        message: e.to_string(),
    })?;
    let value = Value::from(data.remove(&Profile::Default).unwrap_or_default());

    let mut warnings = Vec::new();
    let mut config: Config = serde_ignored::deserialize(&value, |path| {
        let key = dotted(&path);
        warnings.push(format!("unknown configuration key `{key}` (ignored)"));
    })
    .map_err(|e| deserialize_error(&figment, e))?;
    if let Some(profiles) = profiles {
        config.spring.profiles.active = profiles;
    }

    finish(&mut config, &mut warnings)?;
    Ok(Loaded {
        config,
        warnings,
        sources: Vec::new(),
    })
}

/// Fills what depends on other keys, reads key files, applies the development-secret rule,
/// then validates.
fn finish(config: &mut Config, warnings: &mut Vec<String>) -> Result<(), ConfigError> {
    let profiles = parse_profiles(&config.spring.profiles.active)?;
    let dev_only = !profiles.is_empty() && profiles.iter().all(|p| p == DEV_PROFILE);
    config.spring.profiles.active = profiles.join(",");

    if let Some(nacos) = &mut config.nacos {
        if nacos.name.trim().is_empty() {
            nacos.name = config.app.name.clone();
        }
    }

    // Device types are matched trimmed and lower-cased, so aliases must be stored that way.
    let netty = &mut config.netty.config;
    let lower = |text: String| text.trim().to_ascii_lowercase();
    netty.device_aliases = std::mem::take(&mut netty.device_aliases)
        .into_iter()
        .map(|(from, to)| (lower(from), lower(to)))
        .collect();
    if netty.boss_thread_size.is_some() {
        warnings.push(
            "netty.config.bossThreadSize has no effect: \
             tokio accepts connections on its worker threads"
                .to_owned(),
        );
    }

    config.auth.jwt.resolve(dev_only, warnings)?;
    config.validate()
}

/// Splits and checks a profile list. Names become file names, so they are restricted to
/// letters, digits, `-`, `_` and `.`, and cannot start with a dot.
fn parse_profiles(active: &str) -> Result<Vec<String>, ConfigError> {
    let mut profiles = Vec::new();
    for name in active.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let valid = !name.starts_with('.')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid {
            let message = format!("`{name}` is not a valid profile name");
            return Err(ConfigError::invalid(PROFILES_KEY, message));
        }
        profiles.push(name.to_owned());
    }
    Ok(profiles)
}

fn select_profiles(
    env: &[(String, String)],
    env_layers: &[Layer],
    base: Option<&Layer>,
) -> Result<Vec<String>, ConfigError> {
    let from_vars = PROFILE_VARS.iter().find_map(|var| {
        env.iter()
            .find(|(name, value)| name == var && !value.trim().is_empty())
            .map(|(_, value)| value.clone())
    });
    let active = from_vars
        .or_else(|| env_layers.iter().rev().find_map(Layer::profiles))
        .or_else(|| base.and_then(Layer::profiles))
        .unwrap_or_else(|| DEV_PROFILE.to_owned());

    parse_profiles(&active)
}

/// Beside the base file first, then `config/`.
fn profile_dirs(base: Option<&Path>) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(parent) = base.and_then(Path::parent) {
        dirs.push(parent.to_owned());
    }
    let fallback = PathBuf::from(PROFILE_DIR);
    if !dirs.iter().any(|d| same_dir(d, &fallback)) {
        dirs.push(fallback);
    }
    dirs
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// One layer per `IM_CONNECT_` variable whose name contains `__`.
///
/// Variables without `__` (`IM_CONNECT_CONFIG`, `IM_CONNECT_PROFILES`, ...) are not settings:
/// every setting is at least two levels deep. The lower-cased segments are matched against
/// the known keys without regard to case, so `HEARTBEATTIME` finds `heartBeatTime`. A value
/// for a string key is taken verbatim; any other value is parsed, so `10000` is a number,
/// `true` a boolean and `[9000,9001]` a list.
fn env_layers(env: &[(String, String)]) -> Vec<Layer> {
    let schema = schema();
    let mut layers = Vec::new();
    for (name, raw) in env {
        let Some(rest) = strip_prefix_ignore_case(name, ENV_PREFIX) else {
            continue;
        };
        if !rest.contains(ENV_SEPARATOR) {
            continue;
        }

        let mut node = Some(&schema);
        let mut path = Vec::new();
        for segment in rest.split(ENV_SEPARATOR).map(str::to_ascii_lowercase) {
            let known = match node {
                Some(serde_json::Value::Object(map)) => {
                    map.iter().find(|(k, _)| k.eq_ignore_ascii_case(&segment))
                }
                _ => None,
            };
            node = known.map(|(_, child)| child);
            path.push(known.map_or(segment, |(k, _)| k.clone()));
        }

        let value = match node {
            Some(serde_json::Value::String(_)) => Value::from(raw.clone()),
            Some(serde_json::Value::Bool(_)) => parse_value(&raw.trim().to_ascii_lowercase()),
            _ => parse_value(raw),
        };
        layers.push(Layer {
            name: format!("environment variable {name}"),
            dict: nest(path, value),
        });
    }
    layers
}

/// Figment's reading of an environment value: numbers, booleans, lists and maps by their
/// look, anything else as a string.
fn parse_value(text: &str) -> Value {
    text.parse().unwrap_or_else(|never| match never {})
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

fn nest(path: Vec<String>, leaf: Value) -> Dict {
    let mut value = leaf;
    for key in path.into_iter().rev() {
        let mut dict = Dict::new();
        dict.insert(key, value);
        value = Value::from(dict);
    }
    value.into_dict().unwrap_or_default()
}

/// Every key the configuration knows, with a value of its type: the default configuration
/// with every optional part filled in.
fn schema() -> serde_json::Value {
    let mut config = Config::default();
    let some = || Some(String::new());
    let secret = || Some(Secret::new(""));

    let netty = &mut config.netty.config;
    netty.boss_thread_size = Some(0);
    netty.work_thread_size = Some(0);
    netty.broker_id = some();
    config.auth.blacklist_prefix = some();
    let jwt = &mut config.auth.jwt;
    (jwt.secret, jwt.private_key) = (secret(), secret());
    (jwt.public_key, jwt.algorithm) = (some(), some());
    (jwt.issuer, jwt.audience) = (some(), some());
    config.admin.token = secret();
    config.rabbitmq = Some(RabbitMqConfig::default());
    config.redis = Some(RedisConfig {
        password: secret(),
        ..RedisConfig::default()
    });
    config.nacos = Some(NacosConfig {
        username: some(),
        password: secret(),
        ip: some(),
        ..NacosConfig::default()
    });

    serde_json::to_value(&config).unwrap_or_default()
}

/// Renders an ignored key's path the way it is written in YAML: `netty.config.heartBeatTme`.
fn dotted(path: &serde_ignored::Path<'_>) -> String {
    fn walk(path: &serde_ignored::Path<'_>, out: &mut Vec<String>) {
        use serde_ignored::Path as P;
        match path {
            P::Root => {}
            P::Seq { parent, index } => {
                walk(parent, out);
                out.push(index.to_string());
            }
            P::Map { parent, key } => {
                walk(parent, out);
                out.push(key.clone());
            }
            P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
                walk(parent, out)
            }
        }
    }

    let mut segments = Vec::new();
    walk(path, &mut segments);
    segments.join(".")
}

/// Turns figment's errors into ours, naming the key and the layer its value came from.
fn deserialize_error(figment: &Figment, error: figment::Error) -> ConfigError {
    let errors = error
        .into_iter()
        .map(|e| {
            let key = match e.path.join(".") {
                key if key.is_empty() => "(top level)".to_owned(),
                key => key,
            };
            let origin = origin(figment, &e.path)
                .map(|name| format!(" (set in {name})"))
                .unwrap_or_default();
            ConfigError::invalid(key, format!("{}{origin}", e.kind))
        })
        .collect();

    ConfigError::from_list(errors).unwrap_or_else(|| ConfigError::invalid("(top level)", "invalid"))
}

/// The layer that set the value at `path`. List indexes are dropped: a list comes whole
/// from one layer.
fn origin(figment: &Figment, path: &[String]) -> Option<String> {
    let end = path
        .iter()
        .rposition(|segment| segment.parse::<usize>().is_err())?;
    let metadata = figment.find_metadata(&path[..=end].join("."))?;
    Some(metadata.name.to_string())
}
