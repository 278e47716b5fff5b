//! `auth`: token verification settings.

use std::path::Path;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::{de, secret, ConfigError, Secret};

/// The HS256 secret the `dev` profile uses when no key is configured.
///
/// Loading refuses it under any other profile, so a development configuration cannot reach
/// production by accident.
pub const DEV_JWT_SECRET: &str = "im-connect-dev-secret-do-not-use-in-production";

const DEFAULT_TOKEN_EXPIRED_MINUTES: u64 = 3;
const DEFAULT_LEEWAY_SECONDS: u64 = 30;
const DEFAULT_USER_ID_CLAIM: &str = "username";

/// HS256 secrets shorter than this (256 bits) get a warning.
const MIN_SECRET_LEN: usize = 32;

const PEM_BEGIN: &str = "-----BEGIN";

/// DER encodings of the algorithm identifiers in a `PUBLIC KEY` (SubjectPublicKeyInfo) PEM.
const OID_RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];

/// `auth`: how tokens are verified and when clients are told to refresh them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct AuthConfig {
    /// Minutes before a token's expiry from which heartbeats are answered with REFRESH_TOKEN.
    pub token_expired: u64,
    /// Close a connection with 4003 once its token has expired and no fresh token arrived.
    pub enforce_expiry: bool,
    /// Redis key prefix under which revoked tokens are listed; `None` checks no blacklist.
    #[serde(deserialize_with = "de::opt_string")]
    pub blacklist_prefix: Option<String>,
    /// Signature verification.
    pub jwt: JwtConfig,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            token_expired: DEFAULT_TOKEN_EXPIRED_MINUTES,
            enforce_expiry: true,
            blacklist_prefix: None,
            jwt: JwtConfig::default(),
        }
    }
}

/// `auth.jwt`: keys and claims of the JWTs clients present.
///
/// After loading, `algorithm` is always set when a key is: HS256 when `secret` is set,
/// otherwise RS256 or ES256 according to the kind of `public_key`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct JwtConfig {
    /// HS256 shared secret.
    #[serde(deserialize_with = "secret::optional")]
    pub secret: Option<Secret>,
    /// PEM public key for RS256 or ES256. In a file, a value that does not start with
    /// `-----BEGIN` is a path to a PEM file, read at load time; after loading this always
    /// holds the PEM text.
    #[serde(deserialize_with = "de::opt_string")]
    pub public_key: Option<String>,
    /// `HS256`, `RS256` or `ES256`.
    #[serde(deserialize_with = "de::opt_string")]
    pub algorithm: Option<String>,
    /// PEM private key, used only by `im-connect token` to sign RS256 or ES256 tokens. Read
    /// from a file like `public_key`.
    #[serde(deserialize_with = "secret::optional")]
    pub private_key: Option<Secret>,
    /// Seconds of clock skew allowed when checking `exp` and `nbf`.
    pub leeway_seconds: u64,
    /// Claim holding the user id; a number is read as its decimal text.
    #[serde(deserialize_with = "de::string")]
    pub user_id_claim: String,
    /// Required `iss`, if set.
    #[serde(deserialize_with = "de::opt_string")]
    pub issuer: Option<String>,
    /// Required `aud`, if set.
    #[serde(deserialize_with = "de::opt_string")]
    pub audience: Option<String>,
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            secret: None,
            public_key: None,
            algorithm: None,
            private_key: None,
            leeway_seconds: DEFAULT_LEEWAY_SECONDS,
            user_id_claim: DEFAULT_USER_ID_CLAIM.to_owned(),
            issuer: None,
            audience: None,
        }
    }
}

