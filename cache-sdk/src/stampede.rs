//! The stampede lock across instances: on an L2 miss, only the instance that takes a short
//! Redis lock runs the loader; the others wait for its value.
//!
//! ```text
//! flight leader (one per key per process), after its L2 check missed
//!   │
//!   ▼
//! SET <key>:~lock <token> NX PX <lock_ttl> ──► taken ──► GET <key> (the previous holder may
//!   │ held by another instance                 │         have just stored it)
//!   ▼                                          ├─ found ──► release, serve it
//! wait: woken when <key> is written            └─ none ──► load (task) ─► store ─► release
//! (invalidation link), else every `poll`
//!   ──► GET <key> ──► fresh ──► serve it (no load here)
//!   │ none
//!   └─► SET NX again (the holder may be gone: its lock expires after lock_ttl)
//! never past the soft timeout (with a stale value) or the hard timeout: then the stale
//! value (fail-safe) or LoadError::Timeout, as for a slow loader
//! ```
//!
//! - **Opt-in**: [`LoadOptions::stampede`] per call, the builder's
//!   [`load_options`](crate::CacheBuilder::load_options) per cache, `#[cached(stampede =
//!   "distributed")]` in the macro. The default, [`Stampede::Local`], is the in-process
//!   single-flight only. The lock applies to [`Cache::get_or_load_entry`] and its
//!   variants (the resilient read-through); within a process the single-flight engine
//!   still makes one caller per key take part.
//! - **Release**: the load task deletes the lock after storing the value, with a
//!   compare-and-delete script, so a lock that expired and was taken by another instance
//!   is never deleted by the old holder.
//! - **Renewal**: while the loader runs, the holder extends its lock every third of
//!   `lock_ttl` (a compare-and-pexpire script: only its own token), so a loader slower than
//!   `lock_ttl` does not let a second load start elsewhere. It renews for at most the
//!   call's hard timeout (else 12 × `lock_ttl`, 1 min by default): a loader that hangs
//!   longer no longer keeps the other instances from loading.
//! - **A holder that dies** (process killed, cache dropped, task aborted) stops renewing
//!   and leaves its lock to expire: after at most `lock_ttl`
//!   ([`DEFAULT_STAMPEDE_LOCK_TTL`], 5 s) another instance takes it and loads.
//! - **Without Redis** (not configured, or down: the fallback serves) the lock is skipped
//!   and only the in-process single-flight remains. The lock is never written to the
//!   fallback nor replayed.
//! - **Cluster**: the lock key `<key>:~lock` is a key of its own, on whatever slot it
//!   hashes to; no command touches the lock and the value together.
//! - **Wake-up**: waiters sleep on the key's watch (`tier/watch.rs`), which the
//!   invalidation link fires when the key is written by any instance; without the link
//!   (coherence off or down, L1 disabled) they poll every `poll` (100 ms by default).
//!
//! A child of the cache module, beside `load.rs`, whose leader calls [`Cache::stampede_turn`]
//! before it starts the loader. The two Redis commands live in `tier/remote/lock.rs`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::load::{
    Entry, Failure, Landed, LoadError, LoadOptions, LoadTimeout, StaleReason, Stamped, Standing,
};
use super::{log_key, Cache, CacheValue};
use crate::codec::now_ms;
use crate::stats::bump;
use crate::tier::local::AnyValue;

/// How long a stampede lock lives unless set: the longest another instance waits for a
/// holder that died.
pub const DEFAULT_STAMPEDE_LOCK_TTL: Duration = Duration::from_secs(5);

/// How often a waiter looks for the value when nothing woke it.
pub const DEFAULT_STAMPEDE_POLL: Duration = Duration::from_millis(100);

/// Who runs the loader on a miss.
///
/// ```
/// use cache_sdk::{LoadOptions, Stampede};
/// let opts = LoadOptions::new().stampede(Stampede::Distributed);
/// assert_eq!(opts.stampede_mode(), Stampede::Distributed);
/// assert_eq!("distributed".parse::<Stampede>(), Ok(Stampede::Distributed));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Stampede {
    /// One loader per key per process (the in-process single-flight).
    #[default]
    Local,
    /// One loader per key across every instance on the same Redis: the instance that
    /// takes a short Redis lock loads, the others wait for its value.
    Distributed,
}

