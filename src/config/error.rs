use std::fmt;
use std::path::PathBuf;

/// Why a configuration could not be loaded. The message always names the file or the dotted
/// key at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A configuration file could not be read.
    #[error("cannot read {}: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the file system said.
        error: std::io::Error,
    },
    /// A configuration file is not valid YAML, or not a map at its top level.
    #[error("cannot parse {origin}: {message}")]
    Parse {
        /// The file, or `YAML text` for [`Config::from_yaml`](super::Config::from_yaml).
        origin: String,
        /// What is wrong, with line and column.
        message: String,
    },
    /// A key has a value of the wrong type, or one that fails validation.
    #[error("{key}: {message}")]
    Invalid {
        /// Dotted path of the key, e.g. `netty.config.heartBeatTime`.
        key: String,
        /// What is wrong with the value.
        message: String,
    },
    /// Several keys are invalid.
    #[error("{}", Joined(.0))]
    Several(Vec<ConfigError>),
}

impl ConfigError {
    pub(crate) fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }

    /// The dotted key at fault, for an error about one key.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::Invalid { key, .. } => Some(key),
            Self::Several(errors) => errors.first().and_then(ConfigError::key),
            Self::Read { .. } | Self::Parse { .. } => None,
        }
    }

    /// One error for a non-empty list, `Several` for more.
    pub(crate) fn from_list(mut errors: Vec<ConfigError>) -> Option<Self> {
        match errors.len() {
            0 => None,
            1 => errors.pop(),
            _ => Some(Self::Several(errors)),
        }
    }
}

struct Joined<'a>(&'a [ConfigError]);

impl fmt::Display for Joined<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}
