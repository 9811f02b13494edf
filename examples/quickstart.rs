//! A short tour of the cache API: typed get/set, TTL presets, read-through with
//! `get_or_load`, counters, and stats.
//!
//! ```text
//! cargo run --example quickstart                                    # in memory
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example quickstart   # with Redis
//! ```
//!
//! The configuration comes from the process environment through
//! [`CacheConfig::from_env`]: without `REDIS_URL` / `REDIS_HOST` / `REDIS_ENABLED=true` the
//! cache runs in memory. With Redis, every key is written under the `quickstart:` namespace
//! (unless `CACHE_NAMESPACE` says otherwise) and deleted at the end.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cache_sdk::{Cache, CacheConfig, Key, Ttl};
use serde::{Deserialize, Serialize};

/// Any serde type can be cached; values are encoded with bincode by default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Product {
    id: u64,
    name: String,
    price_cents: u64,
}

/// Stands for a slow database query.
async fn load_product(id: u64, queries: &AtomicUsize) -> Result<Product, Infallible> {
    queries.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok(Product {
        id,
        name: format!("Product {id}"),
        price_cents: 1000 + id,
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The SDK logs through `tracing`: RUST_LOG=info shows which store it picked and why.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();

    // 1. Configuration and the cache. Building never fails because Redis is away: the cache
    //    starts on its in-memory fallback and moves to Redis by itself when Redis answers.
    let mut config = CacheConfig::from_env()?;
    if config.namespace.is_none() {
        config.namespace = Some("quickstart".into());
    }
    match &config.redis {
        Some(redis) => println!("Redis configured at {}", redis.display_address()),
        None => println!("Redis not configured (set REDIS_URL to use it): running in memory"),
    }
    let cache = Cache::builder()
        .config(config)
        .ttl_preset("reports", Duration::from_secs(3600))
        .build()
        .await?;
    println!("store in use: {}\n", cache.stats().store);

    // 2. Typed set and get. Keys follow the patterns cache:{resource}:{id},
    //    user:{userId}:{field} and sess:{id}; `Key` builds them with escaping.
    let key = Key::cache("product", 42)?;
    let desk = Product {
        id: 42,
        name: "Standing Desk".into(),
        price_cents: 49_900,
    };
    cache.set(&key, &desk, Ttl::Api).await?;
    let back: Option<Product> = cache.get(&key).await?;
    println!("set + get {key}: {back:?}");
    let missing: Option<Product> = cache.get("cache:product:404").await?;
    println!("get of a key never set: {missing:?}");
    // A value read as another type is a miss (and a warning), never garbage or a panic.
    let wrong: Option<String> = cache.get(&key).await?;
    println!("get {key} as a String: {wrong:?}\n");

    // 3. TTL presets: sessions 24 h, API responses 10 min, user preferences 7 days, and
    //    presets of your own (here `reports`, or CACHE_TTL_<NAME>=<secs> in the environment).
    for ttl in [
        Ttl::Session,
        Ttl::Api,
        Ttl::UserPreferences,
        Ttl::named("reports"),
        Ttl::secs(30),
    ] {
        println!("{ttl:?} = {:?}", cache.ttl_presets().base(&ttl)?);
    }
    let theme_key = Key::user(7, "theme")?;
    cache
        .set(&theme_key, &"dark".to_string(), Ttl::UserPreferences)
        .await?;
    println!(
        "{theme_key} expires in {} s\n",
        cache.ttl(&theme_key).await?.unwrap_or_default().as_secs()
    );

    // 4. Read-through: the loader runs on a miss only, and concurrent callers of one key
    //    share a single run (single-flight). Loader errors are returned, never cached.
    let queries = AtomicUsize::new(0);
    let key = Key::cache("product", 7)?;
    for round in 1..=3 {
        let start = Instant::now();
        let p = cache
            .get_or_load(&key, Ttl::Api, || load_product(7, &queries))
            .await?;
        println!(
            "get_or_load round {round}: {} in {:?} (queries so far: {})",
            p.name,
            start.elapsed(),
            queries.load(Ordering::SeqCst)
        );
    }
    let key9 = Key::cache("product", 9)?;
    let together = concurrent_reads(&cache, &key9, &queries).await?;
    println!(
        "10 concurrent get_or_load calls for {key9}: {} values, {} query\n",
        together,
        queries.load(Ordering::SeqCst) - 1
    );

    // 5. Counters (plain integers in Redis, atomic everywhere).
    let counter = Key::cache("visits", "home")?;
    cache.incr(&counter).await?;
    let n = cache.incr_by(&counter, 4).await?;
    println!("counter {counter} = {n}");

    // 6. exists, delete, scan.
    println!("exists {theme_key}: {}", cache.exists(&theme_key).await?);
    println!(
        "keys of user 7: {:?}",
        cache.scan(&Key::user_pattern(7)?).await?
    );
    cache.delete(&theme_key).await?;
    println!(
        "after delete, exists: {}\n",
        cache.exists(&theme_key).await?
    );

    // 7. Stats: where operations go, hits and misses per tier, loads, fallback counters.
    println!("stats: {}", serde_json::to_string_pretty(&cache.stats())?);

    for k in [Key::cache("product", 42)?, key, key9, counter] {
        cache.delete(&k).await?;
    }
    Ok(())
}

/// Ten concurrent reads of one key through `get_or_load`; returns how many got a value.
async fn concurrent_reads(
    cache: &Cache,
    key: &str,
    queries: &AtomicUsize,
) -> Result<usize, Infallible> {
    let calls = (0..10).map(|_| cache.get_or_load(key, Ttl::Api, || load_product(9, queries)));
    let values = futures::future::join_all(calls).await;
    values.into_iter().try_fold(0, |n, v| v.map(|_| n + 1))
}
