//! Bulk read-through: [`Cache::get_many_or_load`] loads many keys with one batch query.
//!
//! ```text
//! ids ──► keys ──► L1 (each key) ──► all found ─────────────────────────────► values, in order
//!                     │ the rest
//!                     ▼
//!         single-flight, many keys at once (flight.rs, run_many):
//!           keys another caller is loading ──► awaited, their values shared
//!           keys this caller leads ──► L1 again, then one MGET (per slot on a cluster)
//!                                        │ still missing
//!                                        ▼
//!                                      ONE loader call with only those ids
//!                                        │
//!                                        ▼
//!                                      one pipelined write: values (TTL, with the
//!                                      tags of BulkOptions::tags/tags_by_key), and with
//!                                      negative caching the ids the loader did not
//!                                      return, as "absent" markers (their own TTL)
//! ```
//!
//! An "absent" marker is an envelope with a type tag reserved for it (FNV-1a of `cache-sdk:absent@1`) and an
//! empty payload: a bulk read answers `None` for it without calling the loader, until it
//! expires. L1 holds such keys as a private marker type, so a plain [`Cache::get`] there is
//! an L1 miss; a plain read of the marker in L2 does not decode as a value and is a miss
//! too (counted in `decode_errors`). Writing the key ([`Cache::set`], `#[cache_put]`)
//! replaces the marker.
//!
//! This is a child of the cache module: it uses the cache's tiers, counters and the one
//! single-flight engine ([`crate::flight`]). The Redis write lives in
//! `tier/remote/bulk.rs`.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::tags::TagList;
use super::{log_key, Cache, CacheValue};
use crate::codec::{self, Codec, Header, TypeTag, HEADER_LEN};
use crate::key;
use crate::stats::bump;
use crate::tier::local::{AnyValue, Depends, Ticket};
use crate::ttl::Ttl;

/// How [`Cache::get_many_or_load_with`] treats ids the loader does not return, and the tags
/// the values it writes carry.
///
/// ```
/// use cache_sdk::{BulkOptions, Ttl};
/// let opts = BulkOptions::new()
///     .cache_absent(Ttl::secs(30))
///     .tags(["catalog"])
///     .tags_by_key(|key| key.strip_prefix("cache:").map(str::to_owned).into_iter().collect());
/// assert!(opts.absent_ttl().is_some());
/// assert_eq!(opts.tags_of("cache:product:7"), ["catalog", "product:7"]);
/// assert!(BulkOptions::new().absent_ttl().is_none());
/// ```
#[derive(Clone, Default)]
#[must_use]
pub struct BulkOptions {
    absent_ttl: Option<Ttl>,
    /// Tags every loaded value carries.
    tags: Vec<String>,
    /// Tags of each loaded value, from its key.
    key_tags: Option<KeyTags>,
}

/// A function from a key to the tags of its value.
type KeyTags = Arc<dyn Fn(&str) -> Vec<String> + Send + Sync>;

impl std::fmt::Debug for BulkOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BulkOptions")
            .field("absent_ttl", &self.absent_ttl)
            .field("tags", &self.tags)
            .field("tags_by_key", &self.key_tags.is_some())
            .finish()
    }
}

impl PartialEq for BulkOptions {
    /// Equal when the TTLs and tags are, and both have no key-to-tags function or the same
    /// one (the same `Arc`, as in clones of one options value).
    fn eq(&self, other: &Self) -> bool {
        self.absent_ttl == other.absent_ttl
            && self.tags == other.tags
            && match (&self.key_tags, &other.key_tags) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            }
    }
}

impl BulkOptions {
    /// No negative caching and no tags: an id the loader does not return is asked for
    /// again next time.
    ///
    /// ```
    /// let opts = cache_sdk::BulkOptions::new();
    /// assert!(opts.tags_of("cache:product:1").is_empty());
    /// ```
    pub const fn new() -> Self {
        Self {
            absent_ttl: None,
            tags: Vec::new(),
            key_tags: None,
        }
    }

