//! Per-origin circuit breakers for loaders: when a data source (a database, an API) is
//! down, stop asking it once per key and ask it once per probe interval instead.
//!
//! Owns [`BreakerSettings`] (set per cache with
//! [`CacheBuilder::breaker`](crate::CacheBuilder::breaker)), [`BreakerState`],
//! [`OriginUnavailable`] (the fast error) and [`OriginBreaker`] (a handle for calls made
//! outside [`Cache::get_or_load_entry_with`](crate::Cache::get_or_load_entry_with)), and
//! the per-cache registry of breakers, one per origin name. May import: the counters of
//! `metrics.rs`, the clock of `codec.rs`. Must not import the cache or the tiers: the
//! resilient read-through (`cache/load.rs`) asks a breaker before it runs a loader and
//! tells it how the load ended.
//!
//! # States
//!
//! ```text
//!            failure_threshold failed loads in a row (error, panic, hard timeout)
//!  Closed ─────────────────────────────────────────────────────────────► Open
//!    ▲                                                                    │ probe_interval
//!    │ the probe (or any load still in flight) succeeds                   ▼ passed
//!    └────────────────────────────────────────────────────────────── Half-open
//!                                     the probe fails: Open again, next probe one interval later
//! ```
//!
//! - **Closed**: every load calls the loader; failed loads of the origin are counted across
//!   all its keys, and a success resets the count.
//! - **Open**: no load calls the loader. A caller with a stale value (fail-safe on) gets it
//!   ([`StaleReason::OriginUnavailable`](crate::StaleReason::OriginUnavailable)), re-armed
//!   only until the next probe time; a caller without one gets
//!   [`LoadError::OriginUnavailable`](crate::LoadError::OriginUnavailable) at once.
//!   Eager refreshes are skipped.
//! - **Half-open**: once `probe_interval` has passed, the next load (or eager refresh) of
//!   any key of the origin is the probe, one at a time; the others are treated as in Open.
//!   A read that finds a stale value whose re-arm ended probes in the background and gets
//!   the stale value at once. Its success closes the breaker for every key (stale values
//!   it re-armed are reloaded in the background from their next read on, which still gets
//!   the stale value); its failure keeps it open until one interval after the probe
//!   started.
//!
//! The state is per process: each instance of an application has its own breakers and
//! finds out on its own that an origin is down (a few failed loads) and back (one probe).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::FutureExt;

use crate::codec::now_ms;
use crate::metrics::{Count, OpenOrigins, Tally};
use crate::LoadError;

/// Failed loads in a row that open an origin's breaker when none is set.
///
/// Five: with independent errors at a rate `p`, five in a row happen with probability
/// `p⁵` per load (1 in 100,000 at a 10 % error rate), so occasional errors do not open it,
/// while a down origin opens it after five calls.
pub const DEFAULT_FAILURE_THRESHOLD: u32 = 5;

/// Time between probe loads of an origin whose breaker is open, when none is set.
///
/// A quarter of a second: a down origin gets at most four calls a second from each
/// instance, whatever the number of keys (a trivial load for a database or an API, against
/// one per key per throttle period without a breaker), and once it is back every key is
/// fresh again at most about a quarter of a second later (the next probe; its success
/// releases every stale value the breaker re-armed). Measured in `BENCHMARKS.md` ("Slow and
/// flaky origin"): with 500 ms, values were older than with a per-key 1 s throttle in the
/// second after an outage; with 250 ms they were not. Longer asks a failing origin less
/// and keeps values stale longer after it recovers.
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_millis(250);

/// How the circuit breakers of one cache behave (the same for every origin); used by loads
/// whose [`LoadOptions`](crate::LoadOptions) name an
/// [origin](crate::LoadOptions::origin).
///
/// ```
/// use std::time::Duration;
/// use cache_sdk::BreakerSettings;
/// let s = BreakerSettings::new()
///     .failure_threshold(3)
///     .probe_interval(Duration::from_millis(250));
/// assert_eq!((s.threshold(), s.interval()), (3, Duration::from_millis(250)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct BreakerSettings {
    threshold: u32,
    interval: Duration,
}

impl Default for BreakerSettings {
    /// [`BreakerSettings::new`].
    fn default() -> Self {
        Self::new()
    }
}

