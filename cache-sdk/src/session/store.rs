//! Where session records live: the [`SessionStore`] contract, and [`CacheSessionStore`],
//! which keeps them in a [`Cache`] (Redis, or its in-memory fallback) under `sess:{id}`,
//! with a [`RecordCache`] in front.
//!
//! May import: the cache's raw operations, the session id, the record cache. Must not: know
//! record formats, cookies or requests (the store keeps opaque bytes).

use std::time::Duration;

use serde::Serialize;

use super::error::SessionError;
use super::id::SessionId;
use super::record_cache::RecordCache;
use super::users::UserIndex;
use crate::cache::Cache;
use crate::key::SESSION_PREFIX;
use crate::tier::remote::cas::Cas;
use crate::ttl::Ttl;

/// How many fresh ids [`SessionStore::create`] tries before giving up. With 192-bit ids a
/// second attempt is already astronomically unlikely; the bound only guards against a
/// broken random source.
pub const MAX_ID_ATTEMPTS: u32 = 4;

/// The seed's `redisStats` object: `{"connected":b,"usingFallback":b,"inMemoryKeys":n}`.
///
/// ```
/// let s = cache_sdk::session::StoreStatus { connected: true, using_fallback: false, in_memory_keys: 0 };
/// assert_eq!(
///     serde_json::to_string(&s).unwrap(),
///     r#"{"connected":true,"usingFallback":false,"inMemoryKeys":0}"#
/// );
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreStatus {
    /// Records go to Redis now.
    pub connected: bool,
    /// Records go to the in-memory fallback now.
    pub using_fallback: bool,
    /// Keys held in memory by the fallback.
    pub in_memory_keys: u64,
}

/// What [`SessionStore::save_if`] did.
///
/// ```
/// use cache_sdk::session::SaveIf;
/// assert_ne!(SaveIf::Saved, SaveIf::Gone);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SaveIf {
    /// The record held the expected bytes; it now holds the new record.
    Saved,
    /// No record (destroyed or expired): nothing was written.
    Gone,
    /// The record holds these bytes instead (another request saved meanwhile): nothing was
    /// written.
    Changed(Vec<u8>),
}

