//! Configuration, from the environment or from code. A leaf: it imports only the other
//! leaves (`error`, `codec` for the codec choice, `ttl` for the presets, `tls` to load the
//! certificate files), never the tiers, the cache or the sessions.
//!
//! - [`CacheConfig`]: every setting of a [`Cache`](crate::Cache); [`RedisConfig`]: where
//!   and how to reach Redis; [`Coherence`]: how the L1 of several instances is kept in step.
//! - `env`: the one environment reader both configurations use (typed getters, each naming
//!   its variable in the error), and the `.env` file, read only when asked.
//! - [`CacheConfig::validate`]: the one check of a whole configuration, run by
//!   [`CacheBuilder::build`](crate::CacheBuilder::build); it also reads the TLS files, once.
//!
//!
//! The variables and the rules for reading them are documented on [`CacheConfig`], where
//! users see them.

mod coherence;
pub(crate) mod env;
mod redis;
mod sentinel;

use std::time::Duration;

pub use self::coherence::Coherence;
pub use self::redis::RedisConfig;
pub use self::sentinel::SentinelConfig;

use self::env::{invalid, EnvReader};
use crate::codec::Codec;
use crate::error::ConfigError;
use crate::tls::TlsMaterial;
use crate::ttl::TtlPresets;

/// Everything a [`Cache`](crate::Cache) needs. Build it with [`CacheConfig::from_env`], or
/// start from [`CacheConfig::default`] (Redis disabled) and set fields, or use the
/// [`CacheBuilder`](crate::CacheBuilder).
///
/// Reading variables parses each value (a bad one is an error naming it); the configuration
/// as a whole (combinations of values, the TLS files) is checked by
/// [`CacheConfig::validate`], which [`build`](crate::CacheBuilder::build) runs.
///
/// # Where the values come from
///
/// [`CacheConfig::from_env`] and [`CacheBuilder::from_env`](crate::CacheBuilder::from_env)
/// read the **process environment only**. A `.env` file is read only when asked:
/// [`CacheConfig::from_env_and_dotenv`] and
/// [`CacheBuilder::from_env_and_dotenv`](crate::CacheBuilder::from_env_and_dotenv) read the
/// `.env` file of the current directory (or a parent) under the process environment (a
/// variable set in the process wins, as with `dotenv` in Node).
///
/// The builder *merges*: only the variables that are set override what the builder holds,
/// so `Cache::builder().namespace("erp").from_env()?` keeps the namespace unless
/// `CACHE_NAMESPACE` is set. The Redis address is taken as a whole: when `REDIS_URL`,
/// `REDIS_HOST`, `REDIS_CLUSTER_NODES` or `REDIS_SENTINELS` is set, the address the builder
/// held (URL, host, port, cluster nodes, sentinels) is replaced by the environment's; the other `REDIS_*` variables
/// (port, credentials, database, TLS) override one field each.
///
/// # When Redis is used
///
/// - `REDIS_ENABLED=false` (or `0`, `no`, `off`): never, everything runs in memory.
/// - `REDIS_ENABLED=true`: always, at `REDIS_URL`, or at `REDIS_HOST`/`REDIS_PORT`
///   (`localhost:6379` by default), or where the builder said.
/// - `REDIS_ENABLED` unset: when `REDIS_URL`, `REDIS_HOST`, `REDIS_CLUSTER_NODES` or
///   `REDIS_SENTINELS` is set, or the builder was given Redis.
///
/// Either way, a Redis that cannot be reached means the in-memory fallback, not an error.
///
/// # Redis Cluster
///
/// `REDIS_CLUSTER_NODES` makes the cache a Redis Cluster client: the nodes are seeds (one
/// live node is enough; the client learns the others). Credentials, TLS and the CA and
/// client-certificate files apply to every node; they come from `REDIS_USERNAME`,
/// `REDIS_PASSWORD` and `REDIS_TLS`, or from the scheme and user part of `REDIS_URL` when it
/// is set (its host is then ignored). See `docs/cluster-tls.md` for how multi-key operations
/// and key listing work on a cluster.
///
/// # Redis Sentinel
///
/// `REDIS_SENTINELS=host1:26379,host2:26379,host3:26379` with `REDIS_SENTINEL_MASTER=<name>`
/// makes the cache find its master through Sentinel: it asks the sentinels where the master
/// called `<name>` is (`SENTINEL get-master-addr-by-name`), checks with `ROLE` that the node
/// is a master, and asks again at every reconnection, so after a failover it follows the
/// promoted replica by itself (the in-memory fallback serves meanwhile, and the writes made
/// there are replayed to the new master). `REDIS_SENTINEL_USERNAME` and
/// `REDIS_SENTINEL_PASSWORD` authenticate to the sentinels; `REDIS_USERNAME`,
/// `REDIS_PASSWORD`, `REDIS_DB` and `REDIS_TLS` (and the TLS files) apply to the master, and
/// TLS to the sentinels as well. `REDIS_SENTINELS` with `REDIS_CLUSTER_NODES` is an error.
/// See `docs/sentinel.md`.
///
/// # TLS
///
/// `REDIS_TLS=true` or a `rediss://` URL connects with TLS (rustls with the *ring* crypto
/// provider), checking the server's certificate against the system's roots, or against
/// `REDIS_TLS_CA_FILE` when set; the certificate must name the host connected to.
/// The files are read once, when [`build`](crate::CacheBuilder::build) validates the
/// configuration, and the same certificates serve the data connection and the invalidation
/// link. A file that cannot be read or does not hold PEM of the right kind is a
/// [`ConfigError`] naming the variable.
///
/// # Coherence covers every key the SDK writes
///
/// With [`Coherence::Tracking`], the invalidation link asks Redis for every key under the
/// namespace (`<ns>:`) or, without a namespace, for **every key** (`CLIENT TRACKING ON
/// BCAST` without a prefix). Redis then pushes every write to the server, in every database
/// and by any client, to each instance: the cost grows with the server's whole write rate,
/// and keys of other applications or databases that share the server evict the same names
/// from L1 (a spurious miss, never a stale value). Set a namespace, or restrict the tracked
/// prefixes with [`CacheConfig::coherence_prefixes`] / `CACHE_COHERENCE_PREFIXES` (keys
/// outside them may then stay stale in other instances' L1 for up to the L1 TTL).
/// [`Coherence::PubSub`] publishes every SDK write whatever the prefixes.
///
/// # Variables
///
/// | variable | meaning | default |
/// |---|---|---|
/// | `REDIS_URL` | `redis://[user:pass@]host:port/db` or `rediss://…` (TLS); wins over the parts below | — |
/// | `REDIS_HOST` / `REDIS_PORT` | server address | `localhost` / `6379` |
/// | `REDIS_USERNAME` / `REDIS_PASSWORD` | ACL user and password (empty = none); also used with a `REDIS_URL` that has no credentials | none |
/// | `REDIS_DB` | database number, 0–15 (a cluster has only 0: any other is an error) | `0` |
/// | `REDIS_TLS` | `true` to use TLS (rustls, the system's root certificates) | `false` |
/// | `REDIS_TLS_CA_FILE` | PEM file of the CA(s) to trust instead of the system's roots | — |
/// | `REDIS_TLS_CERT_FILE` / `REDIS_TLS_KEY_FILE` | PEM client certificate (chain) and its private key, for servers that ask for one; both or neither | — |
/// | `REDIS_ENABLED` | see above | — |
/// | `REDIS_CLUSTER_NODES` | `host1:6379,host2:6379,…`: seed nodes of a Redis Cluster | — |
/// | `REDIS_SENTINELS` | `host1:26379,host2:26379,…`: sentinels that say where the master is (not with `REDIS_CLUSTER_NODES`) | — |
/// | `REDIS_SENTINEL_MASTER` | the master's name in the sentinels' `sentinel monitor <name> …`; required with `REDIS_SENTINELS` | — |
/// | `REDIS_SENTINEL_USERNAME` / `REDIS_SENTINEL_PASSWORD` | ACL user and password of the sentinels (those of the master are `REDIS_USERNAME` / `REDIS_PASSWORD`) | none |
/// | `REDIS_TIMEOUT_MS` | bound on every Redis call | `100` |
/// | `REDIS_CONNECT_TIMEOUT_MS` | bound on connecting | `500` |
/// | `CACHE_NAMESPACE` | prefix put before every Redis key (`<ns>:`) | none |
/// | `CACHE_L1_CAPACITY` | L1 entries (0 disables L1) | `10000` |
/// | `CACHE_L1_TTL_SECS` | the longest an entry stays in L1 | `30` |
/// | `CACHE_CODEC` | `bincode` or `json` | `bincode` |
/// | `CACHE_MAX_VALUE_BYTES` | the largest encoded value accepted | `4194304` |
/// | `CACHE_FALLBACK_MAX_BYTES` | memory the in-memory fallback may use | `67108864` |
/// | `CACHE_TTL_SESSION` | seconds of the [`Ttl::Session`](crate::Ttl::Session) preset, which is also the web session lifetime ([`SessionConfig`](crate::session::SessionConfig) reads it); `SESSION_TTL_SECS` is a deprecated alias (an error when both are set and disagree) | `86400` |
/// | `CACHE_TTL_<NAME>` | seconds for a TTL preset (`API`, `USER_PREFERENCES`, your own) | see [`Ttl`](crate::Ttl) |
/// | `CACHE_TTL_JITTER` | ± fraction applied to TTLs | `0` |
/// | `CACHE_COHERENCE` | `auto`, `tracking`, `pubsub` or `off` (see [`Coherence`]) | `auto` |
/// | `CACHE_COHERENCE_PREFIXES` | restricts tracking to these key prefixes (comma-separated, inside the namespace) | every key the SDK writes |
///
/// # Example
///
/// ```
/// use cache_sdk::CacheConfig;
/// let cfg = CacheConfig::from_vars([("REDIS_HOST", "10.0.0.5"), ("REDIS_DB", "3")]).unwrap();
/// let redis = cfg.redis.as_ref().unwrap();
/// assert_eq!((redis.host.as_str(), redis.port, redis.db), ("10.0.0.5", 6379, 3));
///
/// let err = CacheConfig::from_vars([("REDIS_HOST", "10.0.0.5"), ("REDIS_DB", "42")]).unwrap_err();
/// assert!(err.to_string().starts_with("REDIS_DB=\"42\" is invalid"));
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CacheConfig {
    /// Redis, or `None` to run in memory only.
    pub redis: Option<RedisConfig>,
    /// L1 capacity in entries; 0 disables L1.
    pub l1_capacity: u64,
    /// The longest an entry stays in L1. With [`coherence`](Self::coherence) in force,
    /// other instances' writes evict entries at once and this only bounds memory and the
    /// cases coherence does not cover; without it, another instance's write is seen here at
    /// most this late: keep it short then when several instances write the same keys.
    pub l1_ttl: Duration,
    /// Bound on every Redis call; past it the call counts as a failure and runs on the
    /// fallback.
    pub timeout: Duration,
    /// Bound on connecting to Redis.
    pub connect_timeout: Duration,
    /// The longest wait between two attempts to reach Redis again while it is down.
    pub probe_interval: Duration,
    /// Prefix for every Redis key (`<namespace>:<key>`).
    pub namespace: Option<String>,
    /// How values are encoded.
    pub codec: Codec,
    /// The largest encoded value accepted, in bytes (at most 64 MiB).
    pub max_value_size: usize,
    /// Memory the in-memory fallback may use, in bytes.
    pub fallback_max_bytes: u64,
    /// Most keys whose outage writes are kept for replay to Redis.
    pub replay_capacity: usize,
    /// TTL presets. The [`Session`](crate::Ttl::Session) preset is also the web session
    /// lifetime when the session configuration is read from the same variables
    /// (`CACHE_TTL_SESSION`) or built with
    /// [`SessionConfig::ttl_from`](crate::session::SessionConfig::ttl_from).
    pub ttl: TtlPresets,
    /// Fail `build()` when Redis is configured but cannot be reached.
    pub require_redis: bool,
    /// How L1 is kept in step across app instances when Redis is configured (see
    /// [`Coherence`]; `docs/coherence.md` has the design and the staleness bound).
    pub coherence: Coherence,
    /// Restricts what [`Coherence::Tracking`] watches to these key prefixes (SDK keys: the
    /// namespace, if any, is put before each). Empty, the default, watches every key the SDK
    /// writes: the whole namespace, or every key when there is none (see the module docs
    /// for what that costs). Keys outside the prefixes stay in other instances' L1 for up
    /// to [`l1_ttl`](Self::l1_ttl) after a change. Prefixes must not overlap (Redis refuses
    /// `cache:` with `cache:p`).
    pub coherence_prefixes: Vec<String>,
    /// Show keys in the cache's `tracing` spans (off by default: keys can hold user ids;
    /// session ids are never shown).
    pub log_keys: bool,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            redis: None,
            l1_capacity: 10_000,
            l1_ttl: Duration::from_secs(30),
            timeout: Duration::from_millis(100),
            connect_timeout: Duration::from_millis(500),
            probe_interval: Duration::from_millis(100),
            namespace: None,
            codec: Codec::Bincode,
            max_value_size: 4 * 1024 * 1024,
            fallback_max_bytes: 64 * 1024 * 1024,
            replay_capacity: 100_000,
            ttl: TtlPresets::default(),
            require_redis: false,
            coherence: Coherence::Auto,
            coherence_prefixes: Vec::new(),
            log_keys: false,
        }
    }
}

