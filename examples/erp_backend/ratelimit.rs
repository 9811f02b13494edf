//! Failed logins, limited per username and per client address across every instance.
//!
//! Each failed login adds 1 to two counters in the cache with [`Cache::incr`]: one for the
//! username, one for the client's address, each living `LOGIN_WINDOW_SECS` (900 s, 15
//! minutes) from its first failure. When a counter has reached its limit
//! (`LOGIN_MAX_FAILURES`, 5 per username; `LOGIN_MAX_FAILURES_PER_CLIENT`, 20 per address),
//! every login for that name or from that address, right or wrong, is answered `429` with
//! `Retry-After` (the seconds until the window ends) without looking at the password. A
//! successful login clears its username's counter (not its address's).
//!
//! The counters are in Redis, so all instances share them; while Redis is away the cache
//! keeps them in memory (per instance) by itself, so the limit holds during an outage too.
//! The keys hold hashes (`ratelimit:login:user:<hash>`, `ratelimit:login:client:<hash>`),
//! never a username or an address in clear.
//!
//! The client's address is the TCP peer's. Behind a reverse proxy every request comes from
//! the proxy, so set `TRUST_PROXY_HOPS` to the number of proxies in front of the server: the
//! address is then read from `X-Forwarded-For`, that many entries from the right (the entries
//! further left are written by the client and can be anything). Without it (the default, 0)
//! `X-Forwarded-For` is ignored: trusting it on a server reached directly would let every
//! request pick its own address and escape the per-address limit.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use cache_sdk::Cache;
use sha2::{Digest, Sha256};

use crate::error::ApiError;

/// The failed-login limits and the cache that counts. Cheap to clone.
#[derive(Debug, Clone)]
pub struct LoginLimiter {
    cache: Cache,
    config: LimitConfig,
}

/// The limits (environment variables).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitConfig {
    /// `LOGIN_MAX_FAILURES`: failures per username per window.
    pub per_user: i64,
    /// `LOGIN_MAX_FAILURES_PER_CLIENT`: failures per client address per window.
    pub per_client: i64,
    /// `LOGIN_WINDOW_SECS`.
    pub window: Duration,
    /// `TRUST_PROXY_HOPS`: reverse proxies in front of the server (0: `X-Forwarded-For` is
    /// ignored).
    pub trusted_hops: usize,
}

impl Default for LimitConfig {
    fn default() -> Self {
        Self {
            per_user: 5,
            per_client: 20,
            window: Duration::from_secs(15 * 60),
            trusted_hops: 0,
        }
    }
}

impl LimitConfig {
    /// Reads the limits from the environment's variables; unset ones keep their defaults.
    ///
    /// # Errors
    /// A message naming the variable with a bad value.
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Self, String> {
        let number = |name: &str, min: u64, max: u64| -> Result<Option<u64>, String> {
            match vars.get(name).map(|v| v.trim()) {
                None | Some("") => Ok(None),
                Some(v) => v
                    .parse::<u64>()
                    .ok()
                    .filter(|n| (min..=max).contains(n))
                    .map(Some)
                    .ok_or_else(|| {
                        format!("{name}={v:?} is invalid: not a whole number in {min}-{max}")
                    }),
            }
        };
        let mut c = Self::default();
        if let Some(n) = number("LOGIN_MAX_FAILURES", 1, 1_000_000)? {
            c.per_user = i64::try_from(n).unwrap_or(i64::MAX);
        }
        if let Some(n) = number("LOGIN_MAX_FAILURES_PER_CLIENT", 1, 1_000_000)? {
            c.per_client = i64::try_from(n).unwrap_or(i64::MAX);
        }
        if let Some(s) = number("LOGIN_WINDOW_SECS", 1, 7 * 86_400)? {
            c.window = Duration::from_secs(s);
        }
        if let Some(n) = number("TRUST_PROXY_HOPS", 0, 16)? {
            c.trusted_hops = usize::try_from(n).unwrap_or(0);
        }
        Ok(c)
    }
}

