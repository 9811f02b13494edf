//! [`SessionConfig`]: cookie, lifetime, format and secrets, from code or the environment.

use std::fmt;
use std::time::Duration;

use super::cookie::{valid_cookie_name, CookieAttributes, SameSite, SessionSecrets};
use super::format::SessionFormat;
use crate::config::env::{invalid, EnvReader, SESSION_TTL};
use crate::config::MAX_VALUE_SIZE_LIMIT;
use crate::error::ConfigError;
use crate::ttl::{Ttl, TtlPresets, MAX_TTL};

/// The default lifetime: the 24 h session preset.
pub const DEFAULT_TTL: Duration = Duration::from_secs(86_400);
/// The default least time between two touches of one session.
pub const DEFAULT_TOUCH_INTERVAL: Duration = Duration::from_secs(60);
/// The default record size limit.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1024 * 1024;

/// Where the application runs; decides the secure defaults.
///
/// ```
/// use cache_sdk::session::Environment;
/// assert_eq!("prod".parse::<Environment>(), Ok(Environment::Production));
/// assert_eq!("development".parse::<Environment>(), Ok(Environment::Development));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Environment {
    /// `Secure` cookies; a missing `SESSION_SECRET` is an error.
    #[default]
    Production,
    /// Cookies without `Secure` (plain `http://localhost`); a missing secret is replaced by
    /// a random one, with a warning.
    Development,
}

impl std::str::FromStr for Environment {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "production" | "prod" | "staging" => Ok(Environment::Production),
            "development" | "dev" | "local" | "test" => Ok(Environment::Development),
            _ => Err("expected `production` or `development`".into()),
        }
    }
}

/// Everything sessions need besides a store.
///
/// `Debug` never shows the secrets.
///
/// ```
/// use cache_sdk::session::{SessionConfig, SessionFormat, SessionSecrets};
/// use std::time::Duration;
/// let cfg = SessionConfig::new(SessionSecrets::new(["a long random secret"]).unwrap())
///     .format(SessionFormat::Express)
///     .ttl(Duration::from_secs(3600));
/// assert_eq!(cfg.cookie.name, "connect.sid");
/// assert!(cfg.cookie.secure && cfg.cookie.http_only);
/// assert!(!format!("{cfg:?}").contains("a long random secret"));
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct SessionConfig {
    /// The record format.
    pub format: SessionFormat,
    /// The cookie's name and attributes.
    pub cookie: CookieAttributes,
    /// How long a session lives without activity (1 s ..= 365 days): the
    /// [`Ttl::Session`](crate::Ttl::Session) preset. From the environment it is
    /// `CACHE_TTL_SESSION`, the variable that also sets the cache's preset; in code, take
    /// it from the cache's presets with [`SessionConfig::ttl_from`].
    pub ttl: Duration,
    /// The least time between two expiry extensions ("touches") of one session by this
    /// process; zero touches on every request that reads the session.
    pub touch_interval: Duration,
    /// The largest record written or read, in bytes.
    pub max_record_bytes: usize,
    /// The signing secrets.
    pub secrets: SessionSecrets,
    /// Where the application runs.
    pub environment: Environment,
}

impl fmt::Debug for SessionConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionConfig")
            .field("format", &self.format)
            .field("cookie", &self.cookie)
            .field("ttl", &self.ttl)
            .field("touch_interval", &self.touch_interval)
            .field("max_record_bytes", &self.max_record_bytes)
            .field("secrets", &self.secrets)
            .field("environment", &self.environment)
            .finish()
    }
}

const NATIVE_COOKIE: &str = "sid";
const EXPRESS_COOKIE: &str = "connect.sid";

impl SessionConfig {
    /// Production defaults with these secrets: native format, cookie `sid` with
    /// `Path=/; HttpOnly; Secure; SameSite=Lax`, 24 h lifetime, touch at most once a
    /// minute.
    ///
    /// ```
    /// let cfg = cache_sdk::session::SessionConfig::new(cache_sdk::session::SessionSecrets::random());
    /// assert_eq!(cfg.ttl.as_secs(), 86_400);
    /// ```
    #[must_use]
    pub fn new(secrets: SessionSecrets) -> Self {
        Self {
            format: SessionFormat::Native,
            cookie: CookieAttributes::new(NATIVE_COOKIE),
            ttl: DEFAULT_TTL,
            touch_interval: DEFAULT_TOUCH_INTERVAL,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            secrets,
            environment: Environment::Production,
        }
    }

