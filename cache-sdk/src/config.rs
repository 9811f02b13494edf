//! Configuration, from the environment (and a `.env` file) or from code.
//!
//! # When Redis is used
//!
//! - `REDIS_ENABLED=false` (or `0`, `no`, `off`): never, everything runs in memory.
//! - `REDIS_ENABLED=true`: always, at `REDIS_URL`, or at `REDIS_HOST`/`REDIS_PORT`
//!   (`localhost:6379` by default).
//! - `REDIS_ENABLED` unset: when `REDIS_URL`, `REDIS_HOST` or `REDIS_CLUSTER_NODES` is set.
//!
//! Either way, a Redis that cannot be reached means the in-memory fallback, not an error.
//!
//! # Redis Cluster
//!
//! `REDIS_CLUSTER_NODES` makes the cache a Redis Cluster client: the nodes are seeds (one
//! live node is enough; the client learns the others). Credentials, TLS and the CA and
//! client-certificate files apply to every node; they come from `REDIS_USERNAME`,
//! `REDIS_PASSWORD` and `REDIS_TLS`, or from the scheme and user part of `REDIS_URL` when it
//! is set (its host is then ignored). See `docs/cluster-tls.md` for how multi-key operations
//! and key listing work on a cluster.
//!
//! # TLS
//!
//! `REDIS_TLS=true` or a `rediss://` URL connects with TLS (rustls with the *ring* crypto
//! provider), checking the server's certificate against the system's roots, or against
//! `REDIS_TLS_CA_FILE` when set; the certificate must name the host connected to.
//! A file that cannot be read or does not hold PEM of the right kind is a [`ConfigError`]
//! naming the variable.
//!
//! # Variables
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `REDIS_URL` | `redis://[user:pass@]host:port/db` or `rediss://…` (TLS); wins over the parts below | — |
//! | `REDIS_HOST` / `REDIS_PORT` | server address | `localhost` / `6379` |
//! | `REDIS_USERNAME` / `REDIS_PASSWORD` | ACL user and password (empty = none); also used with a `REDIS_URL` that has no credentials | none |
//! | `REDIS_DB` | database number, 0–15 (a cluster has only 0: any other is an error) | `0` |
//! | `REDIS_TLS` | `true` to use TLS (rustls, the system's root certificates) | `false` |
//! | `REDIS_TLS_CA_FILE` | PEM file of the CA(s) to trust instead of the system's roots | — |
//! | `REDIS_TLS_CERT_FILE` / `REDIS_TLS_KEY_FILE` | PEM client certificate (chain) and its private key, for servers that ask for one; both or neither | — |
//! | `REDIS_ENABLED` | see above | — |
//! | `REDIS_CLUSTER_NODES` | `host1:6379,host2:6379,…`: seed nodes of a Redis Cluster | — |
//! | `REDIS_TIMEOUT_MS` | bound on every Redis call | `100` |
//! | `REDIS_CONNECT_TIMEOUT_MS` | bound on connecting | `500` |
//! | `CACHE_NAMESPACE` | prefix put before every Redis key (`<ns>:`) | none |
//! | `CACHE_L1_CAPACITY` | L1 entries (0 disables L1) | `10000` |
//! | `CACHE_L1_TTL_SECS` | the longest an entry stays in L1 | `30` |
//! | `CACHE_CODEC` | `bincode` or `json` | `bincode` |
//! | `CACHE_MAX_VALUE_BYTES` | the largest encoded value accepted | `4194304` |
//! | `CACHE_FALLBACK_MAX_BYTES` | memory the in-memory fallback may use | `67108864` |
//! | `CACHE_TTL_<NAME>` | seconds for a TTL preset (`API`, `SESSION`, …) | see [`Ttl`](crate::Ttl) |
//! | `CACHE_TTL_JITTER` | ± fraction applied to TTLs | `0` |
//! | `CACHE_COHERENCE` | `auto`, `tracking`, `pubsub` or `off` (see [`Coherence`]) | `auto` |
//! | `CACHE_COHERENCE_PREFIXES` | key prefixes tracked when there is no namespace, comma-separated | `cache:,sess:,user:` |

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::codec::Codec;
use crate::error::ConfigError;
use crate::tier::coherence::Coherence;
use crate::ttl::TtlPresets;