impl Stampede {
    /// The name used in configuration and in `#[cached(stampede = "...")]`.
    ///
    /// ```
    /// assert_eq!(cache_sdk::Stampede::Distributed.as_str(), "distributed");
    /// ```
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Stampede::Local => "local",
            Stampede::Distributed => "distributed",
        }
    }
}

impl std::str::FromStr for Stampede {
    type Err = String;

    /// `local` or `distributed`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "local" => Ok(Stampede::Local),
            "distributed" => Ok(Stampede::Distributed),
            other => Err(format!(
                "unknown stampede mode `{other}`: expected `local` or `distributed`"
            )),
        }
    }
}

/// The stampede part of [`LoadOptions`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StampedeOptions {
    mode: Stampede,
    lock_ttl: Duration,
    poll: Duration,
}

impl StampedeOptions {
    pub(crate) const fn new() -> Self {
        Self {
            mode: Stampede::Local,
            lock_ttl: DEFAULT_STAMPEDE_LOCK_TTL,
            poll: DEFAULT_STAMPEDE_POLL,
        }
    }
}

impl LoadOptions {
    /// Who runs the loader on a miss: [`Stampede::Local`] (the default) or
    /// [`Stampede::Distributed`] (one instance, through a Redis lock; see the
    /// [`Stampede`] docs and `docs/stampede.md`).
    ///
    /// ```
    /// let o = cache_sdk::LoadOptions::new().stampede(cache_sdk::Stampede::Distributed);
    /// # let _ = o;
    /// ```
    pub const fn stampede(mut self, mode: Stampede) -> Self {
        self.stampede.mode = mode;
        self
    }

    /// How long the distributed lock lives ([`DEFAULT_STAMPEDE_LOCK_TTL`] unless set; at
    /// least 1 ms): how long the others wait for a holder that died before one of them
    /// takes over.
    ///
    /// ```
    /// use std::time::Duration;
    /// let o = cache_sdk::LoadOptions::new().stampede_lock_ttl(Duration::from_secs(2));
    /// assert_eq!(o.stampede_lock_ttl_value(), Duration::from_secs(2));
    /// ```
    pub const fn stampede_lock_ttl(mut self, ttl: Duration) -> Self {
        self.stampede.lock_ttl = if ttl.is_zero() {
            Duration::from_millis(1)
        } else {
            ttl
        };
        self
    }

    /// How often a waiter looks for the value when the invalidation link did not wake it
    /// ([`DEFAULT_STAMPEDE_POLL`] unless set; at least 1 ms).
    ///
    /// ```
    /// use std::time::Duration;
    /// let o = cache_sdk::LoadOptions::new().stampede_poll(Duration::from_millis(20));
    /// # let _ = o;
    /// ```
    pub const fn stampede_poll(mut self, every: Duration) -> Self {
        self.stampede.poll = if every.is_zero() {
            Duration::from_millis(1)
        } else {
            every
        };
        self
    }

    /// The stampede mode.
    ///
    /// ```
    /// assert_eq!(cache_sdk::LoadOptions::new().stampede_mode(), cache_sdk::Stampede::Local);
    /// ```
    #[must_use]
    pub const fn stampede_mode(&self) -> Stampede {
        self.stampede.mode
    }

    /// The distributed lock's lifetime.
    ///
    /// ```
    /// assert_eq!(
    ///     cache_sdk::LoadOptions::new().stampede_lock_ttl_value(),
    ///     cache_sdk::DEFAULT_STAMPEDE_LOCK_TTL
    /// );
    /// ```
    #[must_use]
    pub const fn stampede_lock_ttl_value(&self) -> Duration {
        self.stampede.lock_ttl
    }
}

/// A lock this instance holds, released by the load task once the value is stored. While
/// it is held, a task renews it (see [`renew`]); dropping it stops the renewal.
pub(crate) struct HeldLock {
    key: String,
    token: String,
    renewal: Option<tokio::task::AbortHandle>,
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        if let Some(r) = self.renewal.take() {
            r.abort();
        }
    }
}

