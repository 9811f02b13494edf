//! The cache's side of observability: a `tracing` span (debug level) and, with the
//! `metrics` feature, a duration for each operation that reaches L2; the L2 availability
//! gauge and outages, moved by the remote tier's events; and the sampler that copies the
//! tiers' gauges and counts into the recorder every second (and on
//! [`Cache::record_metrics`]).
//!
//! An L1 hit is neither traced nor timed: it costs less than reading a clock. Keys appear in
//! spans only with [`CacheBuilder::log_keys`](crate::CacheBuilder::log_keys) (they can hold
//! user ids), and session ids never.
//!
//! May import: the cache's internals (it is a child of `cache`), `crate::metrics`.

use std::future::Future;

use tracing::Instrument;

use super::{log_key, Cache};
use crate::config::CacheConfig;
use crate::stats::bump;

/// An operation, as the `cache.operation` attribute and the span's `op` field name it.
#[derive(Debug, Clone, Copy)]
#[repr(usize)]
pub(crate) enum Op {
    Get,
    Set,
    Delete,
    Incr,
    GetOrLoad,
    GetRaw,
    SetRaw,
}

const OPS: [&str; 7] = [
    "get",
    "set",
    "delete",
    "incr",
    "get_or_load",
    "get_raw",
    "set_raw",
];

/// What a cache keeps for tracing and timing its operations.
#[derive(Debug)]
pub(crate) struct Observe {
    log_keys: bool,
    #[cfg(feature = "metrics")]
    durations: [::metrics::Histogram; 7],
}

impl Observe {
    /// Registers the duration histograms with the recorder installed now.
    pub(crate) fn new(cfg: &CacheConfig) -> Self {
        Self {
            log_keys: cfg.log_keys,
            #[cfg(feature = "metrics")]
            durations: OPS.map(|op| {
                ::metrics::histogram!(
                    crate::metrics::OPERATION_DURATION,
                    vec![::metrics::Label::from_static_parts("cache.operation", op)]
                )
            }),
        }
    }
}

impl Cache {
    /// Runs `fut`, the L2 part of operation `op` on `key`, in a debug span, and records its
    /// duration (`cache.operation.duration`).
    pub(crate) async fn traced<F: Future>(&self, op: Op, key: &str, fut: F) -> F::Output {
        let o = &self.inner.observe;
        let span =
            tracing::debug_span!("cache", op = OPS[op as usize], key = tracing::field::Empty);
        if o.log_keys && !span.is_disabled() {
            span.record("key", log_key(key));
        }
        #[cfg(feature = "metrics")]
        let started = std::time::Instant::now();
        let out = fut.instrument(span).await;
        #[cfg(feature = "metrics")]
        o.durations[op as usize].record(started.elapsed().as_secs_f64());
        out
    }
}

impl Cache {
    /// A stored value did not decode as `T`: counted, and logged as a warning at most once
    /// per interval (it can repeat on every request for a hot key).
    pub(crate) fn decode_failed<T>(&self, key: &str, error: &dyn std::fmt::Display) {
        static LIMIT: crate::log_limit::LogLimit = crate::log_limit::LogLimit::new();
        bump(&self.inner.counters.decode_errors);
        if let Some(suppressed) = LIMIT.allow() {
            tracing::warn!(
                key = log_key(key),
                error = %error,
                expected = std::any::type_name::<T>(),
                suppressed,
                "cached value does not decode; treated as a miss"
            );
        }
    }
}

#[cfg(feature = "metrics")]
impl Cache {
    /// Copies the gauges (entries, fallback bytes, pending replay, L2 availability) and the
    /// counts kept by the tiers (fallback operations, replayed writes, coherence
    /// invalidations) into the recorder now. A background task does it every second while
    /// the cache's runtime runs; call it before rendering a scrape to be exact to the
    /// moment.
    ///
    /// ```
    /// let cache = cache_sdk::Cache::in_memory();
    /// cache.record_metrics();
    /// ```
    pub fn record_metrics(&self) {
        let stats = self.stats();
        let fallback = self.inner.remote.fallback_store();
        self.inner.counters.sampled.record(&crate::metrics::Sample {
            l1_hits: stats.l1_hits,
            fallback_ops: stats.fallback_ops,
            replayed: stats.replayed,
            replay_skipped: stats.replay_skipped,
            replay_dropped: stats.replay_dropped,
            invalidations: stats.invalidations,
            l1_resets: stats.l1_resets,
            l1_entries: stats.l1_entries,
            fallback_entries: stats.in_memory_keys,
            fallback_bytes: fallback.weighted_size(),
            replay_pending: stats.replay_pending,
            available: stats.connected,
        });
    }
}

/// Starts feeding the recorder: the availability gauge and outages follow the remote
/// tier's events; the sampler runs every second (on the runtime that uses the cache).
#[cfg(feature = "metrics")]
pub(super) fn watch(cache: &Cache) {
    use crate::tier::remote::StoreEvent;
    let remote = &cache.inner.remote;
    let availability = crate::metrics::Availability::exported(remote.is_up());
    remote.on_event(move |event| match event {
        StoreEvent::Lost => availability.moved(false),
        StoreEvent::Recovered => availability.moved(true),
        StoreEvent::Replayed => {}
    });
    let weak = std::sync::Arc::downgrade(&cache.inner);
    remote.keep_running(
        move || {
            let weak = weak.clone();
            async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(inner) = weak.upgrade() else { return };
                    Cache { inner }.record_metrics();
                }
            }
        },
        || {},
    );
}

/// Without the `metrics` feature there is nothing to feed.
#[cfg(not(feature = "metrics"))]
pub(super) fn watch(_cache: &Cache) {}
