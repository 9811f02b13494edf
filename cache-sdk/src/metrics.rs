//! Metrics through the [`metrics`](https://docs.rs/metrics) facade (feature `metrics`), so
//! that the application picks the exporter (Prometheus, OpenTelemetry, StatsD, …).
//!
//! Install the exporter's recorder **before** building the cache: a cache registers its
//! handles once, when it is built, with the recorder installed then (a handle registered
//! before any recorder stays a no-op). Every name, its type, unit, attributes and meaning
//! are in `docs/observability.md`; the constants below ([`REQUESTS`], …) are those names.
//! Names follow the OpenTelemetry conventions (dotted, attributes in their own namespace);
//! a Prometheus exporter turns the dots into underscores (`cache.requests` is scraped as
//! `cache_requests`, the attribute `cache.tier` as the label `cache_tier`).
//!
// The examples use the public module, which exists with the feature only.
#![cfg_attr(feature = "metrics", doc = "```")]
#![cfg_attr(not(feature = "metrics"), doc = "```ignore")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), cache_sdk::BuildError> {
//! // With an exporter: `metrics_exporter_prometheus::PrometheusBuilder::new()
//! //     .set_buckets(cache_sdk::metrics::DURATION_BUCKETS)?.install_recorder()?`, then:
//! cache_sdk::metrics::describe();
//! let cache = cache_sdk::Cache::builder().build().await?;
//! cache.record_metrics(); // gauges now (a background task also does it every second)
//! # Ok(()) }
//! ```
//!
//! Cost: the counters that [`Cache::stats`](crate::Cache::stats) reports count into a
//! handle registered once (no label is built per call), except L1 hits, which count in a
//! plain atomic that the sampler adds to the recorder (so an L1 hit costs the same with the
//! feature as without); durations are measured only on paths that reach L2 or run a
//! loader. Without the feature, nothing here exists at run time.
//!
//! Owns: the names, the handles, and the counters that count into both [`Stats`] and the
//! recorder (`Tally`, `L2Tally`). May import: the remote tier (to tell Redis from the
//! fallback), error kinds. Nothing depends on it for correctness.
//!
//! [`Stats`]: crate::Stats

// Without the feature the names and buckets are unused: this module then only counts for
// `Stats`.
#![cfg_attr(not(feature = "metrics"), allow(dead_code))]

use std::sync::atomic::{AtomicU64, Ordering};
#[cfg(feature = "metrics")]
use std::time::Instant;

#[cfg(feature = "metrics")]
use ::metrics::{Counter, Gauge, Histogram, Unit};

#[cfg(feature = "metrics")]
use crate::error::BackendErrorKind;
#[cfg(feature = "metrics")]
use crate::tier::remote::Remote;

