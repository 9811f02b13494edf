//! Counters and the [`Stats`] snapshot, with its [`StoreKind`] and [`CoherenceState`].

use serde::Serialize;
use std::fmt;
use std::sync::atomic::AtomicU64;

#[cfg(feature = "metrics")]
use crate::metrics::Sampled;
use crate::metrics::{Count, L2Tally, Tally};
use crate::tier::remote::Remote;

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
///
/// In Rust, the state fields are enums:
///
/// ```
/// use cache_sdk::{CoherenceState, StoreKind};
/// let stats = cache_sdk::Cache::in_memory().stats();
/// assert_eq!(stats.store, StoreKind::Memory);
/// assert_eq!(stats.coherence, CoherenceState::Off);
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
    /// Where operations go now (serialized as `"redis"` or `"memory"`).
    pub store: StoreKind,
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
    /// How L1 is kept in step with other instances now (serialized as `"tracking"`,
    /// `"pubsub"`, `"down"` or `"off"`; see [`CoherenceState`]).
    pub coherence: CoherenceState,
    /// L1 entries evicted on word from Redis or another instance (a flush counts once).
    pub invalidations: u64,
    /// Times L1 was suspended because the invalidation link was lost.
    pub l1_resets: u64,
    /// Stale values served by fail-safe (loader failed or too slow, or re-armed).
    pub stale_served: u64,
    /// Calls answered with a stale value because the loader passed the soft timeout.
    pub soft_timeouts: u64,
    /// Calls whose loader passed the hard timeout.
    pub hard_timeouts: u64,
    /// Loads that finished and were stored after their caller stopped waiting.
    pub background_completions: u64,
    /// Eager refreshes started.
    pub refreshes_started: u64,
    /// Eager refreshes that stored a new value (or found one stored by another instance).
    pub refreshes_completed: u64,
    /// Eager refreshes whose loader failed, panicked or was cancelled.
    pub refreshes_failed: u64,
    /// Loads an open circuit breaker kept from their origin (answered stale, or failed
    /// fast); eager refreshes it skipped are not counted. See
    /// [`LoadOptions::origin`](crate::LoadOptions::origin).
    pub breaker_rejections: u64,
    /// Times an origin's circuit breaker opened.
    pub breakers_opened: u64,
    /// Probe loads sent to an origin whose breaker was open.
    pub breaker_probes: u64,
    /// Origins whose circuit breaker is open now.
    pub origins_open: u64,
}

/// Where operations go now: Redis, or the in-memory store (Redis not configured, or
/// unreachable). Serialized in lowercase, as its [`Display`](fmt::Display) form.
///
/// ```
/// use cache_sdk::StoreKind;
/// assert_eq!(serde_json::to_value(StoreKind::Redis).unwrap(), "redis");
/// assert_eq!(StoreKind::Memory.to_string(), "memory");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum StoreKind {
    /// Redis (one server or a cluster).
    Redis,
    /// The in-memory store of this process.
    Memory,
}

impl StoreKind {
    /// Redis when it is connected, else memory.
    pub(crate) fn current(connected: bool) -> Self {
        if connected {
            StoreKind::Redis
        } else {
            StoreKind::Memory
        }
    }

    /// The serialized name: `"redis"` or `"memory"`.
    ///
    /// ```
    /// assert_eq!(cache_sdk::StoreKind::Redis.as_str(), "redis");
    /// ```
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            StoreKind::Redis => "redis",
            StoreKind::Memory => "memory",
        }
    }
}

impl fmt::Display for StoreKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How L1 is kept in step with other instances now. Serialized in lowercase, as its
/// [`Display`](fmt::Display) form.
///
/// ```
/// use cache_sdk::CoherenceState;
/// assert_eq!(serde_json::to_value(CoherenceState::PubSub).unwrap(), "pubsub");
/// assert_eq!(CoherenceState::Tracking.to_string(), "tracking");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum CoherenceState {
    /// Redis `CLIENT TRACKING`: writes by any client evict L1.
    Tracking,
    /// Writes made through the SDK are published on a channel and evict L1 elsewhere.
    PubSub,
    /// The invalidation link is being re-established: L1 is suspended and reads go to L2.
    Down,
    /// No coherence: no Redis, no L1, or [`Coherence::Off`](crate::Coherence::Off) (or
    /// Redis refused every mechanism). L1 entries live at most the L1 TTL.
    Off,
}

