//! Tags and clear: invalidating a group of entries, or every entry, in one Redis command.
//!
//! Owns [`SetOptions`], [`Cache::invalidate_tag`], [`Cache::clear`] and the check every
//! value read from L2 passes ([`Cache::screen`]). A child of the cache module: it uses the
//! cache's tiers and never talks to Redis except through them, so tags follow the fallback,
//! the replay and the cluster like any other key.
//!
//! # How it works
//!
//! A tagged value is written with its tags in the envelope (format version 2, see
//! [`codec`](crate::codec)). Invalidating a tag writes one small *stamp* key,
//! `__cache-sdk__:tag:<tag>`, whose envelope's written-at time is the moment of the
//! invalidation; [`Cache::clear`] writes `__cache-sdk__:clear` the same way. A value is
//! valid only when it was written after the clear stamp and after the stamp of each of its
//! tags: older values are misses, and disappear later by their TTL.
//!
//! Stamps are read like values: from L1 when there (as a [`Stamp`] entry), else from L2
//! (one `MGET` for the ones missing), then kept in L1. The coherence link evicts a stamp
//! from every instance's L1 when it is written, like any key, so the next tagged read
//! fetches the new one. A tagged L1 entry records the stamps it depends on and is served
//! only while they are in L1 and older than it ([`Local::insert_depending`]); an untagged
//! L1 hit checks nothing more than before. Clearing flushes this instance's L1 at once, and
//! the coherence link flushes every other instance's L1 when it hears of the clear stamp.
//!
//! [`Local::insert_depending`]: crate::tier::local::Local::insert_depending

use std::sync::Arc;

use super::{Cache, CacheValue};
use crate::codec::{self, Codec, Header, TypeTag};
use crate::error::{Error, Result};
use crate::key::CLEAR_KEY;
use crate::tier::local::{Depends, Stamp, Ticket};
use crate::ttl::{Ttl, MAX_TTL};

/// The prefix of tag stamps (under the cache's reserved prefix, `__cache-sdk__:`).
const TAG_PREFIX: &str = "__cache-sdk__:tag:";
/// The longest tag, in bytes.
const MAX_TAG_LEN: usize = 256;

/// The stamp key of `tag`.
fn stamp_key(tag: &str) -> String {
    format!("{TAG_PREFIX}{tag}")
}

/// Checks one tag: 1 to 256 bytes, no control characters.
fn check_tag(tag: &str) -> Result<()> {
    if tag.is_empty() || tag.len() > MAX_TAG_LEN || tag.chars().any(char::is_control) {
        return Err(Error::InvalidKey {
            key: tag.to_owned(),
            reason: "a tag has 1 to 256 bytes and no control characters",
        });
    }
    Ok(())
}

/// The tags of one write, checked, with the L1 keys of their stamps.
#[derive(Debug, Clone)]
pub(crate) struct TagList {
    /// The tags, as written in the envelope.
    pub(crate) names: Arc<[String]>,
    /// The stamp key of each tag.
    keys: Arc<[String]>,
}

impl TagList {
    /// Checks `tags`; `None` when there are none.
    pub(crate) fn new(tags: &[String]) -> Result<Option<Self>> {
        if tags.is_empty() {
            return Ok(None);
        }
        if tags.len() > codec::MAX_TAGS {
            return Err(Error::InvalidKey {
                key: tags.join(","),
                reason: "a value carries at most 64 tags",
            });
        }
        for t in tags {
            check_tag(t)?;
        }
        Ok(Some(Self {
            names: tags.into(),
            keys: tags.iter().map(|t| stamp_key(t)).collect(),
        }))
    }

    /// What the L1 entry of a value written as `bytes` depends on.
    pub(crate) fn depends(&self, bytes: &[u8]) -> Option<Arc<Depends>> {
        let h = Header::parse(bytes).ok()?;
        Some(Arc::new(Depends {
            written_at_ms: h.written_at_ms,
            keys: self.keys.iter().cloned().collect(),
        }))
    }
}

/// Options of [`Cache::set_with`]: for now, the tags the value carries.
///
/// ```
/// let opts = cache_sdk::SetOptions::new().tags(["product:7", "catalog"]);
/// assert_eq!(opts.tag_names(), ["product:7", "catalog"]);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use]
pub struct SetOptions {
    tags: Vec<String>,
}