/// `cache.requests`: reads, by `cache.tier` (`l1`, `l2`, `fallback`) and `cache.result`
/// (`hit`, `miss`).
pub const REQUESTS: &str = "cache.requests";
/// `cache.operation.duration` (seconds): operations that reached L2, by `cache.operation`.
pub const OPERATION_DURATION: &str = "cache.operation.duration";
/// `cache.loads`: loader runs.
pub const LOADS: &str = "cache.loads";
/// `cache.load.errors`: loader runs that failed (an error or a panic).
pub const LOAD_ERRORS: &str = "cache.load.errors";
/// `cache.load.duration` (seconds): loader runs, by `cache.load.result` (`ok`, `error`).
pub const LOAD_DURATION: &str = "cache.load.duration";
/// `cache.load.coalesced`: callers served by a load another caller ran (single-flight).
pub const LOAD_COALESCED: &str = "cache.load.coalesced";
/// `cache.load.timeouts`: loads that passed a timeout, by `cache.timeout` (`soft`, `hard`).
pub const LOAD_TIMEOUTS: &str = "cache.load.timeouts";
/// `cache.load.background_completions`: loads stored after their caller stopped waiting.
pub const LOAD_BACKGROUND_COMPLETIONS: &str = "cache.load.background_completions";
/// `cache.stale.served`: stale values served by fail-safe.
pub const STALE_SERVED: &str = "cache.stale.served";
/// `cache.refreshes`: eager refreshes, by `cache.refresh.state` (`started`, `completed`,
/// `failed`).
pub const REFRESHES: &str = "cache.refreshes";
/// `cache.breaker.rejections`: loads an origin's circuit breaker kept from the origin
/// (served stale, or failed fast).
pub const BREAKER_REJECTIONS: &str = "cache.breaker.rejections";
/// `cache.breaker.opened`: times an origin's circuit breaker opened.
pub const BREAKER_OPENED: &str = "cache.breaker.opened";
/// `cache.breaker.probes`: probe loads sent to an origin whose breaker is open.
pub const BREAKER_PROBES: &str = "cache.breaker.probes";
/// `cache.breaker.open`: origins whose circuit breaker is open now.
pub const BREAKER_OPEN: &str = "cache.breaker.open";
/// `cache.decode.errors`: stored values that did not decode (read as misses).
pub const DECODE_ERRORS: &str = "cache.decode.errors";
/// `cache.redis.duration` (seconds): each Redis round trip (a command or a pipeline).
pub const REDIS_DURATION: &str = "cache.redis.duration";
/// `cache.redis.errors`: failed Redis calls, by `error.type` (`timeout`, `unreachable`,
/// `authentication`, `not_ready`, `rejected`).
pub const REDIS_ERRORS: &str = "cache.redis.errors";
/// `cache.l2.available`: 1 while operations go to Redis, 0 on the fallback.
pub const L2_AVAILABLE: &str = "cache.l2.available";
/// `cache.l2.outages`: times Redis became unavailable.
pub const L2_OUTAGES: &str = "cache.l2.outages";
/// `cache.l2.outage.duration` (seconds): how long each outage lasted.
pub const L2_OUTAGE_DURATION: &str = "cache.l2.outage.duration";
/// `cache.fallback.operations`: operations served by the fallback.
pub const FALLBACK_OPERATIONS: &str = "cache.fallback.operations";
/// `cache.fallback.bytes` (bytes): what the fallback holds (keys, values, overhead).
pub const FALLBACK_BYTES: &str = "cache.fallback.bytes";
/// `cache.entries`: entries held, by `cache.tier` (`l1`, `fallback`).
pub const ENTRIES: &str = "cache.entries";
/// `cache.evictions`: entries evicted for room, by `cache.tier` (`l1`, `fallback`).
pub const EVICTIONS: &str = "cache.evictions";
/// `cache.replay.pending`: outage writes waiting for Redis.
pub const REPLAY_PENDING: &str = "cache.replay.pending";
/// `cache.replay.writes`: outage writes, by `cache.replay.result` (`replayed`, `skipped`,
/// `dropped`).
pub const REPLAY_WRITES: &str = "cache.replay.writes";
/// `cache.coherence.invalidations`: L1 entries evicted on word from Redis or another
/// instance.
pub const COHERENCE_INVALIDATIONS: &str = "cache.coherence.invalidations";
/// `cache.coherence.l1_resets`: times L1 was suspended because the invalidation link was
/// lost.
pub const COHERENCE_L1_RESETS: &str = "cache.coherence.l1_resets";
/// `cache.session.created`: sessions created.
pub const SESSION_CREATED: &str = "cache.session.created";
/// `cache.session.destroyed`: sessions destroyed (logout, `destroy`).
pub const SESSION_DESTROYED: &str = "cache.session.destroyed";
/// `cache.session.regenerated`: sessions given a new id.
pub const SESSION_REGENERATED: &str = "cache.session.regenerated";
/// `cache.session.rejected`: session cookies not accepted, by `cache.session.reason`
/// (`bad_signature`, `unknown_id`).
pub const SESSION_REJECTED: &str = "cache.session.rejected";
/// `cache.session.secret_rotations`: cookies accepted under an older secret.
pub const SESSION_SECRET_ROTATIONS: &str = "cache.session.secret_rotations";
/// `cache.session.save_failures`: session writes that failed (the response went without
/// them).
pub const SESSION_SAVE_FAILURES: &str = "cache.session.save_failures";

