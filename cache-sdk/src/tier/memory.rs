//! The in-memory store that stands in for Redis: bounded by bytes, honouring TTLs, with the
//! same operations (and the same atomicity for `incr`) as the Redis tier.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::ops::compute::Op;
use moka::sync::Cache as MokaCache;

use super::{DeadlineExpiry, HasDeadline};
use crate::error::{BackendError, BackendErrorKind, Error};
use crate::key::glob_match;

#[derive(Debug, Clone)]
pub(crate) struct MemEntry {
    pub(crate) bytes: Arc<[u8]>,
    pub(crate) expires_at: Option<Instant>,
}

impl HasDeadline for MemEntry {
    fn deadline(&self) -> Option<Instant> {
        self.expires_at
    }
}

impl MemEntry {
    fn live(&self, now: Instant) -> bool {
        self.expires_at.is_none_or(|t| t > now)
    }
}

/// In-memory key/value store with Redis semantics for the operations the SDK uses.
#[derive(Debug, Clone)]
pub(crate) struct MemoryStore {
    map: MokaCache<String, MemEntry>,
}

impl MemoryStore {
    /// A store holding at most `max_bytes` of keys and values.
    pub(crate) fn new(max_bytes: u64) -> Self {
        let map = crate::metrics::on_fallback_eviction(MokaCache::builder())
            .max_capacity(max_bytes)
            .weigher(|k: &String, v: &MemEntry| {
                u32::try_from(k.len() + v.bytes.len() + 64).unwrap_or(u32::MAX)
            })
            .expire_after(DeadlineExpiry)
            .build();
        Self { map }
    }

    pub(crate) fn get(&self, key: &str) -> Option<MemEntry> {
        self.map.get(key).filter(|e| e.live(Instant::now()))
    }

    pub(crate) fn set(&self, key: &str, bytes: Arc<[u8]>, ttl: Option<Duration>) {
        let expires_at = ttl.map(|t| Instant::now() + t);
        self.map
            .insert(key.to_owned(), MemEntry { bytes, expires_at });
    }

    /// Sets the key only when it does not exist; returns whether it was set.
    pub(crate) fn set_nx(&self, key: &str, bytes: Arc<[u8]>, ttl: Option<Duration>) -> bool {
        let now = Instant::now();
        let expires_at = ttl.map(|t| now + t);
        let mut inserted = false;
        self.map
            .entry(key.to_owned())
            .and_compute_with(|existing| match existing {
                Some(e) if e.value().live(now) => Op::Nop,
                _ => {
                    inserted = true;
                    Op::Put(MemEntry { bytes, expires_at })
                }
            });
        inserted
    }

    /// Sets the key only when it exists (Redis `SET XX`); returns whether it was set.
    pub(crate) fn set_xx(&self, key: &str, bytes: Arc<[u8]>, ttl: Option<Duration>) -> bool {
        let now = Instant::now();
        let expires_at = ttl.map(|t| now + t);
        let mut updated = false;
        self.map
            .entry(key.to_owned())
            .and_compute_with(|existing| match existing {
                Some(e) if e.value().live(now) => {
                    updated = true;
                    Op::Put(MemEntry { bytes, expires_at })
                }
                _ => Op::Nop,
            });
        updated
    }

    /// Sets the key to `bytes` only when it holds exactly `expected` (see
    /// [`Cas`](super::remote::cas::Cas)); atomic under the key's entry lock.
    #[cfg_attr(not(feature = "sessions"), allow(dead_code))]
    pub(crate) fn compare_and_set(
        &self,
        key: &str,
        expected: &[u8],
        bytes: Arc<[u8]>,
        ttl: Duration,
    ) -> super::remote::cas::Cas {
        use super::remote::cas::Cas;
        let now = Instant::now();
        let mut outcome = Cas::Missing;
        self.map
            .entry(key.to_owned())
            .and_compute_with(|existing| match existing {
                Some(e) if e.value().live(now) => {
                    if &*e.value().bytes == expected {
                        outcome = Cas::Written;
                        Op::Put(MemEntry {
                            bytes,
                            expires_at: Some(now + ttl),
                        })
                    } else {
                        outcome = Cas::Changed(e.value().bytes.to_vec());
                        Op::Nop
                    }
                }
                _ => Op::Nop,
            });
        outcome
    }

    pub(crate) fn delete(&self, key: &str) -> bool {
        self.map.remove(key).is_some_and(|e| e.live(Instant::now()))
    }