impl SetOptions {
    /// No tags.
    ///
    /// ```
    /// assert!(cache_sdk::SetOptions::new().tag_names().is_empty());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// The tags the value carries (replacing any set before): [`Cache::invalidate_tag`]
    /// with any of them makes the value a miss. At most 64 tags of 1 to 256 bytes each.
    ///
    /// ```
    /// let opts = cache_sdk::SetOptions::new().tags(["catalog"]);
    /// # let _ = opts;
    /// ```
    pub fn tags<I, S>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.tags = tags.into_iter().map(Into::into).collect();
        self
    }

    /// The tags set.
    ///
    /// ```
    /// assert_eq!(cache_sdk::SetOptions::new().tags(["a"]).tag_names(), ["a"]);
    /// ```
    #[must_use]
    pub fn tag_names(&self) -> &[String] {
        &self.tags
    }
}

impl Cache {
    /// As [`Cache::set`], with options: the value carries the tags of `opts`.
    ///
    /// # Errors
    /// As [`Cache::set`]; [`Error::InvalidKey`] for an empty tag, one over 256 bytes or
    /// with a control character, or more than 64 tags.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> cache_sdk::Result<()> {
    /// use cache_sdk::{SetOptions, Ttl};
    /// let cache = cache_sdk::Cache::in_memory();
    /// let opts = SetOptions::new().tags(["product:7", "catalog"]);
    /// cache.set_with("cache:product:7", &"Desk".to_string(), Ttl::Api, &opts).await?;
    /// cache.invalidate_tag("catalog").await?;
    /// assert_eq!(cache.get::<String>("cache:product:7").await?, None);
    /// # Ok(()) }
    /// ```
    pub async fn set_with<T: CacheValue + Clone>(
        &self,
        key: &str,
        value: &T,
        ttl: impl Into<Ttl>,
        opts: &SetOptions,
    ) -> Result<()> {
        let tags = TagList::new(&opts.tags)?;
        self.set_arc_tagged(key, Arc::new(value.clone()), ttl.into(), tags.as_ref())
            .await
    }

    /// Makes every value carrying `tag` a miss, on every instance: in L2 at once, in the
    /// other instances' L1 as soon as the coherence link tells them (see
    /// `docs/coherence.md` for the bound). One Redis command however many values carry the
    /// tag: it writes the tag's stamp (`__cache-sdk__:tag:<tag>`, kept one year), and values
    /// written before it are misses from then on. They stay in Redis until their TTL ends.
    ///
    /// During a Redis outage the stamp goes to the fallback, and is replayed to Redis when
    /// it is back (a newer stamp written meanwhile wins).
    ///
    /// Times are wall-clock milliseconds of the writing instances: keep the clocks of the
    /// instances in step (NTP); a value written by an instance whose clock is ahead by more
    /// than the time between the write and the invalidation survives it.
    ///
    /// # Errors
    /// [`Error::InvalidKey`] for an invalid tag, [`Error::Backend`] when Redis refuses the
    /// write.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> cache_sdk::Result<()> {
    /// use cache_sdk::{SetOptions, Ttl};
    /// let cache = cache_sdk::Cache::in_memory();
    /// let catalog = SetOptions::new().tags(["catalog"]);
    /// cache.set_with("cache:list:1", &vec![1u32, 2], Ttl::Api, &catalog).await?;
    /// cache.set("cache:other", &3u32, Ttl::Api).await?;
    /// cache.invalidate_tag("catalog").await?;
    /// assert_eq!(cache.get::<Vec<u32>>("cache:list:1").await?, None);
    /// assert_eq!(cache.get::<u32>("cache:other").await?, Some(3));
    /// # Ok(()) }
    /// ```
    pub async fn invalidate_tag(&self, tag: &str) -> Result<()> {
        check_tag(tag)?;
        self.write_stamp(&stamp_key(tag)).await
    }

