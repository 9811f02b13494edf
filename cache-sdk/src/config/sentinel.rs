//! [`SentinelConfig`]: a master found through Redis Sentinel (the sentinels' addresses, the
//! name of the master they monitor, their own credentials), with the checks that need no
//! server. The data nodes' credentials, database and TLS stay on
//! [`RedisConfig`](super::RedisConfig).
//!
//! Self-contained (it imports only the error type and the shared `host:port` check), so it
//! can sit behind a cargo feature.

use std::fmt;

use crate::error::ConfigError;

/// The variable that lists the sentinels.
pub(crate) const SENTINELS: &str = "REDIS_SENTINELS";
/// The variable that names the monitored master.
pub(crate) const SENTINEL_MASTER: &str = "REDIS_SENTINEL_MASTER";
/// The sentinels' ACL user.
pub(crate) const SENTINEL_USERNAME: &str = "REDIS_SENTINEL_USERNAME";
/// The sentinels' password.
pub(crate) const SENTINEL_PASSWORD: &str = "REDIS_SENTINEL_PASSWORD";

/// A Redis master found through Redis Sentinel: the cache asks the sentinels where the
/// master named `master_name` is each time it (re)connects, and so follows a failover by
/// itself. Set it with [`RedisConfig::sentinel`](super::RedisConfig::sentinel) or the
/// `REDIS_SENTINELS` and `REDIS_SENTINEL_MASTER` variables.
///
/// The username and password here are the **sentinels'** (`requirepass` or an ACL user in
/// `sentinel.conf`); the data nodes use the ones of the [`RedisConfig`](super::RedisConfig).
/// `Debug` never shows the password.
///
/// ```
/// use cache_sdk::SentinelConfig;
/// let s = SentinelConfig::new(["10.0.0.1:26379", "10.0.0.2:26379"], "cache")
///     .with_auth(None, "sentinel-secret");
/// assert_eq!(s.master_name, "cache");
/// assert!(!format!("{s:?}").contains("sentinel-secret"));
/// ```
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SentinelConfig {
    /// The sentinels, `host:port` each (three or more in production, so that a majority
    /// can agree on a failover).
    pub nodes: Vec<String>,
    /// The name of the master the sentinels monitor (`sentinel monitor <name> …`).
    pub master_name: String,
    /// ACL user name on the sentinels; `None` is the `default` user.
    pub username: Option<String>,
    /// Password of the sentinels; `None` when they need none.
    pub password: Option<String>,
}

impl SentinelConfig {
    /// The sentinels at `nodes` (`host:port`), following the master they call `master_name`.
    ///
    /// ```
    /// let s = cache_sdk::SentinelConfig::new(["10.0.0.1:26379"], "cache");
    /// assert_eq!(s.nodes, ["10.0.0.1:26379"]);
    /// ```
    #[must_use]
    pub fn new<S: Into<String>>(
        nodes: impl IntoIterator<Item = S>,
        master_name: impl Into<String>,
    ) -> Self {
        Self {
            nodes: nodes.into_iter().map(Into::into).collect(),
            master_name: master_name.into(),
            username: None,
            password: None,
        }
    }

    /// Authenticates to the sentinels as this user (`None`: the `default` user) with this
    /// password (`REDIS_SENTINEL_USERNAME`, `REDIS_SENTINEL_PASSWORD`); an empty password
    /// means none.
    ///
    /// ```
    /// let s = cache_sdk::SentinelConfig::new(["10.0.0.1:26379"], "cache")
    ///     .with_auth(Some("watcher"), "pw");
    /// assert_eq!(s.username.as_deref(), Some("watcher"));
    /// ```
    #[must_use]
    pub fn with_auth(mut self, username: Option<&str>, password: impl Into<String>) -> Self {
        self.username = username.map(str::to_owned);
        self.password = Some(password.into()).filter(|p| !p.is_empty());
        self
    }

    /// Checks the sentinels' addresses and the master name.
    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        let all = self.nodes.join(",");
        if self.nodes.is_empty() {
            return Err(ConfigError::Invalid {
                name: SENTINELS,
                value: all,
                reason: "no sentinel: give the host:port of at least one (three or more in \
                         production)"
                    .into(),
            });
        }
        for node in &self.nodes {
            check_host_port(SENTINELS, &all, node)?;
        }
        let name = self.master_name.as_str();
        if name.trim().is_empty() {
            return Err(ConfigError::Invalid {
                name: SENTINEL_MASTER,
                value: String::new(),
                reason: "missing: with REDIS_SENTINELS, name the master the sentinels monitor \
                         (the <name> of `sentinel monitor <name> …`)"
                    .into(),
            });
        }
        if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ConfigError::Invalid {
                name: SENTINEL_MASTER,
                value: name.to_owned(),
                reason: "a master name has no spaces nor control characters".into(),
            });
        }
        Ok(())
    }
}

impl fmt::Debug for SentinelConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SentinelConfig")
            .field("nodes", &self.nodes)
            .field("master_name", &self.master_name)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "REDACTED"))
            .finish()
    }
}

