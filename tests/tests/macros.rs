//! `#[cached]`, `#[cache_evict]` and `#[cache_put]` against a real redis-server: each test
//! starts its own server and counts how often the function bodies run.

use std::fmt::Display;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cache_sdk::{cache_evict, cache_put, cached, Cache};
use cache_sdk_tests::RedisServer;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Product {
    id: u64,
    name: String,
    /// How many times the body had run when this value was made.
    version: usize,
}

#[derive(Debug, PartialEq)]
struct AppError(String);

struct User {
    id: u64,
}

/// A service whose methods are cached in its own `Cache`.
struct Catalog {
    cache: Cache,
    tenant: String,
    loads: AtomicUsize,
}

fn check_id(id: u64) -> Result<u64, AppError> {
    if id == 0 {
        Err(AppError("there is no product 0".into()))
    } else {
        Ok(id)
    }
}

impl Catalog {
    fn new(cache: Cache) -> Self {
        Catalog {
            cache,
            tenant: "acme".into(),
            loads: AtomicUsize::new(0),
        }
    }

    /// How many times a body has run.
    fn loads(&self) -> usize {
        self.loads.load(Ordering::SeqCst)
    }

    fn load(&self) -> usize {
        self.loads.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Reads a product (`Err` for id 0).
    #[cached(key = "cache:product:{id}", ttl = "api", cache = self.cache)]
    async fn product(&self, id: u64) -> Result<Product, AppError> {
        let version = self.load();
        let id = check_id(id)?;
        Ok(Product {
            id,
            name: format!("Product {id}"),
            version,
        })
    }

    /// Slow enough for concurrent callers to pile up on one key.
    #[cached(key = "cache:slow:{id}", ttl = "api", cache = self.cache)]
    async fn slow(&self, id: u64) -> u64 {
        self.load();
        tokio::time::sleep(Duration::from_millis(50)).await;
        id * 2
    }

    #[cached(key = "cache:maybe:{id}", ttl = "15m", cache = self.cache)]
    async fn maybe(&self, id: u64) -> Option<String> {
        self.load();
        (id != 0).then(|| format!("found {id}"))
    }

    #[cached(key = "cache:maybe-none:{id}", ttl = 60, cache = self.cache, cache_none = true)]
    async fn maybe_cached_none(&self, id: u64) -> Option<String> {
        self.load();
        (id != 0).then(|| format!("found {id}"))
    }

    #[cached(
        key = "cache:{self.tenant}:user:{user.id}",
        ttl = "user_preferences",
        jitter = 0.1,
        cache = self.cache
    )]
    async fn user_name<'a>(&self, user: &'a User) -> String {
        self.load();
        format!("user {}", user.id)
    }

    #[cached(key = "cache:describe:{id}", ttl = "90s", cache = self.cache)]
    async fn describe<T: Display + Send + Sync>(&self, id: T) -> String {
        self.load();
        format!("<{id}>")
    }

    /// Renames a product; an empty name is refused.
    #[cache_evict(key = "cache:product:{id}", cache = self.cache)]
    async fn rename(&self, id: u64, name: &str) -> Result<(), AppError> {
        if name.is_empty() {
            return Err(AppError("empty name".into()));
        }
        Ok(())
    }

    /// Evicts both keys before running, even though it fails.
    #[cache_evict(key = ["cache:product:{id}", "cache:maybe:{id}"], before = true, cache = self.cache)]
    async fn purge(&self, id: u64) -> Result<(), AppError> {
        Err(AppError(format!("purge of {id} failed after the eviction")))
    }

    /// Stores a product (`Err` for id 0).
    #[cache_put(key = "cache:product:{p.id}", ttl = "api", cache = self.cache)]
    async fn save(&self, p: Product) -> Result<Product, AppError> {
        check_id(p.id)?;
        Ok(p)
    }
}

async fn redis_cache(server: &RedisServer) -> Cache {
    Cache::builder()
        .redis_url(server.url())
        .require_redis(true)
        .build()
        .await
        .expect("cache on the test redis")
}