    /// Empties the cache on every instance: every value written before this call (through
    /// `set`, `get_or_load` or the macros) is a miss from now on, in L2, in the fallback,
    /// and in L1 (this instance's at once, the others' as soon as the coherence link tells
    /// them). One Redis command: it writes the clear stamp (`__cache-sdk__:clear` in this
    /// namespace); the values themselves disappear by their TTL. Works during an outage like
    /// [`Cache::invalidate_tag`].
    ///
    /// Raw values are not touched: sessions (users stay logged in), counters
    /// ([`Cache::incr_by`]) and bytes written with [`Cache::set_raw`].
    ///
    /// # Errors
    /// [`Error::Backend`] when Redis refuses the write.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> cache_sdk::Result<()> {
    /// let cache = cache_sdk::Cache::in_memory();
    /// cache.set("cache:a", &1u8, cache_sdk::Ttl::Api).await?;
    /// cache.clear().await?;
    /// assert_eq!(cache.get::<u8>("cache:a").await?, None);
    /// # Ok(()) }
    /// ```
    pub async fn clear(&self) -> Result<()> {
        self.inner.local.clear();
        let result = self.write_stamp(CLEAR_KEY).await;
        // Reads in flight during the write may have refilled L1 with older values.
        self.inner.local.clear();
        result
    }

    /// Writes a stamp: an empty envelope whose written-at time is now.
    async fn write_stamp(&self, key: &str) -> Result<()> {
        let bytes = codec::encode(&(), Codec::Bincode, TypeTag::UNTAGGED, Some(MAX_TTL)).map_err(
            |message| Error::Encode {
                key: key.to_owned(),
                message,
            },
        )?;
        // Values this process encodes from now on are written after this stamp.
        if let Ok(h) = Header::parse(&bytes) {
            codec::stamped(h.written_at_ms);
        }
        self.inner.local.invalidate(key);
        let result = self.inner.remote.set(key, bytes, Some(MAX_TTL)).await;
        // A read in flight may have put the old stamp back.
        self.inner.local.invalidate(key);
        if result.is_ok() {
            self.written([key]).await;
        }
        result
    }

    /// The stamps under `keys` (0 for none): from L1, else from L2 in one `MGET`, then
    /// kept in L1.
    async fn stamps(&self, keys: &[&str]) -> Result<Vec<u64>> {
        let mut out = vec![0; keys.len()];
        let mut missing = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            match self.inner.local.get::<Stamp>(k) {
                Some(s) => out[i] = s.0,
                None => missing.push(i),
            }
        }
        if missing.is_empty() {
            return Ok(out);
        }
        let miss: Vec<&str> = missing.iter().map(|&i| keys[i]).collect();
        let tickets: Vec<_> = miss.iter().map(|k| self.inner.local.ticket(k)).collect();
        let found = match self.inner.remote.mget(&miss).await {
            Ok(found) => found,
            Err(e) if refused(&e) => {
                stamps_refused();
                vec![None; miss.len()]
            }
            Err(e) => return Err(e),
        };
        for ((&i, bytes), ticket) in missing.iter().zip(found).zip(tickets) {
            out[i] = self.keep_stamp(keys[i], bytes.as_deref(), ticket);
        }
        Ok(out)
    }

    /// Keeps in L1 the stamp read under `key` (`bytes`, none when the key does not exist)
    /// and answers it (0 for none).
    pub(crate) fn keep_stamp(&self, key: &str, bytes: Option<&[u8]>, ticket: Ticket) -> u64 {
        let stamp = bytes
            .and_then(|b| Header::parse(b).ok())
            .map_or(0, |h| h.written_at_ms);
        self.inner
            .local
            .insert(key, Arc::new(Stamp(stamp)), None, ticket);
        stamp
    }

    /// Keeps "no clear stamp" in L1 after Redis refused this user the stamp's key (see
    /// [`refused`]).
    pub(crate) fn refused_clear_stamp(&self) {
        stamps_refused();
        let ticket = self.inner.local.ticket(CLEAR_KEY);
        self.keep_stamp(CLEAR_KEY, None, ticket);
    }

    /// The clear stamp's key when L1 does not hold the stamp: a read of many keys fetches
    /// it in its own `MGET` (then [`Cache::keep_stamp`]), which spares [`Cache::screen`] a
    /// round trip of its own.
    pub(crate) fn clear_stamp_wanted(&self) -> Option<&'static str> {
        self.inner
            .local
            .get::<Stamp>(CLEAR_KEY)
            .is_none()
            .then_some(CLEAR_KEY)
    }

    /// The check of every value read from L2: `bytes` written before the last clear, or
    /// before the last invalidation of one of its tags, are nothing. Also says what the
    /// value's L1 entry depends on (its tags' stamps). Bytes that are not an envelope pass
    /// unchanged (the decode reports them).
    ///
    /// # Errors
    /// [`Error::Backend`] when Redis refuses the read of a stamp.
    pub(crate) async fn screen(
        &self,
        key: &str,
        bytes: Option<Vec<u8>>,
    ) -> Result<(Option<Vec<u8>>, Option<Arc<Depends>>)> {
        let Some(header) = bytes.as_deref().and_then(|b| Header::parse(b).ok()) else {
            return Ok((bytes, None));
        };
        let written = header.written_at_ms;
        let tags = bytes
            .as_deref()
            .and_then(|b| codec::tags_of(b).ok())
            .unwrap_or_default();
        let mut keys: Vec<String> = Vec::with_capacity(tags.len() + 1);
        keys.push(CLEAR_KEY.to_owned());
        keys.extend(tags.iter().map(|t| stamp_key(t)));
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let stamps = self.stamps(&refs).await?;
        if let Some(i) = stamps.iter().position(|&s| s >= written) {
            tracing::debug!(
                key = super::log_key(key),
                by = if i == 0 { "clear" } else { tags[i - 1] },
                "cached value invalidated; treated as a miss"
            );
            return Ok((None, None));
        }
        keys.remove(0);
        let depends = (!keys.is_empty()).then(|| {
            Arc::new(Depends {
                written_at_ms: written,
                keys: keys.into_boxed_slice(),
            })
        });
        Ok((bytes, depends))
    }
}

