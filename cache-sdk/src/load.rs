//! Resilient read-through: fail-safe, soft and hard loader timeouts, eager refresh.
//!
//! Owns [`LoadOptions`] (what a call asks for), [`Entry`] (what it got, fresh or stale)
//! and [`LoadError`], and the engine behind [`Cache::get_or_load_entry`]. It is a child of
//! the cache module and uses the cache's tiers, counters and the single-flight engine
//! ([`crate::flight`]); nothing outside the cache calls into it.
//!
//! # Logical and physical expiry
//!
//! A value written with fail-safe on carries its TTL as the envelope's *expires at* (its
//! logical expiry), while Redis and L1 keep it for the TTL plus the fail-safe window (its
//! physical expiry). Plain reads ([`Cache::get`]) treat a value past its logical expiry as
//! a miss; only a call with fail-safe on may serve it, and only when the loader fails or
//! is too slow.
//!
//! ```text
//! hit, fresh ───────────────► value (+ one background refresh past refresh_ahead × TTL,
//!                             skipped while the origin's breaker is open)
//! hit, re-armed stale ──────► stale value (the origin is not asked again until the
//!                             throttle period ends, or the breaker's next probe)
//! hit, re-armed by a breaker, ► stale value at once + one background reload (as an eager
//!   re-arm ended or released   refresh; the probe, while the breaker is open)
//! miss or expired ──► single-flight leader
//!                        │ origin named and its breaker open (not this load's turn to probe):
//!                        ├─ refused ────────────► stale value re-armed until the next probe
//!                        │                        (fail-safe) or LoadError::OriginUnavailable
//!                        ▼
//!                     loader task (spawned, tied to the cache; reports to the breaker)
//!                        │ waits: soft timeout (when a stale value exists), then hard timeout
//!                        ├─ loaded ─────────────► fresh value, stored in L1 and L2
//!                        ├─ failed / panicked ──► stale value re-armed (fail-safe) or the error
//!                        └─ too slow ───────────► stale value re-armed (fail-safe) or
//!                                                 LoadError::Timeout; the task still lands
//! ```
//!
//! # Origins and their circuit breakers
//!
//! [`LoadOptions::origin`] names the data source a loader reads. Its breaker
//! ([`crate::breaker`], one per origin name and cache, per process) counts failed loads
//! (error, panic, hard timeout) of all its keys; after
//! [`BreakerSettings::failure_threshold`](crate::BreakerSettings::failure_threshold) in a
//! row it opens, and loads and eager refreshes stop calling the loader except for one probe
//! per [`probe_interval`](crate::BreakerSettings::probe_interval). With an origin named, a
//! stale value served after a failure is re-armed for the throttle period but at most until
//! the breaker's next probe (one probe interval while it is closed): the breaker, not the
//! per-key throttle, protects a failing origin, and every key is fresh again about one
//! probe interval after the origin is back. Without an origin nothing changes.
//!
//! Such a value stays in L1 after its re-arm ends (at the next probe time, or when the
//! breaker closes): the read that finds it so answers it at once and reloads it in the
//! background, one reload per key, like an eager refresh. No caller waits for the probe
//! or for the first load of a key after the origin is back; were they to, every reader of
//! a hot key would queue on that load, and readers of many hot keys, released together,
//! would queue again on the next released key, one load after the other. When the
//! reloads of that value failed twice within the throttle period, or the breaker refuses,
//! the read takes the regular path.
//!
//! # Across instances
//!
//! A stale value is re-armed in this process's L1 only: it is never written back to L2,
//! so it can never overwrite a fresher value another instance stored meanwhile. An eager
//! refresh first looks in L2 for a value written after the one it refreshes (another
//! instance refreshed it) and loads only when there is none.
//!
//! # Background work
//!
//! Loader tasks run on the caller's runtime, in a set owned by the cache: dropping the last
//! clone of the cache aborts them. They hold only a weak reference to the cache (taken up
//! for the moment of a write), never a lock across an `.await`, and catch a panicking
//! loader (counted as a failed load).

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::FutureExt;
use tokio::sync::oneshot;

use super::{log_key, tags, Cache, CacheValue, Inner};
use crate::breaker::{Attempt, Breaker};
use crate::codec::{self, now_ms, Header};
use crate::key;
use crate::stats::bump;
use crate::tier::local::{AnyValue, Depends};
use crate::tier::remote::millis;
use crate::ttl::{Ttl, MAX_TTL};

/// The throttle period used when none is set: how long a stale value is served before the
/// origin is asked again.
pub const DEFAULT_FAIL_SAFE_THROTTLE: Duration = Duration::from_secs(30);

/// How a [`Cache::get_or_load_entry`] call behaves when the origin (the loader) fails or is
/// slow, and whether hot keys are refreshed before they expire. Everything is off in
/// [`LoadOptions::new`]; a cache's defaults are set with
/// [`CacheBuilder::load_options`](crate::CacheBuilder::load_options) and read back with
/// [`Cache::load_options`].
///
/// ```
/// use std::time::Duration;
/// use cache_sdk::LoadOptions;
/// let opts = LoadOptions::new()
///     .fail_safe(Duration::from_secs(3600))
///     .soft_timeout(Duration::from_millis(100))
///     .hard_timeout(Duration::from_secs(2))
///     .refresh_ahead(0.8);
/// assert_eq!(opts.fail_safe_window(), Some(Duration::from_secs(3600)));
/// ```
#[derive(Debug, Clone, PartialEq)]
#[must_use]
pub struct LoadOptions {
    fail_safe: Option<Duration>,
    throttle: Duration,
    pub(super) soft_timeout: Option<Duration>,
    pub(super) hard_timeout: Option<Duration>,
    refresh_ahead: Option<f64>,
    /// The tags loaded values carry (see [`LoadOptions::tags`]).
    tags: Option<Arc<[String]>>,
    /// Who loads on a miss across instances (`stampede.rs`).
    pub(super) stampede: super::stampede::StampedeOptions,
    /// The origin whose circuit breaker guards the loads (`breaker.rs`).
    origin: Option<Arc<str>>,
    /// Loader errors that prove the origin answered (not failures for its breaker).
    answered: Option<Answered>,
}

/// A test of a loader's error: `true` when the origin answered (see
/// [`LoadOptions::origin_answered`]).
#[derive(Clone)]
struct Answered(Arc<AnswerTest>);

/// The type-erased test behind [`Answered`]: the loader's error as `Any`.
type AnswerTest = dyn Fn(&(dyn Any + Send)) -> bool + Send + Sync;

impl std::fmt::Debug for Answered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Answered(..)")
    }
}

impl PartialEq for Answered {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Default for LoadOptions {
    /// [`LoadOptions::new`]: everything off.
    fn default() -> Self {
        Self::new()
    }
}

/// `d`, or `None` for zero (the options' "off").
const fn unless_zero(d: Duration) -> Option<Duration> {
    if d.is_zero() {
        None
    } else {
        Some(d)
    }
}

impl LoadOptions {
    /// Everything off: loader errors propagate, callers wait for the loader as long as it
    /// takes, values expire with their TTL.
    ///
    /// ```
    /// assert_eq!(cache_sdk::LoadOptions::new().fail_safe_window(), None);
    /// ```
    pub const fn new() -> Self {
        Self {
            fail_safe: None,
            throttle: DEFAULT_FAIL_SAFE_THROTTLE,
            soft_timeout: None,
            hard_timeout: None,
            refresh_ahead: None,
            tags: None,
            stampede: super::stampede::StampedeOptions::new(),
            origin: None,
            answered: None,
        }
    }

    /// Turns fail-safe on: values are kept `window` past their TTL, and served (marked
    /// stale) when the loader fails, panics or times out. A zero window turns it off.
    ///
    /// ```
    /// use std::time::Duration;
    /// let o = cache_sdk::LoadOptions::new().fail_safe(Duration::from_secs(60));
    /// assert_eq!(o.fail_safe_window(), Some(Duration::from_secs(60)));
    /// ```
    pub const fn fail_safe(mut self, window: Duration) -> Self {
        self.fail_safe = unless_zero(window);
        self
    }

