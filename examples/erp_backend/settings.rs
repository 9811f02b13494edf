//! Configuration: the process environment over a `.env` file, read once at startup.
//!
//! Everything has a default, so the server starts with no configuration at all: on
//! `127.0.0.1:3000`, in memory, in development mode with a random session secret.

use std::collections::HashMap;

use cache_sdk::session::SessionConfig;
use cache_sdk::{Cache, CacheConfig};

use crate::server::ServerConfig;

/// The default port, as in the Node backend this server mirrors.
const DEFAULT_PORT: u16 = 3000;
/// Loopback by default: a demo server with demo users should not be reachable from the
/// network unless asked (`HOST=0.0.0.0` in a container).
const DEFAULT_HOST: &str = "127.0.0.1";

/// What the server runs with.
#[derive(Debug)]
pub struct Settings {
    /// Where to listen: `HOST` and `PORT`.
    pub addr: (String, u16),
    /// The cache (and session store) configuration: `REDIS_*` and `CACHE_*` variables.
    pub cache: CacheConfig,
    /// The session configuration: `SESSION_*` variables and `APP_ENV`.
    pub session: SessionConfig,
    /// The serving loop's timeouts and connection limit: `HTTP_*` variables.
    pub server: ServerConfig,
    /// `REDIS_ENABLED` was set to a false value.
    redis_switched_off: bool,
}

/// The process environment over the variables of a `.env` file in the current directory or
/// a parent (variables already set win, as with `dotenv` in Node). The library reads only
/// the process environment unless asked (`from_env_and_dotenv`); this server asks, as the
/// Node backend it mirrors did, and reads the file once for every setting (address, cache,
/// sessions).
///
/// # Errors
/// A message when the `.env` file exists but cannot be read or parsed.
pub fn read_environment() -> Result<HashMap<String, String>, String> {
    let mut vars = HashMap::new();
    match dotenvy::dotenv_iter() {
        Ok(iter) => {
            for item in iter {
                let (k, v) = item.map_err(|e| format!("cannot read the .env file: {e}"))?;
                vars.insert(k, v);
            }
        }
        Err(e) if e.not_found() => {}
        Err(e) => return Err(format!("cannot read the .env file: {e}")),
    }
    vars.extend(
        std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
    );
    Ok(vars)
}

impl Settings {
    /// Reads the settings from variables (see [`read_environment`]).
    ///
    /// Without `APP_ENV` (or `NODE_ENV`) the server runs in development mode: cookies
    /// without `Secure` (so they work on `http://localhost`) and, without
    /// `SESSION_SECRET`, a random signing secret (with a warning). `APP_ENV=production`
    /// requires `SESSION_SECRET`.
    ///
    /// # Errors
    /// A message naming the variable with a bad value.
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Self, String> {
        let set = |name: &str| vars.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());

        let mut vars = vars.clone();
        if set("APP_ENV").is_none() && set("NODE_ENV").is_none() {
            // A demo server should start with nothing configured; production is opt-in.
            tracing::info!(
                "development mode: APP_ENV is not set (set APP_ENV=production and SESSION_SECRET for production)"
            );
            // Said on its own line, as a warning: a server reachable over the network in
            // this mode sends its session cookies in clear over plain HTTP.
            tracing::warn!(
                "development mode: session cookies are NOT Secure (sent over plain http); set APP_ENV=production to serve them over HTTPS only"
            );
            vars.insert("APP_ENV".into(), "development".into());
        }

        let port = match set("PORT") {
            None => DEFAULT_PORT,
            Some(p) => p
                .parse::<u16>()
                .map_err(|_| format!("PORT={p:?} is invalid: not a port number (0-65535)"))?,
        };
        let host = set("HOST").unwrap_or(DEFAULT_HOST).to_owned();

        let cache = CacheConfig::from_vars(vars.clone()).map_err(|e| e.to_string())?;
        let session = SessionConfig::from_vars(vars.clone()).map_err(|e| e.to_string())?;
        let server = ServerConfig::from_vars(&vars)?;
        let redis_switched_off = set("REDIS_ENABLED").is_some_and(|v| {
            matches!(
                v.to_ascii_lowercase().as_str(),
                "false" | "0" | "no" | "off"
            )
        });

        Ok(Self {
            addr: (host, port),
            cache,
            session,
            server,
            redis_switched_off,
        })
    }

    /// Logs which store the cache and the sessions use, and why.
    pub fn log_store_choice(&self, cache: &Cache) {
        let stats = cache.stats();
        match &self.cache.redis {
            None if self.redis_switched_off => tracing::info!(
                store = "memory",
                "cache and sessions in memory: Redis is switched off (REDIS_ENABLED=false)"
            ),
            None => tracing::info!(
                store = "memory",
                "cache and sessions in memory: Redis is not enabled (set REDIS_ENABLED=true, REDIS_URL or REDIS_HOST to use it)"
            ),
            Some(redis) if stats.connected => tracing::info!(
                store = "redis",
                address = %redis.display_address(),
                "cache and sessions in Redis"
            ),
            Some(redis) => tracing::warn!(
                store = "memory",
                address = %redis.display_address(),
                "Redis is unreachable: cache and sessions in memory for now; the server switches to Redis by itself when it answers"
            ),
        }
    }
}

/// The variables `pairs`, as the `from_vars` constructors of the modules' tests take them.
#[cfg(test)]
pub(crate) fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_configured_means_development_on_memory() {
        let s = Settings::from_vars(&vars(&[])).unwrap();
        assert_eq!(s.addr, ("127.0.0.1".to_owned(), 3000));
        assert!(s.cache.redis.is_none());
        assert!(!s.session.cookie.secure);
    }

    #[test]
    fn production_needs_a_secret() {
        let err = Settings::from_vars(&vars(&[("APP_ENV", "production")])).unwrap_err();
        assert!(err.starts_with("SESSION_SECRET"), "{err}");
    }

    #[test]
    fn sessions_and_the_session_preset_share_one_lifetime() {
        let s = Settings::from_vars(&vars(&[("CACHE_TTL_SESSION", "7200")])).unwrap();
        assert_eq!(s.session.ttl.as_secs(), 7200);
        assert_eq!(
            s.cache
                .ttl
                .base(&cache_sdk::Ttl::Session)
                .unwrap()
                .as_secs(),
            7200
        );
        // The deprecated alias still works, and must agree.
        let s = Settings::from_vars(&vars(&[("SESSION_TTL_SECS", "600")])).unwrap();
        assert_eq!(s.session.ttl.as_secs(), 600);
        assert_eq!(
            s.cache
                .ttl
                .base(&cache_sdk::Ttl::Session)
                .unwrap()
                .as_secs(),
            600
        );
        let err = Settings::from_vars(&vars(&[
            ("CACHE_TTL_SESSION", "7200"),
            ("SESSION_TTL_SECS", "600"),
        ]))
        .unwrap_err();
        assert!(err.starts_with("SESSION_TTL_SECS"), "{err}");
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (k, v) in [
            ("PORT", "http"),
            ("REDIS_DB", "99"),
            ("SESSION_FORMAT", "xml"),
        ] {
            let err = Settings::from_vars(&vars(&[("REDIS_ENABLED", "true"), (k, v)])).unwrap_err();
            assert!(err.starts_with(k), "{err}");
        }
    }
}
