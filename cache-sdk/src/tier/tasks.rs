//! A cache's background tasks, kept running on whichever Tokio runtime uses the cache.
//!
//! A cache's background tasks (the probe that watches Redis, the coherence link) and its
//! Redis connections (whose driver tasks redis-rs spawns) live on the runtime that started
//! them, but a cache often outlives that runtime: built in one `#[tokio::test]` and
//! installed globally, or in a `LazyLock` first touched inside a short-lived runtime.
//!
//! When a runtime shuts down it drops its tasks. Each task started here holds a guard whose
//! drop, while the task is unfinished, marks the cache *orphaned* and runs the task's
//! `on_lost` hook (the coherence link suspends L1 at once: no invalidation can arrive any
//! more). The next call made on a runtime sees the mark (one atomic load), reconnects and
//! starts every task again there, under a lock ([`Remote`](super::remote::Remote) does the
//! reconnecting, [`Tasks::restart_here`] the rest). Nothing of this is an outage: it is not
//! counted, and it is logged as what it is.
//!
//! A task that ends on its own (its cache is gone, or it has nothing left to do) is not
//! started again. A task that panics is not taken for a runtime shutdown.
//!
//! May import: nothing of the cache. Must not: know what the tasks do.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::{BoxFuture, FutureExt};

type Start = Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;
type OnLost = Arc<dyn Fn() + Send + Sync>;

/// One task: how to start it, what to do when its runtime drops it, and whether it ended
/// on its own.
#[derive(Clone)]
struct Kept {
    start: Start,
    on_lost: Option<OnLost>,
    finished: Arc<AtomicBool>,
}

/// The background tasks of one cache.
pub(crate) struct Tasks {
    /// A task was dropped unfinished: the runtime it ran on has shut down.
    orphaned: Arc<AtomicBool>,
    /// Held while the tasks are restarted, so that one caller does it.
    restart: tokio::sync::Mutex<()>,
    kept: Mutex<Vec<Kept>>,
}

impl std::fmt::Debug for Tasks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tasks")
            .field("orphaned", &self.orphaned())
            .finish_non_exhaustive()
    }
}

/// Held by a running task; see the module documentation.
struct Guard {
    orphaned: Arc<AtomicBool>,
    on_lost: Option<OnLost>,
    finished: Arc<AtomicBool>,
    armed: bool,
}

impl Guard {
    /// The task ended on its own.
    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if !self.armed {
            self.finished.store(true, Ordering::Release);
            return;
        }
        if std::thread::panicking() {
            // A bug in the task, not a runtime going away: starting it again would only
            // repeat the panic on every call.
            self.finished.store(true, Ordering::Release);
            return;
        }
        self.orphaned.store(true, Ordering::Release);
        if let Some(on_lost) = &self.on_lost {
            on_lost();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Each critical section is one push or one clone: a poisoned lock is still consistent.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Tasks {
    pub(crate) fn new() -> Self {
        Tasks {
            orphaned: Arc::new(AtomicBool::new(false)),
            restart: tokio::sync::Mutex::new(()),
            kept: Mutex::new(Vec::new()),
        }
    }

    /// Runs `start()` as a task on the current runtime, and again on the runtime of the
    /// next call whenever the one it runs on shuts down first. `on_lost` runs when that
    /// happens, inside the shutdown: it must be quick and must not block. Without a current
    /// runtime the task starts with the first call made on one.
    pub(crate) fn spawn<F, Fut>(&self, start: F, on_lost: Option<OnLost>)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let kept = Kept {
            start: Arc::new(move || start().boxed()),
            on_lost,
            finished: Arc::new(AtomicBool::new(false)),
        };
        self.launch(&kept);
        lock(&self.kept).push(kept);
    }

    fn launch(&self, kept: &Kept) {
        let mut guard = Guard {
            orphaned: self.orphaned.clone(),
            on_lost: kept.on_lost.clone(),
            finished: kept.finished.clone(),
            armed: true,
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // Dropping the armed guard marks the tasks for a start on the next runtime.
            drop(guard);
            return;
        };
        let task = (kept.start)();
        runtime.spawn(async move {
            task.await;
            guard.disarm();
        });
    }

    /// Whether a task was lost with its runtime and the tasks wait for a restart.
    pub(crate) fn orphaned(&self) -> bool {
        self.orphaned.load(Ordering::Acquire)
    }

    /// Takes the restart lock; `None` when another caller restarted the tasks meanwhile.
    pub(crate) async fn restarting(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        let held = self.restart.lock().await;
        self.orphaned().then_some(held)
    }

    /// Clears the mark and starts every unfinished task on the current runtime. Call with
    /// the lock of [`Tasks::restarting`] held.
    pub(crate) fn restart_here(&self) {
        self.orphaned.store(false, Ordering::Release);
        let kept: Vec<Kept> = lock(&self.kept).clone();
        for k in kept.iter().filter(|k| !k.finished.load(Ordering::Acquire)) {
            self.launch(k);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    #[test]
    fn a_task_dropped_with_its_runtime_marks_the_tasks_and_runs_on_a_new_one() {
        let tasks = Tasks::new();
        let starts = Arc::new(AtomicUsize::new(0));
        let lost = Arc::new(AtomicUsize::new(0));
        let first = runtime();
        first.block_on(async {
            let starts = starts.clone();
            let lost = lost.clone();
            tasks.spawn(
                move || {
                    starts.fetch_add(1, Ordering::SeqCst);
                    std::future::pending::<()>()
                },
                Some(Arc::new(move || {
                    lost.fetch_add(1, Ordering::SeqCst);
                })),
            );
            tokio::task::yield_now().await;
        });
        assert!(!tasks.orphaned());
        drop(first);
        assert!(tasks.orphaned());
        assert_eq!(lost.load(Ordering::SeqCst), 1);

        runtime().block_on(async {
            let held = tasks.restarting().await.expect("still orphaned");
            tasks.restart_here();
            drop(held);
            assert!(!tasks.orphaned());
            assert!(tasks.restarting().await.is_none());
        });
        assert_eq!(starts.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_task_that_ends_on_its_own_is_not_restarted() {
        let tasks = Tasks::new();
        let starts = Arc::new(AtomicUsize::new(0));
        let rt = runtime();
        rt.block_on(async {
            let starts = starts.clone();
            tasks.spawn(
                move || {
                    starts.fetch_add(1, Ordering::SeqCst);
                    async {}
                },
                None,
            );
            tokio::task::yield_now().await;
        });
        drop(rt);
        assert!(!tasks.orphaned());
        tasks.restart_here();
        assert_eq!(starts.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn without_a_runtime_the_task_waits_for_one() {
        let tasks = Tasks::new();
        let starts = Arc::new(AtomicUsize::new(0));
        let s = starts.clone();
        tasks.spawn(
            move || {
                s.fetch_add(1, Ordering::SeqCst);
                async {}
            },
            None,
        );
        assert!(tasks.orphaned());
        assert_eq!(starts.load(Ordering::SeqCst), 0);
        runtime().block_on(async {
            let _held = tasks.restarting().await.expect("orphaned");
            tasks.restart_here();
            tokio::task::yield_now().await;
        });
        assert_eq!(starts.load(Ordering::SeqCst), 1);
    }
}
