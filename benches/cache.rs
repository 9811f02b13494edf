//! The typed cache beside what a user would use instead, in the same run:
//!
//! - `l1_hit`: a value in the process. `Cache::get_arc` and `Cache::get` (which clones the
//!   value) vs a raw `moka::future::Cache::get` of the same `Arc` value.
//! - `l2_hit`: L1 disabled, so every call reads Redis. `Cache::get` vs a raw redis-rs `GET`
//!   on a multiplexed connection followed by a bincode decode of the same struct.
//! - `l2_concurrent_128`: 128 tasks each reading 20 keys from Redis at once (L1 disabled):
//!   `Cache::get_arc` vs raw redis-rs `GET` + bincode decode on one multiplexed
//!   connection (redis-rs' recommended way to share a connection). Reported as time per
//!   batch of 2,560 reads.
//!
//! Redis is a `redis-server` started on a free loopback port for the run.
//!
//! Run: `cargo bench -p cache-sdk-benches --bench cache`

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_sdk::{Cache, Ttl};
use cache_sdk_tests::RedisServer;
use criterion::{criterion_group, criterion_main, Criterion};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Product {
    id: u64,
    name: String,
    price_cents: i64,
    stock: u32,
}

fn product(id: u64) -> Product {
    Product {
        id,
        name: format!("Product {id}"),
        price_cents: 1999,
        stock: 5,
    }
}

const KEY: &str = "cache:product:42";
const TASKS: usize = 128;
const READS_PER_TASK: usize = 20;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn raw_decode(bytes: &[u8]) -> Product {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .expect("raw value decodes")
        .0
}

async fn raw_get(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> Product {
    let bytes: Vec<u8> = redis::cmd("GET")
        .arg(key)
        .query_async(conn)
        .await
        .expect("raw GET");
    raw_decode(&bytes)
}

fn l1_hit(c: &mut Criterion) {
    let rt = runtime();
    let cache = Cache::in_memory();
    let raw: moka::future::Cache<String, Arc<Product>> = moka::future::Cache::builder()
        .max_capacity(10_000)
        .time_to_live(Duration::from_secs(30))
        .build();
    let value = Arc::new(product(42));
    rt.block_on(async {
        cache
            .set_arc(KEY, value.clone(), Ttl::Api)
            .await
            .expect("set");
        raw.insert(KEY.to_owned(), value.clone()).await;
    });

    let mut g = c.benchmark_group("l1_hit");
    g.bench_function("raw moka::future::Cache::get", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(raw.get(black_box(KEY)).await) })
    });
    g.bench_function("cache_sdk get_arc", |b| {
        b.to_async(&rt).iter(|| async {
            black_box(cache.get_arc::<Product>(black_box(KEY)).await.expect("get"))
        })
    });
    g.bench_function("cache_sdk get (clones the value)", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(cache.get::<Product>(black_box(KEY)).await.expect("get")) })
    });
    // With the `metrics` feature (`--features metrics`): the same hit on a cache whose
    // counters go to a Prometheus recorder (the cache above has no recorder: no-op handles).
    #[cfg(feature = "metrics")]
    {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let recorded = metrics::with_local_recorder(&recorder, Cache::in_memory);
        rt.block_on(async {
            recorded
                .set_arc(KEY, value.clone(), Ttl::Api)
                .await
                .expect("set");
        });
        g.bench_function("cache_sdk get_arc (Prometheus recorder)", |b| {
            b.to_async(&rt).iter(|| async {
                black_box(
                    recorded
                        .get_arc::<Product>(black_box(KEY))
                        .await
                        .expect("get"),
                )
            })
        });
        assert!(recorder.handle().render().contains("cache_requests"));
    }
    g.finish();
}

struct Remote {
    _server: RedisServer,
    cache: Cache,
    conn: redis::aio::MultiplexedConnection,
}

async fn remote() -> Remote {
    let server = RedisServer::start();
    let cache = Cache::builder()
        .redis_url(server.url())
        .l1_capacity(0)
        .build()
        .await
        .expect("cache");
    let mut conn = server.conn().await;
    for id in 0..READS_PER_TASK as u64 {
        let key = format!("cache:product:{id}");
        cache.set(&key, &product(id), Ttl::Api).await.expect("set");
        let raw = bincode::serde::encode_to_vec(product(id), bincode::config::standard())
            .expect("encode");
        let _: () = redis::cmd("SET")
            .arg(format!("raw:product:{id}"))
            .arg(raw)
            .query_async(&mut conn)
            .await
            .expect("raw SET");
    }
    Remote {
        _server: server,
        cache,
        conn,
    }
}

fn l2_hit(c: &mut Criterion) {
    let rt = runtime();
    let r = rt.block_on(remote());
    let mut g = c.benchmark_group("l2_hit");
    g.bench_function("raw redis-rs GET + bincode decode", |b| {
        b.to_async(&rt).iter(|| {
            let mut conn = r.conn.clone();
            async move { black_box(raw_get(&mut conn, "raw:product:1").await) }
        })
    });
    g.bench_function("cache_sdk get", |b| {
        b.to_async(&rt).iter(|| async {
            black_box(
                r.cache
                    .get::<Product>("cache:product:1")
                    .await
                    .expect("get")
                    .expect("hit"),
            )
        })
    });
    g.finish();
}

/// Runs `TASKS` tasks of `READS_PER_TASK` reads each, `iters` times; returns the time.
async fn concurrent<F, Fut>(iters: u64, read: F) -> Duration
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let started = Instant::now();
    for _ in 0..iters {
        let tasks: Vec<_> = (0..TASKS)
            .map(|_| {
                let read = read.clone();
                tokio::spawn(async move {
                    for i in 0..READS_PER_TASK {
                        read(i).await;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("task");
        }
    }
    started.elapsed()
}

fn l2_concurrent(c: &mut Criterion) {
    let rt = runtime();
    let r = rt.block_on(remote());
    let keys: Arc<Vec<String>> = Arc::new(
        (0..READS_PER_TASK)
            .map(|i| format!("cache:product:{i}"))
            .collect(),
    );
    let raw_keys: Arc<Vec<String>> = Arc::new(
        (0..READS_PER_TASK)
            .map(|i| format!("raw:product:{i}"))
            .collect(),
    );
    let mut g = c.benchmark_group("l2_concurrent_128");
    g.sample_size(20);
    g.bench_function("raw redis-rs GET + bincode decode", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let conn = r.conn.clone();
            let keys = raw_keys.clone();
            concurrent(iters, move |i| {
                let mut conn = conn.clone();
                let keys = keys.clone();
                async move {
                    black_box(raw_get(&mut conn, &keys[i]).await);
                }
            })
        })
    });
    g.bench_function("cache_sdk get_arc", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let cache = r.cache.clone();
            let keys = keys.clone();
            concurrent(iters, move |i| {
                let cache = cache.clone();
                let keys = keys.clone();
                async move {
                    let v = cache.get_arc::<Product>(&keys[i]).await.expect("get");
                    black_box(v.expect("hit"));
                }
            })
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = l1_hit, l2_hit, l2_concurrent
}
criterion_main!(benches);
