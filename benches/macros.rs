//! `#[cached]` beside what a user would write instead, on hits (the path that matters):
//!
//! - `l1_hit`: the value is in the process. `#[cached]` vs a hand-written `cache.get` of the
//!   same key (and a hand-written `get_or_load`) vs the `cached` crate's `#[cached]` (an
//!   in-memory TTL store behind a mutex).
//! - `l2_hit`: L1 is disabled, so every call reads Redis. `#[cached]` vs a hand-written
//!   `cache.get` vs the `cached` crate's `#[concurrent_cached]` on its `AsyncRedisCache`.
//!
//! Redis is a `redis-server` started on a free loopback port for the run.
//!
//! Run: `cargo bench -p cache-sdk-benches --bench macros`

use std::hint::black_box;
use std::sync::OnceLock;
use std::time::Duration;

use cache_sdk::{cached, Cache, Ttl};
use cache_sdk_tests::RedisServer;
use criterion::{criterion_group, criterion_main, Criterion};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Product {
    id: u64,
    name: String,
    price_cents: i64,
}

#[derive(Debug, Clone, PartialEq)]
struct AppError(String);

fn load(id: u64) -> Result<Product, AppError> {
    Ok(Product {
        id,
        name: format!("Product {id}"),
        price_cents: 1999,
    })
}

static L1_CACHE: OnceLock<Cache> = OnceLock::new();
static L2_CACHE: OnceLock<Cache> = OnceLock::new();
static REDIS_URL: OnceLock<String> = OnceLock::new();

fn l1_cache() -> &'static Cache {
    L1_CACHE.get().expect("set up before the benchmarks")
}

fn l2_cache() -> &'static Cache {
    L2_CACHE.get().expect("set up before the benchmarks")
}

fn redis_url() -> String {
    REDIS_URL
        .get()
        .expect("set up before the benchmarks")
        .clone()
}

#[cached(key = "cache:product:{id}", ttl = "api", cache = l1_cache())]
async fn product(id: u64) -> Result<Product, AppError> {
    load(id)
}

#[cached(key = "cache:product:{id}", ttl = "api", cache = l2_cache())]
async fn product_l2(id: u64) -> Result<Product, AppError> {
    load(id)
}

#[cached::macros::cached(ttl_secs = 600)]
async fn product_cached_crate(id: u64) -> Result<Product, AppError> {
    load(id)
}

#[cached::macros::concurrent_cached(
    map_error = r##"|e| AppError(format!("{e:?}"))"##,
    ty = "cached::AsyncRedisCache<u64, Product>",
    create = r##" {
        cached::AsyncRedisCache::builder("bench:cached-crate:product")
            .ttl(Duration::from_secs(600))
            .connection_string(&redis_url())
            .build()
            .await
            .expect("the cached crate's redis store")
    } "##
)]
async fn product_cached_crate_redis(id: u64) -> Result<Product, AppError> {
    load(id)
}

fn loads() -> u64 {
    l1_cache().stats().loads + l2_cache().stats().loads
}

/// What a user writes by hand: read the key, load and store on a miss.
async fn hand_written(cache: &Cache, id: u64) -> Result<Product, AppError> {
    let key = format!("cache:product:{id}");
    if let Ok(Some(p)) = cache.get::<Product>(&key).await {
        return Ok(p);
    }
    let p = load(id)?;
    let _ = cache.set(&key, &p, Ttl::Api).await;
    Ok(p)
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let server = RedisServer::start();
    REDIS_URL.get_or_init(|| server.url());
    rt.block_on(async {
        let l1 = Cache::builder()
            .redis_url(server.url())
            .require_redis(true)
            .build()
            .await
            .expect("cache");
        let l2 = Cache::builder()
            .redis_url(server.url())
            .require_redis(true)
            .l1_capacity(0)
            .build()
            .await
            .expect("cache without L1");
        L1_CACHE.get_or_init(|| l1);
        L2_CACHE.get_or_init(|| l2);
        // Warm every path, so that each measures hits.
        product(42).await.expect("warm");
        product_l2(42).await.expect("warm");
        product_cached_crate(42).await.expect("warm");
        product_cached_crate_redis(42).await.expect("warm");
        // One body run in all: `product_l2` finds the value `product` wrote to Redis.
        assert_eq!(loads(), 1, "the benchmark must measure hits");
    });

    let mut g = c.benchmark_group("l1_hit");
    g.bench_function("cache_sdk #[cached]", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(product(black_box(42)).await) })
    });
    g.bench_function("hand-written cache.get", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(hand_written(l1_cache(), black_box(42)).await) })
    });
    g.bench_function("hand-written get_or_load", |b| {
        b.to_async(&rt).iter(|| async {
            let key = format!("cache:product:{}", black_box(42u64));
            black_box(
                l1_cache()
                    .get_or_load(&key, Ttl::Api, || async { load(42) })
                    .await,
            )
        })
    });
    g.bench_function("cached crate #[cached] (memory)", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(product_cached_crate(black_box(42)).await) })
    });
    g.finish();

    let mut g = c.benchmark_group("l2_hit");
    g.bench_function("cache_sdk #[cached]", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(product_l2(black_box(42)).await) })
    });
    g.bench_function("hand-written cache.get", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(hand_written(l2_cache(), black_box(42)).await) })
    });
    g.bench_function("cached crate #[concurrent_cached] (AsyncRedisCache)", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(product_cached_crate_redis(black_box(42)).await) })
    });
    g.finish();

    assert_eq!(loads(), 1, "every measured call was a hit");
    drop(server);
}

criterion_group!(macros, benches);
criterion_main!(macros);