impl BreakerSettings {
    /// [`DEFAULT_FAILURE_THRESHOLD`] and [`DEFAULT_PROBE_INTERVAL`].
    ///
    /// ```
    /// let s = cache_sdk::BreakerSettings::new();
    /// assert_eq!(s.threshold(), cache_sdk::DEFAULT_FAILURE_THRESHOLD);
    /// ```
    pub const fn new() -> Self {
        Self {
            threshold: DEFAULT_FAILURE_THRESHOLD,
            interval: DEFAULT_PROBE_INTERVAL,
        }
    }

    /// Failed loads in a row (across all keys of an origin) that open its breaker; at
    /// least 1.
    ///
    /// ```
    /// assert_eq!(cache_sdk::BreakerSettings::new().failure_threshold(0).threshold(), 1);
    /// ```
    pub const fn failure_threshold(mut self, failures: u32) -> Self {
        self.threshold = if failures == 0 { 1 } else { failures };
        self
    }

    /// Time between probe loads while the breaker is open; at least 1 ms.
    ///
    /// ```
    /// use std::time::Duration;
    /// let s = cache_sdk::BreakerSettings::new().probe_interval(Duration::from_secs(1));
    /// assert_eq!(s.interval(), Duration::from_secs(1));
    /// ```
    pub const fn probe_interval(mut self, interval: Duration) -> Self {
        self.interval = if interval.is_zero() {
            Duration::from_millis(1)
        } else {
            interval
        };
        self
    }

    /// The failure threshold.
    ///
    /// ```
    /// assert_eq!(cache_sdk::BreakerSettings::new().threshold(), 5);
    /// ```
    #[must_use]
    pub const fn threshold(&self) -> u32 {
        self.threshold
    }

    /// The probe interval.
    ///
    /// ```
    /// assert_eq!(cache_sdk::BreakerSettings::new().interval().as_millis(), 250);
    /// ```
    #[must_use]
    pub const fn interval(&self) -> Duration {
        self.interval
    }

    fn interval_ms(&self) -> u64 {
        u64::try_from(self.interval.as_millis()).unwrap_or(u64::MAX)
    }
}

/// Where an origin's circuit breaker stands. Closed: loads call the origin, and failed
/// loads in a row are counted; at the threshold it opens. Open: loads do not call the
/// origin (stale values are served, or [`OriginUnavailable`] returned) until the probe
/// interval has passed; then the next load is the one probe (half-open), whose success
/// closes it and whose failure keeps it open for one more interval. See
/// [`LoadOptions::origin`](crate::LoadOptions::origin).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let cache = cache_sdk::Cache::in_memory();
/// assert_eq!(cache.origin_breaker("products").state(), cache_sdk::BreakerState::Closed);
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BreakerState {
    /// Loads call the origin.
    Closed,
    /// Loads do not call the origin until the next probe time.
    Open,
    /// A probe load is in flight; other loads do not call the origin.
    HalfOpen,
}

impl BreakerState {
    /// A short name, for logs: `closed`, `open`, `half-open`.
    ///
    /// ```
    /// assert_eq!(cache_sdk::BreakerState::HalfOpen.as_str(), "half-open");
    /// ```
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The origin's circuit breaker is open: the load was not sent to it, and there was no
/// stale value to serve (or fail-safe is off). Returned at once, so that callers do not
/// queue on a down origin.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use cache_sdk::{BreakerSettings, Cache, LoadError, LoadOptions, Ttl};
/// let cache = Cache::builder()
///     .breaker(BreakerSettings::new().failure_threshold(1))
///     .build()
///     .await
///     .unwrap();
/// let opts = LoadOptions::new().origin("inventory");
/// let load = || async { Err::<u32, _>("connection refused") };
/// let _ = cache.get_or_load_entry_with("cache:stock:1", Ttl::Api, &opts, load).await;
/// let Err(LoadError::OriginUnavailable(e)) =
///     cache.get_or_load_entry_with("cache:stock:2", Ttl::Api, &opts, load).await
/// else {
///     panic!("the breaker is open")
/// };
/// assert_eq!(e.origin(), "inventory");
/// assert!(e.retry_after() <= cache_sdk::DEFAULT_PROBE_INTERVAL);
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the origin `{origin}` is unavailable (circuit breaker open; next probe in {retry_after:?})"
)]
pub struct OriginUnavailable {
    origin: Arc<str>,
    retry_after: Duration,
}

