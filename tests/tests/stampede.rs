//! The distributed stampede lock on real Redis: several `Cache` instances, one load; a
//! holder that dies; the hard timeout; the wake-up by the invalidation link; no Redis.
//! Time bounds only catch hangs (a loaded machine runs these).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_sdk::{Cache, LoadError, LoadOptions, Stampede, Ttl};
use cache_sdk_tests::{wait_until, RedisCluster, RedisServer};

async fn cache_with(server: &RedisServer, defaults: LoadOptions) -> Cache {
    Cache::builder()
        .redis_url(server.url())
        .require_redis(true)
        .load_options(defaults)
        .build()
        .await
        .expect("build")
}

fn distributed() -> LoadOptions {
    LoadOptions::new()
        .stampede(Stampede::Distributed)
        .stampede_lock_ttl(Duration::from_millis(800))
}

/// The distributed mode with a short lock, looked at every 50 ms by waiters.
fn short_lock(lock_ttl_ms: u64) -> LoadOptions {
    distributed()
        .stampede_lock_ttl(Duration::from_millis(lock_ttl_ms))
        .stampede_poll(Duration::from_millis(50))
}

/// Two instances on `server` with the same load options.
async fn two_caches(server: &RedisServer, opts: &LoadOptions) -> (Cache, Cache) {
    (
        cache_with(server, opts.clone()).await,
        cache_with(server, opts.clone()).await,
    )
}

