//! Compare-and-set on one key: the atomic primitive behind sessions that never lose a
//! write. One `EVAL` of a single-key script on Redis (so it works on a cluster), and the
//! same check-then-write under the key's entry lock in the in-memory fallback (a write
//! there goes into the replay log like any other).
//!
//! May import: its parent's private write path and replay helpers. Must not: know what the
//! bytes mean.

use std::sync::Arc;
use std::time::Duration;

use redis::Value;

use super::{millis, pending_set, Remote};

use crate::error::Error;

/// Writes `ARGV[2]` with `PX ARGV[3]` only when the key holds exactly `ARGV[1]`.
/// Answers 1 (written), 0 (no such key) or the value the key holds instead.
const SCRIPT: &str = r"local cur = redis.call('GET', KEYS[1])
if not cur then return 0 end
if cur ~= ARGV[1] then return cur end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1";

/// What a compare-and-set did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Cas {
    /// The key held the expected bytes: it now holds the new ones.
    Written,
    /// The key does not exist (never written, deleted or expired): nothing was written.
    Missing,
    /// The key holds these bytes instead: nothing was written.
    Changed(Vec<u8>),
}

impl Remote {
    /// Sets `key` to `bytes` with `ttl` only when it holds exactly `expected`.
    pub(crate) async fn compare_and_set(
        &self,
        key: &str,
        expected: &[u8],
        bytes: Vec<u8>,
        ttl: Duration,
    ) -> Result<Cas, Error> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(SCRIPT)
            .arg(1)
            .arg(&*self.rkey(key))
            .arg(expected)
            .arg(&bytes)
            .arg(millis(ttl));
        self.write(
            &[key],
            |l| {
                let cmd = &cmd;
                async move {
                    Ok(match l.query::<Value>(cmd).await? {
                        Value::Int(1) => Cas::Written,
                        Value::BulkString(cur) => Cas::Changed(cur),
                        _ => Cas::Missing,
                    })
                }
            },
            |m, log| {
                let bytes: Arc<[u8]> = bytes.into();
                let outcome = m.compare_and_set(key, expected, bytes.clone(), ttl);
                if let (Cas::Written, Some(log)) = (&outcome, log) {
                    log.record(key, pending_set(&bytes, Some(ttl)));
                }
                outcome
            },
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tier::memory::MemoryStore;

    #[test]
    fn the_fallback_writes_only_over_the_expected_bytes() {
        let m = MemoryStore::new(1 << 20);
        let ttl = Duration::from_secs(60);
        assert_eq!(
            m.compare_and_set("k", b"a", Arc::from(&b"b"[..]), ttl),
            Cas::Missing
        );
        m.set("k", Arc::from(&b"a"[..]), Some(ttl));
        assert_eq!(
            m.compare_and_set("k", b"x", Arc::from(&b"b"[..]), ttl),
            Cas::Changed(b"a".to_vec())
        );
        assert_eq!(
            m.compare_and_set("k", b"a", Arc::from(&b"b"[..]), ttl),
            Cas::Written
        );
        assert_eq!(&*m.get("k").expect("set").bytes, b"b");
    }
}
