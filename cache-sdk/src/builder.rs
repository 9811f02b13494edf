//! [`CacheBuilder`]: settings from code and from the environment, merged in the order given,
//! checked once by [`CacheBuilder::build`] (through [`CacheConfig::validate`]) and turned
//! into a [`Cache`].
//!
//! The setters only record values; nothing is checked before `build()`, so the order of
//! the calls never changes which error is reported, and the environment can be merged
//! before or after the settings made in code.

use std::time::Duration;

use crate::cache::Cache;
use crate::cache::CacheValue;
use crate::codec::Codec;
use crate::codec::{TypeTag, TypeTags};
use crate::config::env::EnvReader;
use crate::config::{CacheConfig, Coherence, RedisConfig};
use crate::error::{BuildError, ConfigError};

/// Builds a [`Cache`]. Every setter is optional; [`CacheBuilder::build`] checks the whole
/// configuration, connects to Redis when configured and falls back to memory when it
/// cannot.
///
/// ```
/// use cache_sdk::Cache;
/// use std::time::Duration;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cache = Cache::builder()
///     .l1_capacity(5_000)
///     .l1_ttl(Duration::from_secs(10))
///     .namespace("erp")
///     .ttl_preset("reports", Duration::from_secs(3600))
///     .build()
///     .await?;
/// # let _ = cache;
/// # Ok(()) }
/// ```
#[must_use]
#[derive(Debug, Clone)]
pub struct CacheBuilder {
    cfg: CacheConfig,
    types: TypeTags,
    /// The first invalid [`CacheBuilder::value_type`], reported by `build()`.
    error: Option<ConfigError>,
    /// The defaults of [`Cache::get_or_load_entry`].
    load: crate::LoadOptions,
    /// How the origins' circuit breakers behave.
    breaker: crate::BreakerSettings,
}

impl CacheBuilder {
    /// A builder holding [`CacheConfig::default`] (Redis disabled).
    pub(crate) fn new() -> Self {
        Self {
            cfg: CacheConfig::default(),
            types: TypeTags::default(),
            load: crate::LoadOptions::new(),
            breaker: crate::BreakerSettings::new(),
            error: None,
        }
    }

    /// Merges the process environment into what the builder holds: only the variables that
    /// are set override (see [the variables](crate::CacheConfig#variables) and
    /// [how they merge](crate::CacheConfig#where-the-values-come-from)). No `.env` file is
    /// read: see [`CacheBuilder::from_env_and_dotenv`].
    ///
    /// # Errors
    /// [`ConfigError`] naming the variable with a bad value.
    ///
    /// ```
    /// let b = cache_sdk::Cache::builder().namespace("erp").from_env().unwrap();
    /// # let _ = b;
    /// ```
    pub fn from_env(self) -> Result<Self, ConfigError> {
        self.merge(&EnvReader::process())
    }

    /// As [`CacheBuilder::from_env`], with the variables of a `.env` file in the current
    /// directory or a parent under the process environment (a variable set in the process
    /// wins over the file).
    ///
    /// # Errors
    /// As [`CacheBuilder::from_env`]; [`ConfigError::DotEnv`] when the `.env` file exists
    /// but cannot be read or parsed.
    ///
    /// ```no_run
    /// let b = cache_sdk::Cache::builder().from_env_and_dotenv()?;
    /// # let _ = b;
    /// # Ok::<(), cache_sdk::ConfigError>(())
    /// ```
    #[cfg(feature = "dotenv")]
    #[cfg_attr(docsrs, doc(cfg(feature = "dotenv")))]
    pub fn from_env_and_dotenv(self) -> Result<Self, ConfigError> {
        self.merge(&EnvReader::process_and_dotenv()?)
    }

