//! Wake-ups for callers waiting until a key changes: the distributed stampede lock's
//! waiters (see `cache/stampede.rs`) sleep here until the key they wait for, or its lock,
//! is written or deleted.
//!
//! [`Local`](super::local::Local) owns one `KeyWatch` and calls [`KeyWatch::wake`] from
//! `invalidate` and [`KeyWatch::wake_all`] from `clear`; the invalidation link
//! (`coherence.rs`) calls those for every key another instance writes, so a waiter learns
//! of a write anywhere within one push. Without the link nobody wakes a waiter early, and
//! its bounded poll decides.
//!
//! Cost when nobody waits: one atomic load per invalidation. Imports nothing of the tiers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

/// The waiters, per key.
#[derive(Debug, Default)]
pub(crate) struct KeyWatch {
    /// How many watches are registered (the fast path when it is zero).
    watching: AtomicUsize,
    map: Mutex<HashMap<String, Vec<Arc<Notify>>>>,
}

/// One caller's watch over some keys; unregisters when dropped.
#[derive(Debug)]
pub(crate) struct Watch {
    owner: Arc<KeyWatch>,
    keys: Vec<String>,
    notify: Arc<Notify>,
}

impl KeyWatch {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Arc<Notify>>>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts watching `keys`: [`Watch::changed`] completes after any of them is woken
    /// (also when that happened before it was awaited).
    pub(crate) fn watch(self: &Arc<Self>, keys: &[&str]) -> Watch {
        let notify = Arc::new(Notify::new());
        let mut map = self.lock();
        for k in keys {
            map.entry((*k).to_owned()).or_default().push(notify.clone());
        }
        self.watching.fetch_add(1, Ordering::SeqCst);
        Watch {
            owner: self.clone(),
            keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            notify,
        }
    }

    /// Wakes the watches of `key`.
    pub(crate) fn wake(&self, key: &str) {
        if self.watching.load(Ordering::SeqCst) == 0 {
            return;
        }
        if let Some(list) = self.lock().get(key) {
            for n in list {
                n.notify_one();
            }
        }
    }

    /// Wakes every watch (L1 was flushed: anything may have changed).
    pub(crate) fn wake_all(&self) {
        if self.watching.load(Ordering::SeqCst) == 0 {
            return;
        }
        for list in self.lock().values() {
            for n in list {
                n.notify_one();
            }
        }
    }
}

impl Watch {
    /// Completes once a watched key was woken since the watch started or since the last
    /// completion.
    pub(crate) async fn changed(&self) {
        self.notify.notified().await;
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut map = self.owner.lock();
        for k in &self.keys {
            if let Some(list) = map.get_mut(k) {
                list.retain(|n| !Arc::ptr_eq(n, &self.notify));
                if list.is_empty() {
                    map.remove(k);
                }
            }
        }
        self.owner.watching.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(flavor = "current_thread")]
    async fn a_wake_before_the_wait_is_kept_and_other_keys_do_not_wake() {
        let w = Arc::new(KeyWatch::default());
        let watch = w.watch(&["a", "a:~lock"]);
        w.wake("b");
        assert!(
            tokio::time::timeout(Duration::from_millis(20), watch.changed())
                .await
                .is_err()
        );
        w.wake("a:~lock");
        tokio::time::timeout(Duration::from_secs(1), watch.changed())
            .await
            .expect("woken");
        drop(watch);
        assert!(w.lock().is_empty());
        assert_eq!(w.watching.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn wake_all_wakes_every_watch() {
        let w = Arc::new(KeyWatch::default());
        let (x, y) = (w.watch(&["x"]), w.watch(&["y"]));
        w.wake_all();
        tokio::time::timeout(Duration::from_secs(1), async {
            x.changed().await;
            y.changed().await;
        })
        .await
        .expect("both woken");
    }
}
