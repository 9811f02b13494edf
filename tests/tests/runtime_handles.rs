//! A cache outlives the Tokio runtime it was built on: built in runtime A (as in one
//! `#[tokio::test]`, or a `LazyLock` first touched there), used in runtime B after A is
//! gone. It must reconnect to Redis and restart its background tasks (the probe, the
//! coherence link) on B, without counting or logging an outage; outside any runtime it
//! must fail with a clear error, not panic.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cache_sdk::{BuildError, Cache, Error, Ttl};
use cache_sdk_tests::{wait_until, RedisServer};

/// Generous bound: catches a missing invalidation or reconnection, not a slow one.
const BOUND: Duration = Duration::from_secs(5);

/// A runtime like the one `#[tokio::test]` makes.
fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn multi_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// What the stats serialize to, so that the checks do not depend on the field types.
fn stat(cache: &Cache, field: &str) -> serde_json::Value {
    serde_json::to_value(cache.stats()).expect("stats")[field].clone()
}

async fn build(server: &RedisServer) -> Cache {
    let cache = Cache::builder()
        .redis_url(server.url())
        .require_redis(true)
        .build()
        .await
        .expect("cache");
    coherent(&cache).await;
    cache
}

/// Waits until the invalidation link tracks writes.
async fn coherent(cache: &Cache) {
    let c = cache.clone();
    assert!(
        wait_until(BOUND, move || stat(&c, "coherence") == "tracking")
            .await
            .is_some(),
        "coherence is {}",
        stat(cache, "coherence")
    );
}

/// Reads `key` until the value comes from L1.
async fn hold(cache: &Cache, key: &str) -> Option<u32> {
    for _ in 0..100 {
        let v = cache.get::<u32>(key).await.expect("get");
        let hits = cache.stats().l1_hits;
        let again = cache.get::<u32>(key).await.expect("get");
        if cache.stats().l1_hits > hits && again == v {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{key} never came from L1: {:?}", cache.stats());
}

/// Log lines, captured for the current thread (all the work of a current-thread runtime
/// runs on the thread that blocks on it).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(
            &self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
        .into_owned()
    }
}

/// Built and written in runtime A; A shut down; read, written and kept coherent in B.
fn moves_to_the_next_runtime(a: tokio::runtime::Runtime, b: tokio::runtime::Runtime) {
    let server = RedisServer::start();
    let cache = a.block_on(async {
        let cache = build(&server).await;
        cache.set("cache:rt:1", &1u32, Ttl::Api).await.expect("set");
        assert_eq!(hold(&cache, "cache:rt:1").await, Some(1));
        cache
    });
    drop(a);
    // Nothing can tell L1 about changes any more: it must not serve until the link is back.
    assert_eq!(stat(&cache, "coherence"), "down");

    b.block_on(async {
        assert_eq!(cache.get::<u32>("cache:rt:1").await.expect("get"), Some(1));
        let s = cache.stats();
        assert!(s.connected && !s.using_fallback, "{s:?}");
        assert_eq!(stat(&cache, "store"), "redis");
        assert_eq!(
            (s.outages, s.fallback_ops, s.backend_errors),
            (0, 0, 0),
            "{s:?}"
        );

        cache.set("cache:rt:2", &2u32, Ttl::Api).await.expect("set");
        assert!(server.get_raw("cache:rt:2").await.is_some());
        coherent(&cache).await;

        // An invalidation from another cache evicts L1 again.
        assert_eq!(hold(&cache, "cache:rt:1").await, Some(1));
        let other = build(&server).await;
        other
            .set("cache:rt:1", &10u32, Ttl::Api)
            .await
            .expect("set");
        let mut seen = None;
        for _ in 0..(BOUND.as_millis() / 10) {
            seen = cache.get::<u32>("cache:rt:1").await.expect("get");
            if seen == Some(10) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(seen, Some(10), "{:?}", cache.stats());
        assert!(cache.stats().invalidations >= 1);
        let s = cache.stats();
        assert_eq!((s.outages, s.fallback_ops), (0, 0), "{s:?}");
    });
}

#[test]
fn a_cache_built_in_one_test_runtime_works_in_the_next() {
    cache_sdk_tests::init_tracing();
    moves_to_the_next_runtime(current_thread(), current_thread());
}

#[test]
fn a_cache_moves_between_multi_thread_runtimes() {
    cache_sdk_tests::init_tracing();
    moves_to_the_next_runtime(multi_thread(), multi_thread());
}

#[test]
fn moving_runtimes_is_not_logged_as_an_outage() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("cache_sdk=info")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let server = RedisServer::start();
    tracing::subscriber::with_default(subscriber, || {
        let cache = current_thread().block_on(build(&server));
        current_thread().block_on(async {
            cache
                .set("cache:log:1", &1u32, Ttl::Api)
                .await
                .expect("set");
            assert_eq!(cache.get::<u32>("cache:log:1").await.expect("get"), Some(1));
        });
    });
    let text = logs.text();
    assert!(
        text.contains("they now run on the current runtime"),
        "{text}"
    );
    for outage in ["unavailable", "broken pipe", "fallback", "WARN", "ERROR"] {
        assert!(!text.contains(outage), "{outage:?} logged:\n{text}");
    }
}

