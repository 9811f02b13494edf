//! [`Cache`]: the typed two-tier cache (built by the [`CacheBuilder`]).

// The atomic compare-and-set that session saves use.
#[cfg_attr(not(feature = "sessions"), allow(dead_code))]
mod cas;
// Tags, `invalidate_tag` and `clear`.
pub(crate) mod tags;
// Spans, operation durations and the metrics sampler.
mod observe;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::builder::CacheBuilder;
use crate::codec::{self, Codec, Header, TypeTags};
use crate::config::CacheConfig;
use crate::error::{BuildError, Error, Result};
use crate::flight::Flights;
use crate::key;
use crate::pubsub::PubSub;
use crate::stats::{bump, read, CacheCounters, CoherenceState, Stats, StoreKind};
use crate::tier::coherence::CoherenceLink;
use crate::tier::local::{AnyValue, Depends, Local, Ticket};
/// The generic L1 hook for values kept with their stored bytes (the session record cache
/// uses it).
pub(crate) use crate::tier::local::{Held, RawBacked};
use crate::tier::memory::parse_int;
use crate::tier::remote::{Remote, StoreEvent};
use crate::tls::TlsMaterial;
use crate::ttl::{Ttl, TtlPresets};

#[path = "bulk.rs"]
pub(crate) mod bulk;
#[path = "load.rs"]
pub(crate) mod load;
#[path = "stampede.rs"]
pub(crate) mod stampede;
use load::{Background, LoadOptions};
use observe::Op;

/// What a cached value must be: serde both ways, shareable across threads.
/// Implemented for every such type.
///
/// ```
/// fn assert_value<T: cache_sdk::CacheValue>() {}
/// assert_value::<Vec<String>>();
/// ```
pub trait CacheValue: Serialize + DeserializeOwned + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Send + Sync + 'static> CacheValue for T {}

/// The typed two-tier cache: L1 in the process (moka, typed values), L2 in Redis (or the
/// in-memory fallback while Redis is absent). Cheap to clone; clones share everything.
///
/// ```
/// use cache_sdk::{Cache, Ttl};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cache = Cache::builder().l1_capacity(1_000).build().await?;
/// cache.set("cache:product:42", &"Desk".to_string(), Ttl::Api).await?;
/// let name: Option<String> = cache.get("cache:product:42").await?;
/// assert_eq!(name.as_deref(), Some("Desk"));
/// # Ok(()) }
/// ```
///
/// # Naming cached types
///
/// Values in L2 outlive a deploy, and during a rolling deploy old and new code read each
/// other's values. Each value carries a type tag (see [the codec](crate::codec#type-tags-naming-and-versioning-a-cached-type)),
/// which depends only on what you state, never on the compiler or module paths:
///
/// - By default types are untagged: any stored value is decoded, and a value that does not
///   decode exactly (bytes missing or left over, malformed JSON) is a miss.
/// - [`CacheBuilder::value_type`] names a type and gives it a version. That cache then reads
///   only values written with the same name and version (an untagged value counts as
///   version 1); any other is a miss, counted in [`Stats::decode_errors`].
///
/// The rule for changing a cached type: a change that every reader decodes correctly needs
/// nothing (renaming the type or moving it to another module; with [`Codec::Json`], adding
/// a field with `#[serde(default)]` or removing one). Any other change, and with
/// [`Codec::Bincode`] (the default) any change of fields, bumps the version: older values
/// are then misses, reloaded by [`Cache::get_or_load`], never decoded as something else.
///
/// ```
/// #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
/// struct Product { id: u64, name: String, price_cents: u64 } // version 2 added `price_cents`
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cache = cache_sdk::Cache::builder()
///     .value_type::<Product>("product", 2)
///     .build()
///     .await?;
/// let desk = Product { id: 42, name: "Desk".into(), price_cents: 19_900 };
/// cache.set("cache:product:42", &desk, cache_sdk::Ttl::Api).await?;
/// assert_eq!(cache.get::<Product>("cache:product:42").await?, Some(desk));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

struct Inner {
    local: Local,
    remote: Remote,
    flights: Flights,
    counters: CacheCounters,
    observe: observe::Observe,
    presets: TtlPresets,
    codec: Codec,
    /// The names of cached types, for the L2 envelope's type tag.
    types: TypeTags,
    max_value_size: usize,
    coherence: Option<CoherenceLink>,
    pubsub: PubSub,
    /// The [`LoadOptions`] of `get_or_load_entry`.
    load_defaults: LoadOptions,
    /// Loader tasks and eager refreshes, aborted when the cache is dropped.
    background: Background,
    /// The circuit breakers of the origins named in [`LoadOptions::origin`].
    breakers: crate::breaker::Breakers,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("l1", &self.inner.local)
            .field("l2", &self.inner.remote)
            .field("codec", &self.inner.codec)
            .field("coherence", &self.inner.coherence)
            .finish_non_exhaustive()
    }
}

/// How keys appear in logs: session ids are credentials, so they are not shown.
pub(crate) fn log_key(key: &str) -> &str {
    if key.starts_with(key::SESSION_PREFIX) {
        key::SESSION_KEY_REDACTED
    } else {
        key
    }
}