impl CoherenceState {
    /// The serialized name: `"tracking"`, `"pubsub"`, `"down"` or `"off"`.
    ///
    /// ```
    /// assert_eq!(cache_sdk::CoherenceState::Down.as_str(), "down");
    /// ```
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            CoherenceState::Tracking => "tracking",
            CoherenceState::PubSub => "pubsub",
            CoherenceState::Down => "down",
            CoherenceState::Off => "off",
        }
    }
}

impl fmt::Display for CoherenceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The cache's counters. Each one counts for [`Stats`] and, with the `metrics` feature, into
/// the recorder installed when the cache was built (see [`crate::metrics`]).
#[derive(Debug, Default)]
pub(crate) struct CacheCounters {
    /// A plain atomic, also with the `metrics` feature: the sampler adds what it gained to
    /// `cache.requests{l1,hit}` every second (an L1 hit is the one path where a call into the
    /// recorder would show).
    pub(crate) l1_hits: AtomicU64,
    pub(crate) l1_misses: Tally,
    pub(crate) l2_hits: L2Tally,
    pub(crate) l2_misses: L2Tally,
    pub(crate) loads: Tally,
    pub(crate) load_errors: Tally,
    pub(crate) decode_errors: Tally,
    pub(crate) stale_served: Tally,
    pub(crate) soft_timeouts: Tally,
    pub(crate) hard_timeouts: Tally,
    pub(crate) background_completions: Tally,
    pub(crate) refreshes_started: Tally,
    pub(crate) refreshes_completed: Tally,
    pub(crate) refreshes_failed: Tally,
    /// What is sampled from the tiers for the recorder (gauges, replay and coherence counts).
    #[cfg(feature = "metrics")]
    pub(crate) sampled: Sampled,
}

impl CacheCounters {
    /// The counters of a cache whose L2 is `remote`, exported to the recorder installed now
    /// (with the `metrics` feature).
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn new(remote: &Remote) -> Self {
        #[cfg(not(feature = "metrics"))]
        return Self::default();
        #[cfg(feature = "metrics")]
        {
            use crate::metrics as m;
            let t = Tally::exported;
            Self {
                l1_hits: AtomicU64::new(0),
                l1_misses: t(
                    m::REQUESTS,
                    &[("cache.tier", "l1"), ("cache.result", "miss")],
                ),
                l2_hits: L2Tally::exported(remote, "hit"),
                l2_misses: L2Tally::exported(remote, "miss"),
                loads: t(m::LOADS, &[]),
                load_errors: t(m::LOAD_ERRORS, &[]),
                decode_errors: t(m::DECODE_ERRORS, &[]),
                stale_served: t(m::STALE_SERVED, &[]),
                soft_timeouts: t(m::LOAD_TIMEOUTS, &[("cache.timeout", "soft")]),
                hard_timeouts: t(m::LOAD_TIMEOUTS, &[("cache.timeout", "hard")]),
                background_completions: t(m::LOAD_BACKGROUND_COMPLETIONS, &[]),
                refreshes_started: t(m::REFRESHES, &[("cache.refresh.state", "started")]),
                refreshes_completed: t(m::REFRESHES, &[("cache.refresh.state", "completed")]),
                refreshes_failed: t(m::REFRESHES, &[("cache.refresh.state", "failed")]),
                sampled: Sampled::exported(),
            }
        }
    }
}

/// Adds one to a counter (a plain atomic, or one of [`CacheCounters`]).
#[inline]
pub(crate) fn bump(c: &impl Count) {
    c.bump();
}

/// A counter's value.
#[inline]
pub(crate) fn read(c: &impl Count) -> u64 {
    c.read()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_serialize_as_their_names() {
        for s in [StoreKind::Redis, StoreKind::Memory] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for s in [
            CoherenceState::Tracking,
            CoherenceState::PubSub,
            CoherenceState::Down,
            CoherenceState::Off,
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
            assert_eq!(s.to_string(), s.as_str());
        }
    }
}