    /// Development defaults: a random secret (sessions end when the process restarts) and
    /// cookies without `Secure`. Logs a warning.
    ///
    /// ```
    /// let cfg = cache_sdk::session::SessionConfig::development();
    /// assert!(!cfg.cookie.secure);
    /// ```
    #[must_use]
    pub fn development() -> Self {
        tracing::warn!(
            "SESSION_SECRET is not set: signing session cookies with a random secret \
             (development only; sessions will not survive a restart)"
        );
        let mut cfg = Self::new(SessionSecrets::random());
        cfg.environment = Environment::Development;
        cfg.cookie.secure = false;
        cfg
    }

    /// Sets the format; the cookie name follows (`sid` ↔ `connect.sid`) unless it was
    /// changed.
    ///
    /// ```
    /// use cache_sdk::session::{SessionConfig, SessionFormat};
    /// let cfg = SessionConfig::development().format(SessionFormat::Express);
    /// assert_eq!(cfg.cookie.name, "connect.sid");
    /// ```
    #[must_use]
    pub fn format(mut self, format: SessionFormat) -> Self {
        let default_name = |f| match f {
            SessionFormat::Express => EXPRESS_COOKIE,
            _ => NATIVE_COOKIE,
        };
        if self.cookie.name == default_name(self.format) {
            self.cookie.name = default_name(format).into();
        }
        self.format = format;
        self
    }

    /// Sets the cookie name.
    ///
    /// ```
    /// let cfg = cache_sdk::session::SessionConfig::development().cookie_name("app.sid");
    /// assert_eq!(cfg.cookie.name, "app.sid");
    /// ```
    #[must_use]
    pub fn cookie_name(mut self, name: impl Into<String>) -> Self {
        self.cookie.name = name.into();
        self
    }

    /// Sets the lifetime.
    ///
    /// ```
    /// let cfg = cache_sdk::session::SessionConfig::development().ttl(std::time::Duration::from_secs(600));
    /// assert_eq!(cfg.ttl.as_secs(), 600);
    /// ```
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Sets the lifetime to the [`Ttl::Session`](crate::Ttl::Session) preset of these
    /// presets, so that sessions live as long as the cache's session preset says
    /// (`Cache::ttl_presets()`, or a [`CacheConfig`](crate::CacheConfig)'s `ttl`).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_sdk::BuildError> {
    /// use std::time::Duration;
    /// let cache = cache_sdk::Cache::builder()
    ///     .ttl_preset("session", Duration::from_secs(2 * 3600))
    ///     .build()
    ///     .await?;
    /// let cfg = cache_sdk::session::SessionConfig::development().ttl_from(cache.ttl_presets());
    /// assert_eq!(cfg.ttl.as_secs(), 7200);
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn ttl_from(self, presets: &TtlPresets) -> Self {
        match presets.base(&Ttl::Session) {
            Ok(ttl) => self.ttl(ttl),
            // The session preset always has a duration.
            Err(_) => self,
        }
    }

    /// Sets the least time between two touches of one session.
    ///
    /// ```
    /// let cfg = cache_sdk::session::SessionConfig::development().touch_interval(std::time::Duration::ZERO);
    /// assert!(cfg.touch_interval.is_zero());
    /// ```
    #[must_use]
    pub fn touch_interval(mut self, interval: Duration) -> Self {
        self.touch_interval = interval;
        self
    }

    /// Sets the `Secure` attribute.
    ///
    /// **Warning:** without `Secure`, the browser also sends the cookie over plain HTTP,
    /// where anyone on the network can read it and take over the session. Turn it off
    /// only for local development over `http://`.
    ///
    /// ```
    /// let cfg = cache_sdk::session::SessionConfig::development().secure(true);
    /// assert!(cfg.cookie.secure);
    /// ```
    #[must_use]
    pub fn secure(mut self, secure: bool) -> Self {
        self.cookie.secure = secure;
        self
    }

    /// Sets the `SameSite` attribute.
    ///
    /// **Warning:** `SameSite=None` sends the cookie with cross-site requests, which
    /// exposes state-changing endpoints to cross-site request forgery unless they are
    /// protected otherwise; browsers also require `Secure` with it.
    ///
    /// ```
    /// use cache_sdk::session::{SameSite, SessionConfig};
    /// let cfg = SessionConfig::development().same_site(SameSite::Strict);
    /// assert_eq!(cfg.cookie.same_site, SameSite::Strict);
    /// ```
    #[must_use]
    pub fn same_site(mut self, same_site: SameSite) -> Self {
        self.cookie.same_site = same_site;
        self
    }

