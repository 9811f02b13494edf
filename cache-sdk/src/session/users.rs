//! [`UserIndex`]: which sessions belong to which user, so that an application can list a
//! user's sessions and log them out everywhere.
//!
//! One key per user, `sess-user:{user_id}` ([`USER_INDEX_PREFIX`]; the cache namespace goes
//! before it like before every key), holding a small JSON list: for each session bound to
//! the user, the session id (to destroy it), when it was bound, when it was last seen and a
//! client description. Every change is a read then a one-key compare-and-set of that key
//! (retried over a concurrent change), so two logins at once both stay listed, it works on
//! a cluster (one key, one script), and it goes to the in-memory fallback while Redis is
//! away and is replayed from there like any other write. The key lives as long as a
//! session (its TTL is refreshed on each change). Entries of sessions that expired or were
//! destroyed are dropped lazily, when the list is read.
//!
//! Listings never show a session id: an entry is named by an opaque id, a SHA-256 digest of
//! the session id (not reversible, stable for a session's lifetime).
//!
//! May import: the cache's raw operations and its compare-and-set, the session id. Must
//! not: know record formats, cookies or requests; log ids.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::SessionError;
use super::id::SessionId;
use crate::cache::Cache;
use crate::tier::remote::cas::Cas;

/// The prefix of a user's session index key: `sess-user:{user_id}`.
///
/// ```
/// assert_eq!(cache_sdk::session::USER_INDEX_PREFIX, "sess-user:");
/// ```
pub const USER_INDEX_PREFIX: &str = "sess-user:";

/// Most sessions tracked per user: binding one more drops the least recently seen entry
/// from the index (that session stays valid until it expires or is destroyed, but is no
/// longer listed nor logged out everywhere).
pub const MAX_SESSIONS_PER_USER: usize = 256;

/// Longest client description kept, in bytes (longer ones are cut at a char boundary).
const MAX_CLIENT_BYTES: usize = 512;

/// Compare-and-set attempts before an index change gives up.
const MAX_ATTEMPTS: u32 = 16;

/// One session in a user's index, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Entry {
    /// The session id (stored, never listed).
    id: String,
    /// When the session was bound to the user (Unix ms).
    created: u64,
    /// When it was last seen (Unix ms).
    seen: u64,
    /// The client description the application gave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client: Option<String>,
}

impl Entry {
    pub(crate) fn session_id(&self) -> Option<SessionId> {
        SessionId::parse(&self.id)
    }
}

/// The stored value of an index key.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Stored {
    sessions: Vec<Entry>,
}

/// One of a user's sessions, as listed by
/// [`Sessions::user_sessions`](crate::session::Sessions::user_sessions). Serializes as
/// `{"id","current","createdAt","lastSeenAt","userAgent"}` (times in Unix ms).
///
/// ```
/// let s = cache_sdk::session::UserSessionInfo {
///     id: "abc".into(), current: true, created_at_ms: 1, last_seen_at_ms: 2, user_agent: None,
/// };
/// assert_eq!(
///     serde_json::to_string(&s).unwrap(),
///     r#"{"id":"abc","current":true,"createdAt":1,"lastSeenAt":2,"userAgent":null}"#
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserSessionInfo {
    /// An opaque name of the session (see [`opaque_id`]), never the session id.
    pub id: String,
    /// Whether it is the session the listing was asked from.
    pub current: bool,
    /// When it was bound to the user (Unix ms).
    #[serde(rename = "createdAt")]
    pub created_at_ms: u64,
    /// When it was last seen (Unix ms; refreshed at most once per touch interval).
    #[serde(rename = "lastSeenAt")]
    pub last_seen_at_ms: u64,
    /// The client description recorded at login (a user agent, say).
    #[serde(rename = "userAgent")]
    pub user_agent: Option<String>,
}

