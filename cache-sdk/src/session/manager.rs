//! [`Sessions`]: a store, a format and a configuration together: typed load and save,
//! cookie signing, touch throttling and stats. The layer uses it; so can code outside a
//! request (an admin task, a test, a migration).
//!
//! Owns the typed side of a session: encoding and decoding records in the configured
//! format, the size limit, touch throttling and stats. May import: the store contract (and
//! through it the store's [`RecordCache`](super::RecordCache), never a concrete store),
//! the format, the cookie secrets. Must not: reach the cache or the tiers, or know HTTP.

use crate::metrics::SessionEvent;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

use super::config::SessionConfig;
use super::cookie::{find_cookie, Verified};
use super::count::SessionCount;
use super::error::SessionError;
use super::id::SessionId;
use super::record_cache::SharedRecord;
use super::store::{SaveIf, SessionStore, StoreStatus};
use super::users::{UserIndex, UserSessionInfo};
use crate::codec::now_ms;
use crate::error::ConfigError;
use crate::stats::StoreKind;

/// Most sessions whose last touch this process remembers (for throttling).
const TOUCH_MEMORY: u64 = 200_000;

/// Subtracted from a record's expiry when deciding how long L1 may keep it.
const STORE_MARGIN_MS: u64 = 1_000;

/// A session read from the store.
///
/// ```
/// use cache_sdk::session::{CacheSessionStore, SessionConfig, Sessions};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let sessions = Sessions::new(CacheSessionStore::new(cache_sdk::Cache::in_memory()), SessionConfig::development())?;
/// let id = sessions.create(&7u32.to_string(), None).await?;
/// let loaded = sessions.load::<String>(&id).await?.unwrap();
/// assert_eq!(loaded.data, "7");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Loaded<T> {
    /// The data.
    pub data: T,
    /// This session's lifetime (its own, or the configured one).
    pub ttl: Duration,
    /// When it was last saved (Unix ms), when the record says.
    pub saved_at_ms: Option<u64>,
    /// Express format: stored fields `T` does not account for, written back on save.
    pub(crate) extra: Map<String, Value>,
}

impl<T> Loaded<T> {
    /// A new, unsaved session holding `data`.
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) fn fresh(data: T, ttl: Duration) -> Self {
        Self {
            data,
            ttl,
            saved_at_ms: None,
            extra: Map::new(),
        }
    }
}

/// Sessions on a store: cheap to clone, clones share everything.
///
/// ```
/// use cache_sdk::session::{CacheSessionStore, SessionConfig, Sessions};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cache = cache_sdk::Cache::in_memory();
/// let sessions = Sessions::new(CacheSessionStore::new(cache), SessionConfig::development())?;
/// let id = sessions.create(&vec!["cart item".to_string()], None).await?;
/// let cookie = sessions.cookie_value(&id);
/// assert_eq!(sessions.verify(&cookie).unwrap().id, id);
/// assert_eq!(sessions.count().await?, 1);
/// sessions.destroy(&id).await?;
/// assert!(sessions.load::<Vec<String>>(&id).await?.is_none());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Sessions {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn SessionStore>,
    config: SessionConfig,
    /// Session id → when this process last refreshed its expiry (Unix ms).
    touched: Option<moka::sync::Cache<SessionId, u64>>,
    /// The stats' session count.
    count: Arc<SessionCount>,
    /// Session id → this process refreshed its last-seen time in the user index within
    /// the touch interval (so [`Sessions::user_seen`] costs no command then).
    seen: Option<moka::sync::Cache<SessionId, ()>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("store", &self.inner.store)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// The session stats, serialized in the seed's shape:
/// `{"store":"redis"|"memory","totalSessions":n,"redisStats":{…}}` (an endpoint that must
/// answer the seed's `"success":true` as well adds it to its own response).
///
/// ```
/// use cache_sdk::session::{CacheSessionStore, SessionConfig, Sessions};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let sessions = Sessions::new(CacheSessionStore::new(cache_sdk::Cache::in_memory()), SessionConfig::development())?;
/// let json = serde_json::to_string(&sessions.stats().await?)?;
/// assert_eq!(
///     json,
///     r#"{"store":"memory","totalSessions":0,"redisStats":{"connected":false,"usingFallback":true,"inMemoryKeys":0}}"#
/// );
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct SessionStats {
    /// Where sessions are kept now (serialized as `"redis"` or `"memory"`).
    pub store: StoreKind,
    /// Live sessions in that store.
    pub total_sessions: u64,
    /// The store's state.
    pub redis_stats: StoreStatus,
}

