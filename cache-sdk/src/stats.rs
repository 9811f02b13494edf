//! Counters and the [`Stats`] snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// A snapshot of the cache's state and counters, from [`Cache::stats`](crate::Cache::stats).
///
/// Serializes in camelCase; the first three fields are the seed's shape
/// (`{"connected":…,"usingFallback":…,"inMemoryKeys":…}`).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let cache = cache_sdk::Cache::in_memory();
/// let json = serde_json::to_value(cache.stats()).unwrap();
/// assert_eq!(json["connected"], false);
/// assert_eq!(json["usingFallback"], true);
/// assert_eq!(json["store"], "memory");
/// assert_eq!(json["coherence"], "off");
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Stats {
    /// Operations go to Redis now.
    pub connected: bool,
    /// Operations go to the in-memory store now (Redis disabled or unavailable).
    pub using_fallback: bool,
    /// Keys held by the in-memory store.
    pub in_memory_keys: u64,
    /// `"redis"` or `"memory"`: where operations go now.
    pub store: &'static str,
    /// Whether Redis is configured at all.
    pub redis_configured: bool,
    /// Entries in L1.
    pub l1_entries: u64,
    /// Reads answered by L1.
    pub l1_hits: u64,
    /// Reads L1 could not answer.
    pub l1_misses: u64,
    /// Reads answered by L2 (Redis or the fallback).
    pub l2_hits: u64,
    /// Reads L2 could not answer (including values that did not decode).
    pub l2_misses: u64,
    /// Loader runs in `get_or_load`.
    pub loads: u64,
    /// Loader runs that returned an error.
    pub load_errors: u64,
    /// Stored values that did not decode (read as misses).
    pub decode_errors: u64,
    /// Errors Redis answered (WRONGTYPE, OOM, …).
    pub backend_errors: u64,
    /// Operations served by the fallback.
    pub fallback_ops: u64,
    /// Times Redis became unavailable.
    pub outages: u64,
    /// Outage writes replayed to Redis.
    pub replayed: u64,
    /// Outage writes skipped at replay (expired, superseded by a newer value, or refused).
    pub replay_skipped: u64,
    /// Outage writes waiting for Redis.
    pub replay_pending: u64,
    /// Outage writes to new keys not kept for replay because the log was full.
    pub replay_dropped: u64,
    /// How L1 is kept in step with other instances now: `"tracking"` (Redis
    /// `CLIENT TRACKING`: writes by any client evict L1), `"pubsub"` (writes made through
    /// the SDK are published), `"down"` (the invalidation link is being re-established: L1
    /// is suspended and reads go to L2), or `"off"` (no Redis, no L1, or
    /// [`Coherence::Off`](crate::Coherence::Off): L1 entries live at most the L1 TTL).
    pub coherence: &'static str,
    /// L1 entries evicted on word from Redis or another instance (a flush counts once).
    pub invalidations: u64,
    /// Times L1 was suspended because the invalidation link was lost.
    pub l1_resets: u64,
}

#[derive(Debug, Default)]
pub(crate) struct CacheCounters {
    pub(crate) l1_hits: AtomicU64,
    pub(crate) l1_misses: AtomicU64,
    pub(crate) l2_hits: AtomicU64,
    pub(crate) l2_misses: AtomicU64,
    pub(crate) loads: AtomicU64,
    pub(crate) load_errors: AtomicU64,
    pub(crate) decode_errors: AtomicU64,
}

#[inline]
pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

#[inline]
pub(crate) fn read(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}