    /// Checks the values.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the setting: a TTL outside 1 s ..= 365 days, a cookie
    /// name that is not an RFC 6265 token, a path or domain with characters a cookie
    /// cannot carry, `SameSite=None` without `Secure`, or a zero record size.
    ///
    /// ```
    /// use cache_sdk::session::SessionConfig;
    /// assert!(SessionConfig::development().validate().is_ok());
    /// assert!(SessionConfig::development().cookie_name("bad name").validate().is_err());
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.ttl < Duration::from_secs(1) || self.ttl > MAX_TTL {
            return Err(invalid(
                SESSION_TTL,
                &self.ttl.as_secs().to_string(),
                "must be between 1 and 31536000 seconds",
            ));
        }
        if !valid_cookie_name(&self.cookie.name) {
            return Err(invalid(
                "SESSION_COOKIE_NAME",
                &self.cookie.name,
                "not a valid cookie name (letters, digits and !#$%&'*+-.^_`|~ only)",
            ));
        }
        let attr_ok = |s: &str| s.bytes().all(|b| b.is_ascii_graphic() && b != b';');
        if !self.cookie.path.starts_with('/') || !attr_ok(&self.cookie.path) {
            return Err(invalid(
                "SESSION_COOKIE_PATH",
                &self.cookie.path,
                "must start with / and hold no spaces, controls or ;",
            ));
        }
        if let Some(d) = &self.cookie.domain {
            if d.is_empty() || !attr_ok(d) {
                return Err(invalid(
                    "SESSION_COOKIE_DOMAIN",
                    d,
                    "not a domain name a cookie can carry",
                ));
            }
        }
        if self.cookie.same_site == SameSite::None && !self.cookie.secure {
            return Err(invalid(
                "SESSION_SAME_SITE",
                "none",
                "browsers refuse SameSite=None without Secure; set SESSION_SECURE=true",
            ));
        }
        if self.max_record_bytes == 0 {
            return Err(invalid("SESSION_MAX_BYTES", "0", "must be at least 1"));
        }
        Ok(())
    }

    /// Reads the configuration from the process environment (no `.env` file: see
    /// [`SessionConfig::from_env_and_dotenv`]):
    ///
    /// | variable | meaning | default |
    /// |---|---|---|
    /// | `APP_ENV` | `production` or `development` (`NODE_ENV` is read when `APP_ENV` is unset) | `production` |
    /// | `SESSION_SECRET` | the signing secret; `current,previous1,…` to rotate (secrets cannot contain `,`) | required in production; random in development |
    /// | `SESSION_SECRET_PREVIOUS` | more previous secrets, comma-separated | none |
    /// | `SESSION_FORMAT` | `native` or `express` | `native` |
    /// | `SESSION_COOKIE_NAME` | cookie name | `sid` (native), `connect.sid` (express) |
    /// | `CACHE_TTL_SESSION` | session lifetime in seconds, extended by activity; the same variable sets the cache's [`Ttl::Session`](crate::Ttl::Session) preset. `SESSION_TTL_SECS` is a deprecated alias (a warning; an error when both are set and disagree) | `86400` |
    /// | `SESSION_TOUCH_INTERVAL_SECS` | the least time between two expiry extensions of one session (0: every request) | `60` |
    /// | `SESSION_SECURE` | `Secure` cookie attribute | `true` in production, `false` in development |
    /// | `SESSION_SAME_SITE` | `lax`, `strict` or `none` | `lax` |
    /// | `SESSION_COOKIE_DOMAIN` / `SESSION_COOKIE_PATH` | cookie `Domain` / `Path` | none / `/` |
    /// | `SESSION_MAX_BYTES` | the largest record written or read | `1048576` |
    ///
    /// # Errors
    /// [`ConfigError`] naming the first variable with a bad value; in production, a missing
    /// `SESSION_SECRET`.
    ///
    /// ```no_run
    /// let cfg = cache_sdk::session::SessionConfig::from_env()?;
    /// # Ok::<(), cache_sdk::ConfigError>(())
    /// ```
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_reader(&EnvReader::process())
    }

    /// As [`SessionConfig::from_env`], after the variables of a `.env` file in the current
    /// directory or its parents (a variable set in the process wins over the file).
    ///
    /// # Errors
    /// As [`SessionConfig::from_env`]; [`ConfigError::DotEnv`] when the `.env` file exists
    /// but cannot be read or parsed.
    ///
    /// ```no_run
    /// let cfg = cache_sdk::session::SessionConfig::from_env_and_dotenv()?;
    /// # Ok::<(), cache_sdk::ConfigError>(())
    /// ```
    #[cfg(feature = "dotenv")]
    #[cfg_attr(docsrs, doc(cfg(feature = "dotenv")))]
    pub fn from_env_and_dotenv() -> Result<Self, ConfigError> {
        Self::from_reader(&EnvReader::process_and_dotenv()?)
    }

    /// Reads the configuration from the given variables only.
    ///
    /// # Errors
    /// As [`SessionConfig::from_env`].
    ///
    /// ```
    /// use cache_sdk::session::{SessionConfig, SessionFormat};
    /// let cfg = SessionConfig::from_vars([
    ///     ("SESSION_SECRET", "new-secret,old-secret"),
    ///     ("SESSION_FORMAT", "express"),
    ///     ("CACHE_TTL_SESSION", "3600"),
    /// ]).unwrap();
    /// assert_eq!(cfg.secrets.len(), 2);
    /// assert_eq!(cfg.cookie.name, "connect.sid");
    /// assert_eq!(cfg.ttl.as_secs(), 3600);
    ///
    /// let err = SessionConfig::from_vars([("APP_ENV", "production")]).unwrap_err();
    /// assert!(err.to_string().starts_with("SESSION_SECRET"));
    /// let err = SessionConfig::from_vars([("APP_ENV", "dev"), ("CACHE_TTL_SESSION", "soon")]).unwrap_err();
    /// assert!(err.to_string().starts_with("CACHE_TTL_SESSION=\"soon\" is invalid"));
    /// ```
    pub fn from_vars<K: Into<String>, V: Into<String>>(
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self, ConfigError> {
        Self::from_reader(&EnvReader::from_pairs(vars))
    }

    fn from_reader(env: &EnvReader) -> Result<Self, ConfigError> {
        let env_var = if env.is_set("APP_ENV") {
            "APP_ENV"
        } else {
            "NODE_ENV"
        };
        let environment = env.parse::<Environment>(env_var)?.unwrap_or_default();

        // Secrets are used exactly as given (no trimming: spaces may be part of them).
        let mut secrets: Vec<&str> = Vec::new();
        for name in ["SESSION_SECRET", "SESSION_SECRET_PREVIOUS"] {
            for s in env.raw(name).into_iter().flat_map(|v| v.split(',')) {
                if s.is_empty() {
                    return Err(invalid(
                        name,
                        "<redacted>",
                        "holds an empty secret (check the commas)",
                    ));
                }
                secrets.push(s);
            }
        }
        let mut cfg = if env.raw("SESSION_SECRET").is_some() {
            if environment == Environment::Production
                && secrets.first().is_some_and(|s| s.len() < 32)
            {
                tracing::warn!(
                    "SESSION_SECRET is shorter than 32 characters; use a long random secret"
                );
            }
            let mut cfg = Self::new(SessionSecrets::new(&secrets)?);
            cfg.environment = environment;
            cfg
        } else if environment == Environment::Development {
            Self::development()
        } else {
            return Err(invalid(
                "SESSION_SECRET",
                "<unset>",
                "required in production: set it to a long random value \
                 (or APP_ENV=development for a random development secret)",
            ));
        };
        cfg.cookie.secure = environment == Environment::Production;

        if let Some(format) = env.parse("SESSION_FORMAT")? {
            cfg = cfg.format(format);
        }
        if let Some(name) = env.str("SESSION_COOKIE_NAME") {
            cfg.cookie.name = name.to_owned();
        }
        if let Some(ttl) = env.session_ttl()? {
            cfg.ttl = ttl;
        }
        if let Some(t) = env.secs("SESSION_TOUCH_INTERVAL_SECS", 0..=MAX_TTL.as_secs())? {
            cfg.touch_interval = t;
        }
        if let Some(secure) = env.bool("SESSION_SECURE")? {
            cfg.cookie.secure = secure;
        }
        if let Some(same_site) = env.choice(
            "SESSION_SAME_SITE",
            &[
                ("lax", SameSite::Lax),
                ("strict", SameSite::Strict),
                ("none", SameSite::None),
            ],
        )? {
            cfg.cookie.same_site = same_site;
        }
        if let Some(domain) = env.str("SESSION_COOKIE_DOMAIN") {
            cfg.cookie.domain = Some(domain.to_owned());
        }
        if let Some(path) = env.str("SESSION_COOKIE_PATH") {
            cfg.cookie.path = path.to_owned();
        }
        if let Some(n) = env.number(
            "SESSION_MAX_BYTES",
            1..=MAX_VALUE_SIZE_LIMIT,
            "a size in bytes",
        )? {
            cfg.max_record_bytes = n;
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn production_needs_a_secret_and_is_secure() {
        let err = SessionConfig::from_vars(Vec::<(String, String)>::new()).unwrap_err();
        assert!(err.to_string().contains("SESSION_SECRET"));
        let cfg =
            SessionConfig::from_vars([("SESSION_SECRET", "s3cret-value-that-is-long-enough!!")])
                .expect("cfg");
        assert!(cfg.cookie.secure);
        assert_eq!(cfg.environment, Environment::Production);
        assert!(!format!("{cfg:?}").contains("s3cret"));
    }

    #[test]
    fn development_gets_a_random_secret_and_plain_cookies() {
        let cfg = SessionConfig::from_vars([("NODE_ENV", "development")]).expect("cfg");
        assert!(!cfg.cookie.secure);
        assert_eq!(cfg.secrets.len(), 1);
    }

    #[test]
    fn rotation_lists() {
        let cfg =
            SessionConfig::from_vars([("SESSION_SECRET", "a,b"), ("SESSION_SECRET_PREVIOUS", "c")])
                .expect("cfg");
        assert_eq!(cfg.secrets.len(), 3);
        let err = SessionConfig::from_vars([("SESSION_SECRET", "a,,b")]).unwrap_err();
        assert!(err.to_string().starts_with("SESSION_SECRET=\"<redacted>\""));
    }

    #[test]
    fn bad_values_name_their_variable() {
        let base = [("APP_ENV", "development")];
        for (name, value) in [
            ("SESSION_FORMAT", "xml"),
            ("CACHE_TTL_SESSION", "0"),
            ("SESSION_TTL_SECS", "0"),
            ("SESSION_TOUCH_INTERVAL_SECS", "-1"),
            ("SESSION_SECURE", "maybe"),
            ("SESSION_SAME_SITE", "sometimes"),
            ("SESSION_COOKIE_NAME", "a b"),
            ("SESSION_COOKIE_PATH", "no-slash"),
            ("SESSION_MAX_BYTES", "0"),
            ("APP_ENV", "moon"),
        ] {
            let mut vars: Vec<(&str, &str)> = base.to_vec();
            vars.retain(|(k, _)| *k != name);
            vars.push((name, value));
            let err = SessionConfig::from_vars(vars).unwrap_err();
            assert!(err.to_string().starts_with(name), "{name}: {err}");
        }
        let err =
            SessionConfig::from_vars([("APP_ENV", "development"), ("SESSION_SAME_SITE", "none")])
                .unwrap_err();
        assert!(err.to_string().starts_with("SESSION_SAME_SITE"));
    }

    #[test]
    fn sessions_live_as_long_as_the_session_preset() {
        let dev = ("APP_ENV", "development");
        let ttl = |vars: &[(&str, &str)]| {
            let mut all = vec![dev];
            all.extend_from_slice(vars);
            SessionConfig::from_vars(all).map(|c| c.ttl.as_secs())
        };
        assert_eq!(ttl(&[]).unwrap(), 86_400);
        assert_eq!(ttl(&[("CACHE_TTL_SESSION", "7200")]).unwrap(), 7200);
        // The deprecated alias still works, and agrees or fails.
        assert_eq!(ttl(&[("SESSION_TTL_SECS", "600")]).unwrap(), 600);
        assert_eq!(
            ttl(&[("SESSION_TTL_SECS", "600"), ("CACHE_TTL_SESSION", "600")]).unwrap(),
            600
        );
        let err = ttl(&[("SESSION_TTL_SECS", "600"), ("CACHE_TTL_SESSION", "7200")])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("SESSION_TTL_SECS=") && err.contains("CACHE_TTL_SESSION"),
            "{err}"
        );

        // The cache and the sessions read the same variables to the same lifetime.
        let vars = [dev, ("CACHE_TTL_SESSION", "7200")];
        let cache = crate::CacheConfig::from_vars(vars).unwrap();
        let session = SessionConfig::from_vars(vars).unwrap();
        assert_eq!(cache.ttl.base(&Ttl::Session).unwrap(), session.ttl);

        // In code, from the cache's presets.
        let mut presets = TtlPresets::default();
        presets.define("session", Duration::from_secs(900)).unwrap();
        assert_eq!(
            SessionConfig::development().ttl_from(&presets).ttl,
            Duration::from_secs(900)
        );
    }
}