impl JwtConfig {
    /// Reads key files, applies the development-secret rule and settles `algorithm`.
    ///
    /// `dev_only` is true when `dev` is the only active profile.
    pub(crate) fn resolve(
        &mut self,
        dev_only: bool,
        warnings: &mut Vec<String>,
    ) -> Result<(), ConfigError> {
        if let Some(key) = &mut self.public_key {
            *key = read_pem("auth.jwt.publicKey", key)?;
        }
        if let Some(key) = &mut self.private_key {
            *key = Secret::new(read_pem("auth.jwt.privateKey", key.expose())?);
        }

        self.apply_dev_secret(dev_only, warnings)?;

        let algorithm = match self.algorithm.take() {
            Some(name) => name.trim().to_ascii_uppercase(),
            None if self.secret.is_some() => "HS256".to_owned(),
            None => match &self.public_key {
                Some(pem) => detect_algorithm(pem)?.to_owned(),
                None => return Ok(()),
            },
        };
        if algorithm == "HS256" {
            let short = self
                .secret
                .as_ref()
                .map(|s| s.expose().len() < MIN_SECRET_LEN);
            if short == Some(true) {
                warnings.push(format!(
                    "auth.jwt.secret is shorter than {MIN_SECRET_LEN} bytes: \
                     an HS256 secret should have at least 256 bits"
                ));
            }
        }

        self.algorithm = Some(algorithm);
        Ok(())
    }

    fn apply_dev_secret(
        &mut self,
        dev_only: bool,
        warnings: &mut Vec<String>,
    ) -> Result<(), ConfigError> {
        let is_dev_secret = self.secret.as_ref().map(Secret::expose) == Some(DEV_JWT_SECRET);
        let no_key = self.secret.is_none() && self.public_key.is_none();

        match (dev_only, no_key, is_dev_secret) {
            (true, true, _) => {
                self.secret = Some(Secret::new(DEV_JWT_SECRET));
                warnings.push(
                    "auth.jwt.secret is not set: using the built-in development secret; \
                     never use the dev profile in production"
                        .to_owned(),
                );
            }
            (true, false, true) => warnings.push(
                "auth.jwt.secret is the built-in development secret; \
                 never use the dev profile in production"
                    .to_owned(),
            ),
            (false, true, _) => {
                return Err(ConfigError::invalid(
                    "auth.jwt.secret",
                    "not set: set auth.jwt.secret (HS256) or auth.jwt.publicKey (RS256, ES256); \
                     only the dev profile runs without a key",
                ))
            }
            (false, false, true) => {
                return Err(ConfigError::invalid(
                    "auth.jwt.secret",
                    "is the built-in development secret, which only the dev profile may use",
                ))
            }
            (false, false, false) | (true, false, false) => {}
        }
        Ok(())
    }
}

/// Returns `value` if it is PEM text, else the content of the PEM file it names.
fn read_pem(key: &str, value: &str) -> Result<String, ConfigError> {
    if value.trim_start().starts_with(PEM_BEGIN) {
        return Ok(value.to_owned());
    }

    let path = Path::new(value.trim());
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::invalid(key, format!("cannot read PEM file {}: {e}", path.display()))
    })?;
    if !text.contains(PEM_BEGIN) {
        let message = format!("{} is not a PEM file", path.display());
        return Err(ConfigError::invalid(key, message));
    }
    Ok(text)
}

/// Tells an RSA key from an EC key by its PEM label or, for a `PUBLIC KEY` PEM, by the
/// algorithm identifier inside it.
fn detect_algorithm(pem: &str) -> Result<&'static str, ConfigError> {
    if pem.contains("BEGIN RSA PUBLIC KEY") {
        return Ok("RS256");
    }
    if pem.contains("BEGIN EC PUBLIC KEY") {
        return Ok("ES256");
    }

    let body: String = pem
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with("-----"))
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap_or_default();
    let contains = |oid: &[u8]| der.windows(oid.len()).any(|w| w == oid);

    if contains(OID_RSA_ENCRYPTION) {
        Ok("RS256")
    } else if contains(OID_EC_PUBLIC_KEY) {
        Ok("ES256")
    } else {
        Err(ConfigError::invalid(
            "auth.jwt.algorithm",
            "cannot tell whether auth.jwt.publicKey is an RSA or an EC key; \
             set auth.jwt.algorithm to RS256 or ES256",
        ))
    }
}