/// Histogram buckets, in seconds, for the SDK's durations (100 µs to 2.5 s): pass them to
/// the exporter (`PrometheusBuilder::set_buckets`) so durations are real histograms.
///
#[cfg_attr(feature = "metrics", doc = "```")]
#[cfg_attr(not(feature = "metrics"), doc = "```ignore")]
/// assert!(cache_sdk::metrics::DURATION_BUCKETS.windows(2).all(|w| w[0] < w[1]));
/// ```
pub const DURATION_BUCKETS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Histogram buckets, in seconds, for [`L2_OUTAGE_DURATION`] (100 ms to 1 h).
///
#[cfg_attr(feature = "metrics", doc = "```")]
#[cfg_attr(not(feature = "metrics"), doc = "```ignore")]
/// assert_eq!(cache_sdk::metrics::OUTAGE_BUCKETS.last(), Some(&3600.0));
/// ```
pub const OUTAGE_BUCKETS: &[f64] = &[0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0];

/// Gives the installed recorder each metric's unit and description (Prometheus shows them
/// as `# HELP` lines), and registers the metrics that no cache registers when it is built
/// (sessions, coalesced loads, load durations), so that they show as zero before their
/// first event instead of being absent. Call it once, after installing the recorder;
/// calling it again is harmless.
///
/// ```
/// cache_sdk::metrics::describe();
/// ```
#[cfg(feature = "metrics")]
pub fn describe() {
    use ::metrics::{describe_counter, describe_gauge, describe_histogram};
    let counters: [(&'static str, Unit, &'static str); 25] = [
        (REQUESTS, Unit::Count, "Cache reads by tier and result"),
        (LOADS, Unit::Count, "Loader runs"),
        (LOAD_ERRORS, Unit::Count, "Loader runs that failed"),
        (
            LOAD_COALESCED,
            Unit::Count,
            "Callers served by another caller's load",
        ),
        (
            LOAD_TIMEOUTS,
            Unit::Count,
            "Loads past their soft or hard timeout",
        ),
        (
            LOAD_BACKGROUND_COMPLETIONS,
            Unit::Count,
            "Loads stored after their caller left",
        ),
        (
            STALE_SERVED,
            Unit::Count,
            "Stale values served by fail-safe",
        ),
        (REFRESHES, Unit::Count, "Eager refreshes"),
        (
            BREAKER_REJECTIONS,
            Unit::Count,
            "Loads an open circuit breaker kept from the origin",
        ),
        (
            BREAKER_OPENED,
            Unit::Count,
            "Times an origin's circuit breaker opened",
        ),
        (
            BREAKER_PROBES,
            Unit::Count,
            "Probe loads sent to an origin whose breaker is open",
        ),
        (
            DECODE_ERRORS,
            Unit::Count,
            "Stored values that did not decode",
        ),
        (
            REDIS_ERRORS,
            Unit::Count,
            "Failed Redis calls by error type",
        ),
        (L2_OUTAGES, Unit::Count, "Times Redis became unavailable"),
        (
            FALLBACK_OPERATIONS,
            Unit::Count,
            "Operations served by the fallback",
        ),
        (EVICTIONS, Unit::Count, "Entries evicted for room"),
        (
            REPLAY_WRITES,
            Unit::Count,
            "Outage writes replayed, skipped or dropped",
        ),
        (
            COHERENCE_INVALIDATIONS,
            Unit::Count,
            "L1 entries evicted on word from elsewhere",
        ),
        (
            COHERENCE_L1_RESETS,
            Unit::Count,
            "Times L1 was suspended (link lost)",
        ),
        (SESSION_CREATED, Unit::Count, "Sessions created"),
        (SESSION_DESTROYED, Unit::Count, "Sessions destroyed"),
        (SESSION_REGENERATED, Unit::Count, "Sessions given a new id"),
        (SESSION_REJECTED, Unit::Count, "Session cookies rejected"),
        (
            SESSION_SECRET_ROTATIONS,
            Unit::Count,
            "Cookies accepted under an older secret",
        ),
        (
            SESSION_SAVE_FAILURES,
            Unit::Count,
            "Session writes that failed",
        ),
    ];
    for (name, unit, text) in counters {
        describe_counter!(name, unit, text);
    }
    let gauges: [(&'static str, Unit, &'static str); 5] = [
        (
            L2_AVAILABLE,
            Unit::Count,
            "1 while operations go to Redis, 0 on the fallback",
        ),
        (FALLBACK_BYTES, Unit::Bytes, "Bytes held by the fallback"),
        (
            BREAKER_OPEN,
            Unit::Count,
            "Origins whose circuit breaker is open now",
        ),
        (ENTRIES, Unit::Count, "Entries held by tier"),
        (
            REPLAY_PENDING,
            Unit::Count,
            "Outage writes waiting for Redis",
        ),
    ];
    for (name, unit, text) in gauges {
        describe_gauge!(name, unit, text);
    }
    let histograms: [(&'static str, &'static str); 5] = [
        (OPERATION_DURATION, "Cache operations that reached L2"),
        (LOAD_DURATION, "Loader runs"),
        (REDIS_DURATION, "Redis round trips"),
        (L2_OUTAGE_DURATION, "Outage lengths"),
        ("http.server.request.duration", "HTTP requests served"),
    ];
    for (name, text) in histograms {
        describe_histogram!(name, Unit::Seconds, text);
    }
    for name in [
        SESSION_CREATED,
        SESSION_DESTROYED,
        SESSION_REGENERATED,
        SESSION_SECRET_ROTATIONS,
        SESSION_SAVE_FAILURES,
        LOAD_COALESCED,
    ] {
        ::metrics::counter!(name).increment(0);
    }
    for reason in ["bad_signature", "unknown_id"] {
        ::metrics::counter!(
            SESSION_REJECTED,
            labels_of(&[("cache.session.reason", reason)])
        )
        .increment(0);
    }
    for result in ["ok", "error"] {
        // Registered, not observed: an empty histogram.
        let _ = ::metrics::histogram!(LOAD_DURATION, labels_of(&[("cache.load.result", result)]));
    }
}