    /// Merges the given variables, as [`CacheBuilder::from_env`] merges the environment;
    /// useful in tests.
    ///
    /// # Errors
    /// As [`CacheBuilder::from_env`].
    ///
    /// ```
    /// let b = cache_sdk::Cache::builder()
    ///     .namespace("erp")
    ///     .from_vars([("CACHE_L1_CAPACITY", "500")])
    ///     .unwrap();
    /// # let _ = b;
    /// ```
    pub fn from_vars<K: Into<String>, V: Into<String>>(
        self,
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self, ConfigError> {
        self.merge(&EnvReader::from_pairs(vars))
    }

    fn merge(mut self, env: &EnvReader) -> Result<Self, ConfigError> {
        self.cfg.apply_env(env)?;
        Ok(self)
    }

    /// Replaces everything the builder holds with this configuration.
    ///
    /// ```
    /// let b = cache_sdk::Cache::builder().config(cache_sdk::CacheConfig::default());
    /// # let _ = b;
    /// ```
    pub fn config(mut self, cfg: CacheConfig) -> Self {
        self.cfg = cfg;
        self
    }

    /// Uses Redis as configured.
    ///
    /// ```
    /// let b = cache_sdk::Cache::builder().redis(cache_sdk::RedisConfig::host("cache.internal", 6379));
    /// # let _ = b;
    /// ```
    pub fn redis(mut self, redis: RedisConfig) -> Self {
        self.cfg.redis = Some(redis);
        self
    }

    /// Uses Redis at this URL (`redis://…` or `rediss://…`).
    ///
    /// ```
    /// let b = cache_sdk::Cache::builder().redis_url("redis://127.0.0.1:6379/0");
    /// # let _ = b;
    /// ```
    pub fn redis_url(self, url: impl Into<String>) -> Self {
        self.redis(RedisConfig::url(url))
    }

    /// Uses a Redis Cluster reached through these seed nodes (`host:port`), as
    /// `REDIS_CLUSTER_NODES` does. For credentials or TLS, pass a
    /// [`RedisConfig::cluster`] with them to [`CacheBuilder::redis`] instead.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_sdk::BuildError> {
    /// let cache = cache_sdk::Cache::builder()
    ///     .redis_cluster(["10.0.0.1:6379", "10.0.0.2:6379", "10.0.0.3:6379"])
    ///     .build()
    ///     .await?;
    /// # let _ = cache;
    /// # Ok(()) }
    /// ```
    pub fn redis_cluster<S: Into<String>>(self, nodes: impl IntoIterator<Item = S>) -> Self {
        self.redis(RedisConfig::cluster(nodes))
    }

    /// Uses the master that the sentinels at `nodes` (`host:port`) call `master_name`, found
    /// through them at every (re)connection so that a failover is followed, as
    /// `REDIS_SENTINELS` and `REDIS_SENTINEL_MASTER` do. For credentials, a database or TLS,
    /// pass a [`RedisConfig::sentinel`] with them to [`CacheBuilder::redis`] instead.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_sdk::BuildError> {
    /// let cache = cache_sdk::Cache::builder()
    ///     .redis_sentinel(["10.0.0.1:26379", "10.0.0.2:26379", "10.0.0.3:26379"], "cache")
    ///     .build()
    ///     .await?;
    /// # let _ = cache;
    /// # Ok(()) }
    /// ```
    pub fn redis_sentinel<S: Into<String>>(
        self,
        nodes: impl IntoIterator<Item = S>,
        master_name: impl Into<String>,
    ) -> Self {
        self.redis(RedisConfig::sentinel(nodes, master_name))
    }

    /// Runs in memory only.
    ///
    /// ```
    /// let b = cache_sdk::Cache::builder().no_redis();
    /// # let _ = b;
    /// ```
    pub fn no_redis(mut self) -> Self {
        self.cfg.redis = None;
        self
    }

    /// L1 capacity in entries (0 disables L1).
    ///
    /// ```
    /// let b = cache_sdk::Cache::builder().l1_capacity(50_000);
    /// # let _ = b;
    /// ```
    pub fn l1_capacity(mut self, entries: u64) -> Self {
        self.cfg.l1_capacity = entries;
        self
    }

    /// The longest an entry stays in L1 (see [`CacheConfig::l1_ttl`]).
    ///
    /// ```
    /// let b = cache_sdk::Cache::builder().l1_ttl(std::time::Duration::from_secs(5));
    /// # let _ = b;
    /// ```
    pub fn l1_ttl(mut self, ttl: Duration) -> Self {
        self.cfg.l1_ttl = ttl;
        self
    }

    /// Bound on every Redis call (default 100 ms; must be above zero).
    ///
    /// ```
    /// let b = cache_sdk::Cache::builder().timeout(std::time::Duration::from_millis(50));
    /// # let _ = b;
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.cfg.timeout = timeout;
        self
    }