/// Whether the stampede lock of `key` is held within 2 s (polled every 10 ms).
async fn lock_held(server: &RedisServer, key: &str) -> bool {
    for _ in 0..200 {
        if server.pttl(&format!("{key}:~lock")).await > 0 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// `callers` concurrent reads of `key` on each cache, with a loader taking `load_time`;
/// returns how many loads ran in total.
async fn storm(caches: &[Cache], key: &'static str, callers: usize, load_time: Duration) -> usize {
    let loads = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for cache in caches {
        for _ in 0..callers {
            let (cache, loads) = (cache.clone(), loads.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_load_entry(key, Ttl::Api, move || async move {
                        loads.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(load_time).await;
                        Ok::<_, String>(42u32)
                    })
                    .await
            }));
        }
    }
    for t in tasks {
        let e = t.await.unwrap().unwrap();
        assert_eq!(**e.value(), 42);
    }
    loads.load(Ordering::SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_on_a_cold_key_make_one_load() {
    cache_sdk_tests::init_tracing();
    let server = RedisServer::start();
    let mut caches = Vec::new();
    for _ in 0..3 {
        caches.push(cache_with(&server, distributed()).await);
    }
    let loads = storm(&caches, "cache:st:cold", 50, Duration::from_millis(200)).await;
    assert_eq!(loads, 1, "one load across three instances");
    // The lock is gone once the value is stored.
    assert_eq!(server.pttl("cache:st:cold:~lock").await, -2);

    // Without the lock, each instance loads once (in-process single-flight only).
    let mut local = Vec::new();
    for _ in 0..3 {
        local.push(cache_with(&server, LoadOptions::new()).await);
    }
    let loads = storm(&local, "cache:st:local", 50, Duration::from_millis(200)).await;
    assert!((1..=3).contains(&loads), "{loads}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_is_woken_by_the_invalidation_link_not_the_poll() {
    let server = RedisServer::start();
    // The poll is far longer than the test: only the push can wake the waiter in time.
    let opts = distributed()
        .stampede_poll(Duration::from_secs(30))
        .stampede_lock_ttl(Duration::from_secs(30));
    let a = cache_with(&server, opts.clone()).await;
    let b = cache_with(&server, opts.clone()).await;
    let loads = Arc::new(AtomicUsize::new(0));
    let l = loads.clone();
    let leader = tokio::spawn(async move {
        a.get_or_load_entry("cache:st:wake", Ttl::Api, move || async move {
            l.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok::<_, String>(7u32)
        })
        .await
        .map(|e| **e.value())
    });
    wait_until(Duration::from_secs(5), || loads.load(Ordering::SeqCst) == 1)
        .await
        .expect("A loads");
    let start = Instant::now();
    let l = loads.clone();
    let e = b
        .get_or_load_entry("cache:st:wake", Ttl::Api, move || async move {
            l.fetch_add(1, Ordering::SeqCst);
            Ok::<_, String>(8u32)
        })
        .await
        .unwrap();
    assert_eq!(**e.value(), 7, "B got A's value");
    assert!(!e.was_loaded());
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(leader.await.unwrap().unwrap(), 7);
    assert_eq!(loads.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_killed_mid_load_hands_over_after_the_lock_expires() {
    let server = RedisServer::start();
    let opts = short_lock(700);
    let (a, b) = two_caches(&server, &opts).await;
    let key = "cache:st:killed";
    let a2 = a.clone();
    let stuck = tokio::spawn(async move {
        a2.get_or_load_entry(key, Ttl::Api, || {
            std::future::pending::<Result<u32, String>>()
        })
        .await
        .map(|e| **e.value())
    });
    // A holds the lock, and its loader never completes.
    assert!(lock_held(&server, key).await, "A took the lock");
    // A dies: its call and its loader task go away with the cache.
    stuck.abort();
    let _ = stuck.await;
    drop(a);
    let start = Instant::now();
    let e = b
        .get_or_load_entry(key, Ttl::Api, || async { Ok::<_, String>(5u32) })
        .await
        .unwrap();
    assert_eq!(**e.value(), 5);
    assert!(e.was_loaded(), "B took over and loaded");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(server.pttl(&format!("{key}:~lock")).await, -2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_never_waits_past_the_hard_timeout() {
    let server = RedisServer::start();
    let slow = distributed().stampede_lock_ttl(Duration::from_secs(10));
    let a = cache_with(&server, slow.clone()).await;
    let b = cache_with(&server, slow.clone()).await;
    let key = "cache:st:hard";
    let a2 = a.clone();
    let holder = tokio::spawn(async move {
        a2.get_or_load_entry(key, Ttl::Api, || async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            Ok::<_, String>(1u32)
        })
        .await
        .map(|e| **e.value())
    });
    assert!(lock_held(&server, key).await);
    let hard = Duration::from_millis(300);
    let start = Instant::now();
    let r = b
        .get_or_load_entry_with(key, Ttl::Api, &slow.hard_timeout(hard), || async {
            Ok::<_, String>(2u32)
        })
        .await;
    let waited = start.elapsed();
    assert!(matches!(r, Err(LoadError::Timeout(_))), "{r:?}");
    assert!(waited >= hard, "{waited:?}");
    assert!(waited < Duration::from_millis(1500), "{waited:?}");
    assert_eq!(b.stats().hard_timeouts, 1);
    assert_eq!(b.stats().loads, 0, "B never loaded");
    assert_eq!(holder.await.unwrap().unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loader_slower_than_the_lock_ttl_keeps_its_lock_until_it_stores() {
    let server = RedisServer::start();
    let opts = short_lock(600);
    let (a, b) = two_caches(&server, &opts).await;
    let key = "cache:st:renewed";
    let a2 = a.clone();
    let holder = tokio::spawn(async move {
        a2.get_or_load_entry(key, Ttl::Api, || async {
            // Four lock lifetimes: without renewal, B would take the expired lock and load.
            tokio::time::sleep(Duration::from_millis(2400)).await;
            Ok::<_, String>(1u32)
        })
        .await
        .map(|e| **e.value())
    });
    assert!(lock_held(&server, key).await, "A took the lock");
    let e = b
        .get_or_load_entry(key, Ttl::Api, || async { Ok::<_, String>(2u32) })
        .await
        .unwrap();
    assert_eq!(**e.value(), 1, "B waited for A's value");
    assert!(!e.was_loaded());
    assert_eq!(b.stats().loads, 0, "B never loaded");
    assert_eq!(holder.await.unwrap().unwrap(), 1);
    assert_eq!(server.pttl(&format!("{key}:~lock")).await, -2, "released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_loader_is_renewed_only_until_its_hard_timeout() {
    let server = RedisServer::start();
    let opts = short_lock(600);
    let (a, b) = two_caches(&server, &opts).await;
    let key = "cache:st:hung";
    let hung = opts.clone().hard_timeout(Duration::from_millis(900));
    let r = a
        .get_or_load_entry_with(key, Ttl::Api, &hung, || {
            std::future::pending::<Result<u32, String>>()
        })
        .await;
    assert!(matches!(r, Err(LoadError::Timeout(_))), "{r:?}");
    // A's loader still runs, but its lock is no longer renewed: B takes it and loads.
    let start = Instant::now();
    let e = b
        .get_or_load_entry_with(
            key,
            Ttl::Api,
            &opts.clone().hard_timeout(Duration::from_secs(20)),
            || async { Ok::<_, String>(3u32) },
        )
        .await
        .unwrap();
    assert_eq!(**e.value(), 3);
    assert!(e.was_loaded(), "B loaded once A's lock ran out");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_it_degrades_to_the_in_process_single_flight() {
    // No Redis configured.
    let cache = Cache::builder()
        .load_options(distributed())
        .build()
        .await
        .expect("build");
    assert_eq!(
        storm(&[cache], "cache:st:mem", 50, Duration::from_millis(100)).await,
        1
    );
    // Redis configured but down: each instance loads once, nobody hangs.
    let mut server = RedisServer::start();
    let a = cache_with(&server, distributed()).await;
    let b = cache_with(&server, distributed()).await;
    server.kill();
    let start = Instant::now();
    let loads = storm(&[a, b], "cache:st:down", 20, Duration::from_millis(100)).await;
    assert!((1..=2).contains(&loads), "{loads}");
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_two_instances_make_one_load() {
    let cluster = RedisCluster::start(3, 0);
    let build = || {
        Cache::builder()
            .redis_cluster(cluster.seeds())
            .connect_timeout(Duration::from_secs(2))
            .require_redis(true)
            .load_options(distributed())
            .build()
    };
    let caches = [build().await.expect("build"), build().await.expect("build")];
    let loads = storm(&caches, "cache:st:cluster", 30, Duration::from_millis(200)).await;
    assert_eq!(loads, 1);
}

/// The origin behind the `#[cached]` function below: counts its calls.
static MACRO_LOADS: AtomicUsize = AtomicUsize::new(0);

tokio::task_local! {
    /// The instance a task plays (three caches in one test process).
    static INSTANCE: Cache;
}

#[cache_sdk::cached(
    key = "cache:st:macro:{id}",
    ttl = "api",
    cache = &INSTANCE.get(),
    stampede = "distributed"
)]
async fn product_name(id: u64) -> String {
    MACRO_LOADS.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(200)).await;
    format!("product {id}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_macro_option_takes_the_lock_across_instances() {
    let server = RedisServer::start();
    let caches = [
        cache_with(&server, LoadOptions::new()).await,
        cache_with(&server, LoadOptions::new()).await,
        cache_with(&server, LoadOptions::new()).await,
    ];
    let mut tasks = Vec::new();
    for cache in &caches {
        for _ in 0..20 {
            let cache = cache.clone();
            tasks.push(tokio::spawn(INSTANCE.scope(cache, product_name(7))));
        }
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), "product 7");
    }
    assert_eq!(MACRO_LOADS.load(Ordering::SeqCst), 1);
}