/// One of the counters [`Stats`](crate::Stats) reports, counting into the recorder too.
#[derive(Debug)]
pub(crate) struct Tally {
    n: AtomicU64,
    #[cfg(feature = "metrics")]
    m: Counter,
}

impl Default for Tally {
    fn default() -> Self {
        Self {
            n: AtomicU64::new(0),
            #[cfg(feature = "metrics")]
            m: Counter::noop(),
        }
    }
}

impl Tally {
    /// A tally exported as `name` with `labels`, registered now.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn exported(name: &'static str, labels: &[(&'static str, &'static str)]) -> Self {
        Self {
            n: AtomicU64::new(0),
            #[cfg(feature = "metrics")]
            m: ::metrics::counter!(name, labels_of(labels)),
        }
    }
}

/// The L2 side of `cache.requests`: the tier (`l2` or `fallback`) is where operations go at
/// the time of counting.
#[derive(Debug, Default)]
pub(crate) struct L2Tally {
    n: AtomicU64,
    #[cfg(feature = "metrics")]
    m: Option<(Remote, Counter, Counter)>,
}

impl L2Tally {
    /// `cache.requests` with `cache.result` = `result`, by the tier of `remote`.
    #[cfg(feature = "metrics")]
    pub(crate) fn exported(remote: &Remote, result: &'static str) -> Self {
        let l2 = ::metrics::counter!(
            REQUESTS,
            labels_of(&[("cache.tier", "l2"), ("cache.result", result)])
        );
        let fallback = ::metrics::counter!(
            REQUESTS,
            labels_of(&[("cache.tier", "fallback"), ("cache.result", result)])
        );
        Self {
            n: AtomicU64::new(0),
            m: Some((remote.clone(), l2, fallback)),
        }
    }
}

