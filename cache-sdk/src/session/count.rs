//! [`SessionCount`]: the number of live sessions for the stats endpoint, without a `SCAN`
//! on each call.
//!
//! A store count (`SCAN MATCH sess:*` on Redis) is taken at most once at a time per
//! process (single flight), at most every [`REFRESH`] (and never more than 5% of the time:
//! a count that took 200 ms waits at least 4 s before the next), and off the request path:
//! only the very first call waits for one. Between two counts the answer is the last count
//! plus the sessions this process created and minus those it destroyed since that count
//! began, so a login or a logout here shows at once.
//!
//! How exact it is: sessions created or destroyed by other instances, by a Node backend in
//! express mode, or expired, show at the next count (within [`REFRESH`] plus the count's
//! own duration); everything under `sess:*` is counted then, Node's records included. A
//! count taken while sessions are being written may be off by the writes it overlapped.
//!
//! May import: nothing of the session module but the error; the caller passes the count
//! as a closure. Must not: know the store or the cache.

use crate::metrics::SessionEvent;
use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::error::SessionError;

/// How long a count serves before a new one is started in the background.
pub(crate) const REFRESH: Duration = Duration::from_secs(5);

/// The last count: its value, when it began, the local changes seen then, and how long it
/// took.
#[derive(Debug, Clone, Copy)]
struct Base {
    value: u64,
    began: Instant,
    delta_at_start: i64,
    took: Duration,
}

/// A cheap, shared session count (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct SessionCount {
    base: Mutex<Option<Base>>,
    /// Sessions created minus destroyed by this process, ever.
    delta: AtomicI64,
    /// Held by the one count in flight.
    flight: Arc<tokio::sync::Mutex<()>>,
}

impl SessionCount {
    /// A session was stored under a new id.
    pub(crate) fn created(&self) {
        SessionEvent::Created.count();
        self.delta.fetch_add(1, Ordering::Relaxed);
    }

    /// A stored session was deleted.
    pub(crate) fn destroyed(&self) {
        SessionEvent::Destroyed.count();
        self.delta.fetch_sub(1, Ordering::Relaxed);
    }

    fn base(&self) -> Option<Base> {
        *self
            .base
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn estimate(&self, b: Base) -> u64 {
        let since = self.delta.load(Ordering::Relaxed) - b.delta_at_start;
        let v = i128::from(b.value) + i128::from(since);
        u64::try_from(v.max(0)).unwrap_or(u64::MAX)
    }

    /// The count. `count` is the store's full count: called at most once at a time, in a
    /// background task once a first count is known.
    ///
    /// # Errors
    /// The store's error, for the first count only (later failures keep the last count).
    pub(crate) async fn get<F, Fut>(self: &Arc<Self>, count: F) -> Result<u64, SessionError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<u64, SessionError>> + Send + 'static,
    {
        if let Some(b) = self.base() {
            let wait = REFRESH.max(b.took * 20);
            if b.began.elapsed() >= wait {
                if let Ok(guard) = self.flight.clone().try_lock_owned() {
                    let this = self.clone();
                    tokio::spawn(async move {
                        let _guard = guard;
                        if let Err(e) = this.refresh(count).await {
                            tracing::warn!(error = %e, "session count failed; keeping the last one");
                        }
                    });
                }
            }
            return Ok(self.estimate(b));
        }
        let _guard = self.flight.lock().await;
        if let Some(b) = self.base() {
            return Ok(self.estimate(b));
        }
        let b = self.refresh(count).await?;
        Ok(self.estimate(b))
    }

    /// Counts now (the caller holds `flight`) and keeps the result.
    async fn refresh<F, Fut>(&self, count: F) -> Result<Base, SessionError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<u64, SessionError>>,
    {
        let began = Instant::now();
        let delta_at_start = self.delta.load(Ordering::Relaxed);
        let value = count().await?;
        let b = Base {
            value,
            began,
            delta_at_start,
            took: began.elapsed(),
        };
        *self
            .base
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(b);
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[derive(Default)]
    struct Probe {
        calls: AtomicUsize,
        running: AtomicUsize,
        max_running: AtomicUsize,
    }

    fn counter(
        probe: &Arc<Probe>,
        value: u64,
    ) -> impl FnOnce() -> futures::future::BoxFuture<'static, Result<u64, SessionError>> + use<>
    {
        let probe = probe.clone();
        move || {
            Box::pin(async move {
                probe.calls.fetch_add(1, Ordering::SeqCst);
                let now = probe.running.fetch_add(1, Ordering::SeqCst) + 1;
                probe.max_running.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                probe.running.fetch_sub(1, Ordering::SeqCst);
                Ok(value)
            })
        }
    }

    #[tokio::test]
    async fn concurrent_calls_share_one_count() {
        let count = Arc::new(SessionCount::default());
        let probe = Arc::new(Probe::default());
        let calls: Vec<_> = (0..50)
            .map(|_| {
                let count = count.clone();
                let f = counter(&probe, 7);
                tokio::spawn(async move { count.get(f).await })
            })
            .collect();
        for c in calls {
            assert_eq!(c.await.expect("joined").expect("counted"), 7);
        }
        assert_eq!(probe.calls.load(Ordering::SeqCst), 1);
        assert_eq!(probe.max_running.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn stale_counts_refresh_in_the_background_one_at_a_time() {
        let count = Arc::new(SessionCount::default());
        let probe = Arc::new(Probe::default());
        assert_eq!(count.get(counter(&probe, 3)).await.expect("counted"), 3);
        count.created();
        count.created();
        count.destroyed();
        // Local changes show at once, without a count.
        assert_eq!(count.get(counter(&probe, 99)).await.expect("counted"), 4);
        assert_eq!(probe.calls.load(Ordering::SeqCst), 1);
        tokio::time::advance(REFRESH).await;
        // Stale: 50 calls answer at once from the last count and start one new count.
        for _ in 0..50 {
            assert_eq!(count.get(counter(&probe, 10)).await.expect("counted"), 4);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(probe.calls.load(Ordering::SeqCst), 2);
        assert_eq!(probe.max_running.load(Ordering::SeqCst), 1);
        assert_eq!(count.get(counter(&probe, 0)).await.expect("counted"), 10);
    }
}