/// How long a holder keeps renewing its lock when the call sets no hard timeout, in
/// lock lifetimes: past that, a loader that hangs no longer keeps other instances from
/// loading.
const MAX_RENEWALS_WITHOUT_HARD_TIMEOUT: u32 = 12;

/// Keeps the lock of `key` alive while its loader runs: every third of `lock_ttl`, a
/// compare-and-pexpire back to `lock_ttl`, so a loader slower than `lock_ttl` does not let
/// another instance start a second load. It stops when the lock is released (the holder
/// drops it), when the lock is no longer this holder's, when Redis is not in use, and
/// after `hold_for` at the latest (then the lock expires within `lock_ttl`).
async fn renew(
    remote: crate::tier::remote::Remote,
    key: String,
    token: String,
    lock_ttl: Duration,
    hold_for: Duration,
) {
    let every = (lock_ttl / 3).max(Duration::from_millis(1));
    // Durations set by the user may be huge: saturate instead of overflowing.
    let until = Instant::now().checked_add(hold_for);
    loop {
        tokio::time::sleep(every).await;
        let expiry = Instant::now().checked_add(lock_ttl);
        if let (Some(until), Some(expiry)) = (until, expiry) {
            if expiry > until {
                // The next renewal would outlive the limit: let the lock run out.
                return;
            }
        }
        match remote.extend_lock(&key, &token, lock_ttl).await {
            Some(true) => {
                tracing::trace!(key = log_key(&key), "stampede lock renewed");
            }
            Some(false) | None => return,
        }
    }
}

/// Which timeout ended a wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Waited {
    /// The soft timeout, with a stale value to serve.
    Soft,
    /// The hard timeout.
    Hard(Duration),
}

/// What the flight leader does after the lock step.
pub(super) enum Turn<T> {
    /// Load: with the lock to release after the store, or without one (local mode, no
    /// Redis).
    Lead(Option<HeldLock>),
    /// Another instance stored a fresh value meanwhile (now in L1 too).
    Found(Arc<Stamped<T>>),
    /// A timeout passed while waiting.
    TimedOut(Waited),
}

/// A token no other holder has: 128 random bits.
fn token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

