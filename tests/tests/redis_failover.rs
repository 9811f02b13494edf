//! Redis lost and found again: killed, down at start, paused, slow, connections killed,
//! out of memory, wrong password. Operations never fail or hang; outage writes reach Redis.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_sdk::{Cache, Ttl};
use cache_sdk_tests::{wait_until, RedisServer};

/// Generous bound that only catches hangs (timeouts are 100 ms); not a performance claim.
const HANG: Duration = Duration::from_secs(2);

async fn cache_on(server: &RedisServer) -> Cache {
    Cache::builder()
        .redis_url(server.url())
        .build()
        .await
        .expect("build")
}

async fn back_on_redis(cache: &Cache) -> Duration {
    let c = cache.clone();
    wait_until(Duration::from_secs(10), move || c.stats().connected)
        .await
        .expect("the cache did not return to Redis")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_server_falls_back_and_returns_with_outage_writes() {
    cache_sdk_tests::init_tracing();
    let mut server = RedisServer::start();
    let cache = cache_on(&server).await;
    assert!(cache.stats().connected);
    cache.set("cache:before:1", &1u32, Ttl::Api).await.unwrap();

    server.kill();
    // Every operation keeps succeeding, on the fallback.
    cache.set("cache:during:1", &10u32, Ttl::Api).await.unwrap();
    cache
        .set("cache:during:2", &20u32, Ttl::secs(2))
        .await
        .unwrap();
    cache
        .set("cache:during:gone", &30u32, Ttl::Api)
        .await
        .unwrap();
    cache.delete("cache:during:gone").await.unwrap();
    cache.incr_by("cache:counter:visits", 5).await.unwrap();
    assert_eq!(cache.get::<u32>("cache:during:1").await.unwrap(), Some(10));
    let s = cache.stats();
    assert!(
        !s.connected && s.using_fallback && s.in_memory_keys >= 2,
        "{s:?}"
    );
    assert!(s.replay_pending >= 4, "{s:?}");

    server.restart();
    back_on_redis(&cache).await;
    let s = cache.stats();
    assert_eq!(s.replay_pending, 0);
    assert!(s.replayed >= 4, "{s:?}");
    // The outage writes are in Redis, with their TTLs; the delete stayed a delete.
    let other = cache_on(&server).await;
    assert_eq!(other.get::<u32>("cache:during:1").await.unwrap(), Some(10));
    assert_eq!(other.get::<u32>("cache:during:2").await.unwrap(), Some(20));
    assert!(server.pttl("cache:during:2").await <= 2000);
    assert!(server.pttl("cache:during:1").await > 590_000);
    assert_eq!(server.pttl("cache:during:gone").await, -2);
    assert_eq!(
        other.counter("cache:counter:visits").await.unwrap(),
        Some(5)
    );
    // The fallback was emptied.
    assert_eq!(cache.stats().in_memory_keys, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_at_start_then_switches_to_redis() {
    cache_sdk_tests::init_tracing();
    let mut server = RedisServer::start();
    let url = server.url();
    server.kill();
    let started = Instant::now();
    let cache = Cache::builder().redis_url(&url).build().await.unwrap();
    assert!(started.elapsed() < HANG);
    assert!(!cache.stats().connected && !cache.is_ready());
    cache
        .set("cache:early:1", &"x".to_string(), Ttl::Api)
        .await
        .unwrap();

    server.restart();
    back_on_redis(&cache).await;
    assert!(cache.is_ready());
    assert!(server.get_raw("cache:early:1").await.is_some());

    // require_redis turns an unreachable Redis into a build error.
    server.kill();
    let err = Cache::builder()
        .redis_url(&url)
        .require_redis(true)
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(err, cache_sdk::BuildError::RedisRequired(_)),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_value_in_redis_wins_over_older_outage_write() {
    cache_sdk_tests::init_tracing();
    let mut server = RedisServer::start();
    let a = cache_on(&server).await;
    server.kill();
    a.set("cache:conflict:1", &"old from A".to_string(), Ttl::Api)
        .await
        .unwrap();
    a.set("cache:conflict:2", &"only A".to_string(), Ttl::Api)
        .await
        .unwrap();
    // Redis comes back; another instance writes first, later than A's outage write.
    server.restart();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let b = Cache::builder()
        .redis_url(server.url())
        .build()
        .await
        .unwrap();
    b.set("cache:conflict:1", &"newer from B".to_string(), Ttl::Api)
        .await
        .unwrap();
    back_on_redis(&a).await;
    a.clear_local();
    assert_eq!(
        a.get::<String>("cache:conflict:1")
            .await
            .unwrap()
            .as_deref(),
        Some("newer from B")
    );
    assert_eq!(
        a.get::<String>("cache:conflict:2")
            .await
            .unwrap()
            .as_deref(),
        Some("only A")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l1_is_cleared_after_an_outage() {
    cache_sdk_tests::init_tracing();
    let mut server = RedisServer::start();
    let cache = cache_on(&server).await;
    cache.set("cache:l1:1", &1u32, Ttl::Api).await.unwrap();
    // The cache hears of its own write through the invalidation link, which drops it from
    // L1; a read puts it back.
    let c = cache.clone();
    wait_until(HANG, move || c.stats().invalidations > 0)
        .await
        .unwrap();
    assert_eq!(cache.get::<u32>("cache:l1:1").await.unwrap(), Some(1));
    server.kill();
    // L1 still serves during the outage (Redis is gone, so nothing newer can be known).
    assert_eq!(cache.get::<u32>("cache:l1:1").await.unwrap(), Some(1));
    // A write during the outage is what makes the cache notice it.
    cache.set("cache:l1:2", &2u32, Ttl::Api).await.unwrap();
    assert!(!cache.stats().connected);
    server.restart();
    back_on_redis(&cache).await;
    // Redis lost the key in the crash; L1 must not keep answering with it.
    assert_eq!(cache.get::<u32>("cache:l1:1").await.unwrap(), None);
}

/// Runs `tasks` concurrent loops of mixed operations until `stop`, and returns
/// (operations, errors, worst latency).
async fn load(
    cache: Cache,
    tasks: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> (u64, u64, Duration) {
    let ops = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let worst = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let (cache, stop, ops, errors, worst) = (
                cache.clone(),
                stop.clone(),
                ops.clone(),
                errors.clone(),
                worst.clone(),
            );
            tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let key = format!("cache:load:{t}:{}", i % 50);
                    let started = Instant::now();
                    let ok = match i % 4 {
                        0 => cache.set(&key, &i, Ttl::Api).await.is_ok(),
                        1 => cache.get::<u64>(&key).await.is_ok(),
                        2 => cache
                            .get_or_load(&key, Ttl::Api, || async { Ok::<_, ()>(i) })
                            .await
                            .is_ok(),
                        _ => cache.incr(&format!("cache:load:count:{t}")).await.is_ok(),
                    };
                    let us = started.elapsed().as_micros() as u64;
                    worst.fetch_max(us, Ordering::Relaxed);
                    ops.fetch_add(1, Ordering::Relaxed);
                    if !ok {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.await.unwrap();
    }
    (
        ops.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        Duration::from_micros(worst.load(Ordering::Relaxed)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_under_load_gives_no_errors_and_no_hang() {
    cache_sdk_tests::init_tracing();
    let mut server = RedisServer::start();
    let cache = cache_on(&server).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let runner = tokio::spawn(load(cache.clone(), 64, stop.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.kill();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!cache.stats().connected);
    server.restart();
    let recovery = back_on_redis(&cache).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (ops, errors, worst) = runner.await.unwrap();
    tracing::warn!(ops, errors, ?worst, ?recovery, "kill under load");
    assert_eq!(errors, 0);
    assert!(ops > 1000, "{ops}");
    assert!(worst < HANG, "{worst:?}");
    // Every counter written during the outage made it to Redis (no lost increments):
    // each task's counter in Redis is at least what was counted through the outage.
    let s = cache.stats();
    assert_eq!(s.replay_pending, 0, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_server_counts_as_down_not_as_a_wait() {
    cache_sdk_tests::init_tracing();
    let server = RedisServer::start();
    let cache = cache_on(&server).await;
    cache.set("cache:p:1", &1u32, Ttl::Api).await.unwrap();
    server.pause();
    let started = Instant::now();
    cache.set("cache:p:2", &2u32, Ttl::Api).await.unwrap();
    let first = started.elapsed();
    // Breaker open: the next calls do not wait for the timeout at all.
    let started = Instant::now();
    for i in 0..100 {
        cache
            .set(&format!("cache:p:x{i}"), &i, Ttl::Api)
            .await
            .unwrap();
    }
    let next_hundred = started.elapsed();
    assert!(
        first < HANG && next_hundred < HANG,
        "{first:?} {next_hundred:?}"
    );
    assert!(!cache.stats().connected);
    server.resume();
    back_on_redis(&cache).await;
    assert!(server.get_raw("cache:p:2").await.is_some());
    assert!(server.get_raw("cache:p:x99").await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_server_counts_as_down() {
    cache_sdk_tests::init_tracing();
    let server = RedisServer::start();
    let cache = cache_on(&server).await;
    let blocker = tokio::task::spawn_blocking({
        let port = server.port();
        move || {
            std::process::Command::new("redis-cli")
                .args(["-p", &port.to_string(), "DEBUG", "SLEEP", "1"])
                .output()
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    cache.set("cache:slow:1", &1u32, Ttl::Api).await.unwrap();
    assert!(started.elapsed() < HANG);
    blocker.await.unwrap().unwrap();
    back_on_redis(&cache).await;
    assert!(server.get_raw("cache:slow:1").await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_connections_are_replaced() {
    cache_sdk_tests::init_tracing();
    let server = RedisServer::start();
    let cache = cache_on(&server).await;
    cache.set("cache:ck:1", &1u32, Ttl::Api).await.unwrap();
    server.cli(&["CLIENT", "KILL", "TYPE", "normal"]);
    for i in 0..20u32 {
        cache
            .set(&format!("cache:ck:{i}"), &i, Ttl::Api)
            .await
            .unwrap();
    }
    back_on_redis(&cache).await;
    cache.clear_local();
    assert_eq!(cache.get::<u32>("cache:ck:19").await.unwrap(), Some(19));
    assert!(server.get_raw("cache:ck:19").await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_memory_is_a_typed_error() {
    cache_sdk_tests::init_tracing();
    let server =
        RedisServer::start_with(&["--maxmemory", "2mb", "--maxmemory-policy", "noeviction"]);
    let cache = cache_on(&server).await;
    let chunk = vec![7u8; 256 * 1024];
    let mut oom = None;
    for i in 0..64 {
        if let Err(e) = cache.set(&format!("cache:big:{i}"), &chunk, Ttl::Api).await {
            oom = Some(e);
            break;
        }
    }
    let err = oom.expect("redis never ran out of memory");
    assert!(
        matches!(err, cache_sdk::Error::Backend(ref m) if m.contains("OOM")),
        "{err}"
    );
    // Reads keep working and Redis stays the store.
    assert!(cache.stats().connected);
    assert!(cache.get::<Vec<u8>>("cache:big:0").await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_falls_back_without_leaking_it() {
    cache_sdk_tests::init_tracing();
    let server = RedisServer::start_with(&["--requirepass", "right-password"]);
    let bad = format!("redis://:wrong-password@127.0.0.1:{}", server.port());
    let cache = Cache::builder().redis_url(&bad).build().await.unwrap();
    assert!(!cache.stats().connected);
    cache.set("cache:pw:1", &1u32, Ttl::Api).await.unwrap();
    assert_eq!(cache.get::<u32>("cache:pw:1").await.unwrap(), Some(1));
    let debug = format!("{cache:?}");
    assert!(!debug.contains("wrong-password"), "{debug}");
    let err = Cache::builder()
        .redis_url(&bad)
        .require_redis(true)
        .build()
        .await
        .unwrap_err()
        .to_string();
    assert!(!err.contains("wrong-password"), "{err}");

    let good = format!("redis://:right-password@127.0.0.1:{}", server.port());
    let cache = Cache::builder().redis_url(&good).build().await.unwrap();
    assert!(cache.stats().connected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_db_is_honoured() {
    let server = RedisServer::start();
    let cfg = cache_sdk::CacheConfig::from_vars([
        ("REDIS_HOST", "127.0.0.1".to_string()),
        ("REDIS_PORT", server.port().to_string()),
        ("REDIS_DB", "5".to_string()),
    ])
    .unwrap();
    let cache = Cache::builder().config(cfg).build().await.unwrap();
    assert!(cache.stats().connected);
    cache.set("cache:db:1", &1u32, Ttl::Api).await.unwrap();
    assert_eq!(server.cli(&["-n", "5", "EXISTS", "cache:db:1"]), "1");
    assert_eq!(server.cli(&["-n", "0", "EXISTS", "cache:db:1"]), "0");
}
