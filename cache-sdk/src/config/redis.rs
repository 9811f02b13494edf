//! [`RedisConfig`]: where and how to reach Redis (one server, a cluster, or a master found
//! through Sentinel; credentials, TLS files, database), with the checks that need no server.

use std::fmt;
use std::path::PathBuf;

use super::env::{invalid, EnvReader};
use super::sentinel::{
    check_host_port, SentinelConfig, SENTINELS, SENTINEL_MASTER, SENTINEL_PASSWORD,
    SENTINEL_USERNAME,
};
use crate::error::ConfigError;

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
    /// Redis Sentinel: when set, the master is found through these sentinels (and followed
    /// across failovers); `host`, `port` and the URL's host are then unused, while the
    /// credentials, database and TLS settings above apply to the master.
    pub sentinel: Option<SentinelConfig>,
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
            sentinel: None,
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

    /// The master that the sentinels at `nodes` (`host:port`) call `master_name`, found
    /// through them at every (re)connection, so the cache follows a failover by itself.
    /// Credentials, database and TLS for the master are set as for one server
    /// ([`with_auth`](Self::with_auth), [`with_db`](Self::with_db),
    /// [`with_tls`](Self::with_tls)); the sentinels' own credentials with
    /// [`with_sentinel_auth`](Self::with_sentinel_auth).
    ///
    /// ```
    /// let r = cache_sdk::RedisConfig::sentinel(["10.0.0.1:26379", "10.0.0.2:26379"], "cache")
    ///     .with_auth(None, "s3cret")
    ///     .with_db(2);
    /// assert!(r.is_sentinel());
    /// assert_eq!(
    ///     r.display_address(),
    ///     "redis sentinel master cache via 10.0.0.1:26379,10.0.0.2:26379 db 2"
    /// );
    /// ```
    #[must_use]
    pub fn sentinel<S: Into<String>>(
        nodes: impl IntoIterator<Item = S>,
        master_name: impl Into<String>,
    ) -> Self {
        Self {
            sentinel: Some(SentinelConfig::new(nodes, master_name)),
            ..Self::default()
        }
    }

    /// Authenticates to the sentinels (not the data nodes) as this user (`None`: the
    /// `default` user) with this password (`REDIS_SENTINEL_USERNAME`,
    /// `REDIS_SENTINEL_PASSWORD`). Without a Sentinel setup it does nothing.
    ///
    /// ```
    /// let r = cache_sdk::RedisConfig::sentinel(["10.0.0.1:26379"], "cache")
    ///     .with_sentinel_auth(None, "sentinel-secret");
    /// assert!(!format!("{r:?}").contains("sentinel-secret"));
    /// ```
    #[must_use]
    pub fn with_sentinel_auth(
        mut self,
        username: Option<&str>,
        password: impl Into<String>,
    ) -> Self {
        self.sentinel = self.sentinel.map(|s| s.with_auth(username, password));
        self
    }

    /// Whether the master is found through Redis Sentinel.
    ///
    /// ```
    /// assert!(!cache_sdk::RedisConfig::host("cache.internal", 6379).is_sentinel());
    /// ```
    #[must_use]
    pub fn is_sentinel(&self) -> bool {
        self.sentinel.is_some()
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
    /// its seed nodes; for Sentinel, the master's name, the sentinels and the db.
    #[must_use]
    pub fn display_address(&self) -> String {
        let scheme = if self.uses_tls() { "rediss" } else { "redis" };
        if let Some(s) = &self.sentinel {
            return format!(
                "{scheme} sentinel master {} via {} db {}",
                s.master_name,
                s.nodes.join(","),
                self.database()
            );
        }
        if self.is_cluster() {
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

    /// The database: the URL's when a URL is set, else `db`.
    fn database(&self) -> i64 {
        match &self.url {
            Some(url) => url_db(url),
            None => i64::from(self.db),
        }
    }

    /// The URL of the master at `host:port` found through Sentinel: the scheme and
    /// credentials of [`connection_url`](Self::connection_url), this address, the database.
    /// It holds the password: do not log it.
    pub(crate) fn master_url(&self, host: &str, port: u16) -> String {
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        format!(
            "{}/{}",
            self.node_url(&format!("{host}:{port}")),
            self.database()
        )
    }

    /// The URL of one sentinel: the scheme of the data nodes (TLS for both or neither) and
    /// the sentinels' own credentials. It holds their password: do not log it.
    pub(crate) fn sentinel_url(&self, node: &str) -> String {
        let scheme = if self.uses_tls() { "rediss" } else { "redis" };
        let (user, password) = self.sentinel.as_ref().map_or((None, None), |s| {
            (s.username.as_deref(), s.password.as_deref())
        });
        let auth = match (user, password) {
            (Some(u), Some(p)) => format!("{}:{}@", encode(u), encode(p)),
            (Some(u), None) => format!("{}@", encode(u)),
            (None, Some(p)) => format!(":{}@", encode(p)),
            (None, None) => String::new(),
        };
        format!("{scheme}://{auth}{node}")
    }

    /// The client certificate and key files, when both are set.
    pub(crate) fn client_cert_files(&self) -> Option<(&std::path::Path, &std::path::Path)> {
        Some((
            self.tls_cert_file.as_deref()?,
            self.tls_key_file.as_deref()?,
        ))
    }

    /// Checks what can be checked without a server: TLS files with TLS off, a client
    /// certificate without its key, a database other than 0 on a cluster.
    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        if let Some(s) = &self.sentinel {
            if self.is_cluster() {
                return Err(ConfigError::Invalid {
                    name: SENTINELS,
                    value: s.nodes.join(","),
                    reason: "REDIS_CLUSTER_NODES is set too: a cache talks to a Redis Cluster or \
                             to a master found through Sentinel, not both; unset one"
                        .into(),
                });
            }
            s.check()?;
        }
        if self.is_cluster() {
            let db = self.database();
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

impl RedisConfig {
    /// `current` with the `REDIS_*` variables that are set merged in (the rules are in the
    /// [`CacheConfig`](super::CacheConfig) docs): `REDIS_ENABLED=false` removes Redis; an address
    /// variable (`REDIS_URL`, `REDIS_HOST`, `REDIS_CLUSTER_NODES`, `REDIS_SENTINELS`) replaces
    /// the whole address (a Sentinel setup keeps its master name and credentials unless
    /// their variables say otherwise); every other variable overrides its field. Without `current`, Redis is
    /// configured only when `REDIS_ENABLED=true` or an address variable is set.
    pub(super) fn merge_env(
        current: Option<Self>,
        env: &EnvReader,
    ) -> Result<Option<Self>, ConfigError> {
        let enabled = env.bool("REDIS_ENABLED")?;
        let nodes = env
            .str("REDIS_CLUSTER_NODES")
            .map(|v| parse_nodes("REDIS_CLUSTER_NODES", v))
            .transpose()?;
        let sentinels = env
            .str(SENTINELS)
            .map(|v| parse_nodes(SENTINELS, v))
            .transpose()?;
        let url = env.str("REDIS_URL");
        let addressed =
            url.is_some() || env.is_set("REDIS_HOST") || nodes.is_some() || sentinels.is_some();
        let mut r = match (enabled, current) {
            (Some(false), _) => return Ok(None),
            (_, Some(r)) => r,
            (Some(true), None) => Self::default(),
            (None, None) if addressed => Self::default(),
            (None, None) => return Ok(None),
        };
        if addressed {
            let fresh = Self::default();
            if let Some(url) = url {
                check_url(url)?;
            }
            r.url = url.map(str::to_owned);
            r.host = env.str("REDIS_HOST").unwrap_or(&fresh.host).to_owned();
            r.port = fresh.port;
            r.cluster_nodes = nodes.unwrap_or_default();
            let kept = r.sentinel.take();
            r.sentinel = sentinels.map(|nodes| SentinelConfig {
                nodes,
                ..kept.unwrap_or_else(|| SentinelConfig::new(Vec::<String>::new(), ""))
            });
        }
        merge_sentinel_env(&mut r, env)?;
        if let Some(port) = env.number("REDIS_PORT", 1..=65535, "a port number")? {
            r.port = port;
        }
        if let Some(user) = env.str("REDIS_USERNAME") {
            r.username = Some(user.to_owned());
        }
        // Passwords may legitimately start or end with spaces: no trimming.
        if let Some(password) = env.raw("REDIS_PASSWORD") {
            r.password = Some(password.to_owned());
        }
        if let Some(db) = env.number("REDIS_DB", 0..=15, "a database number")? {
            r.db = db;
        }
        if let Some(tls) = env.bool("REDIS_TLS")? {
            r.tls = tls;
        }
        let path = |name| env.str(name).map(PathBuf::from);
        if let Some(p) = path("REDIS_TLS_CA_FILE") {
            r.tls_ca_file = Some(p);
        }
        if let Some(p) = path("REDIS_TLS_CERT_FILE") {
            r.tls_cert_file = Some(p);
        }
        if let Some(p) = path("REDIS_TLS_KEY_FILE") {
            r.tls_key_file = Some(p);
        }
        Ok(Some(r))
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
            .field("sentinel", &self.sentinel)
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

/// The Sentinel variables other than the addresses: the master's name and the sentinels'
/// credentials. They need a Sentinel setup (from `REDIS_SENTINELS` or the builder).
fn merge_sentinel_env(r: &mut RedisConfig, env: &EnvReader) -> Result<(), ConfigError> {
    let master = env.str(SENTINEL_MASTER);
    let user = env.str(SENTINEL_USERNAME);
    // Passwords may legitimately start or end with spaces: no trimming.
    let password = env.raw(SENTINEL_PASSWORD);
    let Some(s) = r.sentinel.as_mut() else {
        let set = [
            (SENTINEL_MASTER, master),
            (SENTINEL_USERNAME, user),
            (SENTINEL_PASSWORD, password.map(|_| "REDACTED")),
        ];
        return match set.into_iter().find_map(|(name, v)| Some((name, v?))) {
            Some((name, value)) => Err(invalid(
                name,
                value,
                "REDIS_SENTINELS is not set: this variable only applies to a master found \
                 through Sentinel",
            )),
            None => Ok(()),
        };
    };
    if let Some(master) = master {
        s.master_name = master.to_owned();
    }
    if let Some(user) = user {
        s.username = Some(user.to_owned());
    }
    if let Some(password) = password {
        s.password = Some(password.to_owned());
    }
    Ok(())
}

/// `host:port,host:port,…` (`REDIS_CLUSTER_NODES`, `REDIS_SENTINELS`); an error names the
/// variable `name` and the item at fault.
pub(super) fn parse_nodes(name: &'static str, v: &str) -> Result<Vec<String>, ConfigError> {
    v.split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(|node| check_host_port(name, v, node).map(|()| node.to_owned()))
        .collect()
}

/// Whether redis-rs accepts `url` and its database number (the `/db` path) is in 0–15, the
/// range `REDIS_DB` accepts; the error never shows the password.
pub(super) fn check_url(url: &str) -> Result<(), ConfigError> {
    let client = redis::Client::open(url).map_err(|e| ConfigError::Invalid {
        name: "REDIS_URL",
        value: redact_url(url),
        reason: format!("not a Redis URL ({})", e.category()),
    })?;
    let db = client.get_connection_info().redis_settings().db();
    if !(0..=15).contains(&db) {
        return Err(ConfigError::Invalid {
            name: "REDIS_URL",
            value: redact_url(url),
            reason: format!("database {db} is not a database number (0-15)"),
        });
    }
    Ok(())
}