impl OriginUnavailable {
    /// The origin's name, as given to [`LoadOptions::origin`](crate::LoadOptions::origin).
    ///
    /// ```
    /// # use std::time::Duration;
    /// let e = cache_sdk::OriginUnavailable::new("products", Duration::from_millis(200));
    /// assert_eq!(e.origin(), "products");
    /// ```
    #[must_use]
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// How long until the breaker lets a probe through (zero when one is in flight and
    /// overdue): a `Retry-After` for the caller's own caller.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let e = cache_sdk::OriginUnavailable::new("products", Duration::from_millis(200));
    /// assert_eq!(e.retry_after(), Duration::from_millis(200));
    /// ```
    #[must_use]
    pub const fn retry_after(&self) -> Duration {
        self.retry_after
    }

    /// The error for `origin`, with a probe due in `retry_after` (for tests of code that
    /// handles it; the cache makes its own).
    ///
    /// ```
    /// let e = cache_sdk::OriginUnavailable::new("products", std::time::Duration::ZERO);
    /// assert!(e.to_string().contains("`products` is unavailable"));
    /// ```
    #[must_use]
    pub fn new(origin: &str, retry_after: Duration) -> Self {
        Self {
            origin: origin.into(),
            retry_after,
        }
    }
}

/// A handle on the circuit breaker of one origin of a cache, from
/// [`Cache::origin_breaker`](crate::Cache::origin_breaker): its state, and a way to guard
/// calls to the origin made outside the cache's read-through (batch loads, writes), so
/// that they count towards the same breaker and are refused while it is open.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let cache = cache_sdk::Cache::in_memory();
/// let products = cache.origin_breaker("products");
/// let got = products.run(|| async { Ok::<_, std::io::Error>(vec![1u32, 2]) }).await;
/// assert_eq!(got.unwrap(), [1, 2]);
/// assert_eq!(products.name(), "products");
/// # }
/// ```
#[derive(Clone)]
pub struct OriginBreaker {
    breaker: Arc<Breaker>,
}

impl fmt::Debug for OriginBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OriginBreaker")
            .field("origin", &self.breaker.name)
            .field("state", &self.state())
            .finish()
    }
}

impl OriginBreaker {
    /// The origin's name.
    ///
    /// ```
    /// let b = cache_sdk::Cache::in_memory().origin_breaker("erp");
    /// assert_eq!(b.name(), "erp");
    /// ```
    #[must_use]
    pub fn name(&self) -> &str {
        &self.breaker.name
    }

    /// Where the breaker stands now.
    ///
    /// ```
    /// let b = cache_sdk::Cache::in_memory().origin_breaker("erp");
    /// assert_eq!(b.state(), cache_sdk::BreakerState::Closed);
    /// ```
    #[must_use]
    pub fn state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// Calls the origin through the breaker: while it is open (and this call is not the
    /// probe) `call` is not run and [`LoadError::OriginUnavailable`] is returned at once;
    /// otherwise `call`'s outcome counts (an error or a panic as a failure, a value as a
    /// success). A panic resumes in the caller.
    ///
    /// # Errors
    /// [`LoadError::Loader`] with `call`'s error, or [`LoadError::OriginUnavailable`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use cache_sdk::{BreakerSettings, Cache, LoadError};
    /// let cache = Cache::builder()
    ///     .breaker(BreakerSettings::new().failure_threshold(2))
    ///     .build()
    ///     .await
    ///     .unwrap();
    /// let db = cache.origin_breaker("db");
    /// for _ in 0..2 {
    ///     let _ = db.run(|| async { Err::<(), _>("down") }).await;
    /// }
    /// let refused = db.run(|| async { Ok::<_, &str>(()) }).await;
    /// assert!(matches!(refused, Err(LoadError::OriginUnavailable(_))));
    /// # }
    /// ```
    pub async fn run<T, E, F, Fut>(&self, call: F) -> Result<T, LoadError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let attempt = self
            .breaker
            .admit(now_ms(), true)
            .map_err(LoadError::OriginUnavailable)?;
        match AssertUnwindSafe(call()).catch_unwind().await {
            Ok(Ok(v)) => {
                attempt.succeeded();
                Ok(v)
            }
            Ok(Err(e)) => {
                attempt.failed();
                Err(LoadError::Loader(e))
            }
            Err(panic) => {
                attempt.failed();
                std::panic::resume_unwind(panic)
            }
        }
    }
}

