//! [`RecordCache`]: decoded session records kept in the cache's L1, in front of a
//! [`CacheSessionStore`](super::CacheSessionStore) ("a store with a cache in front").
//!
//! Owns every rule about session records in L1, in one place:
//!
//! - records are kept decoded in L1 only while the cache's coherence is active, so that a
//!   change or deletion by any instance evicts them everywhere;
//! - a hit is one L1 lookup and `Arc` clones: no decoding, no lock, no store command;
//! - a ticket is taken before the store is read, so a record read before an invalidation
//!   never refills L1 after it;
//! - each record is kept with the bytes it was read as ([`RawBacked`]), so that when Redis
//!   is lost the cache hands it to its fallback and a session read during the outage is
//!   served from what L1 held (the reserve).
//!
//! May import: [`Cache`] and its generic raw-backed L1 hook (`crate::cache`), the session
//! id and error. Must not: import the store (the store owns it; the caller passes the
//! store's read), decode or encode records (the caller gives its decoder), nor be known by
//! the tiers (they only see [`RawBacked`] values).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use super::error::SessionError;
use super::id::SessionId;
use crate::cache::{Cache, Held, RawBacked};

/// A decoded record whose data may be shared with L1 (no copy on a hit).
pub(crate) struct SharedRecord<T> {
    pub(crate) data: Arc<T>,
    /// The record as stored.
    pub(crate) raw: Arc<[u8]>,
    pub(crate) ttl: Duration,
    pub(crate) saved_at_ms: Option<u64>,
    /// The latest time (Unix ms) the store's expiry of this record is known to have been
    /// refreshed when it was read: its save, or this process's last touch then. Kept with
    /// the record in L1 so that a read-only request decides whether to touch without a
    /// lookup in the touch memory (a touch evicts the record, so a copy in L1 is never
    /// older than this process's last touch of it).
    pub(crate) refreshed_ms: Option<u64>,
    pub(crate) extra: Map<String, Value>,
}

impl<T> Clone for SharedRecord<T> {
    fn clone(&self) -> Self {
        Self {
            data: self.data.clone(),
            raw: self.raw.clone(),
            ttl: self.ttl,
            saved_at_ms: self.saved_at_ms,
            refreshed_ms: self.refreshed_ms,
            extra: self.extra.clone(),
        }
    }
}

/// What L1 holds for a session: the decoded record, and until when the store surely keeps
/// its bytes.
struct CachedRecord<T> {
    record: SharedRecord<T>,
    stored_until: Instant,
}

impl<T: Send + Sync + 'static> RawBacked for CachedRecord<T> {
    fn raw(&self) -> &Arc<[u8]> {
        &self.record.raw
    }

    fn stored_until(&self) -> Instant {
        self.stored_until
    }
}

/// The decoded-record cache in front of a session store: only
/// [`CacheSessionStore`](super::CacheSessionStore) has one, and
/// [`Sessions`](super::Sessions) reaches it through
/// [`SessionStore::record_cache`](super::SessionStore::record_cache). A store that wraps a `CacheSessionStore` may return the
/// inner store's, so that its sessions are cached too.
///
/// ```
/// use cache_sdk::session::{CacheSessionStore, SessionStore};
/// let store = CacheSessionStore::new(cache_sdk::Cache::in_memory());
/// assert!(store.record_cache().is_some());
/// ```
#[derive(Debug, Clone)]
pub struct RecordCache {
    cache: Cache,
}

impl RecordCache {
    /// A record cache in this cache's L1.
    pub(crate) fn new(cache: Cache) -> Self {
        Self { cache }
    }

    /// Reads `id`'s record: from L1 when it holds it, else with `read` (the store's load,
    /// called only on a miss; what it reads is kept in L1 while coherence is active), else,
    /// while Redis is lost, from what L1 held before. `decode` turns stored bytes into a
    /// record (`None`: not a record of `T`); `stored_until` says until when the store
    /// surely keeps a record just read (and may note in it when it was last refreshed)
    /// before it is kept in L1.
    ///
    /// # Errors
    /// The store's error.
    pub(crate) async fn load<T, R>(
        &self,
        id: &SessionId,
        read: impl FnOnce() -> R,
        decode: impl Fn(Arc<[u8]>) -> Option<SharedRecord<T>>,
        stored_until: impl FnOnce(&mut SharedRecord<T>) -> Instant,
    ) -> Result<Option<SharedRecord<T>>, SessionError>
    where
        T: Send + Sync + 'static,
        R: Future<Output = Result<Option<Vec<u8>>, SessionError>>,
    {
        let key = id.key();
        if let Some(held) = self.cache.backed_get::<CachedRecord<T>>(&key) {
            return Ok(record_of(held, &decode));
        }
        // Taken before the read: an invalidation meanwhile keeps what we read out of L1.
        let ticket = self.cache.backed_ticket(&key);
        let Some(bytes) = read().await? else {
            // Redis is lost: a session this instance held keeps working.
            let reserved = self.cache.backed_reserve::<CachedRecord<T>>(&key);
            return Ok(reserved.and_then(|held| record_of(held, &decode)));
        };
        let Some(mut record) = decode(bytes.into()) else {
            return Ok(None);
        };
        if let Some(ticket) = ticket {
            let stored_until = stored_until(&mut record);
            let cached = CachedRecord {
                stored_until,
                record: record.clone(),
            };
            self.cache.backed_insert(&key, Arc::new(cached), ticket);
        }
        Ok(Some(record))
    }
}

/// The record L1 held: shared when it was kept as `T`, else decoded from its bytes (kept
/// as another type, by another handler).
fn record_of<T>(
    held: Held<CachedRecord<T>>,
    decode: impl Fn(Arc<[u8]>) -> Option<SharedRecord<T>>,
) -> Option<SharedRecord<T>> {
    match held {
        Held::Value(cached) => Some(cached.record.clone()),
        Held::Raw(raw) => decode(raw),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{CacheSessionStore, SessionStore};

    fn decode(raw: Arc<[u8]>) -> Option<SharedRecord<String>> {
        let data = String::from_utf8(raw.to_vec()).ok()?;
        Some(SharedRecord {
            data: Arc::new(data),
            raw,
            ttl: Duration::from_secs(60),
            saved_at_ms: None,
            refreshed_ms: None,
            extra: Map::new(),
        })
    }

    #[tokio::test]
    async fn without_coherence_every_load_reads_the_store() {
        let store = CacheSessionStore::new(Cache::in_memory());
        let records = store.record_cache().expect("a cache session store has one");
        let id = store
            .create(b"hello".to_vec(), Duration::from_secs(60))
            .await
            .expect("created");
        let until = |_: &mut SharedRecord<String>| Instant::now() + Duration::from_secs(60);
        let r = records
            .load(&id, || store.load(&id), decode, until)
            .await
            .expect("read")
            .expect("found");
        assert_eq!(*r.data, "hello");
        // No coherence on an in-memory cache: nothing was kept, so a change is seen at once.
        store
            .save(&id, b"again".to_vec(), Duration::from_secs(60))
            .await
            .expect("saved");
        let r = records
            .load(&id, || store.load(&id), decode, until)
            .await
            .expect("read")
            .expect("found");
        assert_eq!(*r.data, "again");
        assert_eq!(store.cache().stats().l1_hits, 0);
    }
}