/// Where and how to reach Redis.
///
/// `Debug` never shows the password, not even inside a URL.
///
/// ```
/// use cache_sdk::RedisConfig;
/// let mut r = RedisConfig::host("cache.internal", 6380);
/// r.password = Some("s3cret".into());
/// r.db = 2;
/// assert_eq!(r.connection_url(), "redis://:s3cret@cache.internal:6380/2");
/// assert!(!format!("{r:?}").contains("s3cret"));
/// ```
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisConfig {
    /// A full URL; when set, `host`, `port`, `db` and `tls` are ignored (the URL says them),
    /// and `username`/`password` are used only when the URL has no credentials.
    pub url: Option<String>,
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// ACL user name.
    pub username: Option<String>,
    /// Password.
    pub password: Option<String>,
    /// Database number (0–15).
    pub db: u8,
    /// Connect with TLS.
    pub tls: bool,
    /// PEM file of the CA certificate(s) that signed the server's certificate; `None`
    /// trusts the system's roots.
    pub tls_ca_file: Option<PathBuf>,
    /// PEM file of the client certificate (chain), sent when the server asks for one.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM file of the client certificate's private key.
    pub tls_key_file: Option<PathBuf>,
    /// Redis Cluster seed nodes (`host:port`); when not empty the cache is a cluster client.
    pub cluster_nodes: Vec<String>,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self::host("localhost", 6379)
    }
}

impl RedisConfig {
    /// A single server at `host:port`.
    #[must_use]
    pub fn host(host: impl Into<String>, port: u16) -> Self {
        Self {
            url: None,
            host: host.into(),
            port,
            username: None,
            password: None,
            db: 0,
            tls: false,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            cluster_nodes: Vec::new(),
        }
    }

    /// A Redis Cluster, reached through these seed nodes (`host:port`).
    ///
    /// ```
    /// let r = cache_sdk::RedisConfig::cluster(["10.0.0.1:6379", "10.0.0.2:6379"]);
    /// assert!(r.is_cluster());
    /// assert_eq!(r.display_address(), "redis cluster 10.0.0.1:6379,10.0.0.2:6379");
    /// ```
    #[must_use]
    pub fn cluster<S: Into<String>>(nodes: impl IntoIterator<Item = S>) -> Self {
        Self {
            cluster_nodes: nodes.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    /// Whether this is a Redis Cluster configuration.
    ///
    /// ```
    /// assert!(!cache_sdk::RedisConfig::host("cache.internal", 6379).is_cluster());
    /// ```
    #[must_use]
    pub fn is_cluster(&self) -> bool {
        !self.cluster_nodes.is_empty()
    }

    /// Whether connections use TLS (`tls`, or a `rediss://` URL).
    ///
    /// ```
    /// use cache_sdk::RedisConfig;
    /// assert!(RedisConfig::url("rediss://cache.internal:6380").uses_tls());
    /// assert!(RedisConfig::host("cache.internal", 6380).with_tls(true).uses_tls());
    /// assert!(!RedisConfig::host("cache.internal", 6379).uses_tls());
    /// ```
    #[must_use]
    pub fn uses_tls(&self) -> bool {
        match &self.url {
            Some(url) => url
                .get(..9)
                .is_some_and(|s| s.eq_ignore_ascii_case("rediss://")),
            None => self.tls,
        }
    }

    /// Turns TLS on or off (ignored when a URL is set: its scheme, `rediss://`, decides).
    ///
    /// ```
    /// let r = cache_sdk::RedisConfig::host("cache.internal", 6380).with_tls(true);
    /// assert_eq!(r.connection_url(), "rediss://cache.internal:6380/0");
    /// ```
    #[must_use]
    pub fn with_tls(mut self, tls: bool) -> Self {
        self.tls = tls;
        self
    }

    /// Trusts the CA certificate(s) in this PEM file instead of the system's roots
    /// (`REDIS_TLS_CA_FILE`). TLS must be on.
    ///
    /// ```
    /// let r = cache_sdk::RedisConfig::url("rediss://cache.internal:6380")
    ///     .with_tls_ca_file("/etc/redis/ca.pem");
    /// assert!(r.tls_ca_file.is_some());
    /// ```
    #[must_use]
    pub fn with_tls_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls_ca_file = Some(path.into());
        self
    }

    /// Presents this client certificate (PEM chain) and private key (PEM) when the server
    /// asks for one (`REDIS_TLS_CERT_FILE`, `REDIS_TLS_KEY_FILE`). TLS must be on.
    ///
    /// ```
    /// let r = cache_sdk::RedisConfig::url("rediss://cache.internal:6380")
    ///     .with_client_cert("/etc/redis/client.pem", "/etc/redis/client.key");
    /// assert!(r.tls_cert_file.is_some() && r.tls_key_file.is_some());
    /// ```
    #[must_use]
    pub fn with_client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.tls_cert_file = Some(cert.into());
        self.tls_key_file = Some(key.into());
        self
    }