    /// How long a stale value served after a failure is served again without asking the
    /// origin ([`DEFAULT_FAIL_SAFE_THROTTLE`] unless set; at least 1 ms).
    ///
    /// The throttle is kept in this process's L1 (the re-armed stale value is never written
    /// to L2), so each instance asks a failing origin about a key at most once per throttle
    /// period: with N instances, up to N calls per key per period.
    ///
    /// ```
    /// use std::time::Duration;
    /// let o = cache_sdk::LoadOptions::new().fail_safe_throttle(Duration::from_secs(5));
    /// # let _ = o;
    /// ```
    pub const fn fail_safe_throttle(mut self, throttle: Duration) -> Self {
        self.throttle = if throttle.is_zero() {
            Duration::from_millis(1)
        } else {
            throttle
        };
        self
    }

    /// When a stale value exists (fail-safe on) and the loader has not finished within
    /// `timeout`, the stale value is returned at once; the loader finishes in the
    /// background and its value updates L1 and L2. Zero turns it off.
    ///
    /// ```
    /// use std::time::Duration;
    /// let o = cache_sdk::LoadOptions::new().soft_timeout(Duration::from_millis(100));
    /// # let _ = o;
    /// ```
    pub const fn soft_timeout(mut self, timeout: Duration) -> Self {
        self.soft_timeout = unless_zero(timeout);
        self
    }

    /// The longest a caller waits for the loader: past it the caller gets the stale value
    /// (fail-safe on, when one exists) or [`LoadError::Timeout`]. The loader still finishes
    /// in the background and its value is stored. Zero turns it off.
    ///
    /// ```
    /// use std::time::Duration;
    /// let o = cache_sdk::LoadOptions::new().hard_timeout(Duration::from_secs(2));
    /// # let _ = o;
    /// ```
    pub const fn hard_timeout(mut self, timeout: Duration) -> Self {
        self.hard_timeout = unless_zero(timeout);
        self
    }

    /// Eager refresh: a hit arriving after `fraction` of the TTL (e.g. `0.8`) returns the
    /// cached value at once and starts one background refresh of the key (one per key in
    /// this process). A failed refresh is retried once; when that fails too, the same value
    /// gets no new one for the [throttle period](LoadOptions::fail_safe_throttle): it
    /// expires with its TTL and the next load takes the regular path (fail-safe, timeouts). A fraction outside `(0, 1)`
    /// (or NaN) turns it off.
    ///
    /// ```
    /// let o = cache_sdk::LoadOptions::new().refresh_ahead(0.8);
    /// assert_eq!(o.refresh_fraction(), Some(0.8));
    /// assert_eq!(o.refresh_ahead(1.5).refresh_fraction(), None);
    /// ```
    pub fn refresh_ahead(mut self, fraction: f64) -> Self {
        self.refresh_ahead = (fraction > 0.0 && fraction < 1.0).then_some(fraction);
        self
    }

    /// The fail-safe window, `None` when fail-safe is off.
    ///
    /// ```
    /// assert_eq!(cache_sdk::LoadOptions::new().fail_safe_window(), None);
    /// ```
    #[must_use]
    pub const fn fail_safe_window(&self) -> Option<Duration> {
        self.fail_safe
    }

    /// The eager-refresh fraction, `None` when off.
    ///
    /// ```
    /// assert_eq!(cache_sdk::LoadOptions::new().refresh_fraction(), None);
    /// ```
    #[must_use]
    pub const fn refresh_fraction(&self) -> Option<f64> {
        self.refresh_ahead
    }

    /// How long values live physically past `ttl`.
    /// The tags values loaded with these options carry (replacing any set before):
    /// [`Cache::invalidate_tag`] with any of them makes the value a miss. At most 64 tags
    /// of 1 to 256 bytes each; invalid tags are logged and the value is not cached.
    ///
    /// ```
    /// let o = cache_sdk::LoadOptions::new().tags(["product:7", "catalog"]);
    /// assert_eq!(o.tag_names(), ["product:7", "catalog"]);
    /// ```
    pub fn tags<I, S>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let tags: Arc<[String]> = tags.into_iter().map(Into::into).collect();
        self.tags = (!tags.is_empty()).then_some(tags);
        self
    }

    /// The tags set with [`LoadOptions::tags`].
    ///
    /// ```
    /// assert!(cache_sdk::LoadOptions::new().tag_names().is_empty());
    /// ```
    #[must_use]
    pub fn tag_names(&self) -> &[String] {
        self.tags.as_deref().unwrap_or_default()
    }

    /// Names the origin the loader reads (a database, an API) and turns on its circuit
    /// breaker: failed loads of every key given the same origin name count together, and
    /// after [`BreakerSettings::failure_threshold`](crate::BreakerSettings::failure_threshold)
    /// failures in a row the loader is no longer called, except by one probe per
    /// [`probe_interval`](crate::BreakerSettings::probe_interval), until a probe succeeds.
    /// Meanwhile callers get their stale value ([`StaleReason::OriginUnavailable`], with
    /// fail-safe on) or [`LoadError::OriginUnavailable`] at once, and eager refreshes are
    /// skipped. A failed load is a loader error, a panic or the hard timeout passing (see
    /// [`LoadOptions::origin_answered`] for errors that are answers).
    ///
    /// Off unless named (an empty name turns it off): loaders of different origins sharing
    /// one cache never trip each other. The breakers are per cache and per process (each
    /// instance of an application has its own), set up with
    /// [`CacheBuilder::breaker`](crate::CacheBuilder::breaker).
    ///
    /// ```
    /// let o = cache_sdk::LoadOptions::new().origin("products");
    /// assert_eq!(o.origin_name(), Some("products"));
    /// assert_eq!(o.origin("").origin_name(), None);
    /// ```
    pub fn origin(mut self, name: &str) -> Self {
        self.origin = (!name.is_empty()).then(|| name.into());
        self
    }

    /// The origin named with [`LoadOptions::origin`], `None` when its breaker is off.
    ///
    /// ```
    /// assert_eq!(cache_sdk::LoadOptions::new().origin_name(), None);
    /// ```
    #[must_use]
    pub fn origin_name(&self) -> Option<&str> {
        self.origin.as_deref()
    }

    /// Loader errors for which `answered` returns `true` prove that the origin answered
    /// (a row not found, a request refused): they count as successes for the origin's
    /// circuit breaker instead of failures. They are still returned to the caller (or
    /// answered from stale) as any loader error. The test applies to loaders whose error
    /// type is `E`; errors of other types count as failures.
    ///
    /// ```
    /// #[derive(Debug)]
    /// enum DbError { NotFound(u64), Unavailable }
    /// let o = cache_sdk::LoadOptions::new()
    ///     .origin("products")
    ///     .origin_answered(|e: &DbError| matches!(e, DbError::NotFound(_)));
    /// # let _ = (o, DbError::NotFound(1), DbError::Unavailable);
    /// ```
    pub fn origin_answered<E: Send + 'static>(
        mut self,
        answered: impl Fn(&E) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.answered = Some(Answered(Arc::new(move |e: &(dyn Any + Send)| {
            e.downcast_ref::<E>().is_some_and(&answered)
        })));
        self
    }

    /// Whether the loader's error `e` is an answer of the origin (see
    /// [`LoadOptions::origin_answered`]).
    fn is_answer<E: Send + 'static>(&self, e: &E) -> bool {
        self.answered.as_ref().is_some_and(|a| (a.0)(e))
    }

    fn physical(&self, ttl: Duration) -> Duration {
        match self.fail_safe {
            Some(w) => ttl.saturating_add(w).min(MAX_TTL),
            None => ttl,
        }
    }
}

/// Why a stale value was served.
///
/// ```
/// use cache_sdk::StaleReason;
/// assert_eq!(StaleReason::SoftTimeout.as_str(), "soft-timeout");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StaleReason {
    /// The loader returned an error or panicked.
    LoadFailed,
    /// The loader was slower than the soft timeout; it finishes in the background.
    SoftTimeout,
    /// The loader was slower than the hard timeout; it finishes in the background.
    HardTimeout,
    /// A recent failure or timeout re-armed the stale value for the throttle period; or its
    /// origin's breaker re-armed it and it is being reloaded in the background
    /// ([`Entry::refresh_started`] tells the read that started the reload).
    Throttled,
    /// The origin's circuit breaker is open (see [`LoadOptions::origin`]): the loader was
    /// not called, and the value is re-armed until the breaker's next probe.
    OriginUnavailable,
}

