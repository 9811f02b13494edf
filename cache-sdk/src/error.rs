//! Errors, in layers: a backend-neutral [`Error`] for operations, [`ConfigError`] for
//! configuration and [`BuildError`] for building a [`Cache`](crate::Cache).

use std::time::Duration;

/// The error of a cache operation.
///
/// Redis being down is **not** an error: operations then run on the in-memory fallback. The
/// variants below are what remains: bad input from the caller, values that cannot be encoded,
/// and errors that Redis itself answers (such as `WRONGTYPE` or `OOM`).
///
/// ```
/// use cache_sdk::Error;
/// let err = Error::InvalidKey { key: String::new(), reason: "the key is empty" };
/// assert!(err.to_string().contains("empty"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A key, or a part of one, is not acceptable (empty, control characters, too long).
    #[error("invalid cache key {key:?}: {reason}")]
    InvalidKey {
        /// The key, or the offending part of it (truncated when long).
        key: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A TTL is zero or longer than the maximum (one year).
    #[error("invalid TTL {0:?}: a TTL must be between 1 second and 365 days")]
    InvalidTtl(Duration),
    /// A value could not be serialized.
    #[error("could not encode the value for {key:?}: {message}")]
    Encode {
        /// The key the value was meant for.
        key: String,
        /// What the codec said.
        message: String,
    },
    /// A value is larger than the configured maximum size.
    #[error("the value for {key:?} is {size} bytes, over the limit of {limit} bytes")]
    ValueTooLarge {
        /// The key the value was meant for.
        key: String,
        /// Its encoded size.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// A stored value could not be decoded. `get` treats this as a miss; the error is
    /// returned only by calls that must not silently drop data, such as
    /// [`Cache::incr_by`](crate::Cache::incr_by) on a non-integer value.
    #[error("could not decode the value stored under {key:?}: {message}")]
    Decode {
        /// The key.
        key: String,
        /// What went wrong.
        message: String,
    },
    /// Redis answered with an error (other than a lost connection, which falls back).
    #[error("redis error: {0}")]
    Backend(String),
}

impl Error {
    pub(crate) fn invalid_key(key: &str, reason: &'static str) -> Self {
        let mut shown: String = key.chars().take(64).collect();
        if shown.len() < key.len() {
            shown.push('…');
        }
        Error::InvalidKey { key: shown, reason }
    }
}

/// A `Result` whose error is the cache's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A configuration value that is missing or malformed. The message always names the
/// environment variable (or builder option) and what is wrong with its value; secrets are
/// never echoed.
///
/// ```
/// use cache_sdk::ConfigError;
/// let e = ConfigError::Invalid { name: "REDIS_PORT", value: "http".into(), reason: "not a port number (1-65535)".into() };
/// assert_eq!(e.to_string(), "REDIS_PORT=\"http\" is invalid: not a port number (1-65535)");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A variable has a value that cannot be used.
    #[error("{name}={value:?} is invalid: {reason}")]
    Invalid {
        /// The variable or option name.
        name: &'static str,
        /// The value as given (`"<redacted>"` for secrets).
        value: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// A feature was configured that this version does not support.
    #[error("{name} is set, but {reason}")]
    Unsupported {
        /// The variable or option name.
        name: &'static str,
        /// What is not supported and what to do instead.
        reason: String,
    },
    /// The `.env` file exists but cannot be read.
    #[error("could not read the .env file: {0}")]
    DotEnv(String),
}

/// The error of [`CacheBuilder::build`](crate::CacheBuilder::build).
///
/// ```
/// use cache_sdk::{BuildError, ConfigError};
/// let e = BuildError::from(ConfigError::DotEnv("line 3".into()));
/// assert!(e.to_string().contains(".env"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The configuration is not valid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Redis was required (`require_redis(true)`) but could not be reached.
    #[error("redis is required but could not be reached: {0}")]
    RedisRequired(String),
}