impl Cache {
    /// A builder, starting from [`CacheConfig::default`] (Redis disabled).
    ///
    /// ```
    /// let builder = cache_sdk::Cache::builder().l1_capacity(500);
    /// # let _ = builder;
    /// ```
    pub fn builder() -> CacheBuilder {
        CacheBuilder::new()
    }

    /// A cache in memory only, with default settings; needs no runtime to create.
    ///
    /// ```
    /// let cache = cache_sdk::Cache::in_memory();
    /// assert!(!cache.stats().connected);
    /// ```
    #[must_use]
    pub fn in_memory() -> Self {
        let cfg = CacheConfig::default();
        let remote = Remote::memory_only(&cfg);
        Self::assemble(
            &cfg,
            &TlsMaterial::default(),
            remote,
            TypeTags::default(),
            LoadOptions::new(),
            crate::BreakerSettings::new(),
        )
    }

    /// The rest of [`CacheBuilder::build`], after the configuration was validated (`tls`
    /// is what the validation loaded): makes one attempt to reach Redis, starts the tiers'
    /// tasks, and waits for the invalidation link when Redis answered.
    pub(crate) async fn start(
        cfg: CacheConfig,
        tls: TlsMaterial,
        types: TypeTags,
        load_defaults: LoadOptions,
        breakers: crate::BreakerSettings,
    ) -> std::result::Result<Cache, BuildError> {
        let remote = Remote::new(&cfg, &tls)?;
        remote.start(&cfg).await?;
        let up = remote.is_up();
        let cache = Cache::assemble(&cfg, &tls, remote, types, load_defaults, breakers);
        if let (true, Some(link)) = (up, &cache.inner.coherence) {
            // Redis answered: give the invalidation link as long to come up, so that L1
            // serves from the first call.
            link.settle(cfg.connect_timeout).await;
        }
        Ok(cache)
    }

    fn assemble(
        cfg: &CacheConfig,
        tls: &TlsMaterial,
        remote: Remote,
        types: TypeTags,
        load_defaults: LoadOptions,
        breakers: crate::BreakerSettings,
    ) -> Self {
        let local = Local::new(cfg.l1_capacity, cfg.l1_ttl);
        let coherence = CoherenceLink::start(cfg, tls, &local, &remote);
        let l1 = local.clone();
        let on_data = coherence
            .as_ref()
            .map(|c| c.data_events(remote.fallback_store()));
        remote.on_event(move |event| {
            if event == StoreEvent::Recovered {
                // Other instances may have changed anything while we were cut off.
                l1.clear();
            }
            if let Some(f) = &on_data {
                f(event == StoreEvent::Lost);
            }
        });
        let pubsub = PubSub::new(cfg, tls, &types);
        let counters = CacheCounters::new(&remote);
        let cache = Cache {
            inner: Arc::new(Inner {
                local,
                remote,
                flights: Flights::default(),
                counters,
                observe: observe::Observe::new(cfg),
                presets: cfg.ttl.clone(),
                codec: cfg.codec,
                types,
                max_value_size: cfg.max_value_size,
                coherence,
                pubsub,
                load_defaults,
                background: Background::default(),
                breakers: crate::breaker::Breakers::new(breakers),
            }),
        };
        observe::watch(&cache);
        cache
    }

    /// Publish/subscribe (`pubsub.rs` adds the public methods).
    pub(crate) fn pubsub(&self) -> &PubSub {
        &self.inner.pubsub
    }

    /// The TTL presets in force.
    ///
    /// ```
    /// let cache = cache_sdk::Cache::in_memory();
    /// assert_eq!(cache.ttl_presets().base(&cache_sdk::Ttl::Api).unwrap().as_secs(), 600);
    /// ```
    #[must_use]
    pub fn ttl_presets(&self) -> &TtlPresets {
        &self.inner.presets
    }

    /// Reads a value: L1, then L2. A value that does not decode as `T` (corrupt, another
    /// type, an older format, over the size limit) is a miss, logged as a warning.
    ///
    /// # Errors
    /// [`Error::InvalidKey`] for a bad key, [`Error::Backend`] when Redis answers an error.
    /// Redis being unreachable is not an error: the fallback answers.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> cache_sdk::Result<()> {
    /// let cache = cache_sdk::Cache::in_memory();
    /// assert_eq!(cache.get::<u32>("cache:missing:1").await?, None);
    /// # Ok(()) }
    /// ```
    pub async fn get<T: CacheValue + Clone>(&self, key: &str) -> Result<Option<T>> {
        Ok(self.get_arc::<T>(key).await?.map(|v| (*v).clone()))
    }

    /// Like [`Cache::get`], without cloning: the shared value itself.
    ///
    /// # Errors
    /// As [`Cache::get`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> cache_sdk::Result<()> {
    /// let cache = cache_sdk::Cache::in_memory();
    /// cache.set("cache:n:1", &7u64, cache_sdk::Ttl::Api).await?;
    /// assert_eq!(*cache.get_arc::<u64>("cache:n:1").await?.unwrap(), 7);
    /// # Ok(()) }
    /// ```
    #[inline]
    pub async fn get_arc<T: CacheValue>(&self, key: &str) -> Result<Option<Arc<T>>> {
        if let Some(v) = self.inner.local.get::<T>(key) {
            bump(&self.inner.counters.l1_hits);
            return Ok(Some(v));
        }
        if let Some(v) = self.l1_fresh_stamped::<T>(key) {
            bump(&self.inner.counters.l1_hits);
            return Ok(Some(v));
        }
        bump(&self.inner.counters.l1_misses);
        key::validate(key)?;
        self.traced(Op::Get, key, self.l2_get::<T>(key)).await
    }