/// The breakers of one cache, by origin name, with their counters.
#[derive(Debug)]
pub(crate) struct Breakers {
    settings: BreakerSettings,
    by_origin: Mutex<HashMap<Arc<str>, Arc<Breaker>>>,
    counters: Arc<Counters>,
}

/// What [`Stats`](crate::Stats) reports about the breakers.
#[derive(Debug)]
struct Counters {
    rejections: Tally,
    opened: Tally,
    probes: Tally,
    open_now: AtomicU64,
    gauge: OpenOrigins,
}

impl Breakers {
    /// The registry of a cache whose breakers follow `settings`, with its counters
    /// exported to the recorder installed now (with the `metrics` feature).
    pub(crate) fn new(settings: BreakerSettings) -> Self {
        use crate::metrics as m;
        Self {
            settings,
            by_origin: Mutex::new(HashMap::new()),
            counters: Arc::new(Counters {
                rejections: Tally::exported(m::BREAKER_REJECTIONS, &[]),
                opened: Tally::exported(m::BREAKER_OPENED, &[]),
                probes: Tally::exported(m::BREAKER_PROBES, &[]),
                open_now: AtomicU64::new(0),
                gauge: OpenOrigins::exported(),
            }),
        }
    }

    /// The breaker of `origin`, made on first use.
    pub(crate) fn of(&self, origin: &str) -> Arc<Breaker> {
        let mut map = self
            .by_origin
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(b) = map.get(origin) {
            return b.clone();
        }
        let name: Arc<str> = origin.into();
        let b = Arc::new(Breaker {
            name: name.clone(),
            settings: self.settings,
            counters: self.counters.clone(),
            circuit: Mutex::new(Circuit::default()),
            generation: AtomicU64::new(0),
        });
        map.insert(name, b.clone());
        b
    }

    /// A public handle on the breaker of `origin`.
    pub(crate) fn handle(&self, origin: &str) -> OriginBreaker {
        OriginBreaker {
            breaker: self.of(origin),
        }
    }

    /// Loads kept from an origin by an open breaker.
    pub(crate) fn rejections(&self) -> u64 {
        self.counters.rejections.read()
    }

    /// Times a breaker opened.
    pub(crate) fn opened(&self) -> u64 {
        self.counters.opened.read()
    }

    /// Probe loads let through.
    pub(crate) fn probes(&self) -> u64 {
        self.counters.probes.read()
    }

    /// Origins whose breaker is open now.
    pub(crate) fn open_now(&self) -> u64 {
        self.counters.open_now.load(Ordering::Relaxed)
    }
}

/// One origin's breaker.
#[derive(Debug)]
pub(crate) struct Breaker {
    name: Arc<str>,
    settings: BreakerSettings,
    counters: Arc<Counters>,
    circuit: Mutex<Circuit>,
    /// How many times the breaker closed after being open: a stale value re-armed under an
    /// older generation is released (loads again) as soon as it changes.
    generation: AtomicU64,
}

/// The state behind a breaker's lock (held for a few instructions, never across an
/// `.await`).
#[derive(Debug, Default)]
struct Circuit {
    /// Failed loads in a row (while closed).
    failures: u32,
    open: bool,
    /// While open: when the next probe may start (ms since the Unix epoch).
    next_probe_ms: u64,
    /// While open: a probe is in flight.
    probing: bool,
}