    /// Authenticates as this ACL user (`REDIS_USERNAME`, `REDIS_PASSWORD`); `None` as the
    /// user name means the `default` user (`AUTH password`).
    ///
    /// ```
    /// let r = cache_sdk::RedisConfig::host("cache.internal", 6379).with_auth(Some("app"), "s3cret");
    /// assert_eq!(r.connection_url(), "redis://app:s3cret@cache.internal:6379/0");
    /// assert!(!format!("{r:?}").contains("s3cret"));
    /// ```
    #[must_use]
    pub fn with_auth(mut self, username: Option<&str>, password: impl Into<String>) -> Self {
        self.username = username.map(str::to_owned);
        self.password = Some(password.into()).filter(|p| !p.is_empty());
        self
    }

    /// Selects a database (0–15) on a single server; a cluster has only database 0. Ignored
    /// when a URL is set (its path, `/db`, decides).
    ///
    /// ```
    /// let r = cache_sdk::RedisConfig::host("cache.internal", 6379).with_db(4);
    /// assert_eq!(r.connection_url(), "redis://cache.internal:6379/4");
    /// ```
    #[must_use]
    pub fn with_db(mut self, db: u8) -> Self {
        self.db = db;
        self
    }

    /// A server given by URL (`redis://…`, `rediss://…`).
    ///
    /// ```
    /// let r = cache_sdk::RedisConfig::url("redis://127.0.0.1:6379/0");
    /// assert_eq!(r.connection_url(), "redis://127.0.0.1:6379/0");
    /// ```
    #[must_use]
    pub fn url(url: impl Into<String>) -> Self {
        Self {
            url: Some(url.into()),
            ..Self::default()
        }
    }

    /// The URL the client connects to. It holds the password: do not log it.
    ///
    /// A URL without credentials takes `username` and `password`:
    ///
    /// ```
    /// let r = cache_sdk::RedisConfig::url("rediss://cache.internal:6380/0")
    ///     .with_auth(Some("app"), "s3cret");
    /// assert_eq!(r.connection_url(), "rediss://app:s3cret@cache.internal:6380/0");
    /// ```
    #[must_use]
    pub fn connection_url(&self) -> String {
        let auth = match (&self.username, &self.password) {
            (Some(u), Some(p)) => format!("{}:{}@", encode(u), encode(p)),
            (Some(u), None) => format!("{}@", encode(u)),
            (None, Some(p)) => format!(":{}@", encode(p)),
            (None, None) => String::new(),
        };
        if let Some(url) = &self.url {
            if let Some((scheme, rest)) = url.split_once("://") {
                let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
                if !auth.is_empty() && !authority.contains('@') {
                    return format!("{scheme}://{auth}{rest}");
                }
            }
            return url.clone();
        }
        let scheme = if self.tls { "rediss" } else { "redis" };
        let host = if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!("{scheme}://{auth}{host}:{}/{}", self.port, self.db)
    }