    /// Tags that every value this call loads carries (replacing any set before), as
    /// [`LoadOptions::tags`](crate::LoadOptions::tags) for single loads:
    /// [`Cache::invalidate_tag`] with any of them makes those values misses. Values found in
    /// the cache keep the tags they were written with.
    ///
    /// ```
    /// let opts = cache_sdk::BulkOptions::new().tags(["catalog"]);
    /// assert_eq!(opts.tags_of("cache:product:1"), ["catalog"]);
    /// ```
    pub fn tags<I, S>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.tags = tags.into_iter().map(Into::into).collect();
        self
    }

    /// Tags that depend on the key, added to those of [`BulkOptions::tags`]: `f` gets the
    /// cache key of each loaded value (e.g. `cache:product:7`) and returns its own tags
    /// (`product:7`), so that one bulk call writes values tagged as single loads would tag
    /// them. A value with more than 64 tags, or an invalid one (empty, over 256 bytes, with
    /// a control character), is returned but not cached, with a warning.
    ///
    /// ```
    /// let opts = cache_sdk::BulkOptions::new()
    ///     .tags_by_key(|key| vec![key.replacen("cache:", "", 1)]);
    /// assert_eq!(opts.tags_of("cache:product:7"), ["product:7"]);
    /// ```
    pub fn tags_by_key<F>(mut self, f: F) -> Self
    where
        F: Fn(&str) -> Vec<String> + Send + Sync + 'static,
    {
        self.key_tags = Some(Arc::new(f));
        self
    }

    /// The tags a value loaded under `key` carries: those of [`BulkOptions::tags`], then
    /// those of [`BulkOptions::tags_by_key`] for `key` (each tag once).
    ///
    /// ```
    /// let opts = cache_sdk::BulkOptions::new()
    ///     .tags(["catalog", "product:1"])
    ///     .tags_by_key(|_| vec!["product:1".into()]);
    /// assert_eq!(opts.tags_of("cache:product:1"), ["catalog", "product:1"]);
    /// ```
    #[must_use]
    pub fn tags_of(&self, key: &str) -> Vec<String> {
        let mut tags = self.tags.clone();
        if let Some(f) = &self.key_tags {
            for t in f(key) {
                if !tags.contains(&t) {
                    tags.push(t);
                }
            }
        }
        tags
    }

    /// Negative caching: an id the loader does not return is remembered as absent for
    /// `ttl` (usually much shorter than the values' TTL), in L1 and L2, so that the next
    /// bulk reads answer `None` for it without calling the loader.
    ///
    /// ```
    /// let opts = cache_sdk::BulkOptions::new().cache_absent(cache_sdk::Ttl::secs(10));
    /// # let _ = opts;
    /// ```
    pub fn cache_absent(mut self, ttl: impl Into<Ttl>) -> Self {
        self.absent_ttl = Some(ttl.into());
        self
    }

    /// The TTL of "absent" markers, `None` when negative caching is off.
    ///
    /// ```
    /// assert_eq!(cache_sdk::BulkOptions::new().absent_ttl(), None);
    /// ```
    #[must_use]
    pub fn absent_ttl(&self) -> Option<&Ttl> {
        self.absent_ttl.as_ref()
    }
}

/// The type tag of "absent" markers (negative caching), reserved for the SDK.
pub(crate) fn absent_tag() -> TypeTag {
    // A constant name within the limits of `TypeTag::named`: it cannot fail.
    TypeTag::named("cache-sdk:absent", 1).unwrap_or(TypeTag::UNTAGGED)
}

/// What L1 holds for a key known to be absent.
struct Absent;

/// One key's answer inside a bulk load: shared with the key's single-flight waiters.
enum Slot<T> {
    Found(Arc<T>),
    Absent,
}

/// Whether `bytes` are a live "absent" marker.
fn is_absent(bytes: &[u8]) -> bool {
    bytes.len() == HEADER_LEN
        && Header::parse(bytes).is_ok_and(|h| {
            h.type_tag == absent_tag().value() && h.remaining() != Some(Duration::ZERO)
        })
}