/// Whether Redis refused this user the SDK's reserved keys: an ACL user limited to its
/// own key patterns (`~cache:*`) without `~__cache-sdk__:*` (or `~<namespace>:__cache-sdk__:*`).
/// Stamps then read as none: values are served as before tags existed, and
/// `invalidate_tag`/`clear` answer the refusal (`docs/tags.md`).
pub(crate) fn refused(e: &Error) -> bool {
    matches!(e, Error::Backend(b) if b.code() == Some("NOPERM"))
}

/// The warning when stamps are refused, at most once per interval.
fn stamps_refused() {
    static LIMIT: crate::log_limit::LogLimit = crate::log_limit::LogLimit::new();
    if let Some(suppressed) = LIMIT.allow() {
        tracing::warn!(
            suppressed,
            "redis refuses this user the cache's reserved keys (__cache-sdk__:*): tag and clear stamps are not checked; allow them in the user's ACL"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key;

    #[test]
    fn tags_are_checked() {
        assert!(check_tag("catalog").is_ok());
        assert!(check_tag("").is_err());
        assert!(check_tag("a\nb").is_err());
        assert!(check_tag(&"x".repeat(257)).is_err());
        assert!(key::validate(&stamp_key(&"x".repeat(256))).is_ok());
        let many: Vec<String> = (0..65).map(|i| i.to_string()).collect();
        assert!(TagList::new(&many).is_err());
        assert!(TagList::new(&[]).unwrap().is_none());
        assert!(stamp_key("x").starts_with(key::RESERVED_PREFIX));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_write_after_an_invalidation_in_the_same_millisecond_is_kept() {
        // Evict-then-put, as an update does: the put comes after the invalidation, so it
        // must survive it even when both fall in the same millisecond (most of these do).
        let cache = Cache::in_memory();
        let opts = SetOptions::new().tags(["catalog"]);
        for i in 0..200u32 {
            cache.invalidate_tag("catalog").await.unwrap();
            cache
                .set_with("cache:t:1", &i, Ttl::Api, &opts)
                .await
                .unwrap();
            cache.clear_local();
            assert_eq!(
                cache.get::<u32>("cache:t:1").await.unwrap(),
                Some(i),
                "write {i}"
            );
        }
        cache.clear().await.unwrap();
        assert_eq!(
            cache.get::<u32>("cache:t:1").await.unwrap(),
            None,
            "a later clear wins"
        );
    }
}