async fn catalog(server: &RedisServer) -> Catalog {
    cache_sdk_tests::init_tracing();
    Catalog::new(redis_cache(server).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_call_is_served_from_the_cache() {
    let server = RedisServer::start();
    let c = catalog(&server).await;
    let first = c.product(1).await.unwrap();
    assert_eq!(first.version, 1);
    assert_eq!(c.product(1).await.unwrap(), first);
    assert_eq!(c.loads(), 1);
    assert!(server.get_raw("cache:product:1").await.is_some());
    // Another key runs the body.
    assert_eq!(c.product(2).await.unwrap().version, 2);
    assert_eq!(c.loads(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_instance_gets_an_l2_hit() {
    let server = RedisServer::start();
    let a = catalog(&server).await;
    let b = catalog(&server).await;
    let from_a = a.product(5).await.unwrap();
    assert_eq!(b.product(5).await.unwrap(), from_a);
    assert_eq!(b.loads(), 0);
    let s = b.cache.stats();
    assert_eq!((s.l2_hits, s.loads), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evict_makes_the_next_call_run_the_body() {
    let server = RedisServer::start();
    let c = catalog(&server).await;
    c.product(3).await.unwrap();
    // A failed write evicts nothing.
    assert!(c.rename(3, "").await.is_err());
    assert_eq!(c.product(3).await.unwrap().version, 1);
    assert_eq!(c.loads(), 1);
    // A successful one does, in both tiers.
    c.rename(3, "Desk").await.unwrap();
    assert!(server.get_raw("cache:product:3").await.is_none());
    assert_eq!(c.product(3).await.unwrap().version, 2);
    assert_eq!(c.loads(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evict_before_the_body_removes_every_key() {
    let server = RedisServer::start();
    let c = catalog(&server).await;
    c.product(4).await.unwrap();
    c.maybe(4).await.unwrap();
    assert_eq!(c.loads(), 2);
    assert!(server.get_raw("cache:product:4").await.is_some());
    assert!(server.get_raw("cache:maybe:4").await.is_some());
    assert!(c.purge(4).await.is_err());
    assert!(server.get_raw("cache:product:4").await.is_none());
    assert!(server.get_raw("cache:maybe:4").await.is_none());
    c.product(4).await.unwrap();
    c.maybe(4).await.unwrap();
    assert_eq!(c.loads(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_is_visible_in_redis() {
    let server = RedisServer::start();
    let c = catalog(&server).await;
    c.product(1).await.unwrap();
    c.maybe(1).await.unwrap();
    c.maybe_cached_none(1).await.unwrap();
    c.user_name(&User { id: 7 }).await;
    c.describe(9).await;

    let api = server.pttl("cache:product:1").await;
    assert!(api > 0 && api <= 600_000, "api: {api} ms");
    let fifteen = server.pttl("cache:maybe:1").await;
    assert!(fifteen > 600_000 && fifteen <= 900_000, "15m: {fifteen} ms");
    let sixty = server.pttl("cache:maybe-none:1").await;
    assert!(sixty > 0 && sixty <= 60_000, "60 s: {sixty} ms");
    let ninety = server.pttl("cache:describe:9").await;
    assert!(ninety > 60_000 && ninety <= 90_000, "90s: {ninety} ms");
    // user_preferences (7 days) with ±10 % jitter.
    let week = 604_800_000i64;
    let prefs = server.pttl("cache:acme:user:7").await;
    assert!(
        prefs >= week * 9 / 10 - 60_000 && prefs <= week * 11 / 10,
        "user_preferences: {prefs} ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_and_none_are_not_cached() {
    let server = RedisServer::start();
    let c = catalog(&server).await;
    let err = c.product(0).await.unwrap_err();
    assert_eq!(err, AppError("there is no product 0".into()));
    assert!(c.product(0).await.is_err());
    assert_eq!(c.loads(), 2);
    assert!(server.get_raw("cache:product:0").await.is_none());

    assert_eq!(c.maybe(0).await, None);
    assert_eq!(c.maybe(0).await, None);
    assert_eq!(c.loads(), 4);
    assert!(server.get_raw("cache:maybe:0").await.is_none());

    // With cache_none, None is cached like any value.
    assert_eq!(c.maybe_cached_none(0).await, None);
    assert_eq!(c.maybe_cached_none(0).await, None);
    assert_eq!(c.loads(), 5);
    assert!(server.get_raw("cache:maybe-none:0").await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_calls_run_the_body_once() {
    let server = RedisServer::start();
    let c = Arc::new(catalog(&server).await);
    let calls: Vec<_> = (0..1000)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.slow(21).await })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap(), 42);
    }
    assert_eq!(c.loads(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_keep_working_when_redis_is_killed() {
    let mut server = RedisServer::start();
    let c = catalog(&server).await;
    let cached = c.product(1).await.unwrap();
    // The cache hears of its own write through the invalidation link and drops it from L1;
    // the next call reads it back from Redis into L1.
    let cache = c.cache.clone();
    cache_sdk_tests::wait_until(Duration::from_secs(2), move || {
        cache.stats().invalidations > 0
    })
    .await
    .unwrap();
    assert_eq!(c.product(1).await.unwrap(), cached);
    server.kill();

    assert_eq!(c.product(1).await.unwrap(), cached);
    let fresh = c.product(2).await.unwrap();
    assert_eq!(fresh.id, 2);
    assert_eq!(c.product(2).await.unwrap(), fresh);
    assert_eq!(c.loads(), 2);
    assert!(c.product(0).await.is_err());

    // Writers and companions work too.
    c.rename(2, "Chair").await.unwrap();
    assert_eq!(c.product(2).await.unwrap().version, 4);
    c.save(Product {
        id: 8,
        name: "Lamp".into(),
        version: 0,
    })
    .await
    .unwrap();
    assert_eq!(c.product(8).await.unwrap().name, "Lamp");
    c.product_invalidate(8).await.unwrap();
    assert_eq!(c.product(8).await.unwrap().name, "Product 8");
    assert!(!c.cache.stats().connected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_writes_the_returned_value() {
    let server = RedisServer::start();
    let a = catalog(&server).await;
    let b = catalog(&server).await;
    let lamp = Product {
        id: 6,
        name: "Lamp".into(),
        version: 0,
    };
    assert_eq!(a.save(lamp.clone()).await.unwrap(), lamp);
    assert_eq!(a.product(6).await.unwrap(), lamp);
    assert_eq!(b.product(6).await.unwrap(), lamp);
    assert_eq!(a.loads() + b.loads(), 0);
    let ttl = server.pttl("cache:product:6").await;
    assert!(ttl > 0 && ttl <= 600_000, "{ttl} ms");

    // A failed call writes nothing.
    assert!(a
        .save(Product {
            id: 0,
            name: "Nothing".into(),
            version: 0
        })
        .await
        .is_err());
    assert!(server.get_raw("cache:product:0").await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_and_refresh_companions() {
    let server = RedisServer::start();
    let c = catalog(&server).await;
    assert_eq!(c.product(1).await.unwrap().version, 1);
    assert_eq!(c.product_refresh(1).await.unwrap().version, 2);
    assert_eq!(c.product(1).await.unwrap().version, 2);
    assert_eq!(c.loads(), 2);

    c.product_invalidate(1).await.unwrap();
    assert!(server.get_raw("cache:product:1").await.is_none());
    assert_eq!(c.product(1).await.unwrap().version, 3);

    // The companion takes only the arguments the key uses.
    let u = User { id: 7 };
    c.user_name(&u).await;
    c.user_name_invalidate(&u).await.unwrap();
    c.user_name(&u).await;
    assert_eq!(c.loads(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placeholders_reach_fields_self_and_generic_arguments() {
    let server = RedisServer::start();
    let c = catalog(&server).await;
    assert_eq!(c.user_name(&User { id: 7 }).await, "user 7");
    assert!(server.get_raw("cache:acme:user:7").await.is_some());
    assert_eq!(c.describe("x").await, "<x>");
    assert_eq!(c.describe(3u8).await, "<3>");
    assert_eq!(c.describe("x").await, "<x>");
    assert_eq!(c.loads(), 3);
    assert!(server.get_raw("cache:describe:x").await.is_some());
}

// --- The global cache: only this test uses it in this binary. ---

static GLOBAL_LOADS: AtomicUsize = AtomicUsize::new(0);

#[cached(key = "cache:global:{id}", ttl = "api")]
async fn global_double(id: u64) -> u64 {
    GLOBAL_LOADS.fetch_add(1, Ordering::SeqCst);
    id * 2
}

#[cache_evict(key = "cache:global:{id}")]
async fn global_forget(id: u64) {}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_installed_global_cache_is_the_default() {
    cache_sdk_tests::init_tracing();
    let server = RedisServer::start();
    cache_sdk::install(redis_cache(&server).await).expect("first install");
    assert_eq!(global_double(4).await, 8);
    assert_eq!(global_double(4).await, 8);
    assert_eq!(GLOBAL_LOADS.load(Ordering::SeqCst), 1);
    assert!(server.get_raw("cache:global:4").await.is_some());
    global_forget(4).await;
    assert!(server.get_raw("cache:global:4").await.is_none());
    assert_eq!(global_double(4).await, 8);
    assert_eq!(GLOBAL_LOADS.load(Ordering::SeqCst), 2);
}

// --- The process-local tier: sync functions and `tier = "l1"`. ---

static SQUARES: AtomicUsize = AtomicUsize::new(0);

#[cached(key = "cache:square:{n}", ttl = "1h", tier = "l1")]
fn square(n: u64) -> u64 {
    SQUARES.fetch_add(1, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(20));
    n * n
}

#[cache_evict(key = "cache:square:{n}", tier = "l1")]
fn forget_square(n: u64) -> Option<()> {
    Some(())
}

#[cache_put(key = "cache:square:{n}", tier = "l1")]
fn set_square(n: u64, value: u64) -> u64 {
    value
}

#[test]
fn sync_functions_are_cached_in_the_process() {
    let results: Vec<u64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8).map(|_| s.spawn(|| square(12))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(results, vec![144; 8]);
    assert_eq!(SQUARES.load(Ordering::SeqCst), 1);
    forget_square(12);
    assert_eq!(square(12), 144);
    assert_eq!(SQUARES.load(Ordering::SeqCst), 2);
    square_invalidate(12);
    assert_eq!(square_refresh(12), 144);
    assert_eq!(SQUARES.load(Ordering::SeqCst), 3);
    set_square(12, 1000);
    assert_eq!(square(12), 1000);
    assert_eq!(SQUARES.load(Ordering::SeqCst), 3);
}

static LOCAL_LOADS: AtomicUsize = AtomicUsize::new(0);

/// Not serializable: the local tier never encodes values.
#[derive(Clone)]
struct Handle(Arc<String>);

#[cached(key = "cache:handle:{name}", ttl = 300, tier = "l1")]
async fn handle(name: &str) -> Result<Handle, AppError> {
    LOCAL_LOADS.fetch_add(1, Ordering::SeqCst);
    Ok(Handle(Arc::new(name.to_uppercase())))
}

#[tokio::test]
async fn async_functions_can_stay_in_the_process() {
    assert_eq!(*handle("db").await.unwrap().0, "DB");
    assert_eq!(*handle("db").await.unwrap().0, "DB");
    assert_eq!(LOCAL_LOADS.load(Ordering::SeqCst), 1);
    handle_invalidate("db").await.unwrap();
    handle("db").await.unwrap();
    assert_eq!(LOCAL_LOADS.load(Ordering::SeqCst), 2);
}

mod resilient {
    use super::*;
    use std::sync::atomic::AtomicBool;

    static FAILING: AtomicBool = AtomicBool::new(false);
    static CACHE: std::sync::OnceLock<Cache> = std::sync::OnceLock::new();

    fn resilient_cache() -> Cache {
        CACHE
            .get()
            .cloned()
            .expect("the test installs its cache first")
    }
    static CALLS: AtomicUsize = AtomicUsize::new(0);

    #[derive(Debug, PartialEq)]
    pub enum OriginError {
        Down,
        Timeout,
    }

    impl From<cache_sdk::LoadTimeout> for OriginError {
        fn from(_: cache_sdk::LoadTimeout) -> Self {
            OriginError::Timeout
        }
    }

    #[cached(
        key = "cache:resilient:{id}",
        ttl = 1,
        cache = resilient_cache(),
        fail_safe = "1h",
        soft_timeout = "100ms",
        hard_timeout = "2s",
        refresh_ahead = 0.8
    )]
    async fn price(id: u64) -> Result<u64, OriginError> {
        CALLS.fetch_add(1, Ordering::SeqCst);
        if FAILING.load(Ordering::SeqCst) {
            return Err(OriginError::Down);
        }
        Ok(id * 100)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cached_fn_with_fail_safe_serves_stale_when_its_body_fails() {
        let server = RedisServer::start();
        let cache = redis_cache(&server).await;
        CACHE.set(cache.clone()).expect("one test uses it");
        assert_eq!(price(7).await, Ok(700));
        assert_eq!(price(7).await, Ok(700));
        assert_eq!(CALLS.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(1200)).await;
        FAILING.store(true, Ordering::SeqCst);
        // Expired, and the body fails: the stale value answers.
        assert_eq!(price(7).await, Ok(700));
        assert!(cache.stats().stale_served >= 1);
        // No value at all: the body's error propagates.
        assert_eq!(price(8).await, Err(OriginError::Down));
    }
}