/// Storage for session records (opaque bytes, written by the chosen
/// [`SessionFormat`](crate::session::SessionFormat)).
///
/// # Contract
///
/// Every implementation must guarantee:
///
/// - **Expiry**: a record is never returned by [`load`](Self::load) after its TTL has run
///   out, and [`count`](Self::count) does not count it.
/// - **No id reuse**: [`create`](Self::create) never overwrites an existing record; it
///   generates a fresh id (at least 128 bits from a CSPRNG) and retries on a collision.
/// - **No revival**: [`save`](Self::save) replaces an existing record only; a record
///   destroyed or expired meanwhile stays gone (so a slow request cannot bring a logged-out
///   session back).
/// - **Touch does not rewrite**: [`touch`](Self::touch) only moves the expiry.
/// - Ids are credentials: implementations never log them.
///
/// Errors are for what the backing store refuses; a store that can fall back (as
/// [`CacheSessionStore`] does when Redis is down) should do so instead of failing.
///
/// ```
/// use cache_sdk::session::{CacheSessionStore, SessionStore};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), cache_sdk::session::SessionError> {
/// let store = CacheSessionStore::new(cache_sdk::Cache::in_memory());
/// let ttl = std::time::Duration::from_secs(60);
/// let id = store.create(b"{}".to_vec(), ttl).await?;
/// assert_eq!(store.load(&id).await?.as_deref(), Some(&b"{}"[..]));
/// assert!(store.save(&id, b"{\"a\":1}".to_vec(), ttl).await?);
/// assert!(store.touch(&id, ttl).await?);
/// assert_eq!(store.count().await?, 1);
/// assert!(store.destroy(&id).await?);
/// assert!(!store.save(&id, b"{}".to_vec(), ttl).await?);
/// # Ok(()) }
/// ```
#[async_trait::async_trait]
pub trait SessionStore: Send + Sync + std::fmt::Debug + 'static {
    /// The record under `id`; `None` when there is none (never created, expired,
    /// destroyed).
    ///
    /// # Errors
    /// When the backing store answers an error.
    async fn load(&self, id: &SessionId) -> Result<Option<Vec<u8>>, SessionError>;

    /// Stores a record under a fresh id and returns the id. Never overwrites.
    ///
    /// # Errors
    /// When the backing store refuses, or no free id was found in [`MAX_ID_ATTEMPTS`].
    async fn create(&self, record: Vec<u8>, ttl: Duration) -> Result<SessionId, SessionError>;

    /// Replaces the record under `id` and sets its TTL, only if it still exists; returns
    /// whether it did.
    ///
    /// # Errors
    /// When the backing store refuses.
    async fn save(
        &self,
        id: &SessionId,
        record: Vec<u8>,
        ttl: Duration,
    ) -> Result<bool, SessionError>;

    /// Replaces the record under `id` only if it still holds exactly `expected` (the bytes
    /// this request read or last wrote), and sets its TTL: the step that lets
    /// [`Sessions`](crate::session::Sessions) merge concurrent changes instead of losing
    /// them.
    ///
    /// The default reads then writes, which is **not atomic**: a store that can do better
    /// (a script, a transaction, a conditional write) should. [`CacheSessionStore`] does.
    ///
    /// # Errors
    /// When the backing store refuses.
    async fn save_if(
        &self,
        id: &SessionId,
        expected: &[u8],
        record: Vec<u8>,
        ttl: Duration,
    ) -> Result<SaveIf, SessionError> {
        match self.load(id).await? {
            None => Ok(SaveIf::Gone),
            Some(current) if current == expected => Ok(if self.save(id, record, ttl).await? {
                SaveIf::Saved
            } else {
                SaveIf::Gone
            }),
            Some(current) => Ok(SaveIf::Changed(current)),
        }
    }

    /// Sets the TTL of an existing record without rewriting it; returns whether it exists.
    ///
    /// # Errors
    /// When the backing store refuses.
    async fn touch(&self, id: &SessionId, ttl: Duration) -> Result<bool, SessionError>;

    /// Deletes a record; returns whether it existed.
    ///
    /// # Errors
    /// When the backing store refuses.
    async fn destroy(&self, id: &SessionId) -> Result<bool, SessionError>;

    /// How many live records there are (by iteration such as `SCAN`, never `KEYS`).
    ///
    /// # Errors
    /// When the backing store refuses.
    async fn count(&self) -> Result<u64, SessionError>;

    /// Where records go now.
    fn status(&self) -> StoreStatus;

    /// The cache of decoded records in front of this store, if it has one: then
    /// [`Sessions`](crate::session::Sessions) reads records through it, and a hot session
    /// costs no store command. `None` (the default) reads the store on every load.
    ///
    /// Only [`CacheSessionStore`] has one; a store that wraps it may return the inner
    /// store's, provided its [`load`](Self::load) returns what the inner store holds.
    ///
    /// ```
    /// use cache_sdk::session::{CacheSessionStore, SessionStore};
    /// let store = CacheSessionStore::new(cache_sdk::Cache::in_memory());
    /// assert!(store.record_cache().is_some());
    /// ```
    fn record_cache(&self) -> Option<&RecordCache> {
        None
    }

    /// The per-user session indexes kept beside this store's records, if it has them:
    /// then [`Sessions::bind_user`](crate::session::Sessions::bind_user) and the calls
    /// that list or log out a user's sessions work. `None` (the default): they answer
    /// [`SessionError::Unsupported`].
    ///
    /// ```
    /// use cache_sdk::session::{CacheSessionStore, SessionStore};
    /// let store = CacheSessionStore::new(cache_sdk::Cache::in_memory());
    /// assert!(store.user_index().is_some());
    /// ```
    fn user_index(&self) -> Option<&UserIndex> {
        None
    }
}