    /// The address for logs: scheme, host, port and db, without credentials; for a cluster,
    /// its seed nodes.
    #[must_use]
    pub fn display_address(&self) -> String {
        if self.is_cluster() {
            let scheme = if self.uses_tls() { "rediss" } else { "redis" };
            return format!("{scheme} cluster {}", self.cluster_nodes.join(","));
        }
        redact_url(&self.connection_url())
    }

    /// The URL of one cluster node: the scheme and credentials of
    /// [`connection_url`](Self::connection_url) with this node's `host:port`, no database. It holds the
    /// password: do not log it.
    pub(crate) fn node_url(&self, node: &str) -> String {
        let url = self.connection_url();
        let (scheme, rest) = url.split_once("://").unwrap_or(("redis", url.as_str()));
        let auth = match rest.rfind('@') {
            Some(at) => &rest[..=at],
            None => "",
        };
        format!("{scheme}://{auth}{node}")
    }

    /// Checks what can be checked without a server: TLS files with TLS off, a client
    /// certificate without its key, a database other than 0 on a cluster.
    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        if self.is_cluster() {
            let db = match &self.url {
                Some(url) => url_db(url),
                None => i64::from(self.db),
            };
            if db != 0 {
                return Err(ConfigError::Invalid {
                    name: "REDIS_DB",
                    value: db.to_string(),
                    reason: "a Redis Cluster has only database 0; remove REDIS_DB (or the /db \
                             part of REDIS_URL) when REDIS_CLUSTER_NODES is set"
                        .into(),
                });
            }
        }
        let files = [
            ("REDIS_TLS_CA_FILE", &self.tls_ca_file),
            ("REDIS_TLS_CERT_FILE", &self.tls_cert_file),
            ("REDIS_TLS_KEY_FILE", &self.tls_key_file),
        ];
        if !self.uses_tls() {
            if let Some((name, Some(path))) = files.iter().find(|(_, p)| p.is_some()) {
                return Err(ConfigError::Invalid {
                    name,
                    value: path.display().to_string(),
                    reason: "TLS is off: set REDIS_TLS=true or use a rediss:// URL".into(),
                });
            }
        }
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), None) => Err(ConfigError::Invalid {
                name: "REDIS_TLS_KEY_FILE",
                value: String::new(),
                reason: format!(
                    "missing: REDIS_TLS_CERT_FILE ({}) needs its private key",
                    cert.display()
                ),
            }),
            (None, Some(key)) => Err(ConfigError::Invalid {
                name: "REDIS_TLS_CERT_FILE",
                value: String::new(),
                reason: format!(
                    "missing: REDIS_TLS_KEY_FILE ({}) needs its certificate",
                    key.display()
                ),
            }),
            _ => Ok(()),
        }
    }
}

/// The database number in a URL's path (`redis://h:1/3` is 3); 0 when absent or unreadable
/// (the URL itself is checked elsewhere).
fn url_db(url: &str) -> i64 {
    use redis::IntoConnectionInfo;
    url.into_connection_info()
        .map(|info| info.redis_settings().db())
        .unwrap_or(0)
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("address", &self.display_address())
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "REDACTED"))
            .field("tls", &self.uses_tls())
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_cert_file", &self.tls_cert_file)
            .field("tls_key_file", &self.tls_key_file)
            .field("cluster_nodes", &self.cluster_nodes)
            .finish()
    }
}

/// Removes the user-info part of a URL.
pub(crate) fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}REDACTED@{}", &url[..s + 3], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Everything a [`Cache`](crate::Cache) needs. Build it with [`CacheConfig::from_env`], or
/// start from [`CacheConfig::default`] (Redis disabled) and set fields, or use the
/// [`CacheBuilder`](crate::CacheBuilder).
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
    /// TTL presets.
    pub ttl: TtlPresets,
    /// Fail `build()` when Redis is configured but cannot be reached.
    pub require_redis: bool,
    /// How L1 is kept in step across app instances when Redis is configured (see
    /// [`Coherence`]; `docs/coherence.md` has the design and the staleness bound).
    pub coherence: Coherence,
    /// The key prefixes whose changes evict L1 under [`Coherence::Tracking`] when there is
    /// no [`namespace`](Self::namespace) (with one, the whole namespace is tracked). Keys
    /// outside them stay in L1 for up to [`l1_ttl`](Self::l1_ttl) after a change elsewhere.
    pub coherence_prefixes: Vec<String>,
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
            coherence_prefixes: vec!["cache:".into(), "sess:".into(), "user:".into()],
        }
    }
}