    async fn l2_get<T: CacheValue>(&self, key: &str) -> Result<Option<Arc<T>>> {
        let ticket = self.inner.local.ticket(key);
        let bytes = self.inner.remote.get(key).await?;
        let (bytes, depends) = self.screen(key, bytes).await?;
        if bytes.is_none() {
            // Redis may have been lost during this very read: L1's reserve then serves.
            if let Some(v) = self
                .inner
                .local
                .reserve(key)
                .and_then(|v| v.downcast::<T>().ok())
            {
                return Ok(Some(v));
            }
        }
        Ok(self.accept::<T>(key, bytes, depends, ticket))
    }

    /// Decodes bytes read from L2 and puts the value into L1 (unless `key` was invalidated
    /// since `ticket` was taken, before the read).
    fn accept<T: CacheValue>(
        &self,
        key: &str,
        bytes: Option<Vec<u8>>,
        depends: Option<Arc<Depends>>,
        ticket: Ticket,
    ) -> Option<Arc<T>> {
        let c = &self.inner.counters;
        let Some(bytes) = bytes else {
            bump(&c.l2_misses);
            return None;
        };
        let remaining = Header::parse(&bytes).ok().and_then(|h| h.remaining());
        if remaining == Some(Duration::ZERO) {
            // Past its TTL, kept only for fail-safe (see `load`): a miss for plain reads.
            bump(&c.l2_misses);
            return None;
        }
        match codec::decode::<T>(
            &bytes,
            self.inner.types.of::<T>(),
            self.inner.max_value_size,
        ) {
            Ok(value) => {
                bump(&c.l2_hits);
                let value = Arc::new(value);
                self.inner.local.insert_depending(
                    key,
                    value.clone() as AnyValue,
                    remaining,
                    depends,
                    ticket,
                );
                Some(value)
            }
            Err(e) => {
                bump(&c.l2_misses);
                self.decode_failed::<T>(key, &e);
                None
            }
        }
    }

    fn resolve(&self, ttl: &Ttl) -> Result<Duration> {
        self.inner.presets.resolve(ttl)
    }

    fn encode<T: CacheValue>(&self, key: &str, value: &T, ttl: Duration) -> Result<Vec<u8>> {
        self.encode_tagged(key, value, ttl, &[])
    }

    /// As `encode`, for a value that carries `tags`.
    fn encode_tagged<T: CacheValue>(
        &self,
        key: &str,
        value: &T,
        ttl: Duration,
        tags: &[String],
    ) -> Result<Vec<u8>> {
        let tag = self.inner.types.of::<T>();
        let bytes = codec::encode_tagged(value, self.inner.codec, tag, Some(ttl), tags).map_err(
            |message| Error::Encode {
                key: log_key(key).to_owned(),
                message,
            },
        )?;
        if bytes.len() > self.inner.max_value_size {
            return Err(Error::ValueTooLarge {
                key: log_key(key).to_owned(),
                size: bytes.len(),
                limit: self.inner.max_value_size,
            });
        }
        Ok(bytes)
    }

    /// Writes a value to L2 and L1.
    ///
    /// # Errors
    /// [`Error::InvalidKey`], [`Error::InvalidTtl`], [`Error::Encode`],
    /// [`Error::ValueTooLarge`], or [`Error::Backend`] when Redis refuses the write.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> cache_sdk::Result<()> {
    /// let cache = cache_sdk::Cache::in_memory();
    /// cache.set("user:7:theme", &"dark".to_string(), cache_sdk::Ttl::UserPreferences).await?;
    /// assert!(cache.set("user:7:x", &1u8, cache_sdk::Ttl::secs(0)).await.is_err());
    /// # Ok(()) }
    /// ```
    pub async fn set<T: CacheValue + Clone>(
        &self,
        key: &str,
        value: &T,
        ttl: impl Into<Ttl>,
    ) -> Result<()> {
        self.set_arc(key, Arc::new(value.clone()), ttl).await
    }

    /// Like [`Cache::set`], taking a shared value (no clone needed).
    ///
    /// # Errors
    /// As [`Cache::set`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> cache_sdk::Result<()> {
    /// let cache = cache_sdk::Cache::in_memory();
    /// cache.set_arc("cache:big:1", std::sync::Arc::new(vec![0u8; 10]), cache_sdk::Ttl::Api).await?;
    /// # Ok(()) }
    /// ```
    pub async fn set_arc<T: CacheValue>(
        &self,
        key: &str,
        value: Arc<T>,
        ttl: impl Into<Ttl>,
    ) -> Result<()> {
        self.set_arc_tagged(key, value, ttl.into(), None).await
    }