/// The opaque name of a session in listings: 128 bits of SHA-256 over a domain tag and the
/// id, base64url. Stable for the session's lifetime; does not reveal the id.
///
/// ```
/// let id = cache_sdk::session::SessionId::generate();
/// let o = cache_sdk::session::opaque_id(&id);
/// assert_eq!(o.len(), 22);
/// assert_ne!(o, id.as_str());
/// assert_eq!(o, cache_sdk::session::opaque_id(&id));
/// ```
#[must_use]
pub fn opaque_id(id: &SessionId) -> String {
    let mut h = Sha256::new();
    h.update(b"cache-sdk user session\0");
    h.update(id.as_str().as_bytes());
    let digest = h.finalize();
    URL_SAFE_NO_PAD.encode(&digest[..16])
}

fn cut(mut s: String) -> String {
    if s.len() > MAX_CLIENT_BYTES {
        let mut end = MAX_CLIENT_BYTES;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

fn decode(bytes: &[u8]) -> Stored {
    serde_json::from_slice(bytes).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "user session index does not decode; starting it afresh");
        Stored::default()
    })
}

/// The per-user session indexes of a [`CacheSessionStore`](super::CacheSessionStore), in
/// its cache. Reached through [`SessionStore::user_index`](super::SessionStore::user_index).
///
/// ```
/// let store = cache_sdk::session::CacheSessionStore::new(cache_sdk::Cache::in_memory());
/// use cache_sdk::session::SessionStore as _;
/// assert!(store.user_index().is_some());
/// ```
#[derive(Debug, Clone)]
pub struct UserIndex {
    cache: Cache,
}

impl UserIndex {
    pub(crate) fn new(cache: Cache) -> Self {
        Self { cache }
    }

    fn key(user: &str) -> String {
        format!("{USER_INDEX_PREFIX}{user}")
    }

    /// The entries of `user`'s index, as stored (dead sessions included).
    pub(crate) async fn entries(&self, user: &str) -> Result<Vec<Entry>, SessionError> {
        Ok(self
            .cache
            .get_raw(&Self::key(user))
            .await?
            .map(|b| decode(&b).sessions)
            .unwrap_or_default())
    }

    /// Changes `user`'s index with `change` (which answers whether it changed anything),
    /// atomically over concurrent changes: read, change, compare-and-set, retried.
    async fn update(
        &self,
        user: &str,
        ttl: Duration,
        mut change: impl FnMut(&mut Vec<Entry>) -> bool,
    ) -> Result<(), SessionError> {
        let key = Self::key(user);
        let ttl = ttl.max(Duration::from_secs(1));
        let mut current = self.cache.get_raw(&key).await?;
        for _ in 0..MAX_ATTEMPTS {
            let mut stored = current.as_deref().map(decode).unwrap_or_default();
            if !change(&mut stored.sessions) {
                return Ok(());
            }
            let bytes = serde_json::to_vec(&stored)
                .map_err(|e| SessionError::Encode(format!("user session index: {e}")))?;
            match &current {
                None => {
                    if self
                        .cache
                        .set_raw_nx(&key, bytes, crate::ttl::Ttl::Custom(ttl))
                        .await?
                    {
                        return Ok(());
                    }
                    current = self.cache.get_raw(&key).await?;
                }
                Some(expected) => {
                    match self
                        .cache
                        .compare_and_set_raw(&key, expected, bytes, ttl)
                        .await?
                    {
                        Cas::Written => return Ok(()),
                        Cas::Missing => current = None,
                        Cas::Changed(now) => current = Some(now),
                    }
                }
            }
        }
        Err(SessionError::Contended(MAX_ATTEMPTS))
    }