impl Cache {
    /// Bulk read-through with the default [`BulkOptions`] (no negative caching). See
    /// [`Cache::get_many_or_load_with`].
    ///
    /// # Errors
    /// The loader's error.
    ///
    /// ```
    /// use std::collections::HashMap;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), std::io::Error> {
    /// let cache = cache_sdk::Cache::in_memory();
    /// let products = cache
    ///     .get_many_or_load(
    ///         &[3u64, 1, 2],
    ///         |id| format!("cache:product:{id}"),
    ///         cache_sdk::Ttl::Api,
    ///         |missing: Vec<u64>| async move {
    ///             // One query for every id not cached: `SELECT … WHERE id IN (…)`.
    ///             let rows: HashMap<u64, String> =
    ///                 missing.into_iter().filter(|id| *id != 2).map(|id| (id, format!("p{id}"))).collect();
    ///             Ok::<_, std::io::Error>(rows)
    ///         },
    ///     )
    ///     .await?;
    /// assert_eq!(products, vec![Some("p3".to_string()), Some("p1".to_string()), None]);
    /// # Ok(()) }
    /// ```
    pub async fn get_many_or_load<I, T, E, K, F, Fut>(
        &self,
        ids: &[I],
        key_of: K,
        ttl: impl Into<Ttl>,
        loader: F,
    ) -> Result<Vec<Option<T>>, E>
    where
        I: Clone + Eq + Hash,
        T: CacheValue + Clone,
        K: Fn(&I) -> String,
        F: FnMut(Vec<I>) -> Fut,
        Fut: Future<Output = Result<HashMap<I, T>, E>>,
    {
        self.get_many_or_load_with(ids, key_of, ttl, &BulkOptions::new(), loader)
            .await
    }