impl StaleReason {
    /// A short name, for logs and headers.
    ///
    /// ```
    /// assert_eq!(cache_sdk::StaleReason::LoadFailed.as_str(), "load-failed");
    /// ```
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            StaleReason::LoadFailed => "load-failed",
            StaleReason::SoftTimeout => "soft-timeout",
            StaleReason::HardTimeout => "hard-timeout",
            StaleReason::Throttled => "throttled",
            StaleReason::OriginUnavailable => "origin-unavailable",
        }
    }
}

/// What [`Cache::get_or_load_entry`] got: the value, and whether it is fresh.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), cache_sdk::LoadError<std::io::Error>> {
/// let cache = cache_sdk::Cache::in_memory();
/// let e = cache
///     .get_or_load_entry("cache:p:1", cache_sdk::Ttl::Api, || async { Ok::<_, std::io::Error>(1u8) })
///     .await?;
/// assert!(e.was_loaded() && !e.is_stale());
/// let e = cache
///     .get_or_load_entry("cache:p:1", cache_sdk::Ttl::Api, || async { Ok::<_, std::io::Error>(2u8) })
///     .await?;
/// assert_eq!((**e.value(), e.was_loaded()), (1, false));
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Entry<T> {
    value: Arc<T>,
    stale: Option<StaleReason>,
    loaded: bool,
    refreshing: bool,
    written_at_ms: Option<u64>,
}

impl<T> Entry<T> {
    /// The value.
    ///
    /// ```
    /// # let cache = cache_sdk::Cache::in_memory();
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let e = cache.get_or_load_entry("cache:v:1", cache_sdk::Ttl::Api, || async { Ok::<_, ()>(3u8) }).await.unwrap();
    /// assert_eq!(**e.value(), 3);
    /// # });
    /// ```
    #[must_use]
    pub fn value(&self) -> &Arc<T> {
        &self.value
    }

    /// The value, consuming the entry.
    ///
    /// ```
    /// # let cache = cache_sdk::Cache::in_memory();
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let e = cache.get_or_load_entry("cache:v:2", cache_sdk::Ttl::Api, || async { Ok::<_, ()>(3u8) }).await.unwrap();
    /// assert_eq!(*e.into_value(), 3);
    /// # });
    /// ```
    #[must_use]
    pub fn into_value(self) -> Arc<T> {
        self.value
    }

    /// Whether the value is past its TTL (served by fail-safe).
    ///
    /// ```
    /// # let cache = cache_sdk::Cache::in_memory();
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let e = cache.get_or_load_entry("cache:v:3", cache_sdk::Ttl::Api, || async { Ok::<_, ()>(3u8) }).await.unwrap();
    /// assert!(!e.is_stale());
    /// # });
    /// ```
    #[must_use]
    pub fn is_stale(&self) -> bool {
        self.stale.is_some()
    }

    /// Why the value is stale, `None` when it is fresh.
    ///
    /// ```
    /// # let cache = cache_sdk::Cache::in_memory();
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let e = cache.get_or_load_entry("cache:v:4", cache_sdk::Ttl::Api, || async { Ok::<_, ()>(3u8) }).await.unwrap();
    /// assert_eq!(e.stale_reason(), None);
    /// # });
    /// ```
    #[must_use]
    pub fn stale_reason(&self) -> Option<StaleReason> {
        self.stale
    }

    /// Whether this call (or the single-flight leader it waited for) ran the loader and
    /// stored its value; `false` for a cache hit and for a stale answer.
    ///
    /// ```
    /// # let cache = cache_sdk::Cache::in_memory();
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let e = cache.get_or_load_entry("cache:v:5", cache_sdk::Ttl::Api, || async { Ok::<_, ()>(3u8) }).await.unwrap();
    /// assert!(e.was_loaded());
    /// # });
    /// ```
    #[must_use]
    pub fn was_loaded(&self) -> bool {
        self.loaded
    }

    /// Whether this hit started an eager background refresh.
    ///
    /// ```
    /// # let cache = cache_sdk::Cache::in_memory();
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let e = cache.get_or_load_entry("cache:v:6", cache_sdk::Ttl::Api, || async { Ok::<_, ()>(3u8) }).await.unwrap();
    /// assert!(!e.refresh_started());
    /// # });
    /// ```
    #[must_use]
    pub fn refresh_started(&self) -> bool {
        self.refreshing
    }

    /// How long ago the value was written, when known (values written by
    /// [`Cache::set`](crate::Cache::set) and read from L1 carry no time).
    ///
    /// ```
    /// # let cache = cache_sdk::Cache::in_memory();
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let e = cache.get_or_load_entry("cache:v:7", cache_sdk::Ttl::Api, || async { Ok::<_, ()>(3u8) }).await.unwrap();
    /// assert!(e.age().unwrap() < std::time::Duration::from_secs(60));
    /// # });
    /// ```
    #[must_use]
    pub fn age(&self) -> Option<Duration> {
        self.written_at_ms
            .map(|w| Duration::from_millis(now_ms().saturating_sub(w)))
    }

    /// When the value was written, when known.
    ///
    /// ```
    /// # let cache = cache_sdk::Cache::in_memory();
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let e = cache.get_or_load_entry("cache:v:8", cache_sdk::Ttl::Api, || async { Ok::<_, ()>(3u8) }).await.unwrap();
    /// assert!(e.written_at().is_some());
    /// # });
    /// ```
    #[must_use]
    pub fn written_at(&self) -> Option<SystemTime> {
        self.written_at_ms
            .map(|w| UNIX_EPOCH + Duration::from_millis(w))
    }
}

/// A hard timeout passed with no stale value to serve.
///
/// ```
/// let t = cache_sdk::LoadTimeout::after(std::time::Duration::from_secs(2));
/// assert_eq!(t.to_string(), "the loader did not answer within 2s");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the loader did not answer within {after:?}")]
pub struct LoadTimeout {
    after: Duration,
}

impl LoadTimeout {
    /// A timeout after `after`.
    ///
    /// ```
    /// let t = cache_sdk::LoadTimeout::after(std::time::Duration::from_secs(1));
    /// assert_eq!(t.waited(), std::time::Duration::from_secs(1));
    /// ```
    #[must_use]
    pub const fn after(after: Duration) -> Self {
        Self { after }
    }

    /// How long the caller waited.
    ///
    /// ```
    /// let t = cache_sdk::LoadTimeout::after(std::time::Duration::from_secs(1));
    /// assert_eq!(t.waited().as_secs(), 1);
    /// ```
    #[must_use]
    pub const fn waited(&self) -> Duration {
        self.after
    }
}

/// Why [`Cache::get_or_load_entry`] has no value to return.
///
/// ```
/// use cache_sdk::LoadError;
/// let e: LoadError<&str> = LoadError::Loader("db down");
/// assert_eq!(e.into_loader(), Some("db down"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError<E> {
    /// The loader's error (no stale value, or fail-safe off).
    #[error("loader failed: {0}")]
    Loader(E),
    /// The hard timeout passed (no stale value, or fail-safe off).
    #[error(transparent)]
    Timeout(LoadTimeout),
    /// The load was cancelled before it answered (the runtime is shutting down).
    #[error("the load was cancelled")]
    Cancelled,
    /// The origin's circuit breaker is open (see [`LoadOptions::origin`]) and there is no
    /// stale value to serve (or fail-safe is off): the loader was not called. Returned at
    /// once; [`OriginUnavailable::retry_after`](crate::OriginUnavailable::retry_after) says
    /// when the breaker next lets a probe through.
    #[error(transparent)]
    OriginUnavailable(crate::OriginUnavailable),
}

impl<E> LoadError<E> {
    /// The loader's error, if that is what this is.
    ///
    /// ```
    /// let e: cache_sdk::LoadError<u8> = cache_sdk::LoadError::Cancelled;
    /// assert_eq!(e.into_loader(), None);
    /// ```
    pub fn into_loader(self) -> Option<E> {
        match self {
            LoadError::Loader(e) => Some(e),
            _ => None,
        }
    }
}