impl Breaker {
    /// Changes each time the breaker closes after being open (one atomic load).
    #[inline]
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Circuit> {
        self.circuit.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn state(&self) -> BreakerState {
        let c = self.lock();
        match (c.open, c.probing) {
            (false, _) => BreakerState::Closed,
            (true, false) => BreakerState::Open,
            (true, true) => BreakerState::HalfOpen,
        }
    }

    /// Until when (ms since the Unix epoch) a caller turned away at `now` should not come
    /// back: the next probe time, or one interval from now while an overdue probe is in
    /// flight.
    fn retry_at(&self, c: &Circuit, now: u64) -> u64 {
        if c.next_probe_ms > now {
            c.next_probe_ms
        } else {
            now.saturating_add(self.settings.interval_ms())
        }
    }

    /// Whether a load may call the origin now: an [`Attempt`] to report its outcome to, or
    /// why not. `count` says whether a refusal counts as a rejection (eager refreshes that
    /// are skipped do not).
    pub(crate) fn admit(
        self: &Arc<Self>,
        now: u64,
        count: bool,
    ) -> Result<Arc<Attempt>, OriginUnavailable> {
        let mut c = self.lock();
        if !c.open {
            return Ok(self.attempt(false));
        }
        if !c.probing && now >= c.next_probe_ms {
            c.probing = true;
            c.next_probe_ms = now.saturating_add(self.settings.interval_ms());
            drop(c);
            self.counters.probes.bump();
            tracing::info!(origin = %self.name, "circuit breaker half-open: probing the origin");
            return Ok(self.attempt(true));
        }
        let at = self.retry_at(&c, now);
        drop(c);
        if count {
            self.counters.rejections.bump();
        }
        Err(OriginUnavailable {
            origin: self.name.clone(),
            retry_after: Duration::from_millis(at.saturating_sub(now)),
        })
    }

    /// How long a stale value served after a failed load of this origin is re-armed (at
    /// most; the throttle period may be shorter): until the next probe while the breaker
    /// is open, else one probe interval. The breaker, not the per-key throttle, keeps a
    /// failing origin from being hammered, so keys come back soon after the origin does.
    pub(crate) fn rearm_within(&self, now: u64) -> Duration {
        let c = self.lock();
        let ms = if c.open {
            self.retry_at(&c, now).saturating_sub(now)
        } else {
            self.settings.interval_ms()
        };
        Duration::from_millis(ms.max(1))
    }

    fn attempt(self: &Arc<Self>, probe: bool) -> Arc<Attempt> {
        Arc::new(Attempt {
            breaker: self.clone(),
            probe,
            settled: AtomicBool::new(false),
        })
    }

    fn success(&self, probe: bool) {
        let mut c = self.lock();
        c.failures = 0;
        if probe {
            c.probing = false;
        }
        if c.open {
            c.open = false;
            c.probing = false;
            self.generation.fetch_add(1, Ordering::Release);
            drop(c);
            self.moved(false);
            tracing::info!(origin = %self.name, "the origin answered: circuit breaker closed");
        }
    }

    fn failure(&self, probe: bool, now: u64) {
        let mut c = self.lock();
        if c.open {
            if probe {
                // The next probe stays one interval after this one started.
                c.probing = false;
                drop(c);
                tracing::info!(origin = %self.name, "the probe failed: circuit breaker stays open");
            }
            return;
        }
        c.failures = c.failures.saturating_add(1);
        if c.failures < self.settings.threshold {
            return;
        }
        c.open = true;
        c.probing = false;
        c.next_probe_ms = now.saturating_add(self.settings.interval_ms());
        let failures = c.failures;
        drop(c);
        self.counters.opened.bump();
        self.moved(true);
        tracing::warn!(
            origin = %self.name,
            failures,
            probe_interval = ?self.settings.interval,
            "the origin failed repeatedly: circuit breaker open, loads are not sent to it until a probe succeeds"
        );
    }

    fn abandoned(&self, probe: bool) {
        if probe {
            self.lock().probing = false;
        }
    }

    fn moved(&self, open: bool) {
        if open {
            self.counters.open_now.fetch_add(1, Ordering::Relaxed);
        } else {
            self.counters.open_now.fetch_sub(1, Ordering::Relaxed);
        }
        self.counters.gauge.moved(open);
    }
}

/// One load let through by a breaker; its outcome is reported once (the first report
/// wins, except that a success always counts: the origin answered). Dropped without a
/// report (the load was not run after all, or was aborted), it frees the probe slot.
#[derive(Debug)]
pub(crate) struct Attempt {
    breaker: Arc<Breaker>,
    probe: bool,
    settled: AtomicBool,
}

impl Attempt {
    /// The origin answered.
    pub(crate) fn succeeded(&self) {
        self.settled.store(true, Ordering::Relaxed);
        self.breaker.success(self.probe);
    }

    /// The load failed: an error, a panic, or the hard timeout passed.
    pub(crate) fn failed(&self) {
        self.failed_at(now_ms());
    }

