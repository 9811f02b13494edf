//! Errors, in layers: a backend-neutral [`Error`] for operations, [`ConfigError`] for
//! configuration and [`BuildError`] for building a [`Cache`](crate::Cache). What Redis said
//! is kept in a [`BackendError`]: a [`BackendErrorKind`] to match on, Redis's error code, and
//! the `redis::RedisError` itself as the [`source`](std::error::Error::source).

use std::time::Duration;

/// The error of a cache operation.
///
/// Redis being down is **not** an error: operations then run on the in-memory fallback. The
/// variants below are what remains: bad input from the caller, values that cannot be encoded,
/// errors that Redis itself answers (such as `WRONGTYPE` or `OOM`: [`Error::Backend`]), and
/// a cache with Redis used outside any Tokio runtime ([`Error::NoRuntime`]).
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
    /// Redis answered with an error about the command (a lost connection is not one: the
    /// fallback answers instead). [`BackendError::kind`] is
    /// [`BackendErrorKind::Rejected`], [`BackendError::code`] gives Redis's code
    /// (`"WRONGTYPE"`, `"OOM"`, `"NOPERM"`, …), and
    /// [`source()`](std::error::Error::source) is the `redis::RedisError` (absent when the
    /// fallback store refused, as for an increment that would overflow).
    ///
    /// ```
    /// use cache_sdk::{BackendErrorKind, Error};
    ///
    /// fn advice(err: &Error) -> &'static str {
    ///     match err {
    ///         Error::Backend(e) if e.code() == Some("WRONGTYPE") => "another program uses this key",
    ///         Error::Backend(e) if e.code() == Some("OOM") => "Redis is full: raise maxmemory",
    ///         Error::Backend(e) if e.kind() == BackendErrorKind::Rejected => "Redis refused the command",
    ///         _ => "see the message",
    ///     }
    /// }
    /// # let _ = advice;
    /// ```
    #[error(transparent)]
    Backend(BackendError),
    /// A cache with Redis was used outside a Tokio runtime. Its connections and background
    /// tasks run on Tokio: call it from `#[tokio::main]`, `#[tokio::test]`, a task, or
    /// `Runtime::block_on`. (A cache built on a runtime that has since shut down is not in
    /// this case: the next call made on another runtime reconnects there.)
    ///
    /// ```
    /// let err = cache_sdk::Error::NoRuntime;
    /// assert!(err.to_string().contains("Tokio runtime"));
    /// ```
    #[error("a cache with Redis must be used inside a Tokio runtime (#[tokio::main], #[tokio::test] or Runtime::block_on)")]
    NoRuntime,
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

/// What kind of problem Redis had with a call; see [`BackendError::kind`].
///
/// Operations only ever return [`Rejected`](BackendErrorKind::Rejected): when Redis is
/// unavailable they run on the fallback instead. The other kinds say why Redis could not be
/// reached, in [`BuildError::RedisRequired`].
///
/// ```
/// use cache_sdk::BackendErrorKind;
/// assert_ne!(BackendErrorKind::Rejected, BackendErrorKind::Timeout);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BackendErrorKind {
    /// Redis answered with an error about this command: a key of another type
    /// (`WRONGTYPE`), no memory left (`OOM`), an ACL refusal (`NOPERM`), a bad argument or
    /// a script error (`ERR`, …). [`BackendError::code`] gives the code.
    Rejected,
    /// Redis did not answer within the timeout.
    Timeout,
    /// Redis could not be reached, or the connection was lost (refused, reset, DNS, TLS,
    /// an answer that could not be read).
    Unreachable,
    /// Redis refused the credentials (`WRONGPASS`, `NOAUTH`).
    Authentication,
    /// Redis answers but cannot serve now: loading its data (`LOADING`), a read-only
    /// replica (`READONLY`), a master or cluster down (`MASTERDOWN`, `CLUSTERDOWN`), a slot
    /// moving (`TRYAGAIN`, `MOVED`, `ASK`).
    NotReady,
}

impl std::fmt::Display for BackendErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BackendErrorKind::Rejected => "rejected",
            BackendErrorKind::Timeout => "timeout",
            BackendErrorKind::Unreachable => "unreachable",
            BackendErrorKind::Authentication => "authentication",
            BackendErrorKind::NotReady => "not ready",
        })
    }
}

