//! L1: typed values in the process. A hit is a hash lookup and an `Arc` clone: nothing is
//! decoded.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::sync::Cache as MokaCache;

use super::{DeadlineExpiry, HasDeadline};

pub(crate) type AnyValue = Arc<dyn Any + Send + Sync>;

#[derive(Clone)]
pub(crate) struct L1Entry {
    value: AnyValue,
    expires_at: Instant,
}

impl HasDeadline for L1Entry {
    fn deadline(&self) -> Option<Instant> {
        Some(self.expires_at)
    }
}

/// The typed in-process tier.
#[derive(Clone)]
pub(crate) struct Local {
    map: Option<MokaCache<String, L1Entry>>,
    max_ttl: Duration,
}

impl std::fmt::Debug for Local {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Local")
            .field("enabled", &self.map.is_some())
            .field("max_ttl", &self.max_ttl)
            .finish()
    }
}

impl Local {
    /// `capacity` entries at most (0 disables L1); no entry lives longer than `max_ttl`.
    pub(crate) fn new(capacity: u64, max_ttl: Duration) -> Self {
        let map = (capacity > 0 && !max_ttl.is_zero()).then(|| {
            MokaCache::builder()
                .max_capacity(capacity)
                .expire_after(DeadlineExpiry)
                .build()
        });
        Self { map, max_ttl }
    }

    #[inline]
    pub(crate) fn get<T: Send + Sync + 'static>(&self, key: &str) -> Option<Arc<T>> {
        self.map.as_ref()?.get(key)?.value.downcast::<T>().ok()
    }

    /// Stores `value` for at most `ttl` (capped by the L1 maximum).
    pub(crate) fn insert(&self, key: &str, value: AnyValue, ttl: Option<Duration>) {
        let Some(map) = &self.map else { return };
        let ttl = ttl.map_or(self.max_ttl, |t| t.min(self.max_ttl));
        if ttl.is_zero() {
            map.invalidate(key);
            return;
        }
        map.insert(
            key.to_owned(),
            L1Entry {
                value,
                expires_at: Instant::now() + ttl,
            },
        );
    }

    pub(crate) fn invalidate(&self, key: &str) {
        if let Some(map) = &self.map {
            map.invalidate(key);
        }
    }

    pub(crate) fn clear(&self) {
        if let Some(map) = &self.map {
            map.invalidate_all();
        }
    }

    pub(crate) fn len(&self) -> u64 {
        self.map.as_ref().map_or(0, |m| {
            m.run_pending_tasks();
            m.entry_count()
        })
    }
}