/// The largest value size that may be configured.
pub const MAX_VALUE_SIZE_LIMIT: usize = 64 * 1024 * 1024;

impl CacheConfig {
    /// Reads the configuration from the process environment, after a `.env` file in the
    /// current directory or its parents (variables already set win over the file).
    ///
    /// # Errors
    /// [`ConfigError`] naming the first variable with a bad value, or the `.env` file when it
    /// cannot be parsed.
    ///
    /// ```
    /// let cfg = cache_sdk::CacheConfig::from_env().unwrap();
    /// # let _ = cfg;
    /// ```
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_map(&env_with_dotenv()?)
    }

    /// Reads the configuration from the given variables only (no process environment, no
    /// `.env`); useful in tests.
    ///
    /// # Errors
    /// As [`CacheConfig::from_env`].
    pub fn from_vars<K: Into<String>, V: Into<String>>(
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self, ConfigError> {
        let map = vars
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        Self::from_map(&map)
    }

    fn from_map(vars: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let get = |name: &str| vars.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
        let mut cfg = CacheConfig::default();

        let enabled = get("REDIS_ENABLED")
            .map(|v| parse_bool("REDIS_ENABLED", v))
            .transpose()?;
        let cluster_nodes = get("REDIS_CLUSTER_NODES")
            .map(parse_nodes)
            .transpose()?
            .unwrap_or_default();
        let addressed =
            get("REDIS_URL").is_some() || get("REDIS_HOST").is_some() || !cluster_nodes.is_empty();
        if enabled.unwrap_or(addressed) {
            let mut r = RedisConfig::host(
                get("REDIS_HOST").unwrap_or("localhost"),
                get("REDIS_PORT")
                    .map(|v| {
                        parse_num::<u16>("REDIS_PORT", v, 1, 65535, "not a port number (1-65535)")
                    })
                    .transpose()?
                    .unwrap_or(6379),
            );
            r.username = get("REDIS_USERNAME").map(str::to_owned);
            // Passwords may legitimately start or end with spaces: no trimming.
            r.password = vars
                .get("REDIS_PASSWORD")
                .filter(|p| !p.is_empty())
                .cloned();
            r.db = get("REDIS_DB")
                .map(|v| parse_num::<u8>("REDIS_DB", v, 0, 15, "not a database number (0-15)"))
                .transpose()?
                .unwrap_or(0);
            r.tls = get("REDIS_TLS")
                .map(|v| parse_bool("REDIS_TLS", v))
                .transpose()?
                .unwrap_or(false);
            if let Some(url) = get("REDIS_URL") {
                check_url(url)?;
                r.url = Some(url.to_owned());
            }
            r.cluster_nodes = cluster_nodes;
            let path = |name| get(name).map(PathBuf::from);
            r.tls_ca_file = path("REDIS_TLS_CA_FILE");
            r.tls_cert_file = path("REDIS_TLS_CERT_FILE");
            r.tls_key_file = path("REDIS_TLS_KEY_FILE");
            r.check()?;
            // Reads the files now, so that a bad one is reported with the variable's name
            // before anything connects.
            crate::tls::certificates(&r)?;
            cfg.redis = Some(r);
        }

        let ms = |name: &'static str, v: &str| {
            parse_num::<u64>(
                name,
                v,
                1,
                600_000,
                "not a number of milliseconds (1-600000)",
            )
            .map(Duration::from_millis)
        };
        if let Some(v) = get("REDIS_TIMEOUT_MS") {
            cfg.timeout = ms("REDIS_TIMEOUT_MS", v)?;
        }
        if let Some(v) = get("REDIS_CONNECT_TIMEOUT_MS") {
            cfg.connect_timeout = ms("REDIS_CONNECT_TIMEOUT_MS", v)?;
        }
        if let Some(v) = get("CACHE_NAMESPACE") {
            if v.chars().any(char::is_control) || v.contains(['*', '?', '[', ']', '\\']) {
                return Err(invalid(
                    "CACHE_NAMESPACE",
                    v,
                    "control or glob characters are not allowed",
                ));
            }
            cfg.namespace = Some(v.to_owned());
        }
        if let Some(v) = get("CACHE_L1_CAPACITY") {
            cfg.l1_capacity = parse_num("CACHE_L1_CAPACITY", v, 0, u64::MAX, "not a whole number")?;
        }
        if let Some(v) = get("CACHE_L1_TTL_SECS") {
            cfg.l1_ttl = Duration::from_secs(parse_num(
                "CACHE_L1_TTL_SECS",
                v,
                0,
                31_536_000,
                "not a number of seconds (0-31536000)",
            )?);
        }
        if let Some(v) = get("CACHE_CODEC") {
            cfg.codec = match v.to_ascii_lowercase().as_str() {
                "bincode" => Codec::Bincode,
                "json" => Codec::Json,
                _ => return Err(invalid("CACHE_CODEC", v, "expected `bincode` or `json`")),
            };
        }
        if let Some(v) = get("CACHE_MAX_VALUE_BYTES") {
            cfg.max_value_size = parse_num(
                "CACHE_MAX_VALUE_BYTES",
                v,
                1,
                MAX_VALUE_SIZE_LIMIT,
                "not a size in bytes (1-67108864)",
            )?;
        }
        if let Some(v) = get("CACHE_FALLBACK_MAX_BYTES") {
            cfg.fallback_max_bytes = parse_num(
                "CACHE_FALLBACK_MAX_BYTES",
                v,
                1024,
                u64::MAX,
                "not a size in bytes (>= 1024)",
            )?;
        }
        if let Some(v) = get("CACHE_COHERENCE") {
            cfg.coherence = v
                .parse()
                .map_err(|e: String| invalid("CACHE_COHERENCE", v, &e))?;
        }
        if let Some(v) = get("CACHE_COHERENCE_PREFIXES") {
            let prefixes: Vec<String> = v
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect();
            if prefixes.is_empty() || prefixes.iter().any(|p| p.chars().any(char::is_control)) {
                return Err(invalid(
                    "CACHE_COHERENCE_PREFIXES",
                    v,
                    "expected comma-separated key prefixes such as `cache:,sess:`",
                ));
            }
            cfg.coherence_prefixes = prefixes;
        }
        cfg.ttl.apply_env(
            vars.iter()
                .filter(|(k, _)| k.starts_with("CACHE_TTL_"))
                .map(|(k, v)| (k.as_str(), v.as_str())),
        )?;
        Ok(cfg)
    }
}