#[test]
fn redis_lost_after_the_move_comes_back_through_the_new_runtime() {
    cache_sdk_tests::init_tracing();
    let mut server = RedisServer::start();
    let cache = current_thread().block_on(build(&server));
    current_thread().block_on(async {
        server.kill();
        // A real outage now: the fallback serves and it counts.
        cache
            .set("cache:rt:down", &7u32, Ttl::Api)
            .await
            .expect("set");
        let s = cache.stats();
        assert!(!s.connected && s.outages == 1, "{s:?}");
        server.restart();
        // The probe runs on this runtime: Redis comes back and the write is replayed.
        let c = cache.clone();
        assert!(
            wait_until(BOUND, move || c.stats().connected)
                .await
                .is_some(),
            "{:?}",
            cache.stats()
        );
        assert!(server.get_raw("cache:rt:down").await.is_some());
        assert_eq!(cache.stats().replayed, 1);
        coherent(&cache).await;
    });
}

#[test]
fn without_a_runtime_calls_fail_clearly() {
    cache_sdk_tests::init_tracing();
    let server = RedisServer::start();
    let cache = current_thread().block_on(build(&server));
    match futures::executor::block_on(cache.get::<u32>("cache:rt:none")) {
        Err(Error::NoRuntime) => {}
        other => panic!("expected NoRuntime, got {other:?}"),
    }
    let built = futures::executor::block_on(Cache::builder().redis_url(server.url()).build());
    assert!(matches!(built, Err(BuildError::NoRuntime)), "{built:?}");
    // A cache without Redis needs no runtime.
    let memory = Cache::in_memory();
    futures::executor::block_on(memory.set("cache:rt:mem", &1u32, Ttl::Api)).expect("set");
    // And the cache still works once a runtime is at hand.
    current_thread().block_on(async {
        cache
            .set("cache:rt:none", &3u32, Ttl::Api)
            .await
            .expect("set");
        assert_eq!(
            cache.get::<u32>("cache:rt:none").await.expect("get"),
            Some(3)
        );
        assert!(cache.stats().connected);
    });
}

/// What `#[cached]` functions use: a global cache installed from one runtime (say, the
/// first `#[tokio::test]`), called from the next.
#[cache_sdk::cached(key = "cache:square:{n}", ttl = "api")]
async fn square(n: u32) -> u32 {
    n * n
}

#[test]
fn a_global_cache_installed_in_one_runtime_serves_the_next() {
    cache_sdk_tests::init_tracing();
    let server = RedisServer::start();
    current_thread().block_on(async {
        cache_sdk::install(build(&server).await).expect("installed once in this binary");
        assert_eq!(square(3).await, 9);
    });
    current_thread().block_on(async {
        assert_eq!(square(4).await, 16);
        assert!(server.get_raw("cache:square:4").await.is_some());
        let s = cache_sdk::global().stats();
        assert!(s.connected && s.outages == 0, "{s:?}");
        coherent(cache_sdk::global()).await;
    });
}