    /// [`Attempt::failed`] at `now` (ms since the Unix epoch).
    fn failed_at(&self, now: u64) {
        if !self.settled.swap(true, Ordering::Relaxed) {
            self.breaker.failure(self.probe, now);
        }
    }

    /// The breaker this attempt reports to.
    pub(crate) fn breaker(&self) -> &Arc<Breaker> {
        &self.breaker
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if !self.settled.load(Ordering::Relaxed) {
            self.breaker.abandoned(self.probe);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breakers(threshold: u32) -> Breakers {
        Breakers::new(
            BreakerSettings::new()
                .failure_threshold(threshold)
                .probe_interval(Duration::from_millis(100)),
        )
    }

    #[test]
    fn opens_after_the_threshold_and_a_success_resets_the_count() {
        let r = breakers(3);
        let b = r.of("db");
        for _ in 0..2 {
            b.admit(1_000, true).unwrap().failed_at(1_000);
        }
        b.admit(1_000, true).unwrap().succeeded();
        for _ in 0..2 {
            b.admit(1_000, true).unwrap().failed_at(1_000);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        b.admit(1_000, true).unwrap().failed_at(1_000);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!((r.opened(), r.open_now()), (1, 1));
        let e = b.admit(1_050, true).unwrap_err();
        assert_eq!(
            (e.origin(), e.retry_after()),
            ("db", Duration::from_millis(50))
        );
        assert_eq!(r.rejections(), 1);
        assert_eq!(b.rearm_within(1_050), Duration::from_millis(50));
        assert_eq!(
            r.of("other").rearm_within(1_050),
            Duration::from_millis(100),
            "closed: one interval"
        );
    }

    #[test]
    fn one_probe_at_a_time_and_its_outcome_decides() {
        let r = breakers(1);
        let b = r.of("db");
        b.admit(0, true).unwrap().failed_at(0);
        let probe = b.admit(100, true).unwrap();
        assert_eq!(b.state(), BreakerState::HalfOpen);
        // Others are turned away until one interval after the probe started.
        assert_eq!(
            b.admit(150, true).unwrap_err().retry_after(),
            Duration::from_millis(50)
        );
        // A skipped refresh is not counted.
        assert!(b.admit(150, false).is_err());
        assert_eq!(r.rejections(), 1);
        probe.failed_at(150);
        assert_eq!(b.state(), BreakerState::Open);
        let probe = b.admit(10_000, true).unwrap();
        assert_eq!(r.probes(), 2);
        probe.succeeded();
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(r.open_now(), 0);
        assert!(b.admit(10_001, true).is_ok());
    }

    #[test]
    fn an_abandoned_probe_frees_the_slot_and_a_late_failure_counts_once() {
        let r = breakers(2);
        let b = r.of("db");
        let a = b.admit(0, true).unwrap();
        a.failed_at(0);
        a.failed_at(0);
        assert_eq!(b.state(), BreakerState::Closed, "one load, one failure");
        b.admit(0, true).unwrap().failed_at(0);
        drop(b.admit(200, true).unwrap());
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.admit(300, true).is_ok(), "the next load probes");
    }

    #[cfg(feature = "metrics")]
    #[test]
    fn the_counters_and_the_gauge_reach_the_recorder() {
        use metrics_util::debugging::{DebugValue, DebuggingRecorder};
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let r = ::metrics::with_local_recorder(&recorder, || breakers(1));
        let b = r.of("db");
        b.admit(0, true).unwrap().failed_at(0);
        assert!(b.admit(10, true).is_err());
        let seen: HashMap<String, DebugValue> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(k, _, _, v)| (k.key().name().to_owned(), v))
            .collect();
        assert_eq!(seen[crate::metrics::BREAKER_OPENED], DebugValue::Counter(1));
        assert_eq!(
            seen[crate::metrics::BREAKER_REJECTIONS],
            DebugValue::Counter(1)
        );
        assert_eq!(
            seen[crate::metrics::BREAKER_OPEN],
            DebugValue::Gauge(1.0.into())
        );
    }

    #[test]
    fn origins_are_independent() {
        let r = breakers(1);
        r.of("a").admit(0, true).unwrap().failed_at(0);
        assert_eq!(r.handle("a").state(), BreakerState::Open);
        assert_eq!(r.handle("b").state(), BreakerState::Closed);
    }
}