/// The process environment over the `.env` file's variables.
pub(crate) fn env_with_dotenv() -> Result<HashMap<String, String>, ConfigError> {
    let mut vars = HashMap::new();
    match dotenvy::dotenv_iter() {
        Ok(iter) => {
            for item in iter {
                let (k, v) = item.map_err(|e| ConfigError::DotEnv(e.to_string()))?;
                vars.insert(k, v);
            }
        }
        Err(e) if e.not_found() => {}
        Err(e) => return Err(ConfigError::DotEnv(e.to_string())),
    }
    vars.extend(
        std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
    );
    Ok(vars)
}

pub(crate) fn invalid(name: &'static str, value: &str, reason: &str) -> ConfigError {
    ConfigError::Invalid {
        name,
        value: value.to_owned(),
        reason: reason.to_owned(),
    }
}

/// Parses `true/false`, `1/0`, `yes/no`, `on/off`.
pub(crate) fn parse_bool(name: &'static str, v: &str) -> Result<bool, ConfigError> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(invalid(name, v, "expected true or false")),
    }
}

pub(crate) fn parse_num<N: std::str::FromStr + PartialOrd + Copy>(
    name: &'static str,
    v: &str,
    min: N,
    max: N,
    reason: &str,
) -> Result<N, ConfigError> {
    match v.parse::<N>() {
        Ok(n) if n >= min && n <= max => Ok(n),
        _ => Err(invalid(name, v, reason)),
    }
}