/// The largest value size that may be configured.
pub const MAX_VALUE_SIZE_LIMIT: usize = 64 * 1024 * 1024;

/// The values of `CACHE_CODEC` this build accepts.
const CODECS: &[(&str, Codec)] = &[
    ("bincode", Codec::Bincode),
    #[cfg(feature = "json")]
    ("json", Codec::Json),
];

/// Refuses the Redis settings this build cannot honour, naming the cargo feature they need:
/// TLS (`rediss://`, `REDIS_TLS`) without `tls`, a cluster without `cluster`. Never a panic,
/// never a plain connection in place of the TLS one that was asked for.
fn check_features(r: &RedisConfig) -> Result<(), ConfigError> {
    if !cfg!(feature = "tls") && r.uses_tls() {
        let name = if r.url.is_some() {
            "REDIS_URL"
        } else {
            "REDIS_TLS"
        };
        return Err(ConfigError::FeatureDisabled {
            name,
            feature: "tls",
        });
    }
    if !cfg!(feature = "cluster") && r.is_cluster() {
        return Err(ConfigError::FeatureDisabled {
            name: "REDIS_CLUSTER_NODES",
            feature: "cluster",
        });
    }
    Ok(())
}

impl CacheConfig {
    /// Reads the configuration from the process environment (no `.env` file: see
    /// [`CacheConfig::from_env_and_dotenv`]), starting from the defaults.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first variable with a bad value.
    ///
    /// ```
    /// let cfg = cache_sdk::CacheConfig::from_env().unwrap();
    /// # let _ = cfg;
    /// ```
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_reader(&EnvReader::process())
    }

    /// As [`CacheConfig::from_env`], after the variables of a `.env` file in the current
    /// directory or its parents (a variable set in the process wins over the file).
    ///
    /// # Errors
    /// As [`CacheConfig::from_env`]; [`ConfigError::DotEnv`] when the `.env` file exists but
    /// cannot be read or parsed.
    ///
    /// ```no_run
    /// let cfg = cache_sdk::CacheConfig::from_env_and_dotenv()?;
    /// # Ok::<(), cache_sdk::ConfigError>(())
    /// ```
    #[cfg(feature = "dotenv")]
    #[cfg_attr(docsrs, doc(cfg(feature = "dotenv")))]
    pub fn from_env_and_dotenv() -> Result<Self, ConfigError> {
        Self::from_reader(&EnvReader::process_and_dotenv()?)
    }

    /// Reads the configuration from the given variables only (no process environment, no
    /// `.env`); useful in tests.
    ///
    /// # Errors
    /// As [`CacheConfig::from_env`].
    ///
    /// ```
    /// let cfg = cache_sdk::CacheConfig::from_vars([("CACHE_NAMESPACE", "erp")]).unwrap();
    /// assert_eq!(cfg.namespace.as_deref(), Some("erp"));
    /// ```
    pub fn from_vars<K: Into<String>, V: Into<String>>(
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self, ConfigError> {
        Self::from_reader(&EnvReader::from_pairs(vars))
    }

    fn from_reader(env: &EnvReader) -> Result<Self, ConfigError> {
        let mut cfg = Self::default();
        cfg.apply_env(env)?;
        Ok(cfg)
    }

    /// Overrides the settings whose variables are set (see the module docs for the Redis
    /// address, which is taken as a whole). On error `self` is left unchanged in part.
    pub(crate) fn apply_env(&mut self, env: &EnvReader) -> Result<(), ConfigError> {
        // Before redis-rs reads the URL: without TLS compiled in it would call a `rediss://`
        // URL malformed instead of naming the feature.
        #[cfg(not(feature = "tls"))]
        if env.bool("REDIS_ENABLED")? != Some(false)
            && env
                .str("REDIS_URL")
                .and_then(|u| u.get(..9))
                .is_some_and(|s| s.eq_ignore_ascii_case("rediss://"))
        {
            return Err(ConfigError::FeatureDisabled {
                name: "REDIS_URL",
                feature: "tls",
            });
        }
        self.redis = RedisConfig::merge_env(self.redis.clone(), env)?;
        if let Some(t) = env.millis("REDIS_TIMEOUT_MS", 1..=600_000)? {
            self.timeout = t;
        }
        if let Some(t) = env.millis("REDIS_CONNECT_TIMEOUT_MS", 1..=600_000)? {
            self.connect_timeout = t;
        }
        if let Some(ns) = env.str("CACHE_NAMESPACE") {
            self.namespace = Some(ns.to_owned());
        }
        if let Some(n) = env.number("CACHE_L1_CAPACITY", 0..=u64::MAX, "a whole number")? {
            self.l1_capacity = n;
        }
        if let Some(t) = env.secs("CACHE_L1_TTL_SECS", 0..=31_536_000)? {
            self.l1_ttl = t;
        }
        #[cfg(not(feature = "json"))]
        if env
            .str("CACHE_CODEC")
            .is_some_and(|v| v.eq_ignore_ascii_case("json"))
        {
            return Err(ConfigError::FeatureDisabled {
                name: "CACHE_CODEC",
                feature: "json",
            });
        }
        if let Some(c) = env.choice("CACHE_CODEC", CODECS)? {
            self.codec = c;
        }
        if let Some(n) = env.number(
            "CACHE_MAX_VALUE_BYTES",
            1..=MAX_VALUE_SIZE_LIMIT,
            "a size in bytes",
        )? {
            self.max_value_size = n;
        }
        if let Some(n) = env.number(
            "CACHE_FALLBACK_MAX_BYTES",
            1024..=u64::MAX,
            "a size in bytes",
        )? {
            self.fallback_max_bytes = n;
        }
        if let Some(c) = env.parse("CACHE_COHERENCE")? {
            self.coherence = c;
        }
        if let Some(p) = env.list(
            "CACHE_COHERENCE_PREFIXES",
            "expected comma-separated key prefixes such as `cache:,sess:` (unset it to \
             track every key)",
        )? {
            self.coherence_prefixes = p;
        }
        apply_ttl_env(&mut self.ttl, env)
    }

    /// Checks the whole configuration: the value size limit, the timeouts, the namespace,
    /// the coherence prefixes, the TTL presets, Redis (TLS files need TLS, a client
    /// certificate needs its key, a cluster has only database 0), and reads the TLS files.
    /// [`CacheBuilder::build`](crate::CacheBuilder::build) runs it (and reads the files
    /// only there); call it to check a configuration without building a cache.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the variable (or setting) at fault.
    ///
    /// ```
    /// use cache_sdk::CacheConfig;
    /// assert!(CacheConfig::default().validate().is_ok());
    /// let mut cfg = CacheConfig::default();
    /// cfg.namespace = Some("a*".into());
    /// assert!(cfg.validate().unwrap_err().to_string().starts_with("CACHE_NAMESPACE"));
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.checked().map(drop)
    }

    /// [`CacheConfig::validate`], returning the TLS material it loaded, for the links.
    pub(crate) fn checked(&self) -> Result<TlsMaterial, ConfigError> {
        if self.max_value_size == 0 || self.max_value_size > MAX_VALUE_SIZE_LIMIT {
            return Err(invalid(
                "CACHE_MAX_VALUE_BYTES",
                &self.max_value_size.to_string(),
                "must be between 1 byte and 64 MiB",
            ));
        }
        for (name, t) in [
            ("REDIS_TIMEOUT_MS", self.timeout),
            ("REDIS_CONNECT_TIMEOUT_MS", self.connect_timeout),
        ] {
            if t.is_zero() {
                return Err(invalid(name, "0", "a timeout must be above zero"));
            }
        }
        if let Some(ns) = &self.namespace {
            if ns.is_empty()
                || ns.chars().any(char::is_control)
                || ns.contains(['*', '?', '[', ']', '\\'])
            {
                return Err(invalid(
                    "CACHE_NAMESPACE",
                    ns,
                    "must not be empty nor hold control or glob characters",
                ));
            }
        }
        self.check_prefixes()?;
        self.ttl.check()?;
        match &self.redis {
            Some(r) => {
                check_features(r)?;
                r.check()?;
                TlsMaterial::load(r.tls_ca_file.as_deref(), r.client_cert_files())
            }
            None => Ok(TlsMaterial::default()),
        }
    }

    fn check_prefixes(&self) -> Result<(), ConfigError> {
        const NAME: &str = "CACHE_COHERENCE_PREFIXES";
        let all = self.coherence_prefixes.join(",");
        for (i, p) in self.coherence_prefixes.iter().enumerate() {
            if p.is_empty() || p.chars().any(char::is_control) {
                return Err(invalid(
                    NAME,
                    &all,
                    "a prefix must not be empty nor hold control characters (an empty list \
                     tracks every key)",
                ));
            }
            if let Some(q) = self.coherence_prefixes[i + 1..]
                .iter()
                .find(|q| q.starts_with(p.as_str()) || p.starts_with(q.as_str()))
            {
                return Err(invalid(
                    NAME,
                    &all,
                    &format!("`{p}` and `{q}` overlap; keep the shorter one"),
                ));
            }
        }
        Ok(())
    }

    /// The Redis-level key prefixes [`Coherence::Tracking`] watches: each configured
    /// prefix inside the namespace; without configured prefixes, the namespace (`<ns>:`);
    /// without either, none, which tracks every key.
    pub(crate) fn tracked_prefixes(&self) -> Vec<String> {
        let ns = self
            .namespace
            .as_ref()
            .map(|ns| format!("{ns}:"))
            .unwrap_or_default();
        if self.coherence_prefixes.is_empty() {
            return if ns.is_empty() { Vec::new() } else { vec![ns] };
        }
        self.coherence_prefixes
            .iter()
            .map(|p| format!("{ns}{p}"))
            .collect()
    }
}

