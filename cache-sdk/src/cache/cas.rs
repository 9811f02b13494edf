//! [`Cache::compare_and_set_raw`]: a raw write that applies only over the bytes the caller
//! read, for read-modify-write cycles that must not lose a concurrent change (sessions).
//!
//! May import: its parent's private write helpers and the remote tier's compare-and-set.
//! Must not: know what the bytes mean.

use std::time::Duration;

use super::Cache;
use crate::error::Result;
use crate::tier::remote::cas::Cas;
use crate::ttl::Ttl;

impl Cache {
    /// Writes `bytes` under `key` (raw, as [`Cache::set_raw`]) only when it holds exactly
    /// `expected`; on Redis one single-key script (works on a cluster), in the fallback
    /// the same check under the key's lock. A write drops the key from L1 here and, with
    /// coherence, on every instance.
    pub(crate) async fn compare_and_set_raw(
        &self,
        key: &str,
        expected: &[u8],
        bytes: Vec<u8>,
        ttl: Duration,
    ) -> Result<Cas> {
        let ttl = self.check_raw(key, &bytes, &Ttl::Custom(ttl))?;
        let result = self
            .inner
            .remote
            .compare_and_set(key, expected, bytes, ttl)
            .await;
        self.raw_written(key, matches!(result, Ok(Cas::Written)))
            .await;
        result
    }
}