/// What L1 holds for a value written by the resilient engine: the value and its times
/// (wall clock, ms since the Unix epoch, as in the envelope).
pub(crate) struct Stamped<T> {
    value: Arc<T>,
    written_at_ms: u64,
    /// The logical expiry; 0 for never.
    fresh_until_ms: u64,
    /// Set when a stale value was re-armed: served as stale, without loading, until then.
    throttled_until_ms: u64,
    /// The stamps of its tags, when it has any (see `tags.rs`).
    depends: Option<Arc<Depends>>,
    /// Re-armed after a failed or refused load of a named origin: its breaker and the
    /// breaker's generation then. When the breaker closes, the re-arm ends at once.
    released_by: Option<(Arc<Breaker>, u64)>,
}

/// How long a stale value served after a failed load is re-armed: the throttle period, or,
/// with an origin named, at most until its breaker's next probe (one probe interval while
/// it is closed): the breaker then keeps a failing origin from being asked once per key,
/// and keys come back soon after the origin does.
fn rearm_period(opts: &LoadOptions, attempt: Option<&Attempt>) -> Duration {
    match attempt {
        Some(a) => opts.throttle.min(a.breaker().rearm_within(now_ms())),
        None => opts.throttle,
    }
}

/// A load the origin's breaker refused: the error, and what a re-armed stale value needs
/// to be released when the breaker closes.
struct Refused {
    error: crate::OriginUnavailable,
    breaker: Arc<Breaker>,
    generation: u64,
}

/// What a value re-armed after `attempt` failed is released by (see `Stamped::released_by`).
fn released_by(attempt: Option<&Attempt>) -> Option<(Arc<Breaker>, u64)> {
    attempt.map(|a| {
        let b = a.breaker().clone();
        let generation = b.generation();
        (b, generation)
    })
}

/// How a stamped value stands now.
pub(super) enum Standing {
    Fresh,
    Throttled,
    Expired,
}

impl<T> Stamped<T> {
    /// The logical expiry (ms since the Unix epoch), 0 for never.
    pub(super) fn fresh_until_ms(&self) -> u64 {
        self.fresh_until_ms
    }

    pub(super) fn standing(&self, now: u64) -> Standing {
        if self.fresh_until_ms == 0 || now < self.fresh_until_ms {
            Standing::Fresh
        } else if now < self.throttled_until_ms
            && self
                .released_by
                .as_ref()
                .is_none_or(|(b, generation)| b.generation() == *generation)
        {
            Standing::Throttled
        } else {
            Standing::Expired
        }
    }

    /// Whether a hit at `now` is past `fraction` of the TTL.
    fn due_for_refresh(&self, now: u64, fraction: f64) -> bool {
        if self.fresh_until_ms == 0 {
            return false;
        }
        let life = self.fresh_until_ms.saturating_sub(self.written_at_ms) as f64;
        now.saturating_sub(self.written_at_ms) as f64 >= life * fraction
    }

    fn entry(&self, stale: Option<StaleReason>, loaded: bool) -> Entry<T> {
        Entry {
            value: self.value.clone(),
            stale,
            loaded,
            refreshing: false,
            written_at_ms: Some(self.written_at_ms),
        }
    }
}

/// How a spawned load ended, for the caller waiting on it.
pub(super) enum Landed<T, E> {
    Stored(Arc<Stamped<T>>),
    Failed(E),
    Panicked(Box<dyn Any + Send>),
}

/// A failure inside the flight (never shared with waiters).
pub(super) enum Failure<E> {
    Load(LoadError<E>),
    Panicked(Box<dyn Any + Send>),
}

/// The cache's background loads: aborted when the cache is dropped.
#[derive(Debug, Default)]
pub(crate) struct Background {
    tasks: Mutex<tokio::task::JoinSet<()>>,
    /// Keys with an eager refresh running in this process.
    refreshing: Mutex<std::collections::HashSet<String>>,
    /// Keys whose last eager refresh failed: the written-at time of the value it tried to
    /// refresh, how many refreshes of it failed, and until when it gets no new one.
    refresh_failed: Mutex<std::collections::HashMap<String, FailedRefresh>>,
}

/// A failed eager refresh, remembered for the throttle period.
#[derive(Debug, Clone, Copy)]
struct FailedRefresh {
    /// The written-at time of the value the refresh was for.
    written_at_ms: u64,
    /// How many eager refreshes of that value failed.
    failures: u32,
    /// After [`REFRESH_ATTEMPTS`] failures, no new eager refresh of that value before this
    /// time (the throttle period after the last failure).
    until_ms: u64,
}

/// How many eager refreshes of one value may fail before it gets no more for the throttle
/// period: one retry rides out an occasional error (the value stays fresh), without asking
/// a failing origin on every hit until the value expires.
const REFRESH_ATTEMPTS: u32 = 2;

/// How many failed refreshes are remembered before the outdated ones are swept.
const FAILED_REFRESH_SWEEP: usize = 1024;

impl Background {
    /// Spawns `task` on the current runtime; hands it back when there is none.
    fn spawn<F: Future<Output = ()> + Send + 'static>(&self, task: F) -> Result<(), F> {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return Err(task);
        };
        let mut tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        // Reap what finished, so the set does not grow.
        while tasks.try_join_next().is_some() {}
        tasks.spawn_on(task, &handle);
        Ok(())
    }

    /// Marks `key` as refreshing; `false` when a refresh of it runs already, or when
    /// [`REFRESH_ATTEMPTS`] refreshes of the same value (written at `written_at_ms`) failed,
    /// the last less than a throttle period ago: a failing origin is then asked again only
    /// once the value expires, on the regular path (fail-safe, timeouts), not by every hit
    /// past the refresh point.
    fn start_refresh(&self, key: &str, written_at_ms: u64, now: u64) -> bool {
        {
            let mut failed = self
                .refresh_failed
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(f) = failed.get(key) {
                if f.written_at_ms == written_at_ms {
                    if f.failures >= REFRESH_ATTEMPTS && now < f.until_ms {
                        return false;
                    }
                } else {
                    failed.remove(key);
                }
            }
        }
        self.refreshing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.to_owned())
    }

    /// Remembers that an eager refresh of the value of `key` written at `written_at_ms`
    /// failed (after [`REFRESH_ATTEMPTS`] failures: no new one for that value until
    /// `until_ms`).
    fn refresh_failed(&self, key: &str, written_at_ms: u64, until_ms: u64, now: u64) {
        let mut failed = self
            .refresh_failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if failed.len() >= FAILED_REFRESH_SWEEP {
            failed.retain(|_, f| f.until_ms > now);
        }
        let failures = failed
            .get(key)
            .filter(|f| f.written_at_ms == written_at_ms)
            .map_or(0, |f| f.failures)
            .saturating_add(1);
        failed.insert(
            key.to_owned(),
            FailedRefresh {
                written_at_ms,
                failures,
                until_ms,
            },
        );
    }

    /// Whether an eager refresh of `key` runs in this process.
    fn is_refreshing(&self, key: &str) -> bool {
        self.refreshing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(key)
    }

    fn end_refresh(&self, key: &str) {
        self.refreshing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
    }
}

/// Ends a key's refresh when dropped (completion, failure or abort).
struct RefreshGuard {
    inner: Weak<Inner>,
    key: String,
}

impl Drop for RefreshGuard {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.upgrade() {
            inner.background.end_refresh(&self.key);
        }
    }
}

impl Cache {
    /// A fresh value of `T` that the resilient engine left in L1 (for plain reads).
    pub(crate) fn l1_fresh_stamped<T: CacheValue>(&self, key: &str) -> Option<Arc<T>> {
        let s = self.inner.local.get::<Stamped<T>>(key)?;
        matches!(s.standing(now_ms()), Standing::Fresh).then(|| s.value.clone())
    }