/// A counter of [`Stats`](crate::Stats): a plain atomic, or one that also counts into the
/// recorder.
pub(crate) trait Count {
    /// Adds one.
    fn bump(&self);
    /// The count so far.
    fn read(&self) -> u64;
}

impl Count for AtomicU64 {
    #[inline]
    fn bump(&self) {
        self.fetch_add(1, Ordering::Relaxed);
    }
    #[inline]
    fn read(&self) -> u64 {
        self.load(Ordering::Relaxed)
    }
}

impl Count for Tally {
    #[inline]
    fn bump(&self) {
        self.n.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        self.m.increment(1);
    }
    #[inline]
    fn read(&self) -> u64 {
        self.n.load(Ordering::Relaxed)
    }
}

impl Count for L2Tally {
    #[inline]
    fn bump(&self) {
        self.n.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        if let Some((remote, l2, fallback)) = &self.m {
            if remote.is_up() { l2 } else { fallback }.increment(1);
        }
    }
    #[inline]
    fn read(&self) -> u64 {
        self.n.load(Ordering::Relaxed)
    }
}

#[cfg(feature = "metrics")]
fn labels_of(labels: &[(&'static str, &'static str)]) -> Vec<::metrics::Label> {
    labels
        .iter()
        .map(|&(k, v)| ::metrics::Label::from_static_parts(k, v))
        .collect()
}

/// The handles of one Redis link: round-trip latency and errors by kind, registered when
/// the link is built.
#[derive(Debug)]
pub(crate) struct LinkMetrics {
    #[cfg(feature = "metrics")]
    duration: Histogram,
    /// By [`BackendErrorKind`]: rejected, timeout, unreachable, authentication, not ready.
    #[cfg(feature = "metrics")]
    errors: [Counter; 5],
}

impl LinkMetrics {
    /// Registers the handles with the recorder installed now.
    pub(crate) fn new() -> Self {
        Self {
            #[cfg(feature = "metrics")]
            duration: ::metrics::histogram!(REDIS_DURATION),
            #[cfg(feature = "metrics")]
            errors: [
                "rejected",
                "timeout",
                "unreachable",
                "authentication",
                "not_ready",
            ]
            .map(|kind| ::metrics::counter!(REDIS_ERRORS, labels_of(&[("error.type", kind)]))),
        }
    }

    /// Runs one Redis call, recording its round trip and, when it fails, its kind.
    #[inline]
    pub(crate) async fn observe<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, crate::tier::redis::Failure>>,
    ) -> Result<T, crate::tier::redis::Failure> {
        #[cfg(feature = "metrics")]
        let started = Instant::now();
        let result = call.await;
        #[cfg(feature = "metrics")]
        {
            self.duration.record(started.elapsed().as_secs_f64());
            if let Err(failure) = &result {
                let i = match failure.error().kind() {
                    BackendErrorKind::Rejected => 0,
                    BackendErrorKind::Timeout => 1,
                    BackendErrorKind::Unreachable => 2,
                    BackendErrorKind::Authentication => 3,
                    BackendErrorKind::NotReady => 4,
                };
                self.errors[i].increment(1);
            }
        }
        result
    }
}