/// A login refused because of too many failures: `429` with `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blocked {
    /// Until the counter's window ends.
    pub retry_after: Duration,
}

impl IntoResponse for Blocked {
    fn into_response(self) -> Response {
        // Whole seconds, rounded up, at least 1.
        let secs = self
            .retry_after
            .as_secs()
            .saturating_add(u64::from(self.retry_after.subsec_nanos() > 0))
            .max(1);
        let mut res = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "Too many failed logins")
            .detail(format!("try again in {secs} s"))
            .into_response();
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        res
    }
}

/// The counter keys of one login attempt.
#[derive(Debug)]
pub struct Attempt {
    user: String,
    client: Option<String>,
}

impl LoginLimiter {
    /// A limiter counting in `cache`.
    pub fn new(cache: Cache, config: LimitConfig) -> Self {
        Self { cache, config }
    }

    /// The client's address: the peer's, or with `TRUST_PROXY_HOPS` the one the nearest
    /// trusted proxy saw (see the module docs).
    pub fn client_addr(&self, peer: Option<SocketAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        let hops = self.config.trusted_hops;
        if hops == 0 {
            return peer.map(|p| p.ip());
        }
        let forwarded: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect();
        // The proxies appended `hops` entries; the one at `len - hops` is the address the
        // first of them saw. Fewer entries: every one of them was written by a proxy.
        let entry = forwarded
            .len()
            .checked_sub(hops)
            .and_then(|i| forwarded.get(i))
            .or(forwarded.first());
        entry
            .and_then(|e| e.parse::<IpAddr>().ok())
            .or(peer.map(|p| p.ip()))
    }

    /// The counters for a login as `username` from `client`.
    pub fn attempt(&self, username: &str, client: Option<IpAddr>) -> Attempt {
        Attempt {
            user: key("user", &username.trim().to_lowercase()),
            client: client.map(|ip| key("client", &ip.to_string())),
        }
    }

    /// `Err` when the username or the address has used up its failures. A cache error lets
    /// the attempt through (logged): the limit must not lock everyone out.
    ///
    /// # Errors
    /// [`Blocked`] with the time left.
    pub async fn check(&self, attempt: &Attempt) -> Result<(), Blocked> {
        let limits = [
            (Some(&attempt.user), self.config.per_user),
            (attempt.client.as_ref(), self.config.per_client),
        ];
        for (key, limit) in limits {
            let Some(key) = key else { continue };
            match self.cache.counter(key).await {
                Ok(Some(n)) if n >= limit => {
                    return Err(Blocked {
                        retry_after: self.time_left(key).await,
                    })
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "login limit not checked"),
            }
        }
        Ok(())
    }

    /// Counts a failed login. Returns `Err` when this failure used up a limit, so that the
    /// caller can say so at once.
    ///
    /// # Errors
    /// [`Blocked`] when a counter reached its limit.
    pub async fn failed(&self, attempt: &Attempt) -> Result<(), Blocked> {
        let mut blocked = Ok(());
        let limits = [
            (Some(&attempt.user), self.config.per_user),
            (attempt.client.as_ref(), self.config.per_client),
        ];
        for (key, limit) in limits {
            let Some(key) = key else { continue };
            match self.cache.incr(key).await {
                Ok(n) => {
                    if n == 1 {
                        // The first failure starts the window.
                        if let Err(e) = self.cache.expire(key, self.config.window).await {
                            tracing::warn!(error = %e, "login failure counter without expiry");
                        }
                    }
                    if n >= limit && blocked.is_ok() {
                        blocked = Err(Blocked {
                            retry_after: self.time_left(key).await,
                        });
                    }
                }
                Err(e) => tracing::warn!(error = %e, "login failure not counted"),
            }
        }
        blocked
    }