    /// The cache's default [`LoadOptions`], used by [`Cache::get_or_load_entry`] (set with
    /// [`CacheBuilder::load_options`](crate::CacheBuilder::load_options)); a starting
    /// point for per-call options.
    ///
    /// ```
    /// let cache = cache_sdk::Cache::in_memory();
    /// let opts = cache.load_options().refresh_ahead(0.9);
    /// assert_eq!(opts.refresh_fraction(), Some(0.9));
    /// ```
    pub fn load_options(&self) -> LoadOptions {
        self.inner.load_defaults.clone()
    }

    /// Read-through with the cache's default [`LoadOptions`], telling a fresh value from
    /// a stale one. See [`Cache::get_or_load_entry_with`].
    ///
    /// # Errors
    /// As [`Cache::get_or_load_entry_with`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cache = cache_sdk::Cache::in_memory();
    /// let e = cache
    ///     .get_or_load_entry("cache:product:1", cache_sdk::Ttl::Api, || async { Ok::<_, ()>(5u32) })
    ///     .await
    ///     .unwrap();
    /// assert_eq!(**e.value(), 5);
    /// # }
    /// ```
    pub async fn get_or_load_entry<T, E, F, Fut>(
        &self,
        key: &str,
        ttl: impl Into<Ttl>,
        loader: F,
    ) -> Result<Entry<T>, LoadError<E>>
    where
        T: CacheValue,
        E: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        let opts = self.inner.load_defaults.clone();
        self.get_or_load_entry_with(key, ttl, &opts, loader).await
    }

    /// Like [`Cache::get_or_load_entry_with`], returning only the value (a clone).
    ///
    /// # Errors
    /// As [`Cache::get_or_load_entry_with`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use std::time::Duration;
    /// let cache = cache_sdk::Cache::in_memory();
    /// let opts = cache_sdk::LoadOptions::new().fail_safe(Duration::from_secs(3600));
    /// let v = cache
    ///     .get_or_load_with("cache:product:2", cache_sdk::Ttl::Api, &opts, || async { Ok::<_, ()>(5u32) })
    ///     .await
    ///     .unwrap();
    /// assert_eq!(v, 5);
    /// # }
    /// ```
    pub async fn get_or_load_with<T, E, F, Fut>(
        &self,
        key: &str,
        ttl: impl Into<Ttl>,
        opts: &LoadOptions,
        loader: F,
    ) -> Result<T, LoadError<E>>
    where
        T: CacheValue + Clone,
        E: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        self.get_or_load_entry_with(key, ttl, opts, loader)
            .await
            .map(|e| (*e.value).clone())
    }

    /// Read-through that keeps answering when the origin fails or slows down.
    ///
    /// As [`Cache::get_or_load`] (L1, L2, then the loader once per key through the
    /// single-flight engine; cache trouble never fails the call), plus what `opts` turns on:
    ///
    /// - **fail-safe**: values are kept past their TTL; when the loader fails, panics or
    ///   passes the hard timeout, the expired value is returned (marked stale) and re-armed
    ///   for the throttle period, during which the origin is not asked again;
    /// - **soft timeout**: with a stale value at hand, a loader slower than this is left to
    ///   finish in the background and the stale value is returned at once;
    /// - **hard timeout**: the longest wait; past it the stale value, else
    ///   [`LoadError::Timeout`]; the loader still finishes and its value is stored;
    /// - **eager refresh**: a hit past the given fraction of the TTL starts one background
    ///   refresh of the key and returns the cached value at once; after two failed
    ///   refreshes, the same value is not refreshed again for the throttle period;
    /// - **origin** (its circuit breaker): a stale value re-armed after a failure of the
    ///   origin is returned at once when its re-arm ends or the breaker closes, and
    ///   reloaded in the background, as an eager refresh.
    ///
    /// The loader runs as a task on the current runtime (hence `Send + 'static`), tied to
    /// the cache: dropping the cache aborts it. A panicking loader is caught: it counts as a
    /// failed load, and with no stale value to serve the panic resumes in the caller.
    /// Nothing stale is returned when fail-safe is off.
    ///
    /// # Errors
    /// [`LoadError::Loader`] with the loader's error, [`LoadError::Timeout`], or
    /// [`LoadError::Cancelled`] when the runtime shuts down during the load; never while a
    /// stale value can be served.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use std::time::Duration;
    /// let cache = cache_sdk::Cache::in_memory();
    /// let opts = cache_sdk::LoadOptions::new()
    ///     .fail_safe(Duration::from_secs(3600))
    ///     .fail_safe_throttle(Duration::from_secs(1));
    /// let ttl = cache_sdk::Ttl::secs(1);
    /// cache.get_or_load_entry_with("cache:price:1", ttl.clone(), &opts, || async { Ok::<_, String>(10u32) })
    ///     .await
    ///     .unwrap();
    /// tokio::time::sleep(Duration::from_millis(1100)).await; // expired now
    /// let e = cache
    ///     .get_or_load_entry_with("cache:price:1", ttl, &opts, || async { Err::<u32, _>("db down".to_string()) })
    ///     .await
    ///     .unwrap();
    /// assert_eq!((**e.value(), e.is_stale()), (10, true));
    /// # }
    /// ```
    pub async fn get_or_load_entry_with<T, E, F, Fut>(
        &self,
        key: &str,
        ttl: impl Into<Ttl>,
        opts: &LoadOptions,
        loader: F,
    ) -> Result<Entry<T>, LoadError<E>>
    where
        T: CacheValue,
        E: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        let c = &self.inner.counters;
        let now = now_ms();
        let mut expired: Option<Arc<Stamped<T>>> = None;
        if let Some(s) = self.inner.local.get::<Stamped<T>>(key) {
            match s.standing(now) {
                Standing::Fresh => {
                    bump(&c.l1_hits);
                    let mut entry = s.entry(None, false);
                    if let Some(f) = opts.refresh_ahead {
                        if s.due_for_refresh(now, f) {
                            entry.refreshing = self.refresh(key, &ttl.into(), opts, &s, loader);
                        }
                    }
                    return Ok(entry);
                }
                Standing::Throttled => {
                    bump(&c.l1_hits);
                    bump(&c.stale_served);
                    return Ok(s.entry(Some(StaleReason::Throttled), false));
                }
                Standing::Expired if s.released_by.is_some() => {
                    // Re-armed after a failure of its origin, now released: answered at
                    // once while it reloads in the background.
                    let ttl = ttl.into();
                    match self.revalidate(key, &ttl, opts, &s, loader) {
                        Ok(entry) => {
                            bump(&c.l1_hits);
                            bump(&c.stale_served);
                            return Ok(entry);
                        }
                        Err(back) => return self.load_entry(key, ttl, opts, back, Some(s)).await,
                    }
                }
                Standing::Expired => expired = Some(s),
            }
        } else if let Some(v) = self.inner.local.get::<T>(key) {
            // Written by `set` or read by `get`: L1 keeps it no longer than its TTL.
            bump(&c.l1_hits);
            return Ok(Entry {
                value: v,
                stale: None,
                loaded: false,
                refreshing: false,
                written_at_ms: None,
            });
        }
        self.load_entry(key, ttl.into(), opts, loader, expired)
            .await
    }

    /// [`Cache::get_or_load_entry_with`] past L1: the single-flight leader's recheck and
    /// load, `expired` being what L1 held past its TTL.
    async fn load_entry<T, E, F, Fut>(
        &self,
        key: &str,
        ttl: Ttl,
        opts: &LoadOptions,
        loader: F,
        mut expired: Option<Arc<Stamped<T>>>,
    ) -> Result<Entry<T>, LoadError<E>>
    where
        T: CacheValue,
        E: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        let c = &self.inner.counters;
        bump(&c.l1_misses);
        let resolved = key::validate(key).and_then(|_| self.resolve(&ttl));
        let ttl = match resolved {
            Ok(ttl) => ttl,
            Err(e) => {
                tracing::error!(key = log_key(key), error = %e, "get_or_load_entry cannot cache this key; loading without the cache");
                bump(&c.loads);
                return match AssertUnwindSafe(async move { loader().await })
                    .catch_unwind()
                    .await
                {
                    Ok(Ok(v)) => Ok(Entry {
                        value: Arc::new(v),
                        stale: None,
                        loaded: true,
                        refreshing: false,
                        written_at_ms: None,
                    }),
                    Ok(Err(e)) => {
                        bump(&c.load_errors);
                        Err(LoadError::Loader(e))
                    }
                    Err(panic) => {
                        bump(&c.load_errors);
                        std::panic::resume_unwind(panic)
                    }
                };
            }
        };
        if opts.fail_safe.is_none() {
            expired = None;
        }
        let stale = Mutex::new(expired);
        let flight = self.inner.flights.run(
            key,
            || self.recheck_stamped::<T>(key, opts, &stale),
            || self.lead(key, ttl, opts, loader, &stale),
            |_| std::future::ready(()),
        );
        let outcome = self
            .traced(super::observe::Op::GetOrLoad, key, flight)
            .await;
        match outcome {
            Ok(entry) => {
                if entry.is_stale() {
                    bump(&c.stale_served);
                }
                Ok((*entry).clone())
            }
            Err(Failure::Load(e)) => Err(e),
            Err(Failure::Panicked(p)) => std::panic::resume_unwind(p),
        }
    }

    /// The leader's look before loading: L1, then L2. Finds a fresh or re-armed value, or
    /// leaves an expired one (fail-safe on) in `stale`.
    async fn recheck_stamped<T: CacheValue>(
        &self,
        key: &str,
        opts: &LoadOptions,
        stale: &Mutex<Option<Arc<Stamped<T>>>>,
    ) -> Option<Arc<Entry<T>>> {
        let c = &self.inner.counters;
        let now = now_ms();
        if let Some(s) = self.inner.local.get::<Stamped<T>>(key) {
            match s.standing(now) {
                Standing::Fresh => return Some(Arc::new(s.entry(None, false))),
                Standing::Throttled => {
                    return Some(Arc::new(s.entry(Some(StaleReason::Throttled), false)));
                }
                Standing::Expired => {}
            }
        } else if let Some(v) = self.inner.local.get::<T>(key) {
            return Some(Arc::new(Entry {
                value: v,
                stale: None,
                loaded: false,
                refreshing: false,
                written_at_ms: None,
            }));
        }
        let found = match self.read_stamped::<T>(key).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(key = log_key(key), error = %e, "L2 read failed; loading");
                return None;
            }
        };
        let Some(s) = found else {
            bump(&c.l2_misses);
            return None;
        };
        match s.standing(now_ms()) {
            Standing::Fresh => {
                bump(&c.l2_hits);
                let ticket = self.inner.local.ticket(key);
                let left = s.fresh_until_ms.saturating_sub(now_ms());
                let l1_ttl = (s.fresh_until_ms != 0).then(|| Duration::from_millis(left));
                self.inner.local.insert_depending(
                    key,
                    s.clone() as AnyValue,
                    l1_ttl,
                    s.depends.clone(),
                    ticket,
                );
                Some(Arc::new(s.entry(None, false)))
            }
            _ => {
                bump(&c.l2_misses);
                if opts.fail_safe.is_some() {
                    let mut slot = stale.lock().unwrap_or_else(PoisonError::into_inner);
                    let newer = slot
                        .as_ref()
                        .is_none_or(|old| old.written_at_ms < s.written_at_ms);
                    if newer {
                        *slot = Some(s);
                    }
                }
                None
            }
        }
    }

    /// Reads `key` from L2 with its envelope times. A value that does not decode is
    /// nothing (counted).
    pub(super) async fn read_stamped<T: CacheValue>(
        &self,
        key: &str,
    ) -> crate::Result<Option<Arc<Stamped<T>>>> {
        let bytes = self.inner.remote.get(key).await?;
        let (Some(bytes), depends) = self.screen(key, bytes).await? else {
            return Ok(None);
        };
        let header = Header::parse(&bytes);
        let value = codec::decode::<T>(
            &bytes,
            self.inner.types.of::<T>(),
            self.inner.max_value_size,
        );
        match (header, value) {
            (Ok(h), Ok(v)) => Ok(Some(Arc::new(Stamped {
                value: Arc::new(v),
                written_at_ms: h.written_at_ms,
                fresh_until_ms: h.expires_at_ms,
                throttled_until_ms: 0,
                depends,
                released_by: None,
            }))),
            (_, Err(e)) | (Err(e), _) => {
                self.decode_failed::<T>(key, &e);
                Ok(None)
            }
        }
    }

    /// The single-flight leader's load: spawns the loader and waits for it within the
    /// timeouts; serves the stale value when the load fails or is too slow (fail-safe).
    async fn lead<T, E, F, Fut>(
        &self,
        key: &str,
        ttl: Duration,
        opts: &LoadOptions,
        loader: F,
        stale: &Mutex<Option<Arc<Stamped<T>>>>,
    ) -> Result<Entry<T>, Failure<E>>
    where
        T: CacheValue,
        E: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        let c = &self.inner.counters;
        let stale = stale.lock().unwrap_or_else(PoisonError::into_inner).take();
        let attempt = match self.admit(opts, true) {
            Ok(attempt) => attempt,
            Err(refused) => return self.refused(key, opts, refused, stale),
        };
        let started = tokio::time::Instant::now();
        let lock = match self
            .stampede_turn(key, opts, stale.is_some(), started)
            .await
        {
            super::stampede::Turn::Lead(lock) => lock,
            super::stampede::Turn::Found(s) => return Ok(s.entry(None, false)),
            super::stampede::Turn::TimedOut(why) => {
                return self.waited_too_long(key, opts, why, stale)
            }
        };
        let mut rx = self
            .spawn_load(key, ttl, opts, loader, lock, attempt.clone())
            .await;
        if let (Some(soft), Some(st)) = (opts.soft_timeout, &stale) {
            let soft = opts.hard_timeout.map_or(soft, |h| soft.min(h));
            let soft = soft.saturating_sub(started.elapsed());
            match tokio::time::timeout(soft, &mut rx).await {
                Ok(landed) => return self.landed(key, opts, landed, stale, attempt.as_deref()),
                Err(_) => {
                    bump(&c.soft_timeouts);
                    tracing::info!(
                        key = log_key(key),
                        "loader slower than the soft timeout; serving the stale value"
                    );
                    return Ok(self.rearm(key, opts, st, StaleReason::SoftTimeout, &mut rx));
                }
            }
        }
        let landed = match opts.hard_timeout {
            Some(hard) => {
                let left = hard.saturating_sub(started.elapsed());
                match tokio::time::timeout(left, &mut rx).await {
                    Ok(landed) => landed,
                    Err(_) => {
                        bump(&c.hard_timeouts);
                        if let Some(a) = &attempt {
                            a.failed();
                        }
                        return match &stale {
                            Some(st) => {
                                tracing::warn!(
                                    key = log_key(key),
                                    "loader passed the hard timeout; serving the stale value"
                                );
                                let period = rearm_period(opts, attempt.as_deref());
                                Ok(self.rearm_for(
                                    key,
                                    st,
                                    StaleReason::HardTimeout,
                                    period,
                                    released_by(attempt.as_deref()),
                                    opts.fail_safe,
                                    &mut rx,
                                ))
                            }
                            None => {
                                tracing::warn!(
                                    key = log_key(key),
                                    "loader passed the hard timeout"
                                );
                                Err(Failure::Load(LoadError::Timeout(LoadTimeout::after(hard))))
                            }
                        };
                    }
                }
            }
            None => rx.await,
        };
        self.landed(key, opts, landed, stale, attempt.as_deref())
    }

    /// Asks the breaker of the origin `opts` names (if any) whether a load may call it:
    /// the attempt to report the outcome to (`None` without an origin), or the refusal.
    /// `count` says whether a refusal counts in `breaker_rejections`.
    fn admit(&self, opts: &LoadOptions, count: bool) -> Result<Option<Arc<Attempt>>, Refused> {
        let Some(origin) = &opts.origin else {
            return Ok(None);
        };
        let breaker = self.inner.breakers.of(origin);
        // Read before asking: if it closes in between, the re-arm ends at once.
        let generation = breaker.generation();
        match breaker.admit(now_ms(), count) {
            Ok(attempt) => Ok(Some(attempt)),
            Err(error) => Err(Refused {
                error,
                breaker,
                generation,
            }),
        }
    }

    /// The origin's breaker refused the load: the stale value, re-armed until the next
    /// probe, or the fast error.
    fn refused<T: CacheValue, E>(
        &self,
        key: &str,
        opts: &LoadOptions,
        refused: Refused,
        stale: Option<Arc<Stamped<T>>>,
    ) -> Result<Entry<T>, Failure<E>> {
        tracing::debug!(
            key = log_key(key),
            origin = refused.error.origin(),
            "circuit breaker open; the loader is not called"
        );
        match stale {
            Some(st) => {
                let (_, mut none) = oneshot::channel::<Landed<T, E>>();
                let period = refused.error.retry_after().max(Duration::from_millis(1));
                Ok(self.rearm_for(
                    key,
                    &st,
                    StaleReason::OriginUnavailable,
                    period,
                    Some((refused.breaker, refused.generation)),
                    opts.fail_safe,
                    &mut none,
                ))
            }
            None => Err(Failure::Load(LoadError::OriginUnavailable(refused.error))),
        }
    }

    /// A handle on the circuit breaker of `origin` (made on first use): its state, and
    /// [`OriginBreaker::run`](crate::OriginBreaker::run) to guard calls to the origin made
    /// outside [`Cache::get_or_load_entry_with`] (batch loads, for instance), which then
    /// count towards the same breaker as the loads given
    /// [`LoadOptions::origin`]`(origin)`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cache = cache_sdk::Cache::in_memory();
    /// let products = cache.origin_breaker("products");
    /// assert_eq!(products.state(), cache_sdk::BreakerState::Closed);
    /// let rows = products.run(|| async { Ok::<_, String>(vec![1u64, 2]) }).await.unwrap();
    /// assert_eq!(rows.len(), 2);
    /// # }
    /// ```
    #[must_use]
    pub fn origin_breaker(&self, origin: &str) -> crate::OriginBreaker {
        self.inner.breakers.handle(origin)
    }

    /// What the leader returns once the load task answered.
    fn landed<T: CacheValue, E>(
        &self,
        key: &str,
        opts: &LoadOptions,
        landed: Result<Landed<T, E>, oneshot::error::RecvError>,
        stale: Option<Arc<Stamped<T>>>,
        attempt: Option<&Attempt>,
    ) -> Result<Entry<T>, Failure<E>> {
        let failure = match landed {
            Ok(Landed::Stored(s)) => return Ok(s.entry(None, true)),
            Ok(Landed::Failed(e)) => Failure::Load(LoadError::Loader(e)),
            Ok(Landed::Panicked(p)) => Failure::Panicked(p),
            Err(_) => Failure::Load(LoadError::Cancelled),
        };
        match stale {
            Some(st) => {
                tracing::warn!(
                    key = log_key(key),
                    "loader failed; serving the stale value (fail-safe)"
                );
                let (_, mut none) = oneshot::channel::<Landed<T, E>>();
                let period = rearm_period(opts, attempt);
                Ok(self.rearm_for(
                    key,
                    &st,
                    StaleReason::LoadFailed,
                    period,
                    released_by(attempt),
                    opts.fail_safe,
                    &mut none,
                ))
            }
            None => Err(failure),
        }
    }

    /// Serves `st` stale and re-arms it in this process's L1 for the throttle period. When
    /// the load landed meanwhile, its value is put back (it wins over the re-armed one).
    pub(super) fn rearm<T: CacheValue, E>(
        &self,
        key: &str,
        opts: &LoadOptions,
        st: &Arc<Stamped<T>>,
        why: StaleReason,
        rx: &mut oneshot::Receiver<Landed<T, E>>,
    ) -> Entry<T> {
        self.rearm_for(key, st, why, opts.throttle, None, opts.fail_safe, rx)
    }

    /// [`Cache::rearm`] for `period` instead of the throttle period; with `released_by`, the
    /// re-arm also ends when that breaker closes, and the value stays in L1 past the end of
    /// the re-arm for as long as it lives (its TTL plus the fail-safe `window`), so that the
    /// read that finds the re-arm ended answers it at once and reloads it in the background
    /// ([`Cache::revalidate`]).
    #[allow(clippy::too_many_arguments)]
    fn rearm_for<T: CacheValue, E>(
        &self,
        key: &str,
        st: &Arc<Stamped<T>>,
        why: StaleReason,
        period: Duration,
        released_by: Option<(Arc<Breaker>, u64)>,
        window: Option<Duration>,
        rx: &mut oneshot::Receiver<Landed<T, E>>,
    ) -> Entry<T> {
        let now = now_ms();
        let l1_ttl = match (&released_by, window) {
            (Some(_), Some(window)) if st.fresh_until_ms != 0 => {
                let end = st.fresh_until_ms.saturating_add(millis(window));
                Duration::from_millis(end.saturating_sub(now)).max(period)
            }
            _ => period,
        };
        let rearmed = Arc::new(Stamped {
            value: st.value.clone(),
            written_at_ms: st.written_at_ms,
            fresh_until_ms: st.fresh_until_ms,
            throttled_until_ms: now.saturating_add(millis(period)),
            depends: st.depends.clone(),
            released_by,
        });
        let ticket = self.inner.local.ticket(key);
        let depends = st.depends.clone();
        self.inner
            .local
            .insert_depending(key, rearmed as AnyValue, Some(l1_ttl), depends, ticket);
        if let Ok(Landed::Stored(fresh)) = rx.try_recv() {
            let ticket = self.inner.local.ticket(key);
            let left = fresh.fresh_until_ms.saturating_sub(now_ms()).max(1);
            let depends = fresh.depends.clone();
            self.inner.local.insert_depending(
                key,
                fresh as AnyValue,
                Some(Duration::from_millis(left)),
                depends,
                ticket,
            );
        }
        st.entry(Some(why), false)
    }

    /// Runs `loader` as a task of the cache; its value is stored in L1 and L2 whether or
    /// not anyone still waits for it. Outside a Tokio runtime, the load runs right here
    /// (no timeouts then: nothing could finish it in the background).
    async fn spawn_load<T, E, F, Fut>(
        &self,
        key: &str,
        ttl: Duration,
        opts: &LoadOptions,
        loader: F,
        lock: Option<super::stampede::HeldLock>,
        attempt: Option<Arc<Attempt>>,
    ) -> oneshot::Receiver<Landed<T, E>>
    where
        T: CacheValue,
        E: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let weak = Arc::downgrade(&self.inner);
        let key = key.to_owned();
        let opts = opts.clone();
        bump(&self.inner.counters.loads);
        let task = async move {
            let result =
                AssertUnwindSafe(crate::metrics::timed_load(async move { loader().await }))
                    .catch_unwind()
                    .await;
            if let Some(a) = attempt {
                match &result {
                    Ok(Ok(_)) => a.succeeded(),
                    Ok(Err(e)) if opts.is_answer(e) => a.succeeded(),
                    _ => a.failed(),
                }
            }
            let Some(inner) = weak.upgrade() else { return };
            let cache = Cache { inner };
            let c = &cache.inner.counters;
            let landed = match result {
                Ok(Ok(v)) => {
                    Landed::Stored(cache.store_stamped(&key, Arc::new(v), ttl, &opts).await)
                }
                Ok(Err(e)) => {
                    bump(&c.load_errors);
                    Landed::Failed(e)
                }
                Err(p) => {
                    bump(&c.load_errors);
                    tracing::error!(
                        key = log_key(&key),
                        "the loader panicked; counted as a failed load"
                    );
                    Landed::Panicked(p)
                }
            };
            if let Some(lock) = lock {
                // After the write: a waiter that takes the lock now finds the value.
                cache.release(lock).await;
            }
            let stored = matches!(landed, Landed::Stored(_));
            if tx.send(landed).is_err() && stored {
                bump(&c.background_completions);
            }
        };
        if let Err(task) = self.inner.background.spawn(task) {
            task.await;
        }
        rx
    }

    /// Stores a loaded value: L2 with the physical TTL (the envelope carries the logical
    /// one), then L1. Cache trouble is logged, and the value is still returned.
    async fn store_stamped<T: CacheValue>(
        &self,
        key: &str,
        value: Arc<T>,
        ttl: Duration,
        opts: &LoadOptions,
    ) -> Arc<Stamped<T>> {
        let now = now_ms();
        let mut stamped = Stamped {
            value,
            written_at_ms: now,
            fresh_until_ms: now.saturating_add(millis(ttl)),
            throttled_until_ms: 0,
            depends: None,
            released_by: None,
        };
        let physical = opts.physical(ttl);
        let ticket = self.inner.local.ticket(key);
        let encoded = tags::TagList::new(opts.tag_names()).and_then(|tags| {
            let names = tags.as_ref().map_or(&[][..], |t| &t.names[..]);
            let bytes = self.encode_tagged(key, &*stamped.value, ttl, names)?;
            Ok((bytes, tags))
        });
        let written = match encoded {
            Ok((bytes, tags)) => {
                if let Ok(h) = Header::parse(&bytes) {
                    stamped.written_at_ms = h.written_at_ms;
                    stamped.fresh_until_ms = h.expires_at_ms;
                }
                stamped.depends = tags.and_then(|t| t.depends(&bytes));
                self.inner.remote.set(key, bytes, Some(physical)).await
            }
            Err(e) => Err(e),
        };
        let stamped = Arc::new(stamped);
        match written {
            Ok(()) => {
                self.inner.local.insert_depending(
                    key,
                    stamped.clone() as AnyValue,
                    Some(physical),
                    stamped.depends.clone(),
                    ticket,
                );
                self.written([key]).await;
            }
            Err(e) => {
                self.inner.local.invalidate(key);
                tracing::warn!(key = log_key(key), error = %e, "loaded value could not be cached");
            }
        }
        stamped
    }

    /// Starts the eager refresh of `key` (one per key in this process); returns whether it
    /// started.
    fn refresh<T, E, F, Fut>(
        &self,
        key: &str,
        ttl: &Ttl,
        opts: &LoadOptions,
        seen: &Stamped<T>,
        loader: F,
    ) -> bool
    where
        T: CacheValue,
        E: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        match self.claim_refresh(key, ttl, opts, seen) {
            Some(claim) => self.run_refresh(key, opts, seen.written_at_ms, claim, loader),
            None => false,
        }
    }

    /// Serves a value that a breaker-guarded failure had re-armed, now expired (its
    /// origin's breaker closed, or the re-arm ended), at once, and reloads it in the
    /// background as an eager refresh (one per key in this process; while the breaker is
    /// open, only when it is this load's turn to probe). Callers then never queue on the
    /// first load of a key after its origin is back: with hot keys read by many tasks,
    /// each such wait holds every reader of the key, and the readers, released together,
    /// meet again on the next such key, one load after another.
    ///
    /// Hands the loader back when nothing was started and no reload is running (a refresh
    /// of that value failed twice within the throttle period, the breaker refused, no
    /// runtime): the caller then takes the regular path (fail-safe, timeouts).
    fn revalidate<T, E, F, Fut>(
        &self,
        key: &str,
        ttl: &Ttl,
        opts: &LoadOptions,
        st: &Stamped<T>,
        loader: F,
    ) -> Result<Entry<T>, F>
    where
        T: CacheValue,
        E: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        if opts.fail_safe.is_none() || tokio::runtime::Handle::try_current().is_err() {
            return Err(loader);
        }
        let stale = || st.entry(Some(StaleReason::Throttled), false);
        if self.inner.background.is_refreshing(key) {
            return Ok(stale());
        }
        let Some(claim) = self.claim_refresh(key, ttl, opts, st) else {
            return Err(loader);
        };
        tracing::debug!(
            key = log_key(key),
            "serving the released stale value; reloading it in the background"
        );
        let mut entry = stale();
        entry.refreshing = self.run_refresh(key, opts, st.written_at_ms, claim, loader);
        Ok(entry)
    }

    /// Claims the eager refresh of `key`: the resolved TTL and the breaker's attempt, or
    /// `None` when a refresh runs already, the value's refreshes failed too often, or the
    /// origin's breaker is open (not this load's turn to probe).
    fn claim_refresh<T>(
        &self,
        key: &str,
        ttl: &Ttl,
        opts: &LoadOptions,
        seen: &Stamped<T>,
    ) -> Option<(Duration, Option<Arc<Attempt>>)> {
        let ttl = self.resolve(ttl).ok()?;
        if !self
            .inner
            .background
            .start_refresh(key, seen.written_at_ms, now_ms())
        {
            return None;
        }
        // An open breaker skips the refresh: the value expires and is then answered stale.
        let Ok(attempt) = self.admit(opts, false) else {
            self.inner.background.end_refresh(key);
            return None;
        };
        Some((ttl, attempt))
    }

    /// Runs the refresh claimed with [`Cache::claim_refresh`] as a task of the cache.
    fn run_refresh<T, E, F, Fut>(
        &self,
        key: &str,
        opts: &LoadOptions,
        seen_at: u64,
        (ttl, attempt): (Duration, Option<Arc<Attempt>>),
        loader: F,
    ) -> bool
    where
        T: CacheValue,
        E: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        let guard = RefreshGuard {
            inner: Arc::downgrade(&self.inner),
            key: key.to_owned(),
        };
        let opts = opts.clone();
        bump(&self.inner.counters.refreshes_started);
        let task = async move {
            let guard = guard;
            let Some(inner) = guard.inner.upgrade() else {
                return;
            };
            let cache = Cache { inner };
            let key = guard.key.clone();
            // Another instance may have refreshed it already.
            if let Ok(Some(s)) = cache.read_stamped::<T>(&key).await {
                if s.written_at_ms > seen_at && matches!(s.standing(now_ms()), Standing::Fresh) {
                    let ticket = cache.inner.local.ticket(&key);
                    let left = s.fresh_until_ms.saturating_sub(now_ms()).max(1);
                    cache.inner.local.insert(
                        &key,
                        s as AnyValue,
                        Some(Duration::from_millis(left)),
                        ticket,
                    );
                    bump(&cache.inner.counters.refreshes_completed);
                    return;
                }
            }
            let watched = attempt.clone();
            let mut rx = cache
                .spawn_load(&key, ttl, &opts, loader, None, attempt)
                .await;
            let weak = Arc::downgrade(&cache.inner);
            drop(cache);
            // Past the hard timeout the load counts as failed for the origin's breaker (a
            // hung probe must not keep it half-open); the refresh still waits for it.
            let landed = match (opts.hard_timeout, watched) {
                (Some(hard), Some(a)) => match tokio::time::timeout(hard, &mut rx).await {
                    Ok(landed) => landed,
                    Err(_) => {
                        a.failed();
                        rx.await
                    }
                },
                _ => rx.await,
            };
            let Some(inner) = weak.upgrade() else { return };
            match landed {
                Ok(Landed::Stored(_)) => bump(&inner.counters.refreshes_completed),
                _ => {
                    bump(&inner.counters.refreshes_failed);
                    let now = now_ms();
                    inner.background.refresh_failed(
                        &key,
                        seen_at,
                        now.saturating_add(millis(opts.throttle)),
                        now,
                    );
                    tracing::warn!(
                        key = log_key(&key),
                        "eager refresh failed; the cached value stays until its TTL"
                    );
                }
            }
            drop(inner);
            drop(guard);
        };
        if self.inner.background.spawn(task).is_ok() {
            true
        } else {
            self.inner.background.end_refresh(key);
            false
        }
    }
}

impl<T> Clone for Entry<T> {
    fn clone(&self) -> Self {
        Self {
            value: self.value.clone(),
            stale: self.stale,
            loaded: self.loaded,
            refreshing: self.refreshing,
            written_at_ms: self.written_at_ms,
        }
    }
}

impl<T> Clone for Stamped<T> {
    fn clone(&self) -> Self {
        Self {
            value: self.value.clone(),
            written_at_ms: self.written_at_ms,
            fresh_until_ms: self.fresh_until_ms,
            throttled_until_ms: self.throttled_until_ms,
            depends: self.depends.clone(),
            released_by: self.released_by.clone(),
        }
    }
}
