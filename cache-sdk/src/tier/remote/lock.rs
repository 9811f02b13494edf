//! The distributed stampede lock's commands: take a short lock with a token
//! (`SET <key>:~lock <token> NX PX <ms>`), extend it and release it only when it still
//! holds that token (compare-and-pexpire and compare-and-delete scripts). See
//! `cache/stampede.rs` for the protocol.
//!
//! The lock lives on Redis only: it is never written to the fallback nor to the replay log.
//! While Redis is down (or not configured) both calls answer `None`, and the caller falls
//! back to the in-process single-flight. On a cluster the lock key is a key of its own,
//! routed to whatever slot it hashes to: no command touches the lock and the value
//! together, so they need not share a slot.
//!
//! May import: its parent's link and breaker. Must not: know what is being loaded.

use std::time::Duration;

use super::{millis, Remote};
use crate::tier::redis::Failure;

/// Deletes `KEYS[1]` only when it holds `ARGV[1]`; answers 1 when it did.
const RELEASE: &str = r"if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

/// Extends `KEYS[1]` to `ARGV[2]` ms only when it holds `ARGV[1]`; answers 1 when it did.
const EXTEND: &str = r"if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0";

/// The suffix of a lock key: `<key>:~lock` (with the namespace in front in Redis).
pub(crate) const LOCK_SUFFIX: &str = ":~lock";

/// The lock key of `key`, as the cache names keys (without the namespace).
pub(crate) fn lock_key(key: &str) -> String {
    format!("{key}{LOCK_SUFFIX}")
}

impl Remote {
    /// Tries to take the lock of `key` for `ttl` with `token`: `Some(true)` when taken,
    /// `Some(false)` when another holder has it, `None` when Redis is not in use (not
    /// configured, down, or refusing the command; the caller then goes without).
    pub(crate) async fn try_lock(&self, key: &str, token: &str, ttl: Duration) -> Option<bool> {
        self.on_runtime().await.ok()?;
        let link = self.up_link()?;
        let mut cmd = redis::cmd("SET");
        cmd.arg(&*self.rkey(&lock_key(key)))
            .arg(token)
            .arg("NX")
            .arg("PX")
            .arg(millis(ttl));
        match link.query::<Option<String>>(&cmd).await {
            Ok(set) => Some(set.is_some()),
            Err(f) => {
                self.lock_failed(f);
                None
            }
        }
    }

    /// Releases the lock of `key` if it still holds `token` (it may have expired and been
    /// taken by another holder: that one is left alone). Returns whether it was released.
    pub(crate) async fn unlock(&self, key: &str, token: &str) -> bool {
        if self.on_runtime().await.is_err() {
            return false;
        }
        let Some(link) = self.up_link() else {
            return false;
        };
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(RELEASE)
            .arg(1)
            .arg(&*self.rkey(&lock_key(key)))
            .arg(token);
        match link.query::<i64>(&cmd).await {
            Ok(n) => n == 1,
            Err(f) => {
                self.lock_failed(f);
                false
            }
        }
    }

    /// Extends the lock of `key` to `ttl` from now if it still holds `token`: `Some(true)`
    /// when extended, `Some(false)` when the lock is gone or held by another holder, `None`
    /// when Redis is not in use.
    pub(crate) async fn extend_lock(&self, key: &str, token: &str, ttl: Duration) -> Option<bool> {
        self.on_runtime().await.ok()?;
        let link = self.up_link()?;
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(EXTEND)
            .arg(1)
            .arg(&*self.rkey(&lock_key(key)))
            .arg(token)
            .arg(millis(ttl));
        match link.query::<i64>(&cmd).await {
            Ok(n) => Some(n == 1),
            Err(f) => {
                self.lock_failed(f);
                None
            }
        }
    }

    fn lock_failed(&self, failure: Failure) {
        match failure {
            Failure::Unavailable(why) => self.trip(&why),
            Failure::Rejected(why) => {
                tracing::warn!(error = %why, "stampede lock command refused; going without the lock");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_keys_extend_the_key() {
        assert_eq!(lock_key("cache:product:7"), "cache:product:7:~lock");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn without_redis_there_is_no_lock() {
        let remote = Remote::memory_only(&crate::config::CacheConfig::default());
        assert_eq!(
            remote.try_lock("k", "t", Duration::from_secs(1)).await,
            None
        );
        assert!(!remote.unlock("k", "t").await);
        assert_eq!(
            remote.extend_lock("k", "t", Duration::from_secs(1)).await,
            None
        );
    }
}