/// Runs a loader, recording how long it took and whether it failed.
#[inline]
pub(crate) async fn timed_load<T, E>(
    load: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, E> {
    #[cfg(feature = "metrics")]
    let started = Instant::now();
    let result = load.await;
    #[cfg(feature = "metrics")]
    {
        let histogram = if result.is_ok() {
            ::metrics::histogram!(LOAD_DURATION, "cache.load.result" => "ok")
        } else {
            ::metrics::histogram!(LOAD_DURATION, "cache.load.result" => "error")
        };
        histogram.record(started.elapsed().as_secs_f64());
    }
    result
}

/// A caller got the value another caller of the same key loaded.
#[inline]
pub(crate) fn coalesced() {
    #[cfg(feature = "metrics")]
    ::metrics::counter!(LOAD_COALESCED).increment(1);
}

/// Counts a session event: `created`, `destroyed` or `regenerated`, a rejected cookie
/// (`bad_signature`, `unknown_id`), a cookie signed with an older secret, a failed save.
#[cfg(feature = "sessions")]
#[derive(Debug, Clone, Copy)]
pub(crate) enum SessionEvent {
    Created,
    Destroyed,
    Regenerated,
    BadSignature,
    UnknownId,
    OlderSecret,
    SaveFailed,
}

#[cfg(feature = "sessions")]
impl SessionEvent {
    /// Counts the event (session events happen at most a few times per request, each
    /// beside a store call or an HMAC, so the handle is looked up per call).
    #[inline]
    pub(crate) fn count(self) {
        #[cfg(feature = "metrics")]
        match self {
            SessionEvent::Created => ::metrics::counter!(SESSION_CREATED).increment(1),
            SessionEvent::Destroyed => ::metrics::counter!(SESSION_DESTROYED).increment(1),
            SessionEvent::Regenerated => ::metrics::counter!(SESSION_REGENERATED).increment(1),
            SessionEvent::BadSignature => {
                ::metrics::counter!(SESSION_REJECTED, "cache.session.reason" => "bad_signature")
                    .increment(1);
            }
            SessionEvent::UnknownId => {
                ::metrics::counter!(SESSION_REJECTED, "cache.session.reason" => "unknown_id")
                    .increment(1);
            }
            SessionEvent::OlderSecret => {
                ::metrics::counter!(SESSION_SECRET_ROTATIONS).increment(1);
            }
            SessionEvent::SaveFailed => ::metrics::counter!(SESSION_SAVE_FAILURES).increment(1),
        }
    }

    /// A session cookie was checked: `None` when its signature did not verify, else whether
    /// an older secret signed it.
    #[inline]
    pub(crate) fn verified(rotated: Option<bool>) {
        match rotated {
            None => SessionEvent::BadSignature.count(),
            Some(true) => SessionEvent::OlderSecret.count(),
            Some(false) => {}
        }
    }

    /// A verified cookie's session was looked up: nothing found means an unknown (or
    /// expired) id.
    #[inline]
    pub(crate) fn found<T>(found: Option<T>) -> Option<T> {
        if found.is_none() {
            SessionEvent::UnknownId.count();
        }
        found
    }
}

/// The counters and gauges sampled from [`Stats`](crate::Stats) (every second, and on
/// [`Cache::record_metrics`](crate::Cache::record_metrics)), with the values last seen so
/// that several caches in one process add up.
#[derive(Debug, Default)]
pub(crate) struct Sampled {
    #[cfg(feature = "metrics")]
    handles: Option<Box<SampledHandles>>,
}

#[cfg(feature = "metrics")]
#[derive(Debug)]
struct SampledHandles {
    l1_entries: Gauge,
    fallback_entries: Gauge,
    fallback_bytes: Gauge,
    replay_pending: Gauge,
    available: Gauge,
    /// Counters turned into deltas: (handle, last value seen).
    deltas: std::sync::Mutex<[(Counter, u64); 7]>,
}

/// What the sampler reads: the cumulative counts (in the order of the deltas) and the
/// gauges.
#[cfg(feature = "metrics")]
pub(crate) struct Sample {
    pub(crate) l1_hits: u64,
    pub(crate) fallback_ops: u64,
    pub(crate) replayed: u64,
    pub(crate) replay_skipped: u64,
    pub(crate) replay_dropped: u64,
    pub(crate) invalidations: u64,
    pub(crate) l1_resets: u64,
    pub(crate) l1_entries: u64,
    pub(crate) fallback_entries: u64,
    pub(crate) fallback_bytes: u64,
    pub(crate) replay_pending: u64,
    pub(crate) available: bool,
}

impl Sampled {
    /// Registers the handles with the recorder installed now.
    pub(crate) fn exported() -> Self {
        #[cfg(feature = "metrics")]
        {
            let c = |name: &'static str, labels: &[(&'static str, &'static str)]| {
                (::metrics::counter!(name, labels_of(labels)), 0)
            };
            Self {
                handles: Some(Box::new(SampledHandles {
                    l1_entries: ::metrics::gauge!(ENTRIES, "cache.tier" => "l1"),
                    fallback_entries: ::metrics::gauge!(ENTRIES, "cache.tier" => "fallback"),
                    fallback_bytes: ::metrics::gauge!(FALLBACK_BYTES),
                    replay_pending: ::metrics::gauge!(REPLAY_PENDING),
                    available: ::metrics::gauge!(L2_AVAILABLE),
                    deltas: std::sync::Mutex::new([
                        c(REQUESTS, &[("cache.tier", "l1"), ("cache.result", "hit")]),
                        c(FALLBACK_OPERATIONS, &[]),
                        c(REPLAY_WRITES, &[("cache.replay.result", "replayed")]),
                        c(REPLAY_WRITES, &[("cache.replay.result", "skipped")]),
                        c(REPLAY_WRITES, &[("cache.replay.result", "dropped")]),
                        c(COHERENCE_INVALIDATIONS, &[]),
                        c(COHERENCE_L1_RESETS, &[]),
                    ]),
                })),
            }
        }
        #[cfg(not(feature = "metrics"))]
        Self {}
    }

    /// Sets the gauges and adds what the counters gained since the last sample.
    #[cfg(feature = "metrics")]
    pub(crate) fn record(&self, s: &Sample) {
        let Some(h) = &self.handles else { return };
        #[allow(clippy::cast_precision_loss)]
        {
            h.l1_entries.set(s.l1_entries as f64);
            h.fallback_entries.set(s.fallback_entries as f64);
            h.fallback_bytes.set(s.fallback_bytes as f64);
            h.replay_pending.set(s.replay_pending as f64);
        }
        h.available.set(if s.available { 1.0 } else { 0.0 });
        let now = [
            s.l1_hits,
            s.fallback_ops,
            s.replayed,
            s.replay_skipped,
            s.replay_dropped,
            s.invalidations,
            s.l1_resets,
        ];
        let mut deltas = h
            .deltas
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for ((counter, last), now) in deltas.iter_mut().zip(now) {
            if now > *last {
                counter.increment(now - *last);
            }
            *last = now;
        }
    }
}