impl Cache {
    /// The lock step of a miss, for the flight leader (see the module docs). `stale`:
    /// whether a stale value could be served (the soft timeout then bounds the wait).
    pub(super) async fn stampede_turn<T: CacheValue>(
        &self,
        key: &str,
        opts: &LoadOptions,
        stale: bool,
        started: Instant,
    ) -> Turn<T> {
        let s = opts.stampede;
        if s.mode != Stampede::Distributed {
            return Turn::Lead(None);
        }
        let soft = opts.soft_timeout.filter(|_| stale);
        let (limit, why) = match (soft, opts.hard_timeout) {
            (Some(soft), Some(hard)) if hard <= soft => (Some(hard), Waited::Hard(hard)),
            (Some(soft), _) => (Some(soft), Waited::Soft),
            (None, Some(hard)) => (Some(hard), Waited::Hard(hard)),
            (None, None) => (None, Waited::Soft),
        };
        let deadline = limit.map(|l| started + l);
        let token = token();
        // Watching before the first look: a write between the look and the wait still wakes.
        let watch = self.inner.local.watch().watch(&[key]);
        let mut first = true;
        loop {
            if !first {
                if let Some(found) = self.fresh_in_l2::<T>(key).await {
                    return Turn::Found(found);
                }
            }
            first = false;
            match self.inner.remote.try_lock(key, &token, s.lock_ttl).await {
                None => return Turn::Lead(None),
                Some(true) => {
                    // The previous holder may have stored the value just before releasing.
                    if let Some(found) = self.fresh_in_l2::<T>(key).await {
                        self.inner.remote.unlock(key, &token).await;
                        return Turn::Found(found);
                    }
                    tracing::debug!(key = log_key(key), "stampede lock taken; loading");
                    let hold_for = opts
                        .hard_timeout
                        .unwrap_or(s.lock_ttl.saturating_mul(MAX_RENEWALS_WITHOUT_HARD_TIMEOUT));
                    let renewal = tokio::runtime::Handle::try_current().ok().map(|rt| {
                        rt.spawn(renew(
                            self.inner.remote.clone(),
                            key.to_owned(),
                            token.clone(),
                            s.lock_ttl,
                            hold_for,
                        ))
                        .abort_handle()
                    });
                    return Turn::Lead(Some(HeldLock {
                        key: key.to_owned(),
                        token,
                        renewal,
                    }));
                }
                Some(false) => {}
            }
            let nap = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Turn::TimedOut(why);
                    }
                    s.poll.min(left)
                }
                None => s.poll,
            };
            tokio::select! {
                () = watch.changed() => {}
                () = tokio::time::sleep(nap) => {}
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Turn::TimedOut(why);
            }
        }
    }

    /// A fresh value of `key` in L2, put into L1 as well.
    async fn fresh_in_l2<T: CacheValue>(&self, key: &str) -> Option<Arc<Stamped<T>>> {
        let ticket = self.inner.local.ticket(key);
        let s = self.read_stamped::<T>(key).await.ok().flatten()?;
        if !matches!(s.standing(now_ms()), Standing::Fresh) {
            return None;
        }
        bump(&self.inner.counters.l2_hits);
        let left = s.fresh_until_ms().saturating_sub(now_ms());
        let l1_ttl = (s.fresh_until_ms() != 0).then(|| Duration::from_millis(left.max(1)));
        self.inner
            .local
            .insert(key, s.clone() as AnyValue, l1_ttl, ticket);
        Some(s)
    }

    /// Releases a lock this instance holds (if it still does), after stopping its renewal.
    pub(super) async fn release(&self, mut lock: HeldLock) {
        if let Some(r) = lock.renewal.take() {
            r.abort();
        }
        self.inner.remote.unlock(&lock.key, &lock.token).await;
    }

    /// A wait for another instance's load passed a timeout: the stale value, re-armed for
    /// the throttle period, or [`LoadError::Timeout`].
    pub(super) fn waited_too_long<T: CacheValue, E>(
        &self,
        key: &str,
        opts: &LoadOptions,
        why: Waited,
        stale: Option<Arc<Stamped<T>>>,
    ) -> Result<Entry<T>, Failure<E>> {
        let c = &self.inner.counters;
        let (reason, hard) = match why {
            Waited::Soft => {
                bump(&c.soft_timeouts);
                (StaleReason::SoftTimeout, None)
            }
            Waited::Hard(h) => {
                bump(&c.hard_timeouts);
                (StaleReason::HardTimeout, Some(h))
            }
        };
        match (stale, hard) {
            (Some(st), _) => {
                tracing::info!(
                    key = log_key(key),
                    "another instance is still loading; serving the stale value"
                );
                let (_, mut none) = oneshot::channel::<Landed<T, E>>();
                Ok(self.rearm(key, opts, &st, reason, &mut none))
            }
            (None, Some(h)) => {
                tracing::warn!(
                    key = log_key(key),
                    "another instance is still loading past the hard timeout"
                );
                Err(Failure::Load(LoadError::Timeout(LoadTimeout::after(h))))
            }
            // A soft limit applies only with a stale value.
            (None, None) => Err(Failure::Load(LoadError::Cancelled)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_print() {
        for m in [Stampede::Local, Stampede::Distributed] {
            assert_eq!(m.as_str().parse::<Stampede>(), Ok(m));
        }
        assert!("global".parse::<Stampede>().is_err());
        let o = LoadOptions::new().stampede_lock_ttl(Duration::ZERO);
        assert_eq!(o.stampede_lock_ttl_value(), Duration::from_millis(1));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn without_redis_the_distributed_mode_loads_in_process() {
        let cache = Cache::in_memory();
        let opts = LoadOptions::new().stampede(Stampede::Distributed);
        let e = cache
            .get_or_load_entry_with("cache:st:1", crate::Ttl::Api, &opts, || async {
                Ok::<_, ()>(4u8)
            })
            .await
            .unwrap();
        assert!(e.was_loaded());
        assert_eq!(**e.value(), 4);
    }
}