/// `node` is `host:port` with a host and a port above 0; the error names the variable
/// `name`, shows the whole list `all` and says which item is wrong.
pub(super) fn check_host_port(
    name: &'static str,
    all: &str,
    node: &str,
) -> Result<(), ConfigError> {
    let ok = node
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            name,
            value: all.to_owned(),
            reason: format!("`{node}` is not host:port"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_name_the_variable_at_fault() {
        let err = |s: SentinelConfig| s.check().unwrap_err().to_string();
        assert!(err(SentinelConfig::new(Vec::<String>::new(), "m")).starts_with("REDIS_SENTINELS="));
        let e = err(SentinelConfig::new(["a:1", "b"], "m"));
        assert!(
            e.starts_with("REDIS_SENTINELS=\"a:1,b\"") && e.contains("`b`"),
            "{e}"
        );
        assert!(err(SentinelConfig::new(["a:0"], "m")).contains("`a:0`"));
        assert!(err(SentinelConfig::new(["a:1"], " ")).starts_with("REDIS_SENTINEL_MASTER="));
        assert!(err(SentinelConfig::new(["a:1"], "my master")).contains("spaces"));
        assert!(SentinelConfig::new(["a:1", "[::1]:26379"], "mymaster")
            .check()
            .is_ok());
    }

    /// Reads and validates, as `build()` would.
    fn built(vars: &[(&str, &str)]) -> Result<crate::CacheConfig, ConfigError> {
        let cfg = crate::CacheConfig::from_vars(vars.iter().copied())?;
        cfg.validate()?;
        Ok(cfg)
    }

    #[test]
    fn the_variables_make_a_sentinel_setup() {
        let cfg = built(&[
            (
                "REDIS_SENTINELS",
                "10.0.0.1:26379, 10.0.0.2:26379,10.0.0.3:26379",
            ),
            ("REDIS_SENTINEL_MASTER", "cache"),
            ("REDIS_SENTINEL_PASSWORD", " s pw"),
            ("REDIS_PASSWORD", "data-pw"),
            ("REDIS_DB", "3"),
        ])
        .unwrap();
        let r = cfg.redis.unwrap();
        let s = r.sentinel.as_ref().unwrap();
        assert_eq!(s.nodes.len(), 3);
        assert_eq!(s.master_name, "cache");
        assert_eq!(s.password.as_deref(), Some(" s pw"));
        assert_eq!(
            r.sentinel_url("10.0.0.1:26379"),
            "redis://:%20s%20pw@10.0.0.1:26379"
        );
        assert_eq!(
            r.master_url("10.0.0.9", 6380),
            "redis://:data-pw@10.0.0.9:6380/3"
        );
        assert_eq!(r.master_url("::1", 6380), "redis://:data-pw@[::1]:6380/3");
        let debug = format!("{r:?}");
        assert!(
            !debug.contains("s pw") && !debug.contains("data-pw"),
            "{debug}"
        );
    }

    #[test]
    fn mistakes_are_named() {
        let err = |vars: &[(&str, &str)]| built(vars).unwrap_err().to_string();
        let e = err(&[("REDIS_SENTINELS", "a:26379")]);
        assert!(
            e.starts_with("REDIS_SENTINEL_MASTER=") && e.contains("missing"),
            "{e}"
        );
        let e = err(&[
            ("REDIS_SENTINELS", "a:26379,b"),
            ("REDIS_SENTINEL_MASTER", "m"),
        ]);
        assert!(
            e.starts_with("REDIS_SENTINELS=") && e.contains("`b`"),
            "{e}"
        );
        let e = err(&[
            ("REDIS_SENTINELS", "a:26379"),
            ("REDIS_SENTINEL_MASTER", "m"),
            ("REDIS_CLUSTER_NODES", "c:6379"),
        ]);
        if cfg!(feature = "cluster") {
            assert!(
                e.starts_with("REDIS_SENTINELS=") && e.contains("REDIS_CLUSTER_NODES"),
                "{e}"
            );
        } else {
            // Without the feature, the cluster setting is refused first.
            assert!(e.starts_with("REDIS_CLUSTER_NODES"), "{e}");
        }
        let e = err(&[("REDIS_HOST", "h"), ("REDIS_SENTINEL_MASTER", "m")]);
        assert!(
            e.starts_with("REDIS_SENTINEL_MASTER=\"m\"") && e.contains("REDIS_SENTINELS"),
            "{e}"
        );
        let e = err(&[("REDIS_HOST", "h"), ("REDIS_SENTINEL_PASSWORD", "hunter2")]);
        assert!(
            e.starts_with("REDIS_SENTINEL_PASSWORD=") && !e.contains("hunter2"),
            "{e}"
        );
    }

    #[test]
    fn the_environment_merges_into_a_builder_setup() {
        let mut cfg = crate::CacheConfig {
            redis: Some(
                crate::RedisConfig::sentinel(["a:26379"], "cache").with_sentinel_auth(None, "pw"),
            ),
            ..Default::default()
        };
        // The addresses are replaced; the master name and credentials are kept.
        let env = super::super::env::EnvReader::from_pairs([("REDIS_SENTINELS", "b:26379")]);
        cfg.apply_env(&env).unwrap();
        let s = cfg.redis.as_ref().and_then(|r| r.sentinel.clone()).unwrap();
        assert_eq!(
            (s.nodes, s.master_name.as_str()),
            (vec!["b:26379".to_owned()], "cache")
        );
        assert_eq!(s.password.as_deref(), Some("pw"));
        // Another address variable replaces the Sentinel setup as a whole.
        let env = super::super::env::EnvReader::from_pairs([("REDIS_HOST", "h")]);
        cfg.apply_env(&env).unwrap();
        assert!(!cfg.redis.unwrap().is_sentinel());
    }

    #[test]
    fn an_empty_password_is_none() {
        let s = SentinelConfig::new(["a:1"], "m").with_auth(Some("u"), "");
        assert_eq!((s.username.as_deref(), s.password), (Some("u"), None));
    }
}