/// The availability gauge and the outage count and lengths, moved by the remote tier's
/// events as they happen.
#[cfg(feature = "metrics")]
#[derive(Debug)]
pub(crate) struct Availability {
    available: Gauge,
    outages: Counter,
    duration: Histogram,
    since: std::sync::Mutex<Option<Instant>>,
}

#[cfg(feature = "metrics")]
impl Availability {
    /// Registers the handles, and sets the gauge for where operations go now.
    pub(crate) fn exported(up: bool) -> Self {
        let a = Self {
            available: ::metrics::gauge!(L2_AVAILABLE),
            outages: ::metrics::counter!(L2_OUTAGES),
            duration: ::metrics::histogram!(L2_OUTAGE_DURATION),
            since: std::sync::Mutex::new((!up).then(Instant::now)),
        };
        a.available.set(if up { 1.0 } else { 0.0 });
        a
    }

    /// Redis was lost (`up` false) or serves again (`up` true).
    pub(crate) fn moved(&self, up: bool) {
        let mut since = self
            .since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if up {
            self.available.set(1.0);
            if let Some(t) = since.take() {
                self.duration.record(t.elapsed().as_secs_f64());
            }
        } else {
            self.available.set(0.0);
            if since.is_none() {
                *since = Some(Instant::now());
                self.outages.increment(1);
            }
        }
    }
}

