//! Fail-safe, soft and hard loader timeouts and eager refresh, on a real redis-server.
//! Assertions are about counts and ordering; time bounds are generous (noisy machines).

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_sdk::{Cache, LoadError, LoadOptions, StaleReason, Ttl};
use cache_sdk_tests::{wait_until, RedisServer};

const TTL: Ttl = Ttl::secs(1);

async fn cache(server: &RedisServer) -> Cache {
    Cache::builder()
        .redis_url(server.url())
        .require_redis(true)
        .build()
        .await
        .expect("build")
}

fn fail_safe() -> LoadOptions {
    LoadOptions::new()
        .fail_safe(Duration::from_secs(3600))
        .fail_safe_throttle(Duration::from_millis(300))
}

/// Waits past the logical expiry of a value written with [`TTL`].
async fn let_it_expire() {
    tokio::time::sleep(Duration::from_millis(1200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_origin_is_answered_from_stale_and_asked_once_per_throttle_period() {
    let server = RedisServer::start();
    let cache = cache(&server).await;
    let opts = fail_safe();
    let key = "cache:fs:fail";
    let e = cache
        .get_or_load_entry_with(key, TTL, &opts, || async { Ok::<_, String>(1u32) })
        .await
        .unwrap();
    assert!(e.was_loaded() && !e.is_stale());
    // Kept physically for the fail-safe window, far past the TTL.
    assert!(server.pttl(key).await > 60_000);
    let_it_expire().await;
    // A plain read does not see an expired value.
    assert_eq!(cache.get::<u32>(key).await.unwrap(), None);

    let origin = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut errors = 0;
    let mut served = 0;
    let mut tasks = Vec::new();
    while start.elapsed() < Duration::from_millis(1000) {
        for _ in 0..8 {
            let (cache, origin, opts) = (cache.clone(), origin.clone(), opts.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_load_entry_with(key, TTL, &opts, move || async move {
                        origin.fetch_add(1, Ordering::SeqCst);
                        Err::<u32, _>("origin down".to_string())
                    })
                    .await
            }));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = start.elapsed();
    for t in tasks {
        match t.await.unwrap() {
            Ok(e) => {
                assert_eq!(**e.value(), 1);
                assert!(e.is_stale());
                served += 1;
            }
            Err(_) => errors += 1,
        }
    }
    assert_eq!(
        errors, 0,
        "no caller sees an error during the fail-safe window"
    );
    assert!(served > 0);
    // One origin call per throttle period (300 ms), plus one for the boundary.
    let calls = origin.load(Ordering::SeqCst);
    let periods = (elapsed.as_millis() / 300) as usize + 2;
    assert!(
        (1..=periods).contains(&calls),
        "{calls} origin calls in {elapsed:?}"
    );
    let stats = cache.stats();
    assert_eq!(stats.stale_served, served);
    assert_eq!(stats.load_errors, calls as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_origin_is_answered_from_stale_and_its_value_lands_everywhere() {
    let server = RedisServer::start();
    let a = cache(&server).await;
    let b = cache(&server).await;
    let opts = fail_safe().soft_timeout(Duration::from_millis(50));
    let key = "cache:fs:slow";
    a.get_or_load_entry_with(key, TTL, &opts, || async { Ok::<_, String>(1u32) })
        .await
        .unwrap();
    let_it_expire().await;

    let start = Instant::now();
    let e = a
        .get_or_load_entry_with(key, TTL, &opts, || async {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            Ok::<_, String>(2u32)
        })
        .await
        .unwrap();
    assert_eq!(
        (**e.value(), e.stale_reason()),
        (1, Some(StaleReason::SoftTimeout))
    );
    assert!(
        start.elapsed() < Duration::from_millis(1200),
        "did not wait for the loader"
    );
    // The loader finishes in the background: the other instance sees its value in L2.
    let landed = async {
        for _ in 0..400 {
            if b.get::<u32>(key).await.unwrap() == Some(2) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    };
    assert!(landed.await, "the background load landed in L2");
    assert!(
        wait_until(Duration::from_secs(2), || a.stats().background_completions
            == 1)
        .await
        .is_some()
    );
    assert_eq!(a.stats().soft_timeouts, 1);
    // And this instance now answers fresh without calling the origin.
    let e = a
        .get_or_load_entry_with(key, TTL, &opts, || async {
            Err::<u32, _>("not called".to_string())
        })
        .await
        .unwrap();
    assert_eq!((**e.value(), e.is_stale()), (2, false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_timeout_without_fail_safe_is_an_error_and_the_load_still_lands() {
    let server = RedisServer::start();
    let cache = cache(&server).await;
    let opts = LoadOptions::new().hard_timeout(Duration::from_millis(100));
    let key = "cache:fs:hard";
    let err = cache
        .get_or_load_entry_with(key, TTL, &opts, || async {
            tokio::time::sleep(Duration::from_millis(400)).await;
            Ok::<_, String>(7u32)
        })
        .await
        .unwrap_err();
    assert!(matches!(err, LoadError::Timeout(_)), "{err}");
    assert_eq!(cache.stats().hard_timeouts, 1);
    let landed = async {
        for _ in 0..300 {
            if cache.get::<u32>(key).await.unwrap() == Some(7) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    };
    assert!(landed.await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eager_refresh_keeps_a_hot_key_fresh_without_callers_waiting() {
    let server = RedisServer::start();
    let cache = cache(&server).await;
    let opts = LoadOptions::new().refresh_ahead(0.5);
    let key = "cache:fs:hot";
    let version = Arc::new(AtomicU32::new(0));
    let loader = |version: Arc<AtomicU32>| {
        move || async move { Ok::<_, String>(version.fetch_add(1, Ordering::SeqCst) + 1) }
    };
    let first = cache
        .get_or_load_entry_with(key, TTL, &opts, loader(version.clone()))
        .await
        .unwrap();
    assert!(first.was_loaded());
    let start = Instant::now();
    let mut seen = Vec::new();
    while start.elapsed() < Duration::from_millis(3500) {
        let e = cache
            .get_or_load_entry_with(key, TTL, &opts, loader(version.clone()))
            .await
            .unwrap();
        assert!(
            !e.was_loaded(),
            "no caller waits for the loader after warm-up"
        );
        assert!(!e.is_stale());
        seen.push(**e.value());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let stats = cache.stats();
    // The key outlived its 1 s TTL several times: it was refreshed, never reloaded by a caller.
    assert!(stats.refreshes_completed >= 2, "{stats:?}");
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1]),
        "values only move forward"
    );
    assert!(*seen.last().unwrap() >= 3);
    // One refresh per key at a time: never more loads than refreshes plus the first.
    assert_eq!(stats.loads, stats.refreshes_started + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_eager_refresh_is_not_retried_by_every_hit() {
    let server = RedisServer::start();
    let cache = cache(&server).await;
    let opts = fail_safe()
        .fail_safe_throttle(Duration::from_secs(5))
        .refresh_ahead(0.2);
    let key = "cache:fs:refresh-fails";
    cache
        .get_or_load_entry_with(key, TTL, &opts, || async { Ok::<_, String>(1u32) })
        .await
        .unwrap();
    // Past 0.2 of the TTL: every hit may start a refresh, and every refresh fails.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(500) {
        let calls = calls.clone();
        let e = cache
            .get_or_load_entry_with(key, TTL, &opts, move || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
                Err::<u32, _>("db down".to_string())
            })
            .await
            .unwrap();
        assert_eq!((**e.value(), e.is_stale()), (1, false));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // One refresh of that value and one retry, then none for the throttle period (not one
    // per hit).
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let stats = cache.stats();
    assert_eq!((stats.refreshes_started, stats.refreshes_failed), (2, 2));

    // A new value (written by a regular load once it expired) is refreshed again.
    let_it_expire().await;
    let e = cache
        .get_or_load_entry_with(key, TTL, &opts, || async { Ok::<_, String>(2u32) })
        .await
        .unwrap();
    assert!(e.was_loaded());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start = Instant::now();
    let mut started = false;
    while !started && start.elapsed() < Duration::from_millis(500) {
        started = cache
            .get_or_load_entry_with(key, TTL, &opts, || async { Ok::<_, String>(3u32) })
            .await
            .unwrap()
            .refresh_started();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(started, "{:?}", cache.stats());
    assert!(
        wait_until(Duration::from_secs(5), || cache.stats().refreshes_completed
            == 1)
        .await
        .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_fail_safe_loader_errors_propagate() {
    let server = RedisServer::start();
    let cache = cache(&server).await;
    let opts = LoadOptions::new();
    let key = "cache:fs:off";
    cache
        .get_or_load_entry_with(key, TTL, &opts, || async { Ok::<_, String>(1u32) })
        .await
        .unwrap();
    let_it_expire().await;
    let err = cache
        .get_or_load_entry_with(key, TTL, &opts, || async {
            Err::<u32, _>("down".to_string())
        })
        .await
        .unwrap_err();
    assert_eq!(err.into_loader().as_deref(), Some("down"));
    assert_eq!(cache.stats().stale_served, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_answer_never_overwrites_a_fresher_value_of_another_instance() {
    let server = RedisServer::start();
    let a = cache(&server).await;
    let b = cache(&server).await;
    let opts = fail_safe();
    let key = "cache:fs:newer";
    a.get_or_load_entry_with(key, TTL, &opts, || async { Ok::<_, String>(1u32) })
        .await
        .unwrap();
    let_it_expire().await;
    let e = a
        .get_or_load_entry_with(key, TTL, &opts, || async {
            Err::<u32, _>("down".to_string())
        })
        .await
        .unwrap();
    assert!(e.is_stale());
    b.set(key, &2u32, Ttl::secs(60)).await.unwrap();
    // Whatever `a` serves during its throttle period, L2 keeps the fresher value.
    for _ in 0..5 {
        let _ = a
            .get_or_load_entry_with(key, TTL, &opts, || async {
                Err::<u32, _>("down".to_string())
            })
            .await;
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(b.get::<u32>(key).await.unwrap(), Some(2));
    let e = a
        .get_or_load_entry_with(key, TTL, &opts, || async {
            Err::<u32, _>("down".to_string())
        })
        .await
        .unwrap();
    assert_eq!((**e.value(), e.is_stale()), (2, false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_loader_serves_stale_or_panics_only_its_caller() {
    let server = RedisServer::start();
    let cache = cache(&server).await;
    let opts = fail_safe();
    let key = "cache:fs:panic";
    cache
        .get_or_load_entry_with(key, TTL, &opts, || async { Ok::<_, String>(1u32) })
        .await
        .unwrap();
    let_it_expire().await;
    let e = cache
        .get_or_load_entry_with(key, TTL, &opts, || async {
            if true {
                panic!("loader bug");
            }
            Ok::<u32, String>(0)
        })
        .await
        .unwrap();
    assert_eq!(
        (**e.value(), e.stale_reason()),
        (1, Some(StaleReason::LoadFailed))
    );
    // No stale value: the panic reaches the caller's task only.
    let (c, o) = (cache.clone(), opts.clone());
    let joined = tokio::spawn(async move {
        c.get_or_load_entry_with("cache:fs:panic2", TTL, &o, || async {
            if true {
                panic!("loader bug");
            }
            Ok::<u32, String>(0)
        })
        .await
    })
    .await;
    assert!(joined.unwrap_err().is_panic());
    // The cache still works.
    let v = cache
        .get_or_load_with("cache:fs:panic3", TTL, &opts, || async {
            Ok::<_, String>(3u32)
        })
        .await
        .unwrap();
    assert_eq!(v, 3);
}