impl Sessions {
    /// Sessions on `store` with `config`.
    ///
    /// # Errors
    /// [`ConfigError`] when the configuration is invalid (see [`SessionConfig::validate`]).
    ///
    /// ```
    /// use cache_sdk::session::{CacheSessionStore, SessionConfig, Sessions};
    /// let store = CacheSessionStore::new(cache_sdk::Cache::in_memory());
    /// assert!(Sessions::new(store.clone(), SessionConfig::development()).is_ok());
    /// assert!(Sessions::new(store, SessionConfig::development().cookie_name("a b")).is_err());
    /// ```
    pub fn new(store: impl SessionStore, config: SessionConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let touched = (!config.touch_interval.is_zero()).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(TOUCH_MEMORY)
                .time_to_live(config.touch_interval)
                .build()
        });
        let seen = (!config.touch_interval.is_zero()).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(TOUCH_MEMORY)
                .time_to_live(config.touch_interval)
                .build()
        });
        tracing::info!(
            format = ?config.format,
            cookie = %config.cookie.name,
            ttl_secs = config.ttl.as_secs(),
            "sessions ready"
        );
        Ok(Self {
            inner: Arc::new(Inner {
                store: Arc::new(store),
                config,
                touched,
                count: Arc::default(),
                seen,
            }),
        })
    }

    /// The configuration.
    ///
    /// ```
    /// # use cache_sdk::session::{CacheSessionStore, SessionConfig, Sessions};
    /// # let sessions = Sessions::new(CacheSessionStore::new(cache_sdk::Cache::in_memory()), SessionConfig::development()).unwrap();
    /// assert_eq!(sessions.config().cookie.name, "sid");
    /// ```
    #[must_use]
    pub fn config(&self) -> &SessionConfig {
        &self.inner.config
    }

    /// The store.
    ///
    /// ```
    /// # use cache_sdk::session::{CacheSessionStore, SessionConfig, Sessions};
    /// # let sessions = Sessions::new(CacheSessionStore::new(cache_sdk::Cache::in_memory()), SessionConfig::development()).unwrap();
    /// assert!(!sessions.store().status().connected);
    /// ```
    #[must_use]
    pub fn store(&self) -> &dyn SessionStore {
        &*self.inner.store
    }

    /// The signed cookie value for an id (`s:{id}.{sig}`, before URL encoding).
    ///
    /// ```
    /// # use cache_sdk::session::{CacheSessionStore, SessionConfig, SessionId, Sessions};
    /// # let sessions = Sessions::new(CacheSessionStore::new(cache_sdk::Cache::in_memory()), SessionConfig::development()).unwrap();
    /// assert!(sessions.cookie_value(&SessionId::generate()).starts_with("s:"));
    /// ```
    #[must_use]
    pub fn cookie_value(&self, id: &SessionId) -> String {
        self.inner.config.secrets.sign(id)
    }

    /// Verifies a cookie value (URL-decoded) with every secret.
    ///
    /// ```
    /// # use cache_sdk::session::{CacheSessionStore, SessionConfig, Sessions};
    /// # let sessions = Sessions::new(CacheSessionStore::new(cache_sdk::Cache::in_memory()), SessionConfig::development()).unwrap();
    /// assert!(sessions.verify("s:abc.def").is_none());
    /// ```
    #[must_use]
    pub fn verify(&self, value: &str) -> Option<Verified> {
        let verified = self.inner.config.secrets.verify(value);
        SessionEvent::verified(verified.as_ref().map(|v| v.rotated));
        verified
    }

    /// Finds and verifies the session cookie in `Cookie` header values (the first cookie
    /// with the configured name counts, as in express-session).
    ///
    /// ```
    /// # use cache_sdk::session::{CacheSessionStore, SessionConfig, SessionId, Sessions};
    /// # let sessions = Sessions::new(CacheSessionStore::new(cache_sdk::Cache::in_memory()), SessionConfig::development()).unwrap();
    /// let id = SessionId::generate();
    /// let header = format!("sid={}", cache_sdk::session::cookie::encode_value(&sessions.cookie_value(&id)));
    /// assert_eq!(sessions.verify_header([header.as_str()]).unwrap().id, id);
    /// ```
    #[must_use]
    pub fn verify_header<'a>(
        &self,
        headers: impl IntoIterator<Item = &'a str>,
    ) -> Option<Verified> {
        let value = find_cookie(headers, &self.inner.config.cookie.name)?;
        self.verify(&value)
    }

    pub(crate) fn encode_record<T: Serialize>(
        &self,
        data: &T,
        extra: &Map<String, Value>,
        ttl: Duration,
        now: u64,
    ) -> Result<Vec<u8>, SessionError> {
        let cfg = &self.inner.config;
        let bytes = cfg
            .format
            .encode(data, extra, &cfg.cookie, ttl, now)
            .map_err(|e| SessionError::Encode(e.0))?;
        if bytes.len() > cfg.max_record_bytes {
            return Err(SessionError::TooLarge {
                size: bytes.len(),
                limit: cfg.max_record_bytes,
            });
        }
        Ok(bytes)
    }

    /// Reads a session. A record that does not decode as `T` in the configured format, or
    /// is over the size limit, is `None` (logged as a warning), like a missing one.
    ///
    /// With a store that has a [`RecordCache`](super::RecordCache) (a
    /// [`CacheSessionStore`](super::CacheSessionStore) whose cache keeps L1 coherent, see
    /// [`Stats::coherence`](crate::Stats::coherence)), a record read once is kept decoded in
    /// L1, so reading it again costs no Redis command; a change or deletion by any instance
    /// evicts it everywhere.
    ///
    /// # Errors
    /// [`SessionError::Store`] when the store answers an error.
    ///
    /// ```
    /// # use cache_sdk::session::{CacheSessionStore, SessionConfig, SessionId, Sessions};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let sessions = Sessions::new(CacheSessionStore::new(cache_sdk::Cache::in_memory()), SessionConfig::development())?;
    /// assert!(sessions.load::<u8>(&SessionId::generate()).await?.is_none());
    /// # Ok(()) }
    /// ```
    pub async fn load<T>(&self, id: &SessionId) -> Result<Option<Loaded<T>>, SessionError>
    where
        T: Serialize + DeserializeOwned + Default + Send + Sync + 'static,
    {
        let Some(s) = self.load_shared::<T>(id).await? else {
            return Ok(None);
        };
        let data = match Arc::try_unwrap(s.data) {
            Ok(data) => data,
            // Shared with L1: decode our own copy.
            Err(_) => match self.decode_shared::<T>(s.raw.clone()) {
                Some(d) => Arc::try_unwrap(d.data).unwrap_or_default(),
                None => return Ok(None),
            },
        };
        Ok(Some(Loaded {
            data,
            ttl: s.ttl,
            saved_at_ms: s.saved_at_ms,
            extra: s.extra,
        }))
    }

    /// Reads a session, sharing the decoded data with L1 when it is kept there.
    pub(crate) async fn load_shared<T>(
        &self,
        id: &SessionId,
    ) -> Result<Option<SharedRecord<T>>, SessionError>
    where
        T: Serialize + DeserializeOwned + Default + Send + Sync + 'static,
    {
        let store = &*self.inner.store;
        match store.record_cache() {
            Some(records) => {
                records
                    .load(
                        id,
                        || store.load(id),
                        |raw| self.decode_shared(raw),
                        |r| self.stored_until(id, r),
                    )
                    .await
            }
            None => {
                let found = store.load(id).await?;
                Ok(found.and_then(|bytes| self.decode_shared(bytes.into())))
            }
        }
    }

    /// A lower bound of when the record expires in the store: its last save or this
    /// process's last touch, plus its TTL, less a margin for the write's round trip. Notes
    /// that last refresh in the record (for [`Sessions::needs_touch`] on later reads).
    fn stored_until<T>(&self, id: &SessionId, r: &mut SharedRecord<T>) -> std::time::Instant {
        let touched = self
            .inner
            .touched
            .as_ref()
            .and_then(|t| t.get(id))
            .unwrap_or(0);
        let base = r.saved_at_ms.unwrap_or(0).max(touched);
        r.refreshed_ms = (base > 0).then_some(base);
        let ttl = u64::try_from(r.ttl.as_millis()).unwrap_or(u64::MAX);
        let until = base.saturating_add(ttl).saturating_sub(STORE_MARGIN_MS);
        let left = until.saturating_sub(now_ms());
        std::time::Instant::now() + std::time::Duration::from_millis(left)
    }

    fn decode_shared<T>(&self, raw: Arc<[u8]>) -> Option<SharedRecord<T>>
    where
        T: Serialize + DeserializeOwned + Default,
    {
        let cfg = &self.inner.config;
        if raw.len() > cfg.max_record_bytes {
            tracing::warn!(
                size = raw.len(),
                limit = cfg.max_record_bytes,
                "session record over the size limit; starting a fresh session"
            );
            return None;
        }
        match cfg.format.decode::<T>(&raw) {
            Ok(d) => Some(SharedRecord {
                data: Arc::new(d.data),
                raw,
                ttl: d.ttl.unwrap_or(cfg.ttl),
                saved_at_ms: d.saved_at_ms,
                refreshed_ms: d.saved_at_ms,
                extra: d.extra,
            }),
            Err(e) => {
                tracing::warn!(
                    format = ?cfg.format,
                    expected = std::any::type_name::<T>(),
                    error = %e.0,
                    "session record does not decode; starting a fresh session"
                );
                None
            }
        }
    }

    /// Stores a new session under a fresh id (never overwriting one) and returns the id.
    /// `ttl` defaults to the configured lifetime.
    ///
    /// # Errors
    /// [`SessionError::Encode`], [`SessionError::TooLarge`], or the store's error.
    ///
    /// ```
    /// # use cache_sdk::session::{CacheSessionStore, SessionConfig, Sessions};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let sessions = Sessions::new(CacheSessionStore::new(cache_sdk::Cache::in_memory()), SessionConfig::development())?;
    /// let id = sessions.create(&42u64, Some(std::time::Duration::from_secs(60))).await?;
    /// assert_eq!(sessions.load::<u64>(&id).await?.unwrap().ttl.as_secs(), 60);
    /// # Ok(()) }
    /// ```
    pub async fn create<T: Serialize>(
        &self,
        data: &T,
        ttl: Option<Duration>,
    ) -> Result<SessionId, SessionError> {
        let ttl = ttl.unwrap_or(self.inner.config.ttl);
        let now = now_ms();
        let bytes = self.encode_record(data, &Map::new(), ttl, now)?;
        self.create_raw(bytes, ttl, now).await
    }

    pub(crate) async fn create_raw(
        &self,
        record: Vec<u8>,
        ttl: Duration,
        now: u64,
    ) -> Result<SessionId, SessionError> {
        let id = self.inner.store.create(record, ttl).await?;
        self.inner.count.created();
        self.remember_touch(&id, now);
        Ok(id)
    }

    /// Replaces an existing session's data (and resets its expiry).
    ///
    /// # Errors
    /// [`SessionError::Gone`] when the session no longer exists (it is not recreated),
    /// [`SessionError::Encode`], [`SessionError::TooLarge`], or the store's error.
    ///
    /// ```
    /// # use cache_sdk::session::{CacheSessionStore, SessionConfig, Sessions};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let sessions = Sessions::new(CacheSessionStore::new(cache_sdk::Cache::in_memory()), SessionConfig::development())?;
    /// let id = sessions.create(&1u8, None).await?;
    /// let mut s = sessions.load::<u8>(&id).await?.unwrap();
    /// s.data = 2;
    /// sessions.save(&id, &s).await?;
    /// assert_eq!(sessions.load::<u8>(&id).await?.unwrap().data, 2);
    /// # Ok(()) }
    /// ```
    pub async fn save<T: Serialize>(
        &self,
        id: &SessionId,
        s: &Loaded<T>,
    ) -> Result<(), SessionError> {
        let now = now_ms();
        let bytes = self.encode_record(&s.data, &s.extra, s.ttl, now)?;
        self.save_raw(id, bytes, s.ttl, now).await
    }

    pub(crate) async fn save_raw(
        &self,
        id: &SessionId,
        record: Vec<u8>,
        ttl: Duration,
        now: u64,
    ) -> Result<(), SessionError> {
        if !self.inner.store.save(id, record, ttl).await? {
            return Err(SessionError::Gone);
        }
        self.remember_touch(id, now);
        Ok(())
    }

    /// Replaces the record only over `expected` (see [`SessionStore::save_if`]).
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) async fn save_if_raw(
        &self,
        id: &SessionId,
        expected: &[u8],
        record: Vec<u8>,
        ttl: Duration,
        now: u64,
    ) -> Result<SaveIf, SessionError> {
        let outcome = self.inner.store.save_if(id, expected, record, ttl).await?;
        if outcome == SaveIf::Saved {
            self.remember_touch(id, now);
        }
        Ok(outcome)
    }

    /// Extends a session's expiry to `ttl` from now without rewriting it; returns whether
    /// it exists.
    ///
    /// # Errors
    /// The store's error.
    ///
    /// ```
    /// # use cache_sdk::session::{CacheSessionStore, SessionConfig, SessionId, Sessions};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let sessions = Sessions::new(CacheSessionStore::new(cache_sdk::Cache::in_memory()), SessionConfig::development())?;
    /// assert!(!sessions.touch(&SessionId::generate(), std::time::Duration::from_secs(60)).await?);
    /// # Ok(()) }
    /// ```
    pub async fn touch(&self, id: &SessionId, ttl: Duration) -> Result<bool, SessionError> {
        let found = self.inner.store.touch(id, ttl).await?;
        if found {
            self.remember_touch(id, now_ms());
        }
        Ok(found)
    }

    /// Deletes a session; returns whether it existed.
    ///
    /// # Errors
    /// The store's error.
    ///
    /// ```
    /// # use cache_sdk::session::{CacheSessionStore, SessionConfig, SessionId, Sessions};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let sessions = Sessions::new(CacheSessionStore::new(cache_sdk::Cache::in_memory()), SessionConfig::development())?;
    /// assert!(!sessions.destroy(&SessionId::generate()).await?);
    /// # Ok(()) }
    /// ```
    pub async fn destroy(&self, id: &SessionId) -> Result<bool, SessionError> {
        if let Some(t) = &self.inner.touched {
            t.invalidate(id);
        }
        let existed = self.inner.store.destroy(id).await?;
        if existed {
            self.inner.count.destroyed();
        }
        Ok(existed)
    }

    fn user_index(&self) -> Result<&UserIndex, SessionError> {
        self.inner
            .store
            .user_index()
            .ok_or(SessionError::Unsupported("per-user session indexes"))
    }

    /// Records that session `id` belongs to `user_id` (call it at login, after the session
    /// is saved under its new id), with an optional client description such as the
    /// `User-Agent` (at most 512 bytes are kept). The user's index
    /// (`sess-user:{user_id}`, see [`UserIndex`]) is changed atomically over concurrent
    /// logins and lives as long as a session.
    ///
    /// # Errors
    /// [`SessionError::Unsupported`] when the store keeps no user index, the store's error,
    /// or [`SessionError::Contended`] when the index kept changing.
    ///
    /// ```
    /// # use cache_sdk::session::{CacheSessionStore, SessionConfig, Sessions};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let sessions = Sessions::new(CacheSessionStore::new(cache_sdk::Cache::in_memory()), SessionConfig::development())?;
    /// let id = sessions.create(&"alice", None).await?;
    /// sessions.bind_user(&id, "1", Some("curl/8")).await?;
    /// let list = sessions.user_sessions("1", Some(&id)).await?;
    /// assert_eq!(list.len(), 1);
    /// assert!(list[0].current);
    /// assert_eq!(list[0].user_agent.as_deref(), Some("curl/8"));
    /// # Ok(()) }
    /// ```
    pub async fn bind_user(
        &self,
        id: &SessionId,
        user_id: &str,
        client: Option<&str>,
    ) -> Result<(), SessionError> {
        let now = now_ms();
        self.user_index()?
            .bind(
                user_id,
                id,
                client.map(str::to_owned),
                self.inner.config.ttl,
                now,
            )
            .await?;
        if let Some(seen) = &self.inner.seen {
            seen.insert(id.clone(), ());
        }
        Ok(())
    }

    /// Notes that session `id` of `user_id` was just used: its last-seen time in the
    /// user's index moves to now, at most once per touch interval (this process remembers
    /// when it last did, so calling this on every request costs no store command most of
    /// the time; the index itself is not rewritten when another instance already did it
    /// within the interval).
    ///
    /// # Errors
    /// As [`Sessions::bind_user`].
    ///
    /// ```
    /// # use cache_sdk::session::{CacheSessionStore, SessionConfig, Sessions};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let sessions = Sessions::new(CacheSessionStore::new(cache_sdk::Cache::in_memory()), SessionConfig::development())?;
    /// let id = sessions.create(&"alice", None).await?;
    /// sessions.bind_user(&id, "1", None).await?;
    /// sessions.user_seen(&id, "1").await?;
    /// # Ok(()) }
    /// ```
    pub async fn user_seen(&self, id: &SessionId, user_id: &str) -> Result<(), SessionError> {
        if let Some(seen) = &self.inner.seen {
            if seen.contains_key(id) {
                return Ok(());
            }
        }
        let interval =
            u64::try_from(self.inner.config.touch_interval.as_millis()).unwrap_or(u64::MAX);
        self.user_index()?
            .seen(user_id, id, self.inner.config.ttl, interval, now_ms())
            .await?;
        if let Some(seen) = &self.inner.seen {
            seen.insert(id.clone(), ());
        }
        Ok(())
    }

    /// The live sessions of `user_id`, most recently seen first; `current` (the session
    /// asking, if any) is flagged. Each listed session is checked in the store: entries of
    /// sessions that expired or were destroyed are never listed, and are dropped from the
    /// index. Listings name sessions by [`opaque_id`](super::opaque_id), never by id.
    ///
    /// # Errors
    /// As [`Sessions::bind_user`].
    ///
    /// ```
    /// # use cache_sdk::session::{CacheSessionStore, SessionConfig, Sessions};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let sessions = Sessions::new(CacheSessionStore::new(cache_sdk::Cache::in_memory()), SessionConfig::development())?;
    /// let id = sessions.create(&"alice", None).await?;
    /// sessions.bind_user(&id, "1", None).await?;
    /// sessions.destroy(&id).await?;
    /// assert!(sessions.user_sessions("1", None).await?.is_empty());
    /// # Ok(()) }
    /// ```
    pub async fn user_sessions(
        &self,
        user_id: &str,
        current: Option<&SessionId>,
    ) -> Result<Vec<UserSessionInfo>, SessionError> {
        let index = self.user_index()?;
        let mut live = Vec::new();
        let mut dead = Vec::new();
        for entry in index.entries(user_id).await? {
            let alive = match entry.session_id() {
                Some(id) => self.inner.store.load(&id).await?.is_some(),
                None => false,
            };
            match UserIndex::info(&entry, current).filter(|_| alive) {
                Some(info) => live.push(info),
                None => dead.push(UserIndex::raw_id(&entry).to_owned()),
            }
        }
        if let Err(e) = index.remove(user_id, &dead, self.inner.config.ttl).await {
            // The listing is right either way; the next one cleans up.
            tracing::warn!(error = %e, "could not drop ended sessions from a user index");
        }
        live.sort_by_key(|s| std::cmp::Reverse(s.last_seen_at_ms));
        Ok(live)
    }

    /// Logs `user_id` out everywhere: destroys every session in the user's index except
    /// `keep` (the current one, say), which evicts them from L1 on every instance (with a
    /// coherent cache), so they answer as logged out at once. Returns how many sessions
    /// were destroyed.
    ///
    /// # Errors
    /// As [`Sessions::bind_user`].
    ///
    /// ```
    /// # use cache_sdk::session::{CacheSessionStore, SessionConfig, Sessions};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let sessions = Sessions::new(CacheSessionStore::new(cache_sdk::Cache::in_memory()), SessionConfig::development())?;
    /// let (a, b) = (sessions.create(&1u8, None).await?, sessions.create(&1u8, None).await?);
    /// sessions.bind_user(&a, "1", None).await?;
    /// sessions.bind_user(&b, "1", None).await?;
    /// assert_eq!(sessions.destroy_user_sessions("1", Some(&a)).await?, 1);
    /// assert!(sessions.load::<u8>(&a).await?.is_some());
    /// assert!(sessions.load::<u8>(&b).await?.is_none());
    /// # Ok(()) }
    /// ```
    pub async fn destroy_user_sessions(
        &self,
        user_id: &str,
        keep: Option<&SessionId>,
    ) -> Result<u64, SessionError> {
        let index = self.user_index()?;
        let mut removed = Vec::new();
        let mut destroyed = 0;
        for entry in index.entries(user_id).await? {
            let id = entry.session_id();
            if id.is_some() && id.as_ref() == keep {
                continue;
            }
            if let Some(id) = id {
                if self.destroy(&id).await? {
                    destroyed += 1;
                }
            }
            removed.push(UserIndex::raw_id(&entry).to_owned());
        }
        index
            .remove(user_id, &removed, self.inner.config.ttl)
            .await?;
        tracing::info!(destroyed, "user sessions destroyed");
        Ok(destroyed)
    }

    /// How many sessions the store holds, counted now (with `SCAN` on Redis: costly with
    /// many sessions; [`Sessions::stats`] keeps a cheap count).
    ///
    /// # Errors
    /// The store's error.
    ///
    /// ```
    /// # use cache_sdk::session::{CacheSessionStore, SessionConfig, Sessions};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let sessions = Sessions::new(CacheSessionStore::new(cache_sdk::Cache::in_memory()), SessionConfig::development())?;
    /// assert_eq!(sessions.count().await?, 0);
    /// # Ok(()) }
    /// ```
    pub async fn count(&self) -> Result<u64, SessionError> {
        self.inner.store.count().await
    }

    /// The stats endpoint's answer (see [`SessionStats`]). Cheap to call often: its
    /// `total_sessions` does not count the store on each call. The store is counted
    /// (`SCAN`) at most once at a time per process, in the background, at most every
    /// 5 seconds (longer when a count is slow: at most 5% of the time); between counts,
    /// the answer is the last count plus the sessions this process created and minus
    /// those it destroyed since. Sessions written by other instances or by a Node backend
    /// (express mode), and expired ones, show at the next count. Only the first call waits
    /// for a count. [`Sessions::count`] counts exactly, now.
    ///
    /// # Errors
    /// The store's error, when the first count fails.
    ///
    /// ```
    /// # use cache_sdk::session::{CacheSessionStore, SessionConfig, Sessions};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let sessions = Sessions::new(CacheSessionStore::new(cache_sdk::Cache::in_memory()), SessionConfig::development())?;
    /// assert_eq!(sessions.stats().await?.store, cache_sdk::StoreKind::Memory);
    /// # Ok(()) }
    /// ```
    pub async fn stats(&self) -> Result<SessionStats, SessionError> {
        let store = self.inner.store.clone();
        let total_sessions = self
            .inner
            .count
            .get(move || async move { store.count().await })
            .await?;
        let status = self.inner.store.status();
        Ok(SessionStats {
            store: StoreKind::current(status.connected),
            total_sessions,
            redis_stats: status,
        })
    }

    fn remember_touch(&self, id: &SessionId, at_ms: u64) {
        if let Some(t) = &self.inner.touched {
            t.insert(id.clone(), at_ms);
        }
    }

    /// Whether a session read now should have its expiry extended: not when this process
    /// refreshed it (save or touch) within the touch interval, nor when the record says it
    /// was saved within it. `refreshed_ms` is the record's save time, or later when this
    /// process knew of a later touch when it read it (a record held in L1 carries it,
    /// sparing the touch memory's lookup on most read-only requests).
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) fn needs_touch(&self, id: &SessionId, refreshed_ms: Option<u64>) -> bool {
        let interval =
            u64::try_from(self.inner.config.touch_interval.as_millis()).unwrap_or(u64::MAX);
        if interval == 0 {
            return true;
        }
        let now = now_ms();
        let recent = |t: u64| now.saturating_sub(t) < interval;
        if refreshed_ms.is_some_and(recent) {
            return false;
        }
        !self
            .inner
            .touched
            .as_ref()
            .and_then(|t| t.get(id))
            .is_some_and(recent)
    }
}