    pub(crate) fn exists(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Sets a new TTL on an existing key; returns whether the key existed.
    pub(crate) fn expire(&self, key: &str, ttl: Duration) -> bool {
        let now = Instant::now();
        let mut found = false;
        self.map
            .entry(key.to_owned())
            .and_compute_with(|existing| match existing {
                Some(e) if e.value().live(now) => {
                    found = true;
                    Op::Put(MemEntry {
                        bytes: e.into_value().bytes,
                        expires_at: Some(now + ttl),
                    })
                }
                _ => Op::Nop,
            });
        found
    }

    /// The remaining TTL: `None` when the key does not exist, `Some(None)` when it never
    /// expires.
    pub(crate) fn ttl(&self, key: &str) -> Option<Option<Duration>> {
        let now = Instant::now();
        self.get(key)
            .map(|e| e.expires_at.map(|t| t.saturating_duration_since(now)))
    }

    /// Atomically adds `delta` to the integer stored under `key` (0 when absent), keeping the
    /// key's TTL, like Redis `INCRBY`.
    pub(crate) fn incr_by(&self, key: &str, delta: i64) -> Result<(i64, MemEntry), Error> {
        let now = Instant::now();
        // Set by the closure, which moka runs exactly once.
        let mut outcome = None;
        self.map.entry(key.to_owned()).and_compute_with(|existing| {
            let (current, expires_at) = match existing {
                Some(e) if e.value().live(now) => {
                    let e = e.into_value();
                    match parse_int(&e.bytes) {
                        Some(n) => (n, e.expires_at),
                        None => {
                            outcome = Some(Err(not_an_integer(key)));
                            return Op::Nop;
                        }
                    }
                }
                _ => (0, None),
            };
            let Some(next) = current.checked_add(delta) else {
                // What Redis answers in the same case.
                outcome = Some(Err(Error::Backend(BackendError::new(
                    BackendErrorKind::Rejected,
                    Some("ERR"),
                    "ERR increment or decrement would overflow",
                ))));
                return Op::Nop;
            };
            let entry = MemEntry {
                bytes: Arc::from(next.to_string().into_bytes()),
                expires_at,
            };
            outcome = Some(Ok((next, entry.clone())));
            Op::Put(entry)
        });
        outcome.unwrap_or_else(|| {
            Err(Error::Backend(BackendError::new(
                BackendErrorKind::Rejected,
                None,
                "the increment did not run",
            )))
        })
    }

    /// Keys matching a Redis glob pattern.
    pub(crate) fn scan(&self, pattern: &str) -> Vec<String> {
        let now = Instant::now();
        self.map
            .iter()
            .filter(|(k, v)| v.live(now) && glob_match(pattern, k))
            .map(|(k, _)| (*k).clone())
            .collect()
    }

    /// Every live entry, for replay.
    pub(crate) fn len(&self) -> u64 {
        self.map.run_pending_tasks();
        self.map.entry_count()
    }

    /// Bytes held (keys, values and a fixed overhead per entry), as the capacity counts them.
    #[cfg(feature = "metrics")]
    pub(crate) fn weighted_size(&self) -> u64 {
        self.map.weighted_size()
    }

    pub(crate) fn clear(&self) {
        self.map.invalidate_all();
    }
}

pub(crate) fn parse_int(bytes: &[u8]) -> Option<i64> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

pub(crate) fn not_an_integer(key: &str) -> Error {
    Error::Decode {
        key: key.to_owned(),
        message: "the value is not an integer or out of range".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incr_is_atomic_and_keeps_ttl() {
        let m = MemoryStore::new(1 << 20);
        m.set("k", Arc::from(&b"5"[..]), Some(Duration::from_secs(60)));
        assert_eq!(m.incr_by("k", 3).unwrap().0, 8);
        assert!(m.ttl("k").unwrap().is_some());
        m.set("s", Arc::from(&b"abc"[..]), None);
        assert!(m.incr_by("s", 1).is_err());
        assert_eq!(m.incr_by("new", -2).unwrap().0, -2);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        m.incr_by("c", 1).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(m.incr_by("c", 0).unwrap().0, 4000);
    }

    #[test]
    fn an_overflowing_increment_is_refused_as_redis_refuses_it() {
        let m = MemoryStore::new(1 << 20);
        m.incr_by("n", i64::MAX).unwrap();
        match m.incr_by("n", 1) {
            Err(Error::Backend(e)) => {
                assert_eq!(e.kind(), BackendErrorKind::Rejected);
                assert_eq!(e.code(), Some("ERR"));
                assert!(std::error::Error::source(&e).is_none());
                assert!(e.to_string().contains("overflow"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(m.incr_by("n", 0).unwrap().0, i64::MAX);
    }

    #[test]
    fn expiry_and_nx() {
        let m = MemoryStore::new(1 << 20);
        assert!(m.set_nx("a", Arc::from(&b"1"[..]), Some(Duration::from_millis(30))));
        assert!(!m.set_nx("a", Arc::from(&b"2"[..]), None));
        std::thread::sleep(Duration::from_millis(50));
        assert!(m.get("a").is_none());
        assert!(m.set_nx("a", Arc::from(&b"3"[..]), None));
        assert_eq!(&*m.get("a").unwrap().bytes, b"3");
        assert_eq!(m.scan("a*"), vec!["a".to_string()]);
        assert!(m.expire("a", Duration::from_secs(5)));
        assert!(m.delete("a"));
        assert!(!m.exists("a"));
    }
}