/// The gauge of origins whose circuit breaker is open ([`BREAKER_OPEN`]), moved up and
/// down as breakers open and close, so that several caches in one process add up.
#[derive(Debug)]
pub(crate) struct OpenOrigins {
    #[cfg(feature = "metrics")]
    gauge: Gauge,
}

impl OpenOrigins {
    /// Registers the gauge with the recorder installed now (at 0 for this cache).
    pub(crate) fn exported() -> Self {
        Self {
            #[cfg(feature = "metrics")]
            gauge: {
                let g = ::metrics::gauge!(BREAKER_OPEN);
                g.increment(0.0);
                g
            },
        }
    }

    /// An origin's breaker opened (`true`) or closed (`false`).
    #[inline]
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables, clippy::unused_self))]
    pub(crate) fn moved(&self, open: bool) {
        #[cfg(feature = "metrics")]
        if open {
            self.gauge.increment(1.0);
        } else {
            self.gauge.decrement(1.0);
        }
    }
}

/// Counts evictions for room from a moka cache, by tier.
#[cfg(feature = "metrics")]
pub(crate) fn eviction_counter(tier: &'static str) -> Counter {
    ::metrics::counter!(EVICTIONS, "cache.tier" => tier)
}

/// A moka builder's type, for the eviction listeners below.
type MokaBuilder<V> = moka::sync::CacheBuilder<String, V, moka::sync::Cache<String, V>>;

/// L1: counts entries evicted for room (`cache.evictions`, tier `l1`), with the feature.
pub(crate) fn on_l1_eviction<V>(builder: MokaBuilder<V>) -> MokaBuilder<V>
where
    V: Clone + Send + Sync + 'static,
{
    #[cfg(feature = "metrics")]
    {
        let evicted = eviction_counter("l1");
        builder.eviction_listener(move |_key, _value, cause| {
            if cause == moka::notification::RemovalCause::Size {
                evicted.increment(1);
            }
        })
    }
    #[cfg(not(feature = "metrics"))]
    builder
}

/// The fallback: counts entries evicted for room (`cache.evictions`, tier `fallback`, with
/// the feature) and, feature or not, warns (rate-limited) when they are sessions: a user
/// is logged out because the fallback is full.
pub(crate) fn on_fallback_eviction<V>(builder: MokaBuilder<V>) -> MokaBuilder<V>
where
    V: Clone + Send + Sync + 'static,
{
    static SESSIONS_EVICTED: crate::log_limit::LogLimit = crate::log_limit::LogLimit::new();
    #[cfg(feature = "metrics")]
    let evicted = eviction_counter("fallback");
    builder.eviction_listener(move |key, _value, cause| {
        if cause != moka::notification::RemovalCause::Size {
            return;
        }
        #[cfg(feature = "metrics")]
        evicted.increment(1);
        if key.starts_with(crate::key::SESSION_PREFIX) {
            if let Some(suppressed) = SESSIONS_EVICTED.allow() {
                tracing::warn!(
                    suppressed,
                    "a session was evicted from the full in-memory fallback (its user is logged out); raise CACHE_FALLBACK_MAX_BYTES"
                );
            }
        }
    })
}

#[cfg(all(test, feature = "metrics"))]
mod tests {
    use super::*;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    #[test]
    fn a_tally_counts_into_stats_and_the_recorder() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let t = ::metrics::with_local_recorder(&recorder, || {
            Tally::exported(REQUESTS, &[("cache.tier", "l1"), ("cache.result", "hit")])
        });
        t.bump();
        t.bump();
        assert_eq!(t.read(), 2);
        let found = snapshotter.snapshot().into_vec();
        let (key, _, _, value) = &found[0];
        assert_eq!(key.key().name(), REQUESTS);
        assert_eq!(key.key().labels().count(), 2);
        assert_eq!(value, &DebugValue::Counter(2));
    }
}
