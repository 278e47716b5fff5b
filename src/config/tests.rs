use std::fs;
use std::path::{Path, PathBuf};

use super::*;

const DESIGN_EXAMPLE: &str = "config/examples/design-example.yml";
const SHIPPED_BASE: &str = "config/application.yml";
const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";

const RSA_PUBLIC_KEY: &str = "-----BEGIN PUBLIC KEY-----
MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDQJ6WqfZl1g6WrkDHOBxH/0087
e3QAbdEwCAVypFyBWzmDW5cboghgInqd0NxlOelPN0zn6Yx6zy92ypsNCGQWOz/a
YRBJ8o2YsLADgP7P64xX85N0v5NUovIFF+0jyoKKX5o7DfoUTlClItUC2vi+afOO
0DFXh9265Q7+L5NdoQIDAQAB
-----END PUBLIC KEY-----
";

const EC_PUBLIC_KEY: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEmRzwv5V91S/rPLI1P0j9wi5y7ieC
cNYkBzAApY0FDZ0N3RasrN7ia8rR1+RgGauqndyABajM8VprRc8Gnm0zVw==
-----END PUBLIC KEY-----
";

/// A directory under the system temp dir, removed on drop. Names carry the process id and
/// the test's name, so tests running in parallel never share one.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("im-connect-config-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }

    fn write(&self, file: &str, text: &str) -> PathBuf {
        let path = self.0.join(file);
        fs::write(&path, text).expect("write temp file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Loads `path` with exactly the variables in `env`, whatever the test process has.
fn load_with(path: &Path, env: &[(&str, &str)]) -> Result<Loaded, ConfigError> {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    load::load(Some(path), &env)
}

fn yaml(text: &str) -> Loaded {
    Config::from_yaml(text).unwrap_or_else(|e| panic!("config should load: {e}"))
}

fn yaml_err(text: &str) -> String {
    match Config::from_yaml(text) {
        Ok(loaded) => panic!("config should be rejected: {:?}", loaded.config),
        Err(e) => e.to_string(),
    }
}

fn unknown_keys(loaded: &Loaded) -> Vec<&str> {
    loaded
        .warnings
        .iter()
        .filter(|w| w.starts_with("unknown configuration key"))
        .map(String::as_str)
        .collect()
}

fn assert_design_example(loaded: &Loaded) {
    let config = &loaded.config;
    assert!(unknown_keys(loaded).is_empty(), "{:?}", loaded.warnings);
    assert_eq!(config.app.name, "im-connect");
    assert_eq!(config.spring.profiles.active, "dev");
    assert!(config.uses_dev_secret());
    assert_eq!(config.auth.token_expired, 3);

    let netty = &config.netty.config;
    assert_eq!(netty.protocol, Codec::Proto);
    assert_eq!(netty.heart_beat_time, 30_000);
    assert!(netty.multi_device_enabled);
    assert_eq!(netty.boss_thread_size, Some(4));
    assert_eq!(netty.work_thread_size, Some(16));
    assert_eq!(netty.tcp.port, [9000, 9001, 9002]);
    assert_eq!(netty.websocket.path, "/im");
    assert_eq!(netty.websocket.port, [19000, 19001, 19002]);

    let mq = config.rabbitmq.as_ref().expect("rabbitmq section is on");
    assert_eq!(mq.address, "rabbitmq.example.internal");
    assert_eq!(mq.password.expose(), "change-me");
    assert_eq!(mq.virtual_host, "/");
    assert_eq!(mq.routing_key_prefix, "IM-");
    assert_eq!(mq.error_queue, "im.error");
    assert_eq!(mq.connection_timeout, 60_000);

    let nacos = config.nacos.as_ref().expect("nacos section is on");
    assert_eq!(nacos.name, "im-connect");
    assert_eq!(nacos.address, "localhost");
    assert_eq!(nacos.username.as_deref(), Some("nacos"));
    assert_eq!(nacos.password.as_ref().map(Secret::expose), Some("nacos"));
    assert_eq!(nacos.version, "1.0.0");
    assert_eq!(nacos.namespace, "");

    let redis = config.redis.as_ref().expect("redis section is on");
    assert_eq!(redis.host, "redis.example.internal");
    assert_eq!(
        redis.password.as_ref().map(Secret::expose),
        Some("change-me")
    );
    assert_eq!(redis.timeout, 10_000);
    assert_eq!((redis.max_total, redis.max_idle, redis.min_idle), (8, 8, 0));
}

#[test]
fn design_example_loads_unchanged() {
    let loaded = load_with(Path::new(DESIGN_EXAMPLE), &[]).unwrap();
    assert_design_example(&loaded);
    assert_eq!(loaded.sources[0], Path::new(DESIGN_EXAMPLE));
    assert!(loaded
        .warnings
        .iter()
        .any(|w| w.starts_with("netty.config.bossThreadSize has no effect")));

    let text = fs::read_to_string(DESIGN_EXAMPLE).unwrap();
    assert_design_example(&yaml(&text));
}

#[test]
fn defaults_are_the_embedded_relay() {
    let config = Config::default();
    let netty = &config.netty.config;

    assert_eq!(config.app.name, "im-connect");
    assert_eq!(config.spring.active_profiles(), ["dev"]);
    assert_eq!(netty.protocol, Codec::Proto);
    assert_eq!(netty.host, "0.0.0.0");
    assert_eq!(netty.tcp.port, [9000, 9001, 9002]);
    assert_eq!(netty.websocket.port, [19000, 19001, 19002]);
    assert_eq!(netty.max_frame_size, 65_536);
    assert_eq!(netty.code_table, CodeTableName::Seed);
    assert_eq!(netty.proto_data, ProtoData::Json);
    assert_eq!(netty.route_ttl_secs(), 35);
    assert_eq!(config.auth.jwt.user_id_claim, "username");
    assert!(config.auth.jwt.secret.is_none());
    assert!(config.rabbitmq.is_none() && config.redis.is_none() && config.nacos.is_none());
    assert!(config.admin.enable && config.admin.is_loopback());
    config.validate().unwrap();
}

#[test]
fn route_ttl_rounds_up() {
    let mut netty = NettyConfig::default();
    (netty.heart_beat_time, netty.timeout) = (30_000, 1);
    assert_eq!(netty.route_ttl_secs(), 31);
}

#[test]
fn shipped_base_file_is_the_defaults() {
    let loaded = load_with(Path::new(SHIPPED_BASE), &[]).unwrap();

    let mut expected = Config::default();
    expected.auth.jwt.secret = Some(Secret::new(DEV_JWT_SECRET));
    expected.auth.jwt.algorithm = Some("HS256".to_owned());
    assert_eq!(loaded.config, expected);
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    assert!(loaded.warnings[0].starts_with("auth.jwt.secret is not set"));
}

#[test]
fn empty_text_gives_defaults_with_dev_secret() {
    let loaded = yaml("");
    assert!(loaded.config.uses_dev_secret());
    assert_eq!(loaded.config.netty, NettySection::default());
}

#[test]
fn profiles_overlay_in_order() {
    let dir = TempDir::new("profiles");
    let base = dir.write(
        "application.yml",
        "spring:\n  profiles:\n    active: \" overlay-one , overlay-two,overlay-missing\"\n\
         auth:\n  jwt:\n    secret: a-test-secret-that-is-long-enough-for-hs256\n",
    );
    let one = dir.write(
        "application-overlay-one.yml",
        "netty:\n  config:\n    heartBeatTime: 20000\n    timeout: 1000\n",
    );
    let two = dir.write(
        "application-overlay-two.yml",
        "netty:\n  config:\n    heartBeatTime: 40000\n",
    );

    let loaded = load_with(&base, &[]).unwrap();
    let netty = &loaded.config.netty.config;
    assert_eq!(netty.heart_beat_time, 40_000);
    assert_eq!(netty.timeout, 1000);
    assert_eq!(loaded.sources, [base, one, two]);
    assert_eq!(
        loaded.config.spring.profiles.active,
        "overlay-one,overlay-two,overlay-missing"
    );
}

#[test]
fn profile_variables_override_the_file() {
    let dir = TempDir::new("profile-vars");
    let base = dir.write(
        "application.yml",
        "spring:\n  profiles:\n    active: overlay-a\n",
    );
    dir.write("application-overlay-a.yml", "app:\n  name: from-a\n");
    dir.write("application-overlay-b.yml", "app:\n  name: from-b\n");
    let secret = ("IM_CONNECT_AUTH__JWT__SECRET", SECRET);

    let loaded = load_with(&base, &[secret]).unwrap();
    assert_eq!(loaded.config.app.name, "from-a");

    let spring = ("SPRING_PROFILES_ACTIVE", "overlay-b");
    let loaded = load_with(&base, &[secret, spring]).unwrap();
    assert_eq!(loaded.config.app.name, "from-b");

    let own = ("IM_CONNECT_PROFILES", "overlay-a");
    let loaded = load_with(&base, &[secret, spring, own]).unwrap();
    assert_eq!(loaded.config.app.name, "from-a");
}

#[test]
fn profile_names_cannot_escape_the_directory() {
    let error = yaml_err("spring:\n  profiles:\n    active: ../etc\n");
    assert!(error.starts_with("spring.profiles.active: "), "{error}");
}

#[test]
fn environment_overrides_files() {
    let dir = TempDir::new("env");
    let base = dir.write(
        "application.yml",
        "spring:\n  profiles:\n    active: prod\nnetty:\n  config:\n    heartBeatTime: 20000\n",
    );
    let env = [
        ("IM_CONNECT_NETTY__CONFIG__HEARTBEATTIME", "10000"),
        ("IM_CONNECT_NETTY__CONFIG__TCP__PORT", "9100, 9101"),
        ("IM_CONNECT_NETTY__CONFIG__WEBSOCKET__ENABLE", "FALSE"),
        ("IM_CONNECT_NETTY__CONFIG__PROTOCOL", "json"),
        (
            "IM_CONNECT_AUTH__JWT__SECRET",
            "12345678901234567890123456789012",
        ),
        ("IM_CONNECT_RABBITMQ__ADDRESS", "mq.internal"),
        ("IM_CONNECT_RABBITMQ__VIRTUAL", "im"),
        ("IM_CONNECT_APP__NAME", "1234"),
        ("IM_CONNECT_CONFIG", "not/a/setting.yml"),
        ("OTHER_NETTY__CONFIG__TIMEOUT", "1"),
    ];

    let loaded = load_with(&base, &env).unwrap();
    let config = &loaded.config;
    let netty = &config.netty.config;
    assert_eq!(netty.heart_beat_time, 10_000);
    assert_eq!(netty.tcp.port, [9100, 9101]);
    assert!(!netty.websocket.enable);
    assert_eq!(netty.protocol, Codec::Json);
    assert_eq!(netty.timeout, 5000);
    assert_eq!(
        config.auth.jwt.secret.as_ref().map(Secret::expose),
        Some("12345678901234567890123456789012")
    );
    let mq = config
        .rabbitmq
        .as_ref()
        .expect("rabbitmq turned on by its address");
    assert_eq!(
        (mq.address.as_str(), mq.virtual_host.as_str()),
        ("mq.internal", "im")
    );
    assert_eq!(config.app.name, "1234");
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
}

#[test]
fn environment_selects_profile_through_its_key() {
    let dir = TempDir::new("env-profile-key");
    let base = dir.write("application.yml", "");
    dir.write(
        "application-overlay-env.yml",
        "app:\n  name: from-env-profile\n",
    );
    let env = [
        ("IM_CONNECT_SPRING__PROFILES__ACTIVE", "overlay-env"),
        ("IM_CONNECT_AUTH__JWT__SECRET", SECRET),
    ];

    let loaded = load_with(&base, &env).unwrap();
    assert_eq!(loaded.config.app.name, "from-env-profile");
}

#[test]
fn unknown_environment_key_is_a_warning_with_its_path() {
    let dir = TempDir::new("env-unknown");
    let base = dir.write("application.yml", "");
    let loaded = load_with(&base, &[("IM_CONNECT_NETTY__CONFIG__HEARTBEATTME", "1")]).unwrap();
    assert_eq!(
        unknown_keys(&loaded),
        ["unknown configuration key `netty.config.heartbeattme` (ignored)"]
    );
}

#[test]
fn bad_environment_value_names_key_and_variable() {
    let dir = TempDir::new("env-bad");
    let base = dir.write("application.yml", "");
    let error = load_with(&base, &[("IM_CONNECT_NETTY__CONFIG__MAXFRAMESIZE", "big")])
        .unwrap_err()
        .to_string();
    assert!(error.starts_with("netty.config.maxFrameSize: "), "{error}");
    assert!(
        error.contains("environment variable IM_CONNECT_NETTY__CONFIG__MAXFRAMESIZE"),
        "{error}"
    );
}

#[test]
fn invalid_value_names_key() {
    let error = yaml_err("netty:\n  config:\n    heartBeatTime: 10\n");
    assert_eq!(
        error,
        "netty.config.heartBeatTime: must be at least 1000 (got 10)"
    );

    let error = yaml_err("netty:\n  config:\n    heartBeatTime: soon\n");
    assert!(
        error.starts_with("netty.config.heartBeatTime: invalid type"),
        "{error}"
    );
    assert!(error.contains("YAML text"), "{error}");

    let error = yaml_err("netty:\n  config:\n    protocol: xml\n");
    assert!(error.starts_with("netty.config.protocol: "), "{error}");

    let error = yaml_err("netty:\n  config:\n    tcp:\n      port: [9000, 70000]\n");
    assert!(error.starts_with("netty.config.tcp.port.1: "), "{error}");

    let error = yaml_err("rabbitmq:\n  address: mq\n  port: many\n");
    assert!(error.starts_with("rabbitmq.port: "), "{error}");
}

#[test]
fn every_validation_failure_is_reported() {
    let error = yaml_err(
        "netty:\n  config:\n    maxFrameSize: 1\n    workThreadSize: 0\n    \
         rateLimit:\n      perSecond: 0\n",
    );
    assert!(
        error.contains("netty.config.maxFrameSize: must be at least 64"),
        "{error}"
    );
    assert!(
        error.contains("netty.config.workThreadSize: must be at least 1"),
        "{error}"
    );
    assert!(
        error.contains("netty.config.rateLimit.perSecond: "),
        "{error}"
    );
}

#[test]
fn unreadable_file_is_named() {
    let error = Config::load(Some(Path::new("config/does-not-exist.yml")))
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("cannot read config/does-not-exist.yml: "),
        "{error}"
    );
}

#[test]
fn malformed_yaml_is_a_parse_error() {
    let error = yaml_err("netty:\n  config: [1, 2\n");
    assert!(error.starts_with("cannot parse YAML text: "), "{error}");
}

#[test]
fn unknown_keys_are_warnings_with_full_path() {
    let loaded = yaml(
        "netty:\n  config:\n    heartBeatTme: 1\n\
         rabbitmq:\n  enable: true\n  adress: mq\n\
         nacos:\n  enable: true\n  config:\n    enable: true\n  extra: 1\n\
         server:\n  port: 8080\n",
    );
    let mut unknown = unknown_keys(&loaded);
    unknown.sort_unstable();
    assert_eq!(
        unknown,
        [
            "unknown configuration key `nacos.config.enable` (ignored)",
            "unknown configuration key `nacos.extra` (ignored)",
            "unknown configuration key `netty.config.heartBeatTme` (ignored)",
            "unknown configuration key `rabbitmq.adress` (ignored)",
            "unknown configuration key `server` (ignored)",
        ]
    );
}

#[test]
fn disabled_sections_are_none() {
    let loaded = yaml(
        "rabbitmq:\n  enable: false\n  address: mq\n\
         redis:\n  enable: false\n  host: redis\n\
         nacos:\n  enable: false\n  config:\n    address: nacos\n",
    );
    assert!(loaded.config.rabbitmq.is_none());
    assert!(loaded.config.redis.is_none());
    assert!(loaded.config.nacos.is_none());
    assert!(unknown_keys(&loaded).is_empty(), "{:?}", loaded.warnings);
}

#[test]
fn section_presence_follows_enable_or_server_key() {
    let loaded = yaml("rabbitmq:\n  routingKeyPrefix: \"\"\nredis:\n  keyPrefix: test-\n");
    assert!(loaded.config.rabbitmq.is_none());
    assert!(loaded.config.redis.is_none());

    let loaded = yaml("redis:\n  enable: true\nnacos:\n  config:\n    address: nacos\n");
    assert_eq!(loaded.config.redis, Some(RedisConfig::default()));
    let nacos = loaded.config.nacos.expect("nacos names its server");
    assert_eq!(nacos.name, "im-connect");

    let loaded = yaml("app:\n  name: edge\nnacos:\n  enable: true\n");
    assert_eq!(loaded.config.nacos.map(|n| n.name).as_deref(), Some("edge"));

    assert!(yaml("redis:\nnacos:\n").config.redis.is_none());
}

#[test]
fn empty_password_means_none() {
    let loaded = yaml("redis:\n  host: redis\n  password: \"\"\n");
    assert_eq!(loaded.config.redis.and_then(|r| r.password), None);
}

#[test]
fn numeric_scalars_are_read_as_text() {
    let loaded = yaml(
        "rabbitmq:\n  address: mq\n  password: 123456\n\
         nacos:\n  enable: true\n  config:\n    version: 1.0\n",
    );
    let mq = loaded.config.rabbitmq.expect("rabbitmq is on");
    assert_eq!(mq.password.expose(), "123456");
    assert_eq!(loaded.config.nacos.expect("nacos is on").version, "1.0");
}

#[test]
fn dev_profile_uses_dev_secret_with_warning() {
    let loaded = yaml("spring:\n  profiles:\n    active: dev\n");
    assert!(loaded.config.uses_dev_secret());
    assert_eq!(loaded.config.auth.jwt.algorithm.as_deref(), Some("HS256"));
    assert_eq!(
        loaded.warnings,
        [
            "auth.jwt.secret is not set: using the built-in development secret; \
          never use the dev profile in production"
        ]
    );
}

#[test]
fn non_dev_profile_without_key_fails() {
    for profiles in ["prod", "dev,lucky", "\"\""] {
        let text = format!("spring:\n  profiles:\n    active: {profiles}\n");
        let error = yaml_err(&text);
        assert!(
            error.starts_with("auth.jwt.secret: not set"),
            "{profiles}: {error}"
        );
    }

    let text = format!(
        "spring:\n  profiles:\n    active: prod\nauth:\n  jwt:\n    secret: {DEV_JWT_SECRET}\n"
    );
    let error = yaml_err(&text);
    assert!(
        error.starts_with("auth.jwt.secret: is the built-in"),
        "{error}"
    );

    let text =
        format!("spring:\n  profiles:\n    active: prod\nauth:\n  jwt:\n    secret: {SECRET}\n");
    let loaded = yaml(&text);
    assert!(!loaded.config.uses_dev_secret());
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
}

#[test]
fn short_secret_is_a_warning() {
    let loaded = yaml("auth:\n  jwt:\n    secret: short\n");
    assert!(loaded.warnings[0].starts_with("auth.jwt.secret is shorter than 32 bytes"));
}

#[test]
fn public_key_is_read_from_a_file_and_its_algorithm_detected() {
    let dir = TempDir::new("public-key");
    let rsa = dir.write("rsa.pem", RSA_PUBLIC_KEY);
    let ec = dir.write("ec.pem", EC_PUBLIC_KEY);

    for (path, algorithm) in [(&rsa, "RS256"), (&ec, "ES256")] {
        let text = format!(
            "spring:\n  profiles:\n    active: prod\nauth:\n  jwt:\n    publicKey: {}\n",
            path.display()
        );
        let jwt = yaml(&text).config.auth.jwt;
        assert!(jwt
            .public_key
            .is_some_and(|pem| pem.starts_with("-----BEGIN PUBLIC KEY")));
        assert_eq!(jwt.algorithm.as_deref(), Some(algorithm));
        assert!(jwt.secret.is_none());
    }

    let inline = format!(
        "auth:\n  jwt:\n    algorithm: rs256\n    publicKey: |\n{}",
        RSA_PUBLIC_KEY
            .lines()
            .map(|l| format!("      {l}\n"))
            .collect::<String>()
    );
    assert_eq!(
        yaml(&inline).config.auth.jwt.algorithm.as_deref(),
        Some("RS256")
    );

    let missing = dir.0.join("missing.pem");
    let text = format!("auth:\n  jwt:\n    publicKey: {}\n", missing.display());
    let error = yaml_err(&text);
    assert!(
        error.starts_with("auth.jwt.publicKey: cannot read PEM file"),
        "{error}"
    );
}

#[test]
fn algorithm_must_match_the_key() {
    let text = format!("auth:\n  jwt:\n    secret: {SECRET}\n    algorithm: RS256\n");
    let error = yaml_err(&text);
    assert!(
        error.starts_with("auth.jwt.publicKey: is required by algorithm RS256"),
        "{error}"
    );

    let text = format!("auth:\n  jwt:\n    secret: {SECRET}\n    algorithm: none\n");
    let error = yaml_err(&text);
    assert!(
        error.starts_with("auth.jwt.algorithm: must be one of"),
        "{error}"
    );
}

#[test]
fn secrets_are_redacted() {
    let text = fs::read_to_string(DESIGN_EXAMPLE)
        .unwrap()
        .replace("password: nacos ", "password: nacos-password ")
        .replace(
            "auth:\n",
            "admin:\n  token: admin-token-value\n\
             auth:\n  jwt:\n    secret: jwt-secret-value-that-is-long-enough\n",
        );
    let config = yaml(&text).config;
    let debug = format!("{config:?}");
    let rendered = config.to_redacted_yaml();

    for output in [&debug, &rendered] {
        for secret in [
            "change-me",
            "nacos-password",
            "admin-token-value",
            "jwt-secret-value",
        ] {
            assert!(!output.contains(secret), "{secret} leaked:\n{output}");
        }
        assert!(output.contains("***"));
    }
    assert!(rendered.contains("heartBeatTime: 30000"), "{rendered}");
    assert!(rendered.contains("virtual: /"), "{rendered}");
}

#[test]
fn redacted_yaml_loads_back() {
    let config = yaml("redis:\n  host: redis\nnacos:\n  enable: true\n").config;
    let again = yaml(&config.to_redacted_yaml());

    assert!(unknown_keys(&again).is_empty(), "{:?}", again.warnings);
    assert!(again.config.rabbitmq.is_none());
    assert_eq!(again.config.redis.map(|r| r.host).as_deref(), Some("redis"));
    assert_eq!(again.config.nacos, config.nacos);
    assert_eq!(again.config.netty, config.netty);
}

#[test]
fn lucky_profile_sets_lucky_cloud_values() {
    let dir = TempDir::new("lucky");
    let with_broker = dir.write(
        "with-broker.yml",
        "spring:\n  profiles:\n    active: dev,lucky\n\
         rabbitmq:\n  address: mq\n",
    );
    let without_broker = dir.write("without-broker.yml", "");
    let secret = ("IM_CONNECT_AUTH__JWT__SECRET", SECRET);

    let loaded = load_with(&with_broker, &[secret]).unwrap();
    assert!(loaded
        .sources
        .contains(&Path::new("config/application-lucky.yml").to_owned()));
    let config = &loaded.config;
    let netty = &config.netty.config;
    assert_eq!(netty.code_table, CodeTableName::Lucky);
    assert_eq!(netty.proto_data, ProtoData::Json);
    assert_eq!(
        netty.device_aliases.get("desktop").map(String::as_str),
        Some("win")
    );
    assert_eq!(config.auth.jwt.user_id_claim, "username");
    let mq = config.rabbitmq.as_ref().expect("the base file's broker");
    assert_eq!(mq.routing_key_prefix, "");
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);

    let loaded = load_with(&without_broker, &[secret, ("IM_CONNECT_PROFILES", "lucky")]).unwrap();
    assert_eq!(loaded.config.netty.config.code_table, CodeTableName::Lucky);
    assert!(
        loaded.config.rabbitmq.is_none(),
        "lucky alone must not enable rabbitmq"
    );
}