    /// Bulk read-through: the value of every id, in the order of `ids`, `None` for an id
    /// the loader does not know.
    ///
    /// - `key_of` names each id's cache key (as [`Cache::get_or_load`] would use it).
    /// - L1 first; the keys L1 does not hold are read with **one** `MGET` (one per hash
    ///   slot on a cluster, or the fallback during an outage).
    /// - The ids still missing are loaded with **one** call of `loader`, which returns the
    ///   values it found by id. What it returns is written with one pipelined round trip
    ///   (values with `ttl`; with [`BulkOptions::cache_absent`] the ids it did not return
    ///   as "absent" markers with their own TTL) and put into L1.
    /// - Each key keeps single-flight with every other read-through of this cache: a key
    ///   another caller (bulk or single) is loading is awaited, not loaded again. Only if
    ///   that caller fails or is cancelled are such keys loaded by this call, in a second
    ///   call of `loader`, so `loader` is `FnMut`.
    /// - Repeated ids are loaded once and answered at each position.
    ///
    /// Cache trouble never fails the call: a key that is not valid, a TTL that does not
    /// resolve, a failed read or write is logged, and the loaded values are returned
    /// uncached. A loader error is returned as it is and nothing is cached.
    ///
    /// # Errors
    /// The loader's error.
    ///
    /// ```
    /// use std::collections::HashMap;
    /// use cache_sdk::{BulkOptions, Ttl};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), String> {
    /// let cache = cache_sdk::Cache::in_memory();
    /// let opts = BulkOptions::new().cache_absent(Ttl::secs(30));
    /// let load = |ids: Vec<u32>| async move {
    ///     Ok::<_, String>(ids.into_iter().filter(|id| id % 2 == 0).map(|id| (id, id * 10)).collect::<HashMap<_, _>>())
    /// };
    /// let got = cache.get_many_or_load_with(&[1, 2], |id| format!("cache:n:{id}"), Ttl::Api, &opts, load).await?;
    /// assert_eq!(got, vec![None, Some(20)]);
    /// // Both are cached now, 1 as absent: the loader is not called again.
    /// let again = cache
    ///     .get_many_or_load_with(&[1, 2], |id| format!("cache:n:{id}"), Ttl::Api, &opts, |_: Vec<u32>| async {
    ///         Err::<HashMap<u32, u32>, _>("not called".to_string())
    ///     })
    ///     .await?;
    /// assert_eq!(again, vec![None, Some(20)]);
    /// # Ok(()) }
    /// ```
    pub async fn get_many_or_load_with<I, T, E, K, F, Fut>(
        &self,
        ids: &[I],
        key_of: K,
        ttl: impl Into<Ttl>,
        opts: &BulkOptions,
        mut loader: F,
    ) -> Result<Vec<Option<T>>, E>
    where
        I: Clone + Eq + Hash,
        T: CacheValue + Clone,
        K: Fn(&I) -> String,
        F: FnMut(Vec<I>) -> Fut,
        Fut: Future<Output = Result<HashMap<I, T>, E>>,
    {
        let c = &self.inner.counters;
        // Distinct keys, and for each id its key's position.
        let mut uniq: Vec<(String, I)> = Vec::new();
        let mut at: HashMap<String, usize> = HashMap::new();
        let mut pos = Vec::with_capacity(ids.len());
        for id in ids {
            let k = key_of(id);
            let n = uniq.len();
            let p = *at.entry(k.clone()).or_insert(n);
            if p == n {
                uniq.push((k, id.clone()));
            }
            pos.push(p);
        }
        let mut found: Vec<Option<Option<Arc<T>>>> = uniq.iter().map(|_| None).collect();

        let ttl = ttl.into();
        let resolved = self.resolve(&ttl).and_then(|t| {
            let absent = opts
                .absent_ttl
                .as_ref()
                .map(|a| self.resolve(a))
                .transpose()?;
            Ok((t, absent))
        });
        // Keys that cannot be cached are loaded with the others but not cached.
        let mut uncached: Vec<usize> = Vec::new();
        let mut flight_keys: Vec<String> = Vec::new();
        let mut flight_of: Vec<usize> = Vec::new();
        for (i, (k, _)) in uniq.iter().enumerate() {
            if let Some(v) = self.l1_bulk::<T>(k) {
                bump(&c.l1_hits);
                found[i] = Some(v);
                continue;
            }
            bump(&c.l1_misses);
            let usable = match &resolved {
                Ok(_) => key::validate(k).map(|_| ()).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match usable {
                Ok(()) => {
                    flight_keys.push(k.clone());
                    flight_of.push(i);
                }
                Err(e) => {
                    tracing::error!(key = log_key(k), error = %e, "get_many_or_load cannot cache this key; loading without the cache");
                    uncached.push(i);
                }
            }
        }
        if flight_keys.is_empty() && uncached.is_empty() {
            return Ok(collect(&found, &pos));
        }
        let (ttl, absent_ttl) = match resolved {
            Ok(t) => t,
            Err(_) => (Duration::ZERO, None),
        };

        // The uncached keys ride along with the first loader call.
        let extra = Mutex::new(std::mem::take(&mut uncached));
        let extra_values: Mutex<Vec<(usize, Option<Arc<T>>)>> = Mutex::new(Vec::new());
        let uniq = &uniq;
        let flight_of = &flight_of;
        let flight_keys_ref = &flight_keys;
        let (extra_ref, extra_values_ref) = (&extra, &extra_values);

        let outcome = self
            .inner
            .flights
            .run_many::<Slot<T>, E, _, _, _, _, _, _>(
                &flight_keys,
                |led: Vec<usize>| {
                    let keys: Vec<String> =
                        led.iter().map(|&j| flight_keys_ref[j].clone()).collect();
                    async move { self.bulk_check::<T>(&keys).await }
                },
                |led: Vec<usize>| {
                    let extras: Vec<usize> = std::mem::take(
                        &mut *extra_ref.lock().unwrap_or_else(PoisonError::into_inner),
                    );
                    let asked: Vec<I> = led
                        .iter()
                        .map(|&j| uniq[flight_of[j]].1.clone())
                        .chain(extras.iter().map(|&i| uniq[i].1.clone()))
                        .collect();
                    bump(&c.loads);
                    let fut = loader(asked);
                    async move {
                        let mut rows = fut.await.inspect_err(|_| bump(&c.load_errors))?;
                        for i in extras {
                            let v = rows.remove(&uniq[i].1).map(Arc::new);
                            extra_values_ref
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .push((i, v));
                        }
                        Ok(led
                            .iter()
                            .map(|&j| {
                                let slot = match rows.remove(&uniq[flight_of[j]].1) {
                                    Some(v) => Slot::Found(Arc::new(v)),
                                    None => Slot::Absent,
                                };
                                Some(Arc::new(slot))
                            })
                            .collect())
                    }
                },
                |stored: Vec<(usize, Arc<Slot<T>>)>| {
                    let items: Vec<(String, Arc<Slot<T>>)> = stored
                        .into_iter()
                        .map(|(j, v)| (flight_keys_ref[j].clone(), v))
                        .collect();
                    async move { self.bulk_fill(items, ttl, absent_ttl, opts).await }
                },
            )
            .await?;
        for (j, slot) in outcome.into_iter().enumerate() {
            found[flight_of[j]] = Some(match slot.as_deref() {
                Some(Slot::Found(v)) => Some(v.clone()),
                _ => None,
            });
        }
        // Uncached keys whose loader call never came (everything else was cached).
        let extras = extra.into_inner().unwrap_or_else(PoisonError::into_inner);
        if !extras.is_empty() {
            bump(&c.loads);
            let asked: Vec<I> = extras.iter().map(|&i| uniq[i].1.clone()).collect();
            let mut rows = loader(asked).await.inspect_err(|_| bump(&c.load_errors))?;
            for i in extras {
                found[i] = Some(rows.remove(&uniq[i].1).map(Arc::new));
            }
        }
        for (i, v) in extra_values
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
        {
            found[i] = Some(v);
        }
        Ok(collect(&found, &pos))
    }

    /// A key in L1 for a bulk read: a value (`Some(Some)`), known absent (`Some(None)`).
    fn l1_bulk<T: CacheValue>(&self, key: &str) -> Option<Option<Arc<T>>> {
        if let Some(v) = self.inner.local.get::<T>(key) {
            return Some(Some(v));
        }
        if let Some(v) = self.l1_fresh_stamped::<T>(key) {
            return Some(Some(v));
        }
        self.inner.local.get::<Absent>(key).map(|_| None)
    }

    /// The check of the keys this caller leads: L1 again (another caller may have filled
    /// it meanwhile), then one `MGET` for the rest. A read error counts as nothing found.
    async fn bulk_check<T: CacheValue>(&self, keys: &[String]) -> Vec<Option<Arc<Slot<T>>>> {
        let mut out: Vec<Option<Arc<Slot<T>>>> = Vec::with_capacity(keys.len());
        let mut need = Vec::new();
        for (j, k) in keys.iter().enumerate() {
            out.push(self.l1_bulk::<T>(k).map(|v| {
                Arc::new(match v {
                    Some(v) => Slot::Found(v),
                    None => Slot::Absent,
                })
            }));
            if out[j].is_none() {
                need.push(j);
            }
        }
        if need.is_empty() {
            return out;
        }
        let mut names: Vec<&str> = need.iter().map(|&j| keys[j].as_str()).collect();
        let tickets: Vec<Ticket> = names.iter().map(|k| self.inner.local.ticket(k)).collect();
        // The clear stamp every value is checked against comes in the same MGET.
        let mut stamp = self
            .clear_stamp_wanted()
            .map(|k| (k, self.inner.local.ticket(k)));
        if let Some((k, _)) = stamp {
            names.push(k);
        }
        let mut read = self.inner.remote.mget(&names).await;
        if let (Err(e), Some(_)) = (&read, stamp) {
            if super::tags::refused(e) {
                // The user may not read the stamp (an ACL): read the values alone.
                self.refused_clear_stamp();
                stamp = None;
                names.pop();
                read = self.inner.remote.mget(&names).await;
            }
        }
        let mut values = match read {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(keys = names.len(), error = %e, "L2 read failed; loading");
                return out;
            }
        };
        if let Some((k, ticket)) = stamp {
            let bytes = values.pop().flatten();
            self.keep_stamp(k, bytes.as_deref(), ticket);
        }
        for ((&j, bytes), ticket) in need.iter().zip(values).zip(tickets) {
            let key = keys[j].as_str();
            // A value written before its tags were invalidated or the cache cleared is a
            // miss, as for single reads (`cache/tags.rs`).
            let (bytes, depends) = match self.screen(key, bytes).await {
                Ok(screened) => screened,
                Err(e) => {
                    tracing::warn!(key = log_key(key), error = %e, "tag check failed; loading");
                    continue;
                }
            };
            match bytes {
                Some(b) if is_absent(&b) => {
                    bump(&self.inner.counters.l2_hits);
                    let left = Header::parse(&b).ok().and_then(|h| h.remaining());
                    self.inner
                        .local
                        .insert(key, Arc::new(Absent) as AnyValue, left, ticket);
                    out[j] = Some(Arc::new(Slot::Absent));
                }
                bytes => {
                    out[j] = self
                        .accept::<T>(key, bytes, depends, ticket)
                        .map(|v| Arc::new(Slot::Found(v)));
                }
            }
        }
        out
    }