    /// Bound on connecting to Redis (default 500 ms; must be above zero).
    ///
    /// ```
    /// let b = cache_sdk::Cache::builder().connect_timeout(std::time::Duration::from_secs(1));
    /// # let _ = b;
    /// ```
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.cfg.connect_timeout = timeout;
        self
    }

    /// The longest wait between two attempts to reach Redis while it is down (default
    /// 100 ms).
    ///
    /// ```
    /// let b = cache_sdk::Cache::builder().probe_interval(std::time::Duration::from_millis(250));
    /// # let _ = b;
    /// ```
    pub fn probe_interval(mut self, interval: Duration) -> Self {
        self.cfg.probe_interval = interval;
        self
    }

    /// Shows keys in the cache's `tracing` spans (see [`CacheConfig::log_keys`]; off by
    /// default, as keys can hold user ids).
    ///
    /// ```
    /// let b = cache_sdk::Cache::builder().log_keys(true);
    /// # let _ = b;
    /// ```
    pub fn log_keys(mut self, show: bool) -> Self {
        self.cfg.log_keys = show;
        self
    }

    /// Prefix for every Redis key (`<namespace>:<key>`); no control or glob characters.
    ///
    /// ```
    /// let b = cache_sdk::Cache::builder().namespace("erp");
    /// # let _ = b;
    /// ```
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.cfg.namespace = Some(namespace.into());
        self
    }

    /// The codec for values: [`Codec::Bincode`] by default, `Codec::Json` with the `json`
    /// feature.
    ///
    /// ```
    /// # #[cfg(feature = "json")] {
    /// let b = cache_sdk::Cache::builder().codec(cache_sdk::Codec::Json);
    /// # let _ = b;
    /// # }
    /// ```
    pub fn codec(mut self, codec: Codec) -> Self {
        self.cfg.codec = codec;
        self
    }

    /// The largest encoded value accepted (1 byte ..= 64 MiB).
    ///
    /// ```
    /// let b = cache_sdk::Cache::builder().max_value_size(1024 * 1024);
    /// # let _ = b;
    /// ```
    pub fn max_value_size(mut self, bytes: usize) -> Self {
        self.cfg.max_value_size = bytes;
        self
    }

    /// Memory the in-memory fallback may use.
    ///
    /// ```
    /// let b = cache_sdk::Cache::builder().fallback_max_bytes(16 * 1024 * 1024);
    /// # let _ = b;
    /// ```
    pub fn fallback_max_bytes(mut self, bytes: u64) -> Self {
        self.cfg.fallback_max_bytes = bytes;
        self
    }

    /// Most keys kept for replay after an outage.
    ///
    /// ```
    /// let b = cache_sdk::Cache::builder().replay_capacity(10_000);
    /// # let _ = b;
    /// ```
    pub fn replay_capacity(mut self, keys: usize) -> Self {
        self.cfg.replay_capacity = keys;
        self
    }

    /// Defines or overrides a TTL preset (1 s ..= 365 days; checked by `build()`).
    /// `"session"` is also the web session lifetime for a
    /// [`SessionConfig`](crate::session::SessionConfig) made with
    /// [`ttl_from`](crate::session::SessionConfig::ttl_from).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use std::time::Duration;
    /// let b = cache_sdk::Cache::builder().ttl_preset("reports", Duration::ZERO);
    /// assert!(b.build().await.unwrap_err().to_string().contains("reports"));
    /// # }
    /// ```
    pub fn ttl_preset(mut self, name: &str, ttl: Duration) -> Self {
        self.cfg.ttl.define_unchecked(name, ttl);
        self
    }

    /// ± fraction of jitter applied to TTLs (0.0 ..= 0.5; checked by `build()`).
    ///
    /// ```
    /// let b = cache_sdk::Cache::builder().ttl_jitter(0.1);
    /// # let _ = b;
    /// ```
    pub fn ttl_jitter(mut self, fraction: f64) -> Self {
        self.cfg.ttl.set_jitter_unchecked(fraction);
        self
    }

    /// How L1 is kept in step with other instances (default [`Coherence::Auto`]).
    ///
    /// ```
    /// let b = cache_sdk::Cache::builder().coherence(cache_sdk::Coherence::PubSub);
    /// # let _ = b;
    /// ```
    pub fn coherence(mut self, coherence: Coherence) -> Self {
        self.cfg.coherence = coherence;
        self
    }

    /// Restricts what [`Coherence::Tracking`] watches to these key prefixes (see
    /// [`CacheConfig::coherence_prefixes`]); by default every key the SDK writes is
    /// watched.
    ///
    /// ```
    /// let b = cache_sdk::Cache::builder().coherence_prefixes(["cache:", "sess:"]);
    /// # let _ = b;
    /// ```
    pub fn coherence_prefixes<S: Into<String>>(
        mut self,
        prefixes: impl IntoIterator<Item = S>,
    ) -> Self {
        self.cfg.coherence_prefixes = prefixes.into_iter().map(Into::into).collect();
        self
    }

    /// Names and versions the cached type `T`: values of `T` written to L2 carry the tag of
    /// `name@version`, and values read from L2 as `T` must carry it (or be untagged, at
    /// version 1), else they are a miss. Types not named are untagged. Bump the version when
    /// `T` changes in a way older values would not decode correctly; see
    /// [Naming cached types](Cache#naming-cached-types).
    ///
    /// An empty name, a name with `@`, whitespace or control characters, version 0, a type
    /// named twice or two types with one name and version make [`CacheBuilder::build`]
    /// fail with [`BuildError::Config`].
    ///
    /// ```
    /// #[derive(Clone, serde::Serialize, serde::Deserialize)]
    /// struct Product { id: u64, name: String }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_sdk::BuildError> {
    /// let cache = cache_sdk::Cache::builder()
    ///     .value_type::<Product>("product", 2)
    ///     .build()
    ///     .await?;
    /// # let _ = cache;
    /// assert!(cache_sdk::Cache::builder().value_type::<Product>("product", 0).build().await.is_err());
    /// # Ok(()) }
    /// ```
    pub fn value_type<T: CacheValue>(mut self, name: &str, version: u32) -> Self {
        if let Err(e) = TypeTag::named(name, version).and_then(|tag| self.types.register::<T>(tag))
        {
            self.error.get_or_insert(e);
        }
        self
    }

    /// Fail `build()` when Redis is configured but unreachable, instead of falling back.
    ///
    /// ```
    /// let b = cache_sdk::Cache::builder().require_redis(true);
    /// # let _ = b;
    /// ```
    pub fn require_redis(mut self, required: bool) -> Self {
        self.cfg.require_redis = required;
        self
    }

    /// Builds the cache: checks the configuration ([`CacheConfig::validate`], which also
    /// reads the TLS files, once, for both Redis connections), makes one attempt to reach
    /// Redis (bounded by the connect timeout), starts the task that watches Redis, and,
    /// when Redis answered, waits (bounded by the connect timeout as well) for the
    /// invalidation link that keeps L1 coherent.
    /// Must run inside a Tokio runtime.
    ///
    /// # Errors
    /// [`BuildError::Config`] for an invalid configuration; [`BuildError::RedisRequired`]
    /// when `require_redis(true)` and Redis cannot be reached.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let err = cache_sdk::Cache::builder().max_value_size(0).build().await.unwrap_err();
    /// assert!(err.to_string().starts_with("CACHE_MAX_VALUE_BYTES"));
    /// # }
    /// ```
    pub async fn build(self) -> Result<Cache, BuildError> {
        if let Some(e) = self.error {
            return Err(e.into());
        }
        let tls = self.cfg.checked()?;
        Cache::start(self.cfg, tls, self.types, self.load, self.breaker).await
    }

    /// The default [`LoadOptions`](crate::LoadOptions) of
    /// [`Cache::get_or_load_entry`] (fail-safe, loader timeouts, eager refresh); all off
    /// unless set. Per-call options start from them: [`Cache::load_options`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_sdk::BuildError> {
    /// use std::time::Duration;
    /// let cache = cache_sdk::Cache::builder()
    ///     .load_options(cache_sdk::LoadOptions::new().fail_safe(Duration::from_secs(3600)))
    ///     .build()
    ///     .await?;
    /// assert!(cache.load_options().fail_safe_window().is_some());
    /// # Ok(()) }
    /// ```
    pub fn load_options(mut self, options: crate::LoadOptions) -> Self {
        self.load = options;
        self
    }

    /// How the circuit breakers of this cache's origins behave (failure threshold, probe
    /// interval; [`BreakerSettings::new`](crate::BreakerSettings::new) unless set). A
    /// breaker is used only by loads that name an origin
    /// ([`LoadOptions::origin`](crate::LoadOptions::origin), `#[cached(origin = "...")]`).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_sdk::BuildError> {
    /// use std::time::Duration;
    /// use cache_sdk::BreakerSettings;
    /// let cache = cache_sdk::Cache::builder()
    ///     .breaker(BreakerSettings::new().failure_threshold(3).probe_interval(Duration::from_secs(1)))
    ///     .build()
    ///     .await?;
    /// # let _ = cache;
    /// # Ok(()) }
    /// ```
    pub fn breaker(mut self, settings: crate::BreakerSettings) -> Self {
        self.breaker = settings;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_merges_into_the_builder() {
        let b = Cache::builder()
            .namespace("x")
            .l1_capacity(7)
            .redis_url("redis://cache.internal:6379/0")
            .from_vars([("CACHE_L1_TTL_SECS", "5")])
            .unwrap();
        assert_eq!(b.cfg.namespace.as_deref(), Some("x"));
        assert_eq!(b.cfg.l1_capacity, 7);
        assert_eq!(b.cfg.l1_ttl, Duration::from_secs(5));
        assert_eq!(
            b.cfg.redis.as_ref().and_then(|r| r.url.as_deref()),
            Some("redis://cache.internal:6379/0")
        );

        // A variable that is set wins over the builder, and later setters win over it.
        let b = b
            .from_vars([("CACHE_NAMESPACE", "y")])
            .unwrap()
            .l1_capacity(3);
        assert_eq!(b.cfg.namespace.as_deref(), Some("y"));
        assert_eq!(b.cfg.l1_capacity, 3);

        // An empty variable counts as unset.
        let b = b.from_vars([("CACHE_NAMESPACE", "")]).unwrap();
        assert_eq!(b.cfg.namespace.as_deref(), Some("y"));
    }

    /// Runs [`dotenv_child`] in a child process whose current directory holds a `.env`
    /// file (the current directory is process-wide: changing it here would disturb the
    /// tests running beside this one).
    #[test]
    #[cfg(all(feature = "dotenv", feature = "sessions"))]
    fn a_dotenv_file_is_read_only_when_asked() {
        let dir = std::env::temp_dir().join(format!("cache-sdk-dotenv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join(".env"),
            "CACHE_NAMESPACE=from-dotenv\nCACHE_L1_CAPACITY=11\nSESSION_SECRET=dotenv-secret\n",
        )
        .unwrap();
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "builder::tests::dotenv_child", "--ignored"])
            .current_dir(&dir)
            .env("CACHE_SDK_DOTENV_CHILD", "1")
            .env("CACHE_L1_CAPACITY", "22")
            .env_remove("CACHE_NAMESPACE")
            .env_remove("SESSION_SECRET")
            .env_remove("APP_ENV")
            .env_remove("NODE_ENV")
            .output()
            .unwrap();
        std::fs::remove_dir_all(&dir).ok();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("1 passed"),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The child of [`a_dotenv_file_is_read_only_when_asked`].
    #[test]
    #[cfg(all(feature = "dotenv", feature = "sessions"))]
    #[ignore = "run by a_dotenv_file_is_read_only_when_asked in a directory with a .env file"]
    fn dotenv_child() {
        if std::env::var_os("CACHE_SDK_DOTENV_CHILD").is_none() {
            return;
        }
        use crate::session::SessionConfig;

        let b = Cache::builder().namespace("code").from_env().unwrap();
        assert_eq!(
            b.cfg.namespace.as_deref(),
            Some("code"),
            "no .env without asking"
        );
        assert_eq!(b.cfg.l1_capacity, 22);
        assert_eq!(CacheConfig::from_env().unwrap().namespace, None);
        assert!(SessionConfig::from_env().is_err(), "no secret without .env");

        let b = Cache::builder()
            .namespace("code")
            .from_env_and_dotenv()
            .unwrap();
        assert_eq!(b.cfg.namespace.as_deref(), Some("from-dotenv"));
        // The process environment wins over the file.
        assert_eq!(b.cfg.l1_capacity, 22);
        let cfg = CacheConfig::from_env_and_dotenv().unwrap();
        assert_eq!(cfg.namespace.as_deref(), Some("from-dotenv"));
        assert!(SessionConfig::from_env_and_dotenv().is_ok());
    }

    #[tokio::test]
    async fn build_reports_what_the_setters_recorded() {
        let err = Cache::builder()
            .ttl_jitter(0.9)
            .build()
            .await
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("CACHE_TTL_JITTER"), "{err}");
        let err = Cache::builder()
            .timeout(Duration::ZERO)
            .build()
            .await
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("REDIS_TIMEOUT_MS"), "{err}");
        let err = Cache::builder()
            .coherence_prefixes(["cache:", "cache:p"])
            .build()
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("overlap"), "{err}");
    }
}