/// A [`SessionStore`] over a [`Cache`]'s raw operations: records under `sess:{id}` in Redis
/// (`GET`, `SET NX`/`SET XX` with `PX`, a one-key compare-and-set script for
/// [`save_if`](SessionStore::save_if), `PEXPIRE`, `DEL`, `SCAN MATCH sess:*`), or in the
/// cache's in-memory fallback while Redis is unreachable (records written meanwhile are
/// replayed to Redis when it returns).
///
/// Records are read from Redis on every load, unless the cache keeps its L1 coherent across
/// instances ([`Stats::coherence`](crate::Stats::coherence) is `"tracking"` or `"pubsub"`):
/// then its [`RecordCache`] keeps each record read decoded in L1, a change or deletion by
/// any instance evicts it everywhere, and while Redis is lost the records held there keep
/// working from the fallback.
///
/// ```
/// let store = cache_sdk::session::CacheSessionStore::new(cache_sdk::Cache::in_memory());
/// # let _ = store;
/// ```
#[derive(Debug, Clone)]
pub struct CacheSessionStore {
    cache: Cache,
    records: RecordCache,
    users: UserIndex,
}

impl CacheSessionStore {
    /// A store on this cache (clones share everything).
    #[must_use]
    pub fn new(cache: Cache) -> Self {
        Self {
            records: RecordCache::new(cache.clone()),
            users: UserIndex::new(cache.clone()),
            cache,
        }
    }

    /// The cache underneath.
    ///
    /// ```
    /// let store = cache_sdk::session::CacheSessionStore::new(cache_sdk::Cache::in_memory());
    /// assert!(store.cache().is_ready());
    /// ```
    #[must_use]
    pub fn cache(&self) -> &Cache {
        &self.cache
    }
}

fn ttl(d: Duration) -> Ttl {
    // Sub-second TTLs are raised to the one-second minimum the cache accepts.
    Ttl::Custom(d.max(Duration::from_secs(1)))
}

#[async_trait::async_trait]
impl SessionStore for CacheSessionStore {
    async fn load(&self, id: &SessionId) -> Result<Option<Vec<u8>>, SessionError> {
        Ok(self.cache.get_raw(&id.key()).await?)
    }

    async fn create(&self, record: Vec<u8>, ttl_: Duration) -> Result<SessionId, SessionError> {
        for _ in 0..MAX_ID_ATTEMPTS {
            let id = SessionId::generate();
            if self
                .cache
                .set_raw_nx(&id.key(), record.clone(), ttl(ttl_))
                .await?
            {
                return Ok(id);
            }
            tracing::warn!("session id collision; drawing another id");
        }
        Err(SessionError::NoFreeId(MAX_ID_ATTEMPTS))
    }

    async fn save(
        &self,
        id: &SessionId,
        record: Vec<u8>,
        ttl_: Duration,
    ) -> Result<bool, SessionError> {
        Ok(self.cache.set_raw_xx(&id.key(), record, ttl(ttl_)).await?)
    }

    async fn save_if(
        &self,
        id: &SessionId,
        expected: &[u8],
        record: Vec<u8>,
        ttl_: Duration,
    ) -> Result<SaveIf, SessionError> {
        let ttl_ = ttl_.max(Duration::from_secs(1));
        Ok(
            match self
                .cache
                .compare_and_set_raw(&id.key(), expected, record, ttl_)
                .await?
            {
                Cas::Written => SaveIf::Saved,
                Cas::Missing => SaveIf::Gone,
                Cas::Changed(current) => SaveIf::Changed(current),
            },
        )
    }

    async fn touch(&self, id: &SessionId, ttl_: Duration) -> Result<bool, SessionError> {
        Ok(self.cache.expire(&id.key(), ttl(ttl_)).await?)
    }

    async fn destroy(&self, id: &SessionId) -> Result<bool, SessionError> {
        Ok(self.cache.delete(&id.key()).await?)
    }

    async fn count(&self) -> Result<u64, SessionError> {
        // SCAN may return a key twice while Redis rehashes: count distinct keys.
        let keys: std::collections::HashSet<String> = self
            .cache
            .scan(&format!("{SESSION_PREFIX}*"))
            .await?
            .into_iter()
            .collect();
        Ok(keys.len() as u64)
    }

    fn status(&self) -> StoreStatus {
        let s = self.cache.stats();
        StoreStatus {
            connected: s.connected,
            using_fallback: s.using_fallback,
            in_memory_keys: s.in_memory_keys,
        }
    }

    fn record_cache(&self) -> Option<&RecordCache> {
        Some(&self.records)
    }

    fn user_index(&self) -> Option<&UserIndex> {
        Some(&self.users)
    }
}