#[test]
fn device_aliases_are_normalised_and_checked() {
    let loaded = yaml("netty:\n  config:\n    deviceAliases:\n      \" Desktop \": WIN\n");
    let aliases = &loaded.config.netty.config.device_aliases;
    assert_eq!(aliases.get("desktop").map(String::as_str), Some("win"));

    let error = yaml_err("netty:\n  config:\n    deviceAliases:\n      desktop: toaster\n");
    assert!(
        error.starts_with("netty.config.deviceAliases.desktop: must be one of"),
        "{error}"
    );
}

#[test]
fn ports_are_checked_across_listeners() {
    let error = yaml_err("netty:\n  config:\n    websocket:\n      port: [19000, 9001]\n");
    assert_eq!(
        error,
        "netty.config.websocket.port: port 9001 is already used by netty.config.tcp.port"
    );

    let error = yaml_err("netty:\n  config:\n    tcp:\n      port: [0]\n");
    assert!(
        error.starts_with("netty.config.tcp.port: port must be between 1"),
        "{error}"
    );

    let error = yaml_err(
        "netty:\n  config:\n    tcp:\n      enable: false\n    websocket:\n      port: []\n",
    );
    assert!(
        error.contains("netty.config.tcp.enable: no listener is enabled"),
        "{error}"
    );

    let loaded = yaml("netty:\n  config:\n    tcp:\n      enable: false\n      port: 19000\n");
    assert_eq!(loaded.config.netty.config.tcp.port, [19000]);
}

#[test]
fn admin_off_loopback_requires_token() {
    let error = yaml_err("admin:\n  host: 0.0.0.0\n");
    assert!(error.starts_with("admin.token: is required"), "{error}");

    yaml("admin:\n  host: 0.0.0.0\n  token: an-admin-token\n");
    yaml("admin:\n  host: \"::1\"\n");
    yaml("admin:\n  host: localhost\n");
    yaml("admin:\n  enable: false\n  host: 0.0.0.0\n");
}

#[test]
fn rabbitmq_uri_percent_encodes() {
    let mut mq = RabbitMqConfig::default();
    assert_eq!(mq.uri(), "amqp://guest:guest@127.0.0.1:5672/%2f");

    mq.password = Secret::new("p@ss:word");
    mq.virtual_host = "im".to_owned();
    mq.address = "::1".to_owned();
    assert_eq!(mq.uri(), "amqp://guest:p%40ss%3aword@[::1]:5672/im");
}

#[test]
fn secret_debug_and_serialize_hide_the_value() {
    let secret = Secret::new("hunter2");
    assert_eq!(format!("{secret:?}"), "***");
    assert_eq!(serde_json::to_string(&secret).unwrap(), "\"***\"");
    assert_eq!(secret.expose(), "hunter2");
}