fn parse_nodes(v: &str) -> Result<Vec<String>, ConfigError> {
    v.split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(|node| {
            let ok = node
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if ok {
                Ok(node.to_owned())
            } else {
                Err(invalid(
                    "REDIS_CLUSTER_NODES",
                    v,
                    &format!("`{node}` is not host:port"),
                ))
            }
        })
        .collect()
}

fn check_url(url: &str) -> Result<(), ConfigError> {
    redis::Client::open(url)
        .map(drop)
        .map_err(|e| ConfigError::Invalid {
            name: "REDIS_URL",
            value: redact_url(url),
            reason: format!("not a Redis URL ({})", e.category()),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_is_off_by_default_and_on_when_addressed() {
        assert!(CacheConfig::from_vars(Vec::<(String, String)>::new())
            .unwrap()
            .redis
            .is_none());
        assert!(CacheConfig::from_vars([("REDIS_ENABLED", "true")])
            .unwrap()
            .redis
            .is_some());
        assert!(
            CacheConfig::from_vars([("REDIS_URL", "redis://h:1"), ("REDIS_ENABLED", "false")])
                .unwrap()
                .redis
                .is_none()
        );
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
            ("CACHE_CODEC", "xml"),
            ("CACHE_COHERENCE", "sometimes"),
            ("CACHE_COHERENCE_PREFIXES", " , "),
        ] {
            let err = CacheConfig::from_vars([("REDIS_HOST", "h"), (k, v)]).unwrap_err();
            assert!(err.to_string().contains(k), "{err}");
        }
    }

    #[test]
    fn url_errors_never_show_the_password() {
        let err = CacheConfig::from_vars([("REDIS_URL", "http://user:hunter2@host")]).unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(
            text.contains("REDIS_URL") && !text.contains("hunter2"),
            "{text}"
        );
    }

    #[test]
    fn credentials_are_url_encoded_and_redacted() {
        let cfg = CacheConfig::from_vars([
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
    fn tls_files_need_tls_and_each_other_and_must_be_readable() {
        let with = |extra: &[(&str, &str)]| {
            let mut vars = vec![("REDIS_HOST", "h")];
            vars.extend_from_slice(extra);
            CacheConfig::from_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
        };
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
    fn a_cluster_has_only_database_0() {
        let err = CacheConfig::from_vars([("REDIS_CLUSTER_NODES", "a:1,b:2"), ("REDIS_DB", "1")])
            .unwrap_err();
        assert!(err.to_string().starts_with("REDIS_DB=\"1\""), "{err}");
        let err = CacheConfig::from_vars([
            ("REDIS_CLUSTER_NODES", "a:1"),
            ("REDIS_URL", "redis://a:1/2"),
        ])
        .unwrap_err();
        assert!(err.to_string().contains("REDIS_DB"), "{err}");
        let cfg = CacheConfig::from_vars([("REDIS_CLUSTER_NODES", "a:1, b:2")]).unwrap();
        let r = cfg.redis.unwrap();
        assert!(r.is_cluster());
        assert_eq!(r.cluster_nodes, ["a:1", "b:2"]);
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
        let cfg = CacheConfig::from_vars([
            ("REDIS_URL", "redis://cache:6379/1"),
            ("REDIS_USERNAME", "app"),
            ("REDIS_PASSWORD", "pw"),
        ])
        .unwrap();
        assert_eq!(
            cfg.redis.unwrap().connection_url(),
            "redis://app:pw@cache:6379/1"
        );
        let cfg = CacheConfig::from_vars([
            ("REDIS_URL", "redis://u:own@cache:6379"),
            ("REDIS_PASSWORD", "pw"),
        ])
        .unwrap();
        assert_eq!(
            cfg.redis.unwrap().connection_url(),
            "redis://u:own@cache:6379"
        );
    }
}