/// What Redis said (or why it could not be asked): a [`BackendErrorKind`], Redis's error
/// code, and the `redis::RedisError` as the [`source`](std::error::Error::source).
///
/// The message never holds a password: redis-rs does not echo credentials, and servers
/// answer `WRONGPASS`/`NOAUTH` without them.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use cache_sdk::{BackendErrorKind, Error};
///
/// // In memory, an increment past i64::MAX is refused as Redis would refuse it.
/// let cache = cache_sdk::Cache::in_memory();
/// cache.incr_by("cache:count:1", i64::MAX).await.unwrap();
/// match cache.incr_by("cache:count:1", 1).await {
///     Err(Error::Backend(e)) => {
///         assert_eq!(e.kind(), BackendErrorKind::Rejected);
///         assert_eq!(e.code(), Some("ERR"));
///         assert!(e.to_string().contains("overflow"));
///     }
///     other => panic!("{other:?}"),
/// }
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct BackendError {
    kind: BackendErrorKind,
    code: Option<String>,
    message: String,
    source: Option<redis::RedisError>,
}

impl BackendError {
    /// From a Redis error, sorted by the caller.
    pub(crate) fn redis(kind: BackendErrorKind, e: &redis::RedisError) -> Self {
        BackendError {
            kind,
            code: e.code().map(str::to_owned),
            message: e.to_string(),
            source: Some(e.clone()),
        }
    }

    /// An error without a Redis error behind it (a timeout of ours, the fallback store).
    pub(crate) fn new(
        kind: BackendErrorKind,
        code: Option<&str>,
        message: impl Into<String>,
    ) -> Self {
        BackendError {
            kind,
            code: code.map(str::to_owned),
            message: message.into(),
            source: None,
        }
    }

    /// What kind of problem this is.
    ///
    /// ```
    /// use cache_sdk::{BackendErrorKind, Error};
    /// fn is_refusal(err: &Error) -> bool {
    ///     matches!(err, Error::Backend(e) if e.kind() == BackendErrorKind::Rejected)
    /// }
    /// # let _ = is_refusal;
    /// ```
    #[must_use]
    pub fn kind(&self) -> BackendErrorKind {
        self.kind
    }

    /// Redis's error code, the first word of its answer (`"WRONGTYPE"`, `"OOM"`,
    /// `"NOPERM"`, `"ERR"`, …); `None` when Redis did not answer (a timeout, a refused
    /// connection).
    ///
    /// ```
    /// use cache_sdk::Error;
    /// fn wrong_type(err: &Error) -> bool {
    ///     matches!(err, Error::Backend(e) if e.code() == Some("WRONGTYPE"))
    /// }
    /// # let _ = wrong_type;
    /// ```
    #[must_use]
    pub fn code(&self) -> Option<&str> {
        self.code.as_deref()
    }
}

impl std::fmt::Display for BackendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "redis error: {}", self.message)
    }
}

impl std::error::Error for BackendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|e| e as &(dyn std::error::Error + 'static))
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
    /// A setting needs a cargo feature of cache-sdk that this build leaves out (TLS without
    /// `tls`, a cluster without `cluster`, the JSON codec without `json`).
    ///
    /// ```
    /// use cache_sdk::ConfigError;
    /// let e = ConfigError::FeatureDisabled { name: "REDIS_TLS", feature: "tls" };
    /// assert!(e.to_string().contains(r#"features = ["tls"]"#));
    /// ```
    #[error(
        "{name} needs the `{feature}` feature of cache-sdk, which this build does not enable \
         (add features = [\"{feature}\"] to the cache-sdk dependency in Cargo.toml)"
    )]
    FeatureDisabled {
        /// The variable or option name.
        name: &'static str,
        /// The cargo feature that provides it.
        feature: &'static str,
    },
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
    /// Redis was required (`require_redis(true)`) but could not be reached;
    /// [`BackendError::kind`] says why (timeout, unreachable, authentication, not ready).
    #[error("redis is required but could not be reached: {}", .0.message)]
    RedisRequired(#[source] BackendError),
    /// The cache has Redis configured but was built outside a Tokio runtime.
    #[error("a cache with Redis must be built inside a Tokio runtime (#[tokio::main], #[tokio::test] or Runtime::block_on)")]
    NoRuntime,
}
