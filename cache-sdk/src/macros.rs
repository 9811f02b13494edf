//! The attribute macros, re-exported from `cache-sdk-macros` and documented here.

/// Caches what a function returns under a key built from its arguments.
///
/// ```
/// use cache_sdk::cached;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// struct Product { id: u64, name: String }
///
/// #[derive(Debug)]
/// struct AppError;
///
/// /// Reads a product from the database (slow), at most once per 10 minutes per id.
/// #[cached(key = "cache:product:{id}", ttl = "api")]
/// async fn product(id: u64) -> Result<Product, AppError> {
///     Ok(Product { id, name: format!("Product {id}") })
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // Once at startup; without it an in-memory cache is used (and a warning logged).
/// cache_sdk::install(cache_sdk::Cache::builder().from_env()?.build().await?).ok();
///
/// let first = product(42).await.unwrap();           // runs the body, caches `Ok`
/// let again = product(42).await.unwrap();           // served by the cache
/// assert_eq!(first, again);
/// product_invalidate(42).await?;                    // generated: drops the entry
/// let fresh = product_refresh(42).await.unwrap();   // generated: runs the body, re-caches
/// # let _ = fresh;
/// # Ok(()) }
/// ```
///
/// # Options
///
/// | option | value | default |
/// |---|---|---|
/// | `key` | a pattern such as `"cache:product:{id}"` (required) | — |
/// | `ttl` | `"session"` (24 h), `"api"` (10 min), `"user_preferences"` (7 days), a preset name defined in the configuration (`"reports"`), whole seconds (`300` or `"300"`), or a duration (`"90s"`, `"15m"`, `"24h"`, `"7d"`, `"1h30m"`) | `"api"` |
/// | `cache` | an expression giving the [`Cache`](crate::Cache) (or something that derefs to it): a static, a call, `self.cache` | the global cache ([`install`](crate::install)) |
/// | `tier` | `"both"`: L1 and Redis through the `Cache`; `"l1"`: this process only | `"both"` |
/// | `jitter` | spread each TTL by a random ± fraction: `0.1` or `"10%"` (at most 0.5) | none |
/// | `cache_none` | `true` caches `None` as well (for `Option` returns) | `false` |
/// | `crate` | the path of `cache_sdk` when renamed: `crate = "my_cache"` | `"::cache_sdk"` |
/// | `tags` | tags the value carries, patterns like the key: `["product:{id}", "catalog"]` (see [`Cache::invalidate_tag`](crate::Cache::invalidate_tag)); not with `tier = "l1"` | none |
/// | `stampede` | `"distributed"`: on a miss, only the instance holding a short Redis lock runs the body, the others wait for its value ([`Stampede::Distributed`](crate::Stampede), async functions on the `Cache` with owned arguments, as for `fail_safe`); `"local"`: one run per process | `"local"` |
/// | `origin` | the data source the body reads, `"products"`: its circuit breaker ([`LoadOptions::origin`](crate::LoadOptions::origin)) is shared by every function and call naming it; while it is open the body is not run and the stale value (with `fail_safe`) or an error is returned at once, so the function must return `Result<T, E>` with `E: From<`[`OriginUnavailable`](crate::OriginUnavailable)`>` or `Option<T>` (`None`); async functions on the `Cache` with owned arguments, as for `fail_safe` | none (no breaker) |
///
/// An option given twice, an unknown option, a malformed TTL (`"5 minutes"`, `0`, more
/// than 365 days) or a bad key is a compile error pointing at it.
///
/// # Keys
///
/// `{name}` is replaced by the argument `name`, `{user.id}` by a field of an argument, and
/// `{self.tenant}` by a field of the receiver. Each value must implement
/// [`Display`](std::fmt::Display); a name that is not an argument is a compile error that
/// lists the arguments. `{{` and `}}` are literal braces. The literal text must follow the
/// key rules ([`key::validate`](crate::key::validate)): no control characters, at most
/// 1024 bytes. Values are inserted as they display: when two placeholders are adjacent
/// (`{a}:{b}`), make sure the values cannot contain the separator, or two argument lists
/// could share a key. A key that turns out invalid at run time (a value with a control
/// character) is logged and the function runs uncached.
///
/// # What is cached
///
/// | return type | cached | not cached |
/// |---|---|---|
/// | `Result<T, E>` (any type whose name is `Result`, such as `io::Result<T>`) | `Ok(T)` | `Err`: returned as it is, and the next call runs the body again |
/// | `Option<T>` | `Some(T)` | `None`, unless `cache_none = true` |
/// | any other `T` | always | — |
///
/// The cached type must be a [`CacheValue`](crate::CacheValue) (serde both ways,
/// `Send + Sync + 'static`) and `Clone`; with `tier = "l1"`, `Clone + Send + Sync + 'static`
/// is enough (nothing is serialized).
///
/// **Cache errors never reach `E`.** Like [`Cache::get_or_load`](crate::Cache::get_or_load),
/// the generated code degrades: when the cache cannot read or write (an invalid key, an
/// unknown preset name, a value too large, an error answered by Redis) it logs the problem
/// and returns what the body returned. A Redis that is down is not even an error: the
/// cache's in-memory fallback serves. So `E` needs no `From<cache_sdk::Error>`, and adding
/// `#[cached]` never adds a way for a function to fail.
///
/// Concurrent calls with the same key run the body once (single-flight) and share its
/// value; an `Err` is not shared, the next waiter runs the body itself.
///
/// # Functions it accepts
///
/// Async free functions and methods (`&self`, `&mut self`, `self`), with generics, lifetimes
/// and `impl Trait` arguments; visibility, docs and other attributes are kept. Each argument
/// must be a plain name (no destructuring patterns) and the return type must be nameable
/// (not `impl Trait`). In a trait impl, the generated companions (which are not trait
/// methods) do not fit: cache an inherent method and call it from the trait method.
///
/// **Sync functions** can be cached only in this process, because Redis is reached
/// asynchronously: write `tier = "l1"` (otherwise a compile error says so):
///
/// ```
/// #[cache_sdk::cached(key = "cache:square:{n}", ttl = "1h", tier = "l1")]
/// fn square(n: u64) -> u64 {
///     n * n
/// }
/// assert_eq!(square(12), 144);
/// assert_eq!(square(12), 144); // from the process-local store
/// square_invalidate(12);
/// ```
///
/// # Generated companions
///
/// Beside `fn name`, with the same visibility (and as methods when `name` is one):
///
/// | companion | arguments | does |
/// |---|---|---|
/// | `name_invalidate` | only those the key uses (plus `&self` for a method) | drops the cached value from L1 and L2; async functions get `async fn … -> cache_sdk::Result<()>`, sync ones `fn …` |
/// | `name_refresh` | the same as `name` | drops the cached value, then calls `name`: the body runs and its value is cached afresh (a bypass for one call) |
/// | `name_invalidate_tags` (with `tags`) | only those the tags use (plus `&self` for a method) | invalidates every tag of `name` for those arguments: `async fn … -> cache_sdk::Result<()>` |
///
/// # Tiers and the process-local store
///
/// With `tier = "both"` (the default) values go through the [`Cache`](crate::Cache): its
/// L1 (moka, typed values, a short L1 TTL) and L2 (Redis, or the in-memory fallback), so
/// other app servers sharing the Redis get an L2 hit. With `tier = "l1"` values stay in a
/// process-local store shared by all such functions (10 000 entries at most, TTL presets
/// from the installed cache or the defaults); they are never serialized, never seen by
/// other instances, and a `cache` option does not apply.
///
/// # Methods, and a cache of your own
///
/// ```
/// use cache_sdk::{cached, Cache};
///
/// struct Accounts {
///     cache: Cache,
///     tenant: String,
/// }
///
/// struct User { id: u64 }
///
/// impl Accounts {
///     #[cached(key = "cache:{self.tenant}:user:{user.id}:name", ttl = "15m", cache = self.cache)]
///     pub async fn display_name(&self, user: &User) -> Option<String> {
///         (user.id != 0).then(|| format!("user {}", user.id))
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> cache_sdk::Result<()> {
/// let accounts = Accounts { cache: Cache::in_memory(), tenant: "acme".into() };
/// assert_eq!(accounts.display_name(&User { id: 7 }).await.as_deref(), Some("user 7"));
/// assert_eq!(accounts.display_name(&User { id: 0 }).await, None); // `None` is not cached
/// assert!(accounts.cache.exists("cache:acme:user:7:name").await?);
/// accounts.display_name_invalidate(&User { id: 7 }).await?;
/// assert!(!accounts.cache.exists("cache:acme:user:7:name").await?);
/// # Ok(()) }
/// ```
pub use cache_sdk_macros::cached;

/// Evicts keys after a writer function succeeds.
///
/// The keys are deleted from L1 and L2 (and the process-local store) once the function
/// returns `Ok`, `Some`, or any value of another type. With `before = true` they are
/// deleted before the body runs, whatever it returns. An eviction that Redis refuses is
/// logged; the function's own result is returned unchanged.
///
/// ```
/// use cache_sdk::{cache_evict, cached, Cache};
/// use std::sync::LazyLock;
///
/// static CACHE: LazyLock<Cache> = LazyLock::new(Cache::in_memory);
///
/// #[cached(key = "cache:price:{id}", ttl = "api", cache = CACHE)]
/// async fn price(id: u64) -> u64 {
///     100 + id
/// }
///
/// #[cache_evict(key = ["cache:price:{id}", "cache:catalog"], cache = CACHE)]
/// async fn set_price(id: u64, cents: u64) -> Result<(), String> {
///     if cents == 0 { Err("a price cannot be zero".into()) } else { Ok(()) }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> cache_sdk::Result<()> {
/// price(1).await;
/// assert!(CACHE.exists("cache:price:1").await?);
/// assert!(set_price(1, 0).await.is_err());          // failed: nothing evicted
/// assert!(CACHE.exists("cache:price:1").await?);
/// set_price(1, 250).await.unwrap();                  // succeeded: evicted
/// assert!(!CACHE.exists("cache:price:1").await?);
/// # Ok(()) }
/// ```
///
/// # Options
///
/// | option | value | default |
/// |---|---|---|
/// | `key` | a pattern, or a list of patterns `["cache:product:{id}", "cache:catalog"]` (required unless `tags` is given) | — |
/// | `tags` | tags to invalidate, patterns like the key: `["product:{id}", "catalog"]` (see [`Cache::invalidate_tag`](crate::Cache::invalidate_tag)); not with `tier = "l1"` | none |
/// | `before` | `true` evicts before the body runs, whatever it returns | `false` |
/// | `cache` | the [`Cache`](crate::Cache), as for [`cached`] | the global cache |
/// | `tier` | `"both"`, or `"l1"` to evict only from the process-local store (what a sync fn can do) | `"both"` |
/// | `crate` | the path of `cache_sdk` when renamed | `"::cache_sdk"` |
///
/// Keys follow the rules of [`cached`]. The function must be async, unless `tier = "l1"`.
pub use cache_sdk_macros::cache_evict;

/// Writes a writer function's result into the cache after it succeeds.
///
/// Once the function returns `Ok(v)`, `Some(v)` or a plain `v`, the value is stored under
/// the key, in the tiers [`cached`] would read it from. The key is built from the
/// arguments before the body runs. When the cache refuses the write, the key is evicted
/// instead (so no stale value stays) and the problem is logged; the function's result is
/// returned unchanged.
///
/// ```
/// use cache_sdk::{cache_put, cached, Cache};
/// use serde::{Deserialize, Serialize};
/// use std::sync::LazyLock;
///
/// static CACHE: LazyLock<Cache> = LazyLock::new(Cache::in_memory);
///
/// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// struct Product { id: u64, name: String }
///
/// #[cached(key = "cache:product:{id}", ttl = "api", cache = CACHE)]
/// async fn product(id: u64) -> Option<Product> {
///     None // not in the database yet
/// }
///
/// #[cache_put(key = "cache:product:{p.id}", ttl = "api", cache = CACHE)]
/// async fn save_product(p: Product) -> Result<Product, String> {
///     Ok(p) // written to the database
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let desk = Product { id: 9, name: "Desk".into() };
/// save_product(desk.clone()).await.unwrap();
/// assert_eq!(product(9).await, Some(desk)); // from the cache: the body never ran
/// # }
/// ```
///
/// # Options
///
/// | option | value | default |
/// |---|---|---|
/// | `key` | a pattern (required) | — |
/// | `ttl` | as for [`cached`] | `"api"` |
/// | `jitter` | as for [`cached`] | none |
/// | `tags` | as for [`cached`] | none |
/// | `cache` | the [`Cache`](crate::Cache), as for [`cached`] | the global cache |
/// | `tier` | `"both"`, or `"l1"` for the process-local store (what a sync fn can do) | `"both"` |
/// | `crate` | the path of `cache_sdk` when renamed | `"::cache_sdk"` |
pub use cache_sdk_macros::cache_put;