    /// Writes what a bulk load returned in one pipelined round trip, then L1. Values carry
    /// the tags of `opts`; "absent" answers are written only with negative caching on (and
    /// carry no tags). Trouble is logged.
    async fn bulk_fill<T: CacheValue>(
        &self,
        items: Vec<(String, Arc<Slot<T>>)>,
        ttl: Duration,
        absent_ttl: Option<Duration>,
        opts: &BulkOptions,
    ) {
        if ttl.is_zero() {
            return;
        }
        let mut writes = Vec::with_capacity(items.len());
        let mut l1: Vec<Fill> = Vec::with_capacity(items.len());
        for (key, slot) in items {
            let (bytes, value, ttl, depends) = match &*slot {
                Slot::Found(v) => {
                    let encoded = TagList::new(&opts.tags_of(&key)).and_then(|tags| {
                        let names = tags.as_ref().map_or(&[][..], |t| &t.names[..]);
                        Ok((self.encode_tagged(&key, &**v, ttl, names)?, tags))
                    });
                    match encoded {
                        Ok((b, tags)) => {
                            let depends = tags.and_then(|t| t.depends(&b));
                            (b, v.clone() as AnyValue, ttl, depends)
                        }
                        Err(e) => {
                            tracing::warn!(key = log_key(&key), error = %e, "loaded value could not be cached");
                            continue;
                        }
                    }
                }
                Slot::Absent => {
                    let Some(a) = absent_ttl else { continue };
                    match codec::encode(&(), Codec::Bincode, absent_tag(), Some(a)) {
                        Ok(b) => (b, Arc::new(Absent) as AnyValue, a, None),
                        Err(_) => continue,
                    }
                }
            };
            let ticket = self.inner.local.ticket(&key);
            writes.push((key.clone(), bytes, ttl));
            l1.push(Fill {
                key,
                value,
                ttl,
                depends,
                ticket,
            });
        }
        if writes.is_empty() {
            return;
        }
        match self.inner.remote.mset_each(writes).await {
            Ok(()) => {
                for f in &l1 {
                    self.inner.local.insert_own_depending(
                        &f.key,
                        f.value.clone(),
                        Some(f.ttl),
                        f.depends.clone(),
                        f.ticket,
                    );
                }
                self.written(l1.iter().map(|f| f.key.as_str())).await;
            }
            Err(e) => {
                for f in &l1 {
                    self.inner.local.invalidate(&f.key);
                }
                tracing::warn!(keys = l1.len(), error = %e, "loaded values could not be cached");
            }
        }
    }
}