/// Reads the presets that are set: `CACHE_TTL_SESSION` (or its deprecated alias
/// `SESSION_TTL_SECS`), `CACHE_TTL_<NAME>=<seconds>` and `CACHE_TTL_JITTER=<fraction>`.
fn apply_ttl_env(presets: &mut TtlPresets, env: &EnvReader) -> Result<(), ConfigError> {
    if let Some(ttl) = env.session_ttl()? {
        presets.define_unchecked("session", ttl);
    }
    if let Some(fraction) = env.number("CACHE_TTL_JITTER", 0.0..=0.5, "a fraction")? {
        presets.set_jitter_unchecked(fraction);
    }
    for (name, value) in env.with_prefix("CACHE_TTL_") {
        let Some(preset) = name.strip_prefix("CACHE_TTL_") else {
            continue;
        };
        if matches!(preset, "JITTER" | "SESSION") || value.trim().is_empty() {
            continue;
        }
        let invalid = |reason: &str| ConfigError::Invalid {
            name: "CACHE_TTL_<NAME>",
            value: format!("{name}={value}"),
            reason: reason.into(),
        };
        let secs = value
            .trim()
            .parse::<u64>()
            .map_err(|_| invalid("not a whole number of seconds"))?;
        presets
            .define(preset, Duration::from_secs(secs))
            .map_err(|_| invalid("a TTL must be between 1 and 31536000 seconds"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads and validates, as `build()` would.
    fn built(vars: &[(&str, &str)]) -> Result<CacheConfig, ConfigError> {
        let cfg = CacheConfig::from_vars(vars.iter().copied())?;
        cfg.validate()?;
        Ok(cfg)
    }

    #[test]
    fn redis_is_off_by_default_and_on_when_addressed() {
        assert!(built(&[]).unwrap().redis.is_none());
        assert!(built(&[("REDIS_ENABLED", "true")]).unwrap().redis.is_some());
        assert!(
            built(&[("REDIS_URL", "redis://h:1"), ("REDIS_ENABLED", "false")])
                .unwrap()
                .redis
                .is_none()
        );
        // A password alone does not turn Redis on.
        assert!(built(&[("REDIS_PASSWORD", "pw")]).unwrap().redis.is_none());
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (k, v) in [
            ("REDIS_PORT", "70000"),
            ("REDIS_DB", "x"),
            ("REDIS_TLS", "maybe"),
            ("REDIS_ENABLED", "sure"),
            ("REDIS_CLUSTER_NODES", "a:1,b"),
            ("REDIS_TIMEOUT_MS", "0"),
            ("REDIS_CONNECT_TIMEOUT_MS", "soon"),
            ("CACHE_L1_CAPACITY", "-1"),
            ("CACHE_L1_TTL_SECS", "forever"),
            ("CACHE_CODEC", "xml"),
            ("CACHE_MAX_VALUE_BYTES", "0"),
            ("CACHE_FALLBACK_MAX_BYTES", "10"),
            ("CACHE_COHERENCE", "sometimes"),
            ("CACHE_COHERENCE_PREFIXES", " , "),
            ("CACHE_COHERENCE_PREFIXES", "cache:,cache:p"),
            ("CACHE_NAMESPACE", "a*"),
            ("CACHE_TTL_SESSION", "0"),
            ("SESSION_TTL_SECS", "x"),
        ] {
            let err = built(&[("REDIS_HOST", "h"), (k, v)]).unwrap_err();
            assert!(err.to_string().starts_with(&format!("{k}=")), "{err}");
        }
    }

    #[test]
    fn the_session_preset_follows_cache_ttl_session_or_its_alias() {
        let session = |vars: &[(&str, &str)]| {
            built(vars)
                .map(|c| c.ttl.base(&crate::Ttl::Session).unwrap().as_secs())
                .map_err(|e| e.to_string())
        };
        assert_eq!(session(&[]), Ok(86_400));
        assert_eq!(session(&[("CACHE_TTL_SESSION", "3600")]), Ok(3600));
        assert_eq!(session(&[("SESSION_TTL_SECS", "1800")]), Ok(1800));
        let err =
            session(&[("CACHE_TTL_SESSION", "3600"), ("SESSION_TTL_SECS", "1800")]).unwrap_err();
        assert!(err.starts_with("SESSION_TTL_SECS="), "{err}");
    }

    #[test]
    fn env_overrides_presets_and_defines_named_ones() {
        let p = built(&[("CACHE_TTL_API", "900"), ("CACHE_TTL_REPORTS", "60")])
            .unwrap()
            .ttl;
        assert_eq!(p.base(&crate::Ttl::Api).unwrap(), Duration::from_secs(900));
        assert_eq!(
            p.base(&crate::Ttl::named("reports")).unwrap(),
            Duration::from_secs(60)
        );
        let err = built(&[("CACHE_TTL_API", "soon")]).unwrap_err();
        assert!(err.to_string().contains("CACHE_TTL_API=soon"), "{err}");
        assert!(built(&[("CACHE_TTL_API", "0")]).is_err());
        for bad in ["0.9", "NaN", "x"] {
            let err = built(&[("CACHE_TTL_JITTER", bad)]).unwrap_err();
            assert!(err.to_string().starts_with("CACHE_TTL_JITTER="), "{err}");
        }
    }

    #[test]
    fn url_errors_never_show_the_password() {
        let err = built(&[("REDIS_URL", "http://user:hunter2@host")]).unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(
            text.contains("REDIS_URL") && !text.contains("hunter2"),
            "{text}"
        );
    }

    #[test]
    #[cfg(feature = "tls")]
    fn credentials_are_url_encoded_and_redacted() {
        let cfg = built(&[
            ("REDIS_HOST", "::1"),
            ("REDIS_USERNAME", "app"),
            ("REDIS_PASSWORD", "p@ss word"),
            ("REDIS_TLS", "true"),
        ])
        .unwrap();
        let r = cfg.redis.unwrap();
        assert_eq!(
            r.connection_url(),
            "rediss://app:p%40ss%20word@[::1]:6379/0"
        );
        assert_eq!(r.display_address(), "rediss://REDACTED@[::1]:6379/0");
        assert!(!format!("{r:?}").contains("p@ss"));
    }

    #[test]
    #[cfg(feature = "tls")]
    fn tls_files_need_tls_and_each_other_and_must_be_readable() {
        let with = |extra: &[(&str, &str)]| {
            let mut vars = vec![("REDIS_HOST", "h")];
            vars.extend_from_slice(extra);
            built(&vars)
        };
        // Reading the variables does not touch the files; validation does.
        assert!(CacheConfig::from_vars([
            ("REDIS_HOST", "h"),
            ("REDIS_TLS", "true"),
            ("REDIS_TLS_CA_FILE", "/nonexistent/ca.pem"),
        ])
        .is_ok());
        let err = with(&[("REDIS_TLS_CA_FILE", "/x/ca.pem")]).unwrap_err();
        assert!(
            err.to_string().starts_with("REDIS_TLS_CA_FILE=")
                && err.to_string().contains("TLS is off"),
            "{err}"
        );
        let err = with(&[
            ("REDIS_TLS", "true"),
            ("REDIS_TLS_CA_FILE", "/nonexistent/ca.pem"),
        ])
        .unwrap_err();
        assert!(
            err.to_string().starts_with("REDIS_TLS_CA_FILE=")
                && err.to_string().contains("cannot be read"),
            "{err}"
        );
        let err = with(&[("REDIS_TLS", "true"), ("REDIS_TLS_CERT_FILE", "/x/c.pem")]).unwrap_err();
        assert!(err.to_string().starts_with("REDIS_TLS_KEY_FILE="), "{err}");
        let err = with(&[("REDIS_TLS", "true"), ("REDIS_TLS_KEY_FILE", "/x/c.key")]).unwrap_err();
        assert!(err.to_string().starts_with("REDIS_TLS_CERT_FILE="), "{err}");
    }

    #[test]
    fn a_url_database_out_of_range_is_refused_like_redis_db() {
        for url in ["redis://h:6379/16", "redis://:secret@h:6379/99"] {
            let err = built(&[("REDIS_URL", url)]).unwrap_err().to_string();
            assert!(err.starts_with("REDIS_URL="), "{err}");
            assert!(err.contains("0-15"), "{err}");
            assert!(!err.contains("secret"), "{err}");
        }
        let cfg = built(&[("REDIS_URL", "redis://h:6379/15")]).unwrap();
        assert!(cfg.redis.is_some());
    }

    #[test]
    #[cfg(feature = "cluster")]
    fn a_cluster_has_only_database_0() {
        let err = built(&[("REDIS_CLUSTER_NODES", "a:1,b:2"), ("REDIS_DB", "1")]).unwrap_err();
        assert!(err.to_string().starts_with("REDIS_DB=\"1\""), "{err}");
        let err = built(&[
            ("REDIS_CLUSTER_NODES", "a:1"),
            ("REDIS_URL", "redis://a:1/2"),
        ])
        .unwrap_err();
        assert!(err.to_string().contains("REDIS_DB"), "{err}");
        let cfg = built(&[("REDIS_CLUSTER_NODES", "a:1, b:2")]).unwrap();
        let r = cfg.redis.unwrap();
        assert!(r.is_cluster());
        assert_eq!(r.cluster_nodes, ["a:1", "b:2"]);
    }

    #[test]
    #[cfg(not(feature = "tls"))]
    fn tls_without_its_feature_is_an_error_naming_it() {
        for (vars, name) in [
            (&[("REDIS_URL", "rediss://h:6380")][..], "REDIS_URL"),
            (
                &[("REDIS_HOST", "h"), ("REDIS_TLS", "true")][..],
                "REDIS_TLS",
            ),
        ] {
            let err = built(vars).unwrap_err();
            assert_eq!(
                err,
                ConfigError::FeatureDisabled {
                    name,
                    feature: "tls"
                }
            );
            assert!(err.to_string().contains("`tls` feature"), "{err}");
        }
        // Settings made in code are refused the same way, by `validate` (and `build`).
        let cfg = CacheConfig {
            redis: Some(RedisConfig::host("h", 6380).with_tls(true)),
            ..CacheConfig::default()
        };
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::FeatureDisabled { feature: "tls", .. })
        ));
        // Plain connections need nothing.
        assert!(built(&[("REDIS_URL", "redis://h:6379")]).is_ok());
    }

    #[test]
    #[cfg(not(feature = "cluster"))]
    fn a_cluster_without_its_feature_is_an_error_naming_it() {
        let err = built(&[("REDIS_CLUSTER_NODES", "a:1,b:2")]).unwrap_err();
        assert_eq!(
            err,
            ConfigError::FeatureDisabled {
                name: "REDIS_CLUSTER_NODES",
                feature: "cluster"
            }
        );
        let cfg = CacheConfig {
            redis: Some(RedisConfig::cluster(["a:1"])),
            ..CacheConfig::default()
        };
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::FeatureDisabled {
                feature: "cluster",
                ..
            })
        ));
    }

    #[test]
    fn the_json_codec_needs_its_feature() {
        let codec = built(&[("CACHE_CODEC", " JSON ")]).map(|c| c.codec);
        #[cfg(feature = "json")]
        assert_eq!(codec, Ok(Codec::Json));
        #[cfg(not(feature = "json"))]
        assert_eq!(
            codec,
            Err(ConfigError::FeatureDisabled {
                name: "CACHE_CODEC",
                feature: "json"
            })
        );
        assert_eq!(
            built(&[("CACHE_CODEC", "bincode")]).map(|c| c.codec),
            Ok(Codec::Bincode)
        );
    }

    #[test]
    fn cluster_nodes_take_the_scheme_and_credentials() {
        let r = RedisConfig::cluster(["10.0.0.1:7000"]).with_auth(Some("app"), "p@ss");
        assert_eq!(
            r.node_url("10.0.0.2:7001"),
            "redis://app:p%40ss@10.0.0.2:7001"
        );
        let mut r = RedisConfig::cluster(["10.0.0.1:7000"]);
        r.url = Some("rediss://:pw@ignored:1".into());
        assert_eq!(r.node_url("10.0.0.2:7001"), "rediss://:pw@10.0.0.2:7001");
        assert_eq!(r.display_address(), "rediss cluster 10.0.0.1:7000");
        assert!(!format!("{r:?}").contains("pw@"));
    }

    #[test]
    fn a_url_without_credentials_takes_the_separate_ones() {
        let cfg = built(&[
            ("REDIS_URL", "redis://cache:6379/1"),
            ("REDIS_USERNAME", "app"),
            ("REDIS_PASSWORD", "pw"),
        ])
        .unwrap();
        assert_eq!(
            cfg.redis.unwrap().connection_url(),
            "redis://app:pw@cache:6379/1"
        );
        let cfg = built(&[
            ("REDIS_URL", "redis://u:own@cache:6379"),
            ("REDIS_PASSWORD", "pw"),
        ])
        .unwrap();
        assert_eq!(
            cfg.redis.unwrap().connection_url(),
            "redis://u:own@cache:6379"
        );
    }

    #[test]
    fn the_environment_merges_into_what_is_held() {
        let env = |pairs: &[(&str, &str)]| EnvReader::from_pairs(pairs.iter().copied());
        let mut cfg = CacheConfig {
            namespace: Some("erp".into()),
            l1_capacity: 5,
            redis: Some(RedisConfig::host("cache.internal", 7000).with_auth(Some("app"), "pw")),
            ..CacheConfig::default()
        };
        cfg.ttl.define("reports", Duration::from_secs(60)).unwrap();

        // Nothing set: nothing changes.
        let before = format!("{cfg:?}");
        cfg.apply_env(&env(&[])).unwrap();
        assert_eq!(format!("{cfg:?}"), before);

        // Only what is set overrides; a field of the address overrides that field.
        cfg.apply_env(&env(&[("CACHE_L1_CAPACITY", "9"), ("REDIS_DB", "2")]))
            .unwrap();
        assert_eq!(cfg.namespace.as_deref(), Some("erp"));
        assert_eq!(cfg.l1_capacity, 9);
        let r = cfg.redis.as_ref().unwrap();
        assert_eq!((r.host.as_str(), r.port, r.db), ("cache.internal", 7000, 2));
        assert_eq!(r.password.as_deref(), Some("pw"));
        assert_eq!(
            cfg.ttl.base(&crate::Ttl::named("reports")).unwrap(),
            Duration::from_secs(60)
        );

        // An address variable replaces the address as a whole, and keeps the credentials.
        cfg.apply_env(&env(&[("REDIS_HOST", "other")])).unwrap();
        let r = cfg.redis.as_ref().unwrap();
        assert_eq!((r.host.as_str(), r.port), ("other", 6379));
        assert_eq!(r.username.as_deref(), Some("app"));

        // REDIS_ENABLED=false switches Redis off.
        cfg.apply_env(&env(&[("REDIS_ENABLED", "false")])).unwrap();
        assert!(cfg.redis.is_none());
    }

    #[test]
    fn coherence_tracks_every_sdk_key_unless_restricted() {
        let mut cfg = CacheConfig::default();
        assert!(cfg.tracked_prefixes().is_empty(), "every key");
        cfg.namespace = Some("shop".into());
        assert_eq!(cfg.tracked_prefixes(), ["shop:"]);
        cfg.coherence_prefixes = vec!["cache:".into(), "sess:".into()];
        assert_eq!(cfg.tracked_prefixes(), ["shop:cache:", "shop:sess:"]);
        cfg.namespace = None;
        assert_eq!(cfg.tracked_prefixes(), ["cache:", "sess:"]);
        assert!(cfg.validate().is_ok());
        cfg.coherence_prefixes.push(String::new());
        assert!(cfg.validate().is_err());
    }

    #[test]
    fn validation_covers_settings_made_in_code() {
        let mut cfg = CacheConfig {
            max_value_size: 0,
            ..CacheConfig::default()
        };
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("CACHE_MAX_VALUE_BYTES"));
        cfg.max_value_size = 1024;
        cfg.connect_timeout = Duration::ZERO;
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("REDIS_CONNECT_TIMEOUT_MS"));
    }
}