    /// A successful login clears its username's failures.
    pub async fn succeeded(&self, attempt: &Attempt) {
        if let Err(e) = self.cache.delete(&attempt.user).await {
            tracing::warn!(error = %e, "login failures not cleared");
        }
    }

    /// The time until the window of `key` ends; a counter found without an expiry (its
    /// `EXPIRE` was lost) gets a full window now, so that it cannot block for ever.
    async fn time_left(&self, key: &str) -> Duration {
        match self.cache.ttl(key).await {
            Ok(Some(left)) => left,
            Ok(None) => {
                if let Err(e) = self.cache.expire(key, self.config.window).await {
                    tracing::warn!(error = %e, "login failure counter without expiry");
                }
                self.config.window
            }
            Err(_) => self.config.window,
        }
    }
}

/// `ratelimit:login:<kind>:<hash of value>`.
fn key(kind: &str, value: &str) -> String {
    let digest = Sha256::digest(format!("erp-login-{kind}:{value}").as_bytes());
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("ratelimit:login:{kind}:{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::vars;

    fn limiter(pairs: &[(&str, &str)]) -> LoginLimiter {
        LoginLimiter::new(
            Cache::in_memory(),
            LimitConfig::from_vars(&vars(pairs)).unwrap(),
        )
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (k, v) in [
            ("LOGIN_MAX_FAILURES", "0"),
            ("LOGIN_MAX_FAILURES_PER_CLIENT", "many"),
            ("LOGIN_WINDOW_SECS", "-5"),
            ("TRUST_PROXY_HOPS", "100"),
        ] {
            let err = LimitConfig::from_vars(&vars(&[(k, v)])).unwrap_err();
            assert!(err.starts_with(k), "{err}");
        }
    }

    #[test]
    fn forwarded_addresses_are_ignored_unless_trusted() {
        let peer: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, 203.0.113.7, 10.0.0.9"),
        );
        let direct = limiter(&[]);
        assert_eq!(
            direct.client_addr(Some(peer), &headers),
            Some(peer.ip()),
            "not trusted by default"
        );
        let one = limiter(&[("TRUST_PROXY_HOPS", "1")]);
        assert_eq!(
            one.client_addr(Some(peer), &headers),
            "10.0.0.9".parse().ok()
        );
        let two = limiter(&[("TRUST_PROXY_HOPS", "2")]);
        assert_eq!(
            two.client_addr(Some(peer), &headers),
            "203.0.113.7".parse().ok()
        );
        assert_eq!(
            two.client_addr(Some(peer), &HeaderMap::new()),
            Some(peer.ip()),
            "no header: the peer"
        );
    }

    #[tokio::test]
    async fn failures_block_until_the_window_ends_and_success_clears_the_name() {
        let l = limiter(&[
            ("LOGIN_MAX_FAILURES", "3"),
            ("LOGIN_MAX_FAILURES_PER_CLIENT", "5"),
        ]);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let alice = l.attempt("Alice", Some(ip));
        assert!(l.failed(&alice).await.is_ok());
        assert!(l.failed(&alice).await.is_ok());
        let blocked = l.failed(&alice).await.unwrap_err();
        assert!(blocked.retry_after <= Duration::from_secs(900));
        assert!(blocked.retry_after > Duration::from_secs(890));
        assert!(l.check(&l.attempt("alice ", Some(ip))).await.is_err());
        let res = blocked.into_response();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(res.headers()[header::RETRY_AFTER], "900");
        // Another name from the same address: counted per address (5).
        let bob = l.attempt("bob", Some(ip));
        assert!(l.check(&bob).await.is_ok());
        assert!(l.failed(&bob).await.is_ok());
        assert!(l.failed(&bob).await.is_err(), "the address's 5th failure");
        assert!(l.check(&l.attempt("carol", Some(ip))).await.is_err());
        assert!(l.check(&l.attempt("carol", None)).await.is_ok());
        // Success clears the name only.
        l.succeeded(&alice).await;
        assert!(l.check(&l.attempt("alice", None)).await.is_ok());
    }
}