    /// Records session `id` as `user`'s, created and seen at `now`.
    pub(crate) async fn bind(
        &self,
        user: &str,
        id: &SessionId,
        client: Option<String>,
        ttl: Duration,
        now: u64,
    ) -> Result<(), SessionError> {
        let client = client.map(cut);
        self.update(user, ttl, |entries| {
            let created = entries
                .iter()
                .find(|e| e.id == id.as_str())
                .map_or(now, |e| e.created);
            entries.retain(|e| e.id != id.as_str());
            while entries.len() >= MAX_SESSIONS_PER_USER {
                let Some(oldest) = entries
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, e)| e.seen)
                    .map(|(i, _)| i)
                else {
                    break;
                };
                entries.remove(oldest);
            }
            entries.push(Entry {
                id: id.as_str().to_owned(),
                created,
                seen: now,
                client: client.clone(),
            });
            true
        })
        .await
    }

    /// Moves session `id`'s last-seen time to `now`, unless it was seen within `interval`
    /// or is not in `user`'s index.
    pub(crate) async fn seen(
        &self,
        user: &str,
        id: &SessionId,
        ttl: Duration,
        interval: u64,
        now: u64,
    ) -> Result<(), SessionError> {
        self.update(user, ttl, |entries| {
            match entries.iter_mut().find(|e| e.id == id.as_str()) {
                Some(e) if now.saturating_sub(e.seen) >= interval => {
                    e.seen = now;
                    true
                }
                _ => false,
            }
        })
        .await
    }

    /// Drops the entries of these session ids from `user`'s index.
    pub(crate) async fn remove(
        &self,
        user: &str,
        ids: &[String],
        ttl: Duration,
    ) -> Result<(), SessionError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.update(user, ttl, |entries| {
            let before = entries.len();
            entries.retain(|e| !ids.contains(&e.id));
            entries.len() != before
        })
        .await
    }

    /// The listing of an entry.
    pub(crate) fn info(e: &Entry, current: Option<&SessionId>) -> Option<UserSessionInfo> {
        let id = e.session_id()?;
        Some(UserSessionInfo {
            id: opaque_id(&id),
            current: current.is_some_and(|c| *c == id),
            created_at_ms: e.created,
            last_seen_at_ms: e.seen,
            user_agent: e.client.clone(),
        })
    }

    /// The stored id of an entry (to drop it from the index).
    pub(crate) fn raw_id(e: &Entry) -> &str {
        &e.id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bind_list_and_remove_on_the_fallback() {
        let index = UserIndex::new(Cache::in_memory());
        let ttl = Duration::from_secs(60);
        let (a, b) = (SessionId::generate(), SessionId::generate());
        index
            .bind("7", &a, Some("ua-a".into()), ttl, 10)
            .await
            .unwrap();
        index.bind("7", &b, None, ttl, 20).await.unwrap();
        index
            .bind("7", &a, Some("ua-a2".into()), ttl, 30)
            .await
            .unwrap();
        let entries = index.entries("7").await.unwrap();
        assert_eq!(entries.len(), 2);
        let a_entry = entries.iter().find(|e| e.id == a.as_str()).unwrap();
        assert_eq!((a_entry.created, a_entry.seen), (10, 30));
        index.seen("7", &b, ttl, 100, 50).await.unwrap();
        let b_seen = |es: &[Entry]| es.iter().find(|e| e.id == b.as_str()).unwrap().seen;
        assert_eq!(b_seen(&index.entries("7").await.unwrap()), 20);
        index.seen("7", &b, ttl, 100, 200).await.unwrap();
        assert_eq!(b_seen(&index.entries("7").await.unwrap()), 200);
        index
            .remove("7", &[a.as_str().to_owned()], ttl)
            .await
            .unwrap();
        assert_eq!(index.entries("7").await.unwrap().len(), 1);
        let info = UserIndex::info(&index.entries("7").await.unwrap()[0], Some(&b)).unwrap();
        assert!(info.current);
        assert_eq!(info.id, opaque_id(&b));
        assert!(index.entries("8").await.unwrap().is_empty());
    }

    #[test]
    fn long_client_descriptions_are_cut_on_a_char_boundary() {
        let s = cut("é".repeat(400));
        assert!(s.len() <= MAX_CLIENT_BYTES);
        assert!(s.chars().all(|c| c == 'é'));
    }
}