    /// `set_arc`, with the tags the value carries.
    async fn set_arc_tagged<T: CacheValue>(
        &self,
        key: &str,
        value: Arc<T>,
        ttl: Ttl,
        tags: Option<&tags::TagList>,
    ) -> Result<()> {
        key::validate(key)?;
        let ttl = self.resolve(&ttl)?;
        let tag_names = tags.map_or(&[][..], |t| &t.names[..]);
        let bytes = self.encode_tagged(key, &*value, ttl, tag_names)?;
        let depends = tags.and_then(|t| t.depends(&bytes));
        let ticket = self.inner.local.ticket(key);
        let result = self
            .traced(Op::Set, key, self.inner.remote.set(key, bytes, Some(ttl)))
            .await;
        match result {
            Ok(()) => {
                self.inner.local.insert_own_depending(
                    key,
                    value as AnyValue,
                    Some(ttl),
                    depends,
                    ticket,
                );
                self.written([key]).await;
            }
            Err(_) => self.inner.local.invalidate(key),
        }
        result
    }

    /// Tells the other instances about a write, when coherence works by pub/sub.
    async fn written<'k>(&self, keys: impl IntoIterator<Item = &'k str>) {
        if let Some(c) = &self.inner.coherence {
            c.written(keys).await;
        }
    }

    /// Removes a key from both tiers; returns whether it existed in L2.
    ///
    /// # Errors
    /// [`Error::InvalidKey`] or [`Error::Backend`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> cache_sdk::Result<()> {
    /// let cache = cache_sdk::Cache::in_memory();
    /// cache.set("cache:a:1", &1u8, cache_sdk::Ttl::Api).await?;
    /// assert!(cache.delete("cache:a:1").await?);
    /// assert!(!cache.delete("cache:a:1").await?);
    /// # Ok(()) }
    /// ```
    pub async fn delete(&self, key: &str) -> Result<bool> {
        key::validate(key)?;
        self.inner.local.invalidate(key);
        let existed = self
            .traced(Op::Delete, key, self.inner.remote.delete(key))
            .await;
        // A concurrent read may have refilled L1 from the old value meanwhile.
        self.inner.local.invalidate(key);
        if matches!(existed, Ok(true)) {
            self.written([key]).await;
        }
        existed
    }

    /// Whether a key exists in L2.
    ///
    /// # Errors
    /// [`Error::InvalidKey`] or [`Error::Backend`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> cache_sdk::Result<()> {
    /// let cache = cache_sdk::Cache::in_memory();
    /// assert!(!cache.exists("cache:a:1").await?);
    /// # Ok(()) }
    /// ```
    pub async fn exists(&self, key: &str) -> Result<bool> {
        key::validate(key)?;
        self.inner.remote.exists(key).await
    }

    /// Sets a new TTL on an existing key; returns whether the key existed.
    ///
    /// # Errors
    /// [`Error::InvalidKey`], [`Error::InvalidTtl`] or [`Error::Backend`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> cache_sdk::Result<()> {
    /// let cache = cache_sdk::Cache::in_memory();
    /// cache.set("cache:a:1", &1u8, cache_sdk::Ttl::Api).await?;
    /// assert!(cache.expire("cache:a:1", cache_sdk::Ttl::secs(5)).await?);
    /// assert!(cache.ttl("cache:a:1").await?.unwrap() <= std::time::Duration::from_secs(5));
    /// # Ok(()) }
    /// ```
    pub async fn expire(&self, key: &str, ttl: impl Into<Ttl>) -> Result<bool> {
        key::validate(key)?;
        let ttl = self.resolve(&ttl.into())?;
        let found = self.inner.remote.expire(key, ttl).await;
        // The L1 copy carries the old deadline; the next read refreshes it from L2. (Not
        // dropped before the write: if Redis is lost meanwhile, a session record held in L1
        // is handed to the fallback, which then applies the new TTL to it.)
        self.inner.local.invalidate(key);
        if matches!(found, Ok(true)) {
            self.written([key]).await;
        }
        found
    }

    /// The remaining TTL of a key; `None` when the key does not exist or never expires.
    ///
    /// # Errors
    /// [`Error::InvalidKey`] or [`Error::Backend`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> cache_sdk::Result<()> {
    /// let cache = cache_sdk::Cache::in_memory();
    /// assert_eq!(cache.ttl("cache:nothing:here").await?, None);
    /// # Ok(()) }
    /// ```
    pub async fn ttl(&self, key: &str) -> Result<Option<Duration>> {
        key::validate(key)?;
        Ok(self.inner.remote.pttl(key).await?.flatten())
    }

    /// Reads several keys: L1 first, then the rest in one `MGET` round trip. The result has
    /// one entry per key, in order.
    ///
    /// # Errors
    /// As [`Cache::get`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> cache_sdk::Result<()> {
    /// let cache = cache_sdk::Cache::in_memory();
    /// cache.set("cache:n:1", &1u32, cache_sdk::Ttl::Api).await?;
    /// let got = cache.get_many::<u32>(&["cache:n:1", "cache:n:2"]).await?;
    /// assert_eq!(got, vec![Some(1), None]);
    /// # Ok(()) }
    /// ```
    pub async fn get_many<T: CacheValue + Clone>(&self, keys: &[&str]) -> Result<Vec<Option<T>>> {
        let mut out: Vec<Option<T>> = Vec::with_capacity(keys.len());
        let mut missing = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            match self.inner.local.get::<T>(k) {
                Some(v) => {
                    bump(&self.inner.counters.l1_hits);
                    out.push(Some((*v).clone()));
                }
                None => {
                    bump(&self.inner.counters.l1_misses);
                    key::validate(k)?;
                    missing.push(i);
                    out.push(None);
                }
            }
        }
        if missing.is_empty() {
            return Ok(out);
        }
        let miss_keys: Vec<&str> = missing.iter().map(|&i| keys[i]).collect();
        let tickets: Vec<Ticket> = miss_keys
            .iter()
            .map(|k| self.inner.local.ticket(k))
            .collect();
        let values = self.inner.remote.mget(&miss_keys).await?;
        for ((&i, bytes), ticket) in missing.iter().zip(values).zip(tickets) {
            let (bytes, depends) = self.screen(keys[i], bytes).await?;
            out[i] = self
                .accept::<T>(keys[i], bytes, depends, ticket)
                .map(|v| (*v).clone());
        }
        Ok(out)
    }

    /// Writes several values with one TTL in one pipelined round trip (not atomic).
    ///
    /// # Errors
    /// As [`Cache::set`]; nothing is written when any key or value is invalid.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> cache_sdk::Result<()> {
    /// let cache = cache_sdk::Cache::in_memory();
    /// cache.set_many(&[("cache:n:1", 1u32), ("cache:n:2", 2)], cache_sdk::Ttl::Api).await?;
    /// assert_eq!(cache.get::<u32>("cache:n:2").await?, Some(2));
    /// # Ok(()) }
    /// ```
    pub async fn set_many<K: AsRef<str>, T: CacheValue + Clone>(
        &self,
        items: &[(K, T)],
        ttl: impl Into<Ttl>,
    ) -> Result<()> {
        let ttl = self.resolve(&ttl.into())?;
        let mut encoded = Vec::with_capacity(items.len());
        for (k, v) in items {
            let k = key::validate(k.as_ref())?;
            encoded.push((k.to_owned(), self.encode(k, v, ttl)?));
        }
        let tickets: Vec<Ticket> = items
            .iter()
            .map(|(k, _)| self.inner.local.ticket(k.as_ref()))
            .collect();
        let result = self.inner.remote.mset(encoded, Some(ttl)).await;
        for ((k, v), ticket) in items.iter().zip(tickets) {
            match &result {
                Ok(()) => self.inner.local.insert_own(
                    k.as_ref(),
                    Arc::new(v.clone()) as AnyValue,
                    Some(ttl),
                    ticket,
                ),
                Err(_) => self.inner.local.invalidate(k.as_ref()),
            }
        }
        if result.is_ok() {
            self.written(items.iter().map(|(k, _)| k.as_ref())).await;
        }
        result
    }

    /// Adds 1 to the counter under `key` (created at 0). See [`Cache::incr_by`].
    ///
    /// # Errors
    /// As [`Cache::incr_by`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> cache_sdk::Result<()> {
    /// let cache = cache_sdk::Cache::in_memory();
    /// assert_eq!(cache.incr("cache:hits:home").await?, 1);
    /// assert_eq!(cache.incr("cache:hits:home").await?, 2);
    /// # Ok(()) }
    /// ```
    pub async fn incr(&self, key: &str) -> Result<i64> {
        self.incr_by(key, 1).await
    }

    /// Atomically adds `delta` to the counter under `key` (created at 0, TTL kept), like
    /// Redis `INCRBY`, also on the fallback. Counters are stored as plain integers (readable
    /// by any Redis client), not in the envelope: read them with [`Cache::counter`].
    ///
    /// # Errors
    /// [`Error::InvalidKey`]; [`Error::Backend`] or [`Error::Decode`] when the key holds
    /// something other than an integer, or the result would overflow.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> cache_sdk::Result<()> {
    /// let cache = cache_sdk::Cache::in_memory();
    /// assert_eq!(cache.incr_by("cache:stock:9", -3).await?, -3);
    /// # Ok(()) }
    /// ```
    pub async fn incr_by(&self, key: &str, delta: i64) -> Result<i64> {
        key::validate(key)?;
        self.inner.local.invalidate(key);
        let n = self
            .traced(Op::Incr, key, self.inner.remote.incr_by(key, delta))
            .await;
        self.inner.local.invalidate(key);
        if n.is_ok() {
            self.written([key]).await;
        }
        n
    }

    /// Reads a counter written by [`Cache::incr_by`].
    ///
    /// # Errors
    /// [`Error::InvalidKey`], [`Error::Backend`], or [`Error::Decode`] when the key holds
    /// something other than an integer.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> cache_sdk::Result<()> {
    /// let cache = cache_sdk::Cache::in_memory();
    /// cache.incr_by("cache:c:1", 5).await?;
    /// assert_eq!(cache.counter("cache:c:1").await?, Some(5));
    /// # Ok(()) }
    /// ```
    pub async fn counter(&self, key: &str) -> Result<Option<i64>> {
        key::validate(key)?;
        match self.inner.remote.get(key).await? {
            None => Ok(None),
            Some(bytes) => parse_int(&bytes)
                .map(Some)
                .ok_or_else(|| crate::tier::memory::not_an_integer(log_key(key))),
        }
    }

    /// Lists the keys matching a Redis glob pattern, with `SCAN … MATCH … COUNT` (never
    /// `KEYS`). Put user-supplied parts through [`key::escape_glob`] (or use
    /// [`Key::user_pattern`](crate::Key::user_pattern)) so they match only themselves.
    /// The order is unspecified; a key may appear twice if the keyspace is rehashed
    /// during the scan, as with Redis itself.
    ///
    /// # Errors
    /// [`Error::InvalidKey`] for an empty or control-character pattern, or
    /// [`Error::Backend`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> cache_sdk::Result<()> {
    /// let cache = cache_sdk::Cache::in_memory();
    /// cache.set("user:7:theme", &1u8, cache_sdk::Ttl::Api).await?;
    /// cache.set("user:70:theme", &1u8, cache_sdk::Ttl::Api).await?;
    /// let keys = cache.scan(&cache_sdk::Key::user_pattern(7)?).await?;
    /// assert_eq!(keys, vec!["user:7:theme".to_string()]);
    /// # Ok(()) }
    /// ```
    pub async fn scan(&self, pattern: &str) -> Result<Vec<String>> {
        key::validate(pattern)?;
        self.inner.remote.scan(pattern).await
    }

    /// Read-through: L1, then L2, then `loader`, whose value is stored in both tiers.
    /// Concurrent calls for one key run the loader once (single-flight) and all get its
    /// value. Loader errors are returned as they are and never cached.
    ///
    /// Cache trouble never fails this call: an invalid key or TTL, a value that cannot be
    /// encoded, or a Redis error is logged, and the loaded value is returned uncached.
    ///
    /// # Errors
    /// The loader's error.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), std::io::Error> {
    /// let cache = cache_sdk::Cache::in_memory();
    /// let load = || async { Ok::<_, std::io::Error>("from db".to_string()) };
    /// let v = cache.get_or_load("cache:product:1", cache_sdk::Ttl::Api, load).await?;
    /// assert_eq!(v, "from db");
    /// # Ok(()) }
    /// ```
    pub async fn get_or_load<T, E, F, Fut>(
        &self,
        key: &str,
        ttl: impl Into<Ttl>,
        loader: F,
    ) -> std::result::Result<T, E>
    where
        T: CacheValue + Clone,
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<T, E>>,
    {
        self.get_or_load_arc(key, ttl, loader)
            .await
            .map(|v| (*v).clone())
    }

    /// Like [`Cache::get_or_load`], returning the shared value without cloning it.
    ///
    /// # Errors
    /// The loader's error.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cache = cache_sdk::Cache::in_memory();
    /// let v = cache
    ///     .get_or_load_arc("cache:n:1", cache_sdk::Ttl::Api, || async { Ok::<_, ()>(5u8) })
    ///     .await
    ///     .unwrap();
    /// assert_eq!(*v, 5);
    /// # }
    /// ```
    pub async fn get_or_load_arc<T, E, F, Fut>(
        &self,
        key: &str,
        ttl: impl Into<Ttl>,
        loader: F,
    ) -> std::result::Result<Arc<T>, E>
    where
        T: CacheValue,
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<T, E>>,
    {
        self.get_or_load_tagged(key, ttl, None, loader).await
    }

    /// `get_or_load_arc`, storing what it loads with `tags`.
    pub(crate) async fn get_or_load_tagged<T, E, F, Fut>(
        &self,
        key: &str,
        ttl: impl Into<Ttl>,
        tags: Option<&tags::TagList>,
        loader: F,
    ) -> std::result::Result<Arc<T>, E>
    where
        T: CacheValue,
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<T, E>>,
    {
        let c = &self.inner.counters;
        if let Some(v) = self.inner.local.get::<T>(key) {
            bump(&c.l1_hits);
            return Ok(v);
        }
        bump(&c.l1_misses);
        let ttl = ttl.into();
        let resolved = key::validate(key).and_then(|_| self.resolve(&ttl));
        if let Err(e) = &resolved {
            tracing::error!(key = log_key(key), error = %e, "get_or_load cannot cache this key; loading without the cache");
            bump(&c.loads);
            return loader()
                .await
                .map(Arc::new)
                .inspect_err(|_| bump(&c.load_errors));
        }

        let flight = self.inner.flights.run(
            key,
            || self.recheck::<T>(key),
            || async {
                bump(&c.loads);
                crate::metrics::timed_load(loader())
                    .await
                    .inspect_err(|_| bump(&c.load_errors))
            },
            |value| async move {
                if let Err(e) = self.set_arc_tagged(key, value, ttl, tags).await {
                    tracing::warn!(key = log_key(key), error = %e, "loaded value could not be cached");
                }
            },
        );
        self.traced(Op::GetOrLoad, key, flight).await
    }

    /// The single-flight leader's look before loading: L1 (another caller may have filled
    /// it meanwhile), then L2. An L2 error is logged and counts as nothing found.
    async fn recheck<T: CacheValue>(&self, key: &str) -> Option<Arc<T>> {
        if let Some(v) = self.inner.local.get::<T>(key) {
            return Some(v);
        }
        match self.l2_get::<T>(key).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(key = log_key(key), error = %e, "L2 read failed; loading");
                None
            }
        }
    }

    /// Drops a key from this instance's L1 only (L2 untouched). For cross-instance
    /// invalidation hooks.
    ///
    /// ```
    /// cache_sdk::Cache::in_memory().invalidate_local("cache:a:1");
    /// ```
    pub fn invalidate_local(&self, key: &str) {
        self.inner.local.invalidate(key);
    }

    /// Empties this instance's L1.
    ///
    /// ```
    /// cache_sdk::Cache::in_memory().clear_local();
    /// ```
    pub fn clear_local(&self) {
        self.inner.local.clear();
    }

    /// A snapshot of the state and counters.
    ///
    /// ```
    /// let s = cache_sdk::Cache::in_memory().stats();
    /// assert!(s.using_fallback && !s.connected);
    /// ```
    #[must_use]
    pub fn stats(&self) -> Stats {
        let status = self.inner.remote.status();
        let rc = self.inner.remote.counters();
        let c = &self.inner.counters;
        Stats {
            connected: status.connected,
            using_fallback: !status.connected,
            in_memory_keys: status.in_memory_keys,
            store: StoreKind::current(status.connected),
            redis_configured: status.redis_configured,
            l1_entries: self.inner.local.len(),
            l1_hits: read(&c.l1_hits),
            l1_misses: read(&c.l1_misses),
            l2_hits: read(&c.l2_hits),
            l2_misses: read(&c.l2_misses),
            loads: read(&c.loads),
            load_errors: read(&c.load_errors),
            decode_errors: read(&c.decode_errors),
            backend_errors: read(&rc.backend_errors),
            fallback_ops: read(&rc.fallback_ops),
            outages: read(&rc.outages),
            replayed: read(&rc.replayed),
            replay_skipped: read(&rc.replay_skipped),
            replay_pending: status.replay_pending as u64,
            replay_dropped: status.replay_dropped,
            coherence: self
                .inner
                .coherence
                .as_ref()
                .map_or(CoherenceState::Off, CoherenceLink::state),
            invalidations: self
                .inner
                .coherence
                .as_ref()
                .map_or(0, CoherenceLink::invalidations),
            l1_resets: self
                .inner
                .coherence
                .as_ref()
                .map_or(0, CoherenceLink::resets),
            stale_served: read(&c.stale_served),
            soft_timeouts: read(&c.soft_timeouts),
            hard_timeouts: read(&c.hard_timeouts),
            background_completions: read(&c.background_completions),
            refreshes_started: read(&c.refreshes_started),
            refreshes_completed: read(&c.refreshes_completed),
            refreshes_failed: read(&c.refreshes_failed),
            breaker_rejections: self.inner.breakers.rejections(),
            breakers_opened: self.inner.breakers.opened(),
            breaker_probes: self.inner.breakers.probes(),
            origins_open: self.inner.breakers.open_now(),
        }
    }

    /// Whether the cache runs on its configured primary store: Redis when configured (and
    /// reachable), memory when Redis is not configured. `false` means degraded: Redis is
    /// configured but the fallback serves.
    ///
    /// ```
    /// assert!(cache_sdk::Cache::in_memory().is_ready());
    /// ```
    #[must_use]
    pub fn is_ready(&self) -> bool {
        let s = self.inner.remote.status();
        s.connected || !s.redis_configured
    }

    /// Reads raw bytes from L2, bypassing L1 and the envelope (for stores that keep their own
    /// format, such as sessions shared with other languages).
    ///
    /// # Errors
    /// [`Error::InvalidKey`] or [`Error::Backend`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> cache_sdk::Result<()> {
    /// let cache = cache_sdk::Cache::in_memory();
    /// cache.set_raw("sess:abc", b"{}".to_vec(), cache_sdk::Ttl::Session).await?;
    /// assert_eq!(cache.get_raw("sess:abc").await?.as_deref(), Some(&b"{}"[..]));
    /// # Ok(()) }
    /// ```
    pub async fn get_raw(&self, key: &str) -> Result<Option<Vec<u8>>> {
        key::validate(key)?;
        self.traced(Op::GetRaw, key, self.inner.remote.get(key))
            .await
    }

    /// Writes raw bytes to L2 (see [`Cache::get_raw`]); drops the key from L1.
    ///
    /// # Errors
    /// [`Error::InvalidKey`], [`Error::InvalidTtl`], [`Error::ValueTooLarge`] or
    /// [`Error::Backend`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> cache_sdk::Result<()> {
    /// let cache = cache_sdk::Cache::in_memory();
    /// cache.set_raw("sess:abc", b"{}".to_vec(), cache_sdk::Ttl::Session).await?;
    /// # Ok(()) }
    /// ```
    pub async fn set_raw(&self, key: &str, bytes: Vec<u8>, ttl: impl Into<Ttl>) -> Result<()> {
        let ttl = self.check_raw(key, &bytes, &ttl.into())?;
        self.inner.local.invalidate(key);
        let result = self
            .traced(
                Op::SetRaw,
                key,
                self.inner.remote.set(key, bytes, Some(ttl)),
            )
            .await;
        self.raw_written(key, result.is_ok()).await;
        result
    }

    /// Writes raw bytes only if the key does not exist (`SET NX`); returns whether it was
    /// written.
    ///
    /// # Errors
    /// As [`Cache::set_raw`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> cache_sdk::Result<()> {
    /// let cache = cache_sdk::Cache::in_memory();
    /// assert!(cache.set_raw_nx("sess:x", vec![1], cache_sdk::Ttl::Session).await?);
    /// assert!(!cache.set_raw_nx("sess:x", vec![2], cache_sdk::Ttl::Session).await?);
    /// # Ok(()) }
    /// ```
    pub async fn set_raw_nx(&self, key: &str, bytes: Vec<u8>, ttl: impl Into<Ttl>) -> Result<bool> {
        let ttl = self.check_raw(key, &bytes, &ttl.into())?;
        self.inner.local.invalidate(key);
        let result = self.inner.remote.set_nx(key, bytes, Some(ttl)).await;
        self.raw_written(key, matches!(result, Ok(true))).await;
        result
    }

    /// Writes raw bytes only if the key exists (`SET XX`); returns whether it was written.
    /// Lets a store update a record without reviving one deleted meanwhile.
    ///
    /// # Errors
    /// As [`Cache::set_raw`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> cache_sdk::Result<()> {
    /// let cache = cache_sdk::Cache::in_memory();
    /// assert!(!cache.set_raw_xx("sess:y", vec![1], cache_sdk::Ttl::Session).await?);
    /// cache.set_raw("sess:y", vec![1], cache_sdk::Ttl::Session).await?;
    /// assert!(cache.set_raw_xx("sess:y", vec![2], cache_sdk::Ttl::Session).await?);
    /// # Ok(()) }
    /// ```
    pub async fn set_raw_xx(&self, key: &str, bytes: Vec<u8>, ttl: impl Into<Ttl>) -> Result<bool> {
        let ttl = self.check_raw(key, &bytes, &ttl.into())?;
        // L1 is dropped after the write only, as in `expire`.
        let result = self.inner.remote.set_xx(key, bytes, Some(ttl)).await;
        self.raw_written(key, matches!(result, Ok(true))).await;
        result
    }

    /// After a raw write: drops what reads during the write put into L1, and tells the
    /// other instances when it changed something.
    async fn raw_written(&self, key: &str, changed: bool) {
        self.inner.local.invalidate(key);
        if changed {
            self.written([key]).await;
        }
    }

    /// The coherence link, when it is in use (not off).
    #[cfg_attr(not(feature = "sessions"), allow(dead_code))]
    fn coherent(&self) -> Option<&CoherenceLink> {
        self.inner.coherence.as_ref().filter(|c| c.active())
    }

    /// A raw-backed value from L1 (see [`RawBacked`]): as `T`, or only its stored bytes
    /// when L1 holds another type under `key`. Only with coherence: without it, such values
    /// are read from L2 every time so that every instance sees the latest.
    #[cfg_attr(not(feature = "sessions"), allow(dead_code))]
    pub(crate) fn backed_get<T: Send + Sync + 'static>(&self, key: &str) -> Option<Held<T>> {
        self.coherent()?;
        let c = &self.inner.counters;
        let held = self.inner.local.get_held::<T>(key);
        if held.is_some() {
            bump(&c.l1_hits);
        } else {
            bump(&c.l1_misses);
        }
        held
    }

    /// A ticket for a raw read that may fill L1 with a raw-backed value; `None` without
    /// coherence.
    #[cfg_attr(not(feature = "sessions"), allow(dead_code))]
    pub(crate) fn backed_ticket(&self, key: &str) -> Option<Ticket> {
        self.coherent()?;
        Some(self.inner.local.ticket(key))
    }

    /// Puts a raw-backed value into L1, for no longer than its bytes surely live in L2.
    #[cfg_attr(not(feature = "sessions"), allow(dead_code))]
    pub(crate) fn backed_insert<R: RawBacked>(&self, key: &str, value: Arc<R>, ticket: Ticket) {
        self.inner.local.insert_backed(key, value, ticket);
    }

    /// While Redis is lost: the raw-backed value L1 held under `key` before, now also in
    /// the fallback (see `docs/coherence.md`).
    #[cfg_attr(not(feature = "sessions"), allow(dead_code))]
    pub(crate) fn backed_reserve<T: Send + Sync + 'static>(&self, key: &str) -> Option<Held<T>> {
        self.coherent()?.reserve(key)
    }

    fn check_raw(&self, key: &str, bytes: &[u8], ttl: &Ttl) -> Result<Duration> {
        key::validate(key)?;
        if bytes.len() > self.inner.max_value_size {
            return Err(Error::ValueTooLarge {
                key: log_key(key).to_owned(),
                size: bytes.len(),
                limit: self.inner.max_value_size,
            });
        }
        self.resolve(ttl)
    }
}