/// One value of a bulk load on its way into L1, once L2 has it.
struct Fill {
    key: String,
    value: AnyValue,
    ttl: Duration,
    /// The tag stamps it depends on (`cache/tags.rs`).
    depends: Option<Arc<Depends>>,
    ticket: Ticket,
}

/// The answer for every id, from the answers per distinct key.
fn collect<T: Clone>(found: &[Option<Option<Arc<T>>>], pos: &[usize]) -> Vec<Option<T>> {
    pos.iter()
        .map(|&p| {
            found[p]
                .as_ref()
                .and_then(|v| v.as_ref().map(|v| (**v).clone()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn key(id: &u32) -> String {
        format!("cache:bulk:{id}")
    }

    #[tokio::test(flavor = "current_thread")]
    async fn order_duplicates_and_one_call() {
        let cache = Cache::in_memory();
        cache.set("cache:bulk:2", &20u32, Ttl::Api).await.unwrap();
        let calls = AtomicUsize::new(0);
        let asked = std::sync::Mutex::new(Vec::new());
        let got = cache
            .get_many_or_load(&[3, 2, 1, 3, 9], key, Ttl::Api, |ids: Vec<u32>| {
                calls.fetch_add(1, Ordering::SeqCst);
                asked.lock().unwrap().extend(ids.clone());
                async move {
                    Ok::<_, ()>(
                        ids.into_iter()
                            .filter(|i| *i != 9)
                            .map(|i| (i, i * 10))
                            .collect::<HashMap<_, _>>(),
                    )
                }
            })
            .await
            .unwrap();
        assert_eq!(got, vec![Some(30), Some(20), Some(10), Some(30), None]);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let mut asked = asked.into_inner().unwrap();
        asked.sort_unstable();
        assert_eq!(asked, vec![1, 3, 9]);
        assert_eq!(cache.get::<u32>("cache:bulk:1").await.unwrap(), Some(10));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn absent_markers_are_answered_without_loading() {
        let cache = Cache::in_memory();
        let opts = BulkOptions::new().cache_absent(Ttl::secs(60));
        let none = |_: Vec<u32>| async { Ok::<HashMap<u32, u32>, ()>(HashMap::new()) };
        let got = cache
            .get_many_or_load_with(&[5], key, Ttl::Api, &opts, none)
            .await
            .unwrap();
        assert_eq!(got, vec![None]);
        cache.clear_local();
        let got = cache
            .get_many_or_load_with(&[5], key, Ttl::Api, &opts, |_: Vec<u32>| async {
                Err::<HashMap<u32, u32>, _>(())
            })
            .await
            .unwrap();
        assert_eq!(got, vec![None], "the marker in L2 answers");
        cache.set("cache:bulk:5", &55u32, Ttl::Api).await.unwrap();
        let got = cache
            .get_many_or_load_with(&[5], key, Ttl::Api, &opts, none)
            .await
            .unwrap();
        assert_eq!(got, vec![Some(55)], "a write replaces the marker");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn invalid_keys_are_loaded_uncached_in_the_same_call() {
        let cache = Cache::in_memory();
        let calls = AtomicUsize::new(0);
        let got = cache
            .get_many_or_load(
                &[1u32, 2],
                |id| if *id == 1 { String::new() } else { key(id) },
                Ttl::Api,
                |ids: Vec<u32>| {
                    calls.fetch_add(1, Ordering::SeqCst);
                    async move {
                        Ok::<_, ()>(ids.into_iter().map(|i| (i, i)).collect::<HashMap<_, _>>())
                    }
                },
            )
            .await
            .unwrap();
        assert_eq!(got, vec![Some(1), Some(2)]);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn markers_are_recognised() {
        let m = codec::encode(
            &(),
            Codec::Bincode,
            absent_tag(),
            Some(Duration::from_secs(5)),
        )
        .unwrap();
        assert!(is_absent(&m));
        let v = codec::encode(&(), Codec::Bincode, TypeTag::UNTAGGED, None).unwrap();
        assert!(!is_absent(&v));
    }
}
