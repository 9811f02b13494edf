//! Per-origin circuit breakers (`LoadOptions::origin`), on a real redis-server.
//! Assertions are about counts; time bounds are generous (noisy 2-core machines).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_sdk::{BreakerSettings, BreakerState, Cache, LoadError, LoadOptions, StaleReason, Ttl};
use cache_sdk_tests::RedisServer;

const TTL: Ttl = Ttl::secs(1);
const THRESHOLD: u32 = 3;
const PROBE: Duration = Duration::from_millis(200);

async fn cache(server: &RedisServer) -> Cache {
    Cache::builder()
        .redis_url(server.url())
        .require_redis(true)
        .breaker(
            BreakerSettings::new()
                .failure_threshold(THRESHOLD)
                .probe_interval(PROBE),
        )
        .build()
        .await
        .expect("build")
}

/// Fail-safe with a throttle longer than the probe interval, for the origin `db`.
fn guarded() -> LoadOptions {
    LoadOptions::new()
        .fail_safe(Duration::from_secs(3600))
        .fail_safe_throttle(Duration::from_secs(2))
        .origin("db")
}

/// A simulated database: counts calls, fails while `down`; answers `version` otherwise.
#[derive(Debug, Default)]
struct Db {
    calls: AtomicUsize,
    down: AtomicBool,
}

impl Db {
    async fn load(&self, version: u32) -> Result<u32, String> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(5)).await;
        if self.down.load(Ordering::SeqCst) {
            Err("connection refused".to_owned())
        } else {
            Ok(version)
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

async fn read(
    cache: &Cache,
    db: &Arc<Db>,
    opts: &LoadOptions,
    key: &str,
    version: u32,
) -> Result<cache_sdk::Entry<u32>, LoadError<String>> {
    let db = db.clone();
    cache
        .get_or_load_entry_with(
            key,
            TTL,
            opts,
            move || async move { db.load(version).await },
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_origin_is_asked_only_by_probes_and_comes_back_with_the_next_one() {
    const KEYS: usize = 8;
    let server = RedisServer::start();
    let cache = cache(&server).await;
    let opts = guarded();
    let db = Arc::new(Db::default());
    let key = |i: usize| format!("cache:br:{i}");
    for i in 0..KEYS {
        read(&cache, &db, &opts, &key(i), 1).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1200)).await; // every value expired
    db.down.store(true, Ordering::SeqCst);
    let before = db.calls();

    // Every key, read over and over for a second and a half.
    let start = Instant::now();
    let mut served = 0;
    let mut reasons = std::collections::HashSet::new();
    while start.elapsed() < Duration::from_millis(1500) {
        let mut tasks = Vec::new();
        for i in 0..KEYS {
            let (cache, db, opts, key) = (cache.clone(), db.clone(), opts.clone(), key(i));
            tasks.push(tokio::spawn(async move {
                read(&cache, &db, &opts, &key, 2).await
            }));
        }
        for t in tasks {
            let e = t.await.unwrap().expect("no caller sees an error");
            assert_eq!((**e.value(), e.is_stale()), (1, true));
            reasons.insert(e.stale_reason());
            served += 1;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = start.elapsed();
    let calls = db.calls() - before;
    let stats = cache.stats();
    assert_eq!(stats.breakers_opened, 1);
    assert_eq!(stats.origins_open, 1);
    assert_eq!(
        cache.origin_breaker("db").state(),
        BreakerState::Open,
        "the probes failed"
    );
    // Each key at most once before it opened (loads already in flight when it opened
    // still land), then one probe per interval (plus the boundary).
    let probes = (elapsed.as_millis() / PROBE.as_millis()) as usize + 2;
    let before_open = calls - stats.breaker_probes as usize;
    assert!(
        (THRESHOLD as usize..=KEYS).contains(&before_open),
        "{before_open} calls before it opened"
    );
    assert!(
        calls <= KEYS + probes,
        "{calls} origin calls in {elapsed:?} ({} probes)",
        stats.breaker_probes
    );
    assert!(stats.breaker_rejections > 0);
    assert!(reasons.contains(&Some(StaleReason::OriginUnavailable)));
    assert!(served >= KEYS);

    // The origin is back: the next probe closes the breaker and every key gets a fresh
    // value, each loaded once.
    db.down.store(false, Ordering::SeqCst);
    let back = db.calls();
    let fresh = Arc::new(AtomicUsize::new(0));
    let took = {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut fresh_keys = std::collections::HashSet::new();
        while fresh_keys.len() < KEYS && Instant::now() < deadline {
            for i in 0..KEYS {
                let e = read(&cache, &db, &opts, &key(i), 3).await.unwrap();
                if !e.is_stale() && **e.value() == 3 {
                    fresh_keys.insert(i);
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        fresh.store(fresh_keys.len(), Ordering::SeqCst);
        fresh_keys.len()
    };
    assert_eq!(took, KEYS, "every key is fresh again");
    assert_eq!(cache.origin_breaker("db").state(), BreakerState::Closed);
    assert_eq!(cache.stats().origins_open, 0);
    // One load per key (the probe is one of them).
    assert_eq!(db.calls() - back, KEYS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_fresh_again_about_one_probe_interval_after_the_origin() {
    let server = RedisServer::start();
    let cache = cache(&server).await;
    let opts = guarded();
    let db = Arc::new(Db::default());
    for i in 0..4 {
        read(&cache, &db, &opts, &format!("cache:br:back:{i}"), 1)
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    db.down.store(true, Ordering::SeqCst);
    for i in 0..4 {
        read(&cache, &db, &opts, &format!("cache:br:back:{i}"), 2)
            .await
            .unwrap();
    }
    assert_eq!(cache.origin_breaker("db").state(), BreakerState::Open);
    db.down.store(false, Ordering::SeqCst);
    // Nothing probes without a read: keep reading until all are fresh. Well under the 2 s
    // throttle: the re-arm lasts only until the next probe, and its success releases it.
    let start = Instant::now();
    let mut all_fresh = false;
    while !all_fresh && start.elapsed() < Duration::from_secs(5) {
        all_fresh = true;
        for i in 0..4 {
            let e = read(&cache, &db, &opts, &format!("cache:br:back:{i}"), 3)
                .await
                .unwrap();
            all_fresh &= !e.is_stale();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(cache.origin_breaker("db").state(), BreakerState::Closed);
    assert!(all_fresh, "fresh again within {:?}", start.elapsed());
    assert!(
        start.elapsed() < Duration::from_millis(1900),
        "back before the throttle period would have ended: {:?}",
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_released_when_the_origin_is_back_are_answered_at_once_and_reloaded_behind() {
    const KEYS: usize = 4;
    let server = RedisServer::start();
    let cache = cache(&server).await;
    // A soft timeout far longer than the load: a caller that waited for the load would get
    // the fresh value, loaded by its call.
    let opts = guarded().soft_timeout(Duration::from_secs(5));
    let db = Arc::new(Db::default());
    let key = |i: usize| format!("cache:br:released:{i}");
    for i in 0..KEYS {
        read(&cache, &db, &opts, &key(i), 1).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    db.down.store(true, Ordering::SeqCst);
    for i in 0..KEYS {
        let e = read(&cache, &db, &opts, &key(i), 2).await.unwrap();
        assert_eq!((**e.value(), e.is_stale()), (1, true));
    }
    assert_eq!(cache.origin_breaker("db").state(), BreakerState::Open);
    db.down.store(false, Ordering::SeqCst);
    let back = db.calls();
    let refreshes = cache.stats().refreshes_started;
    tokio::time::sleep(PROBE + Duration::from_millis(50)).await;

    // The probe and the loads of the values its success releases run behind the callers:
    // every answer is the stale value or, once its load landed, the fresh one; no caller
    // ran (waited for) a load.
    let mut fresh = std::collections::HashSet::new();
    let mut stale_answers = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while fresh.len() < KEYS && Instant::now() < deadline {
        for i in 0..KEYS {
            let e = read(&cache, &db, &opts, &key(i), 3).await.unwrap();
            assert!(!e.was_loaded(), "a caller waited for the load of key {i}");
            if e.is_stale() {
                assert_eq!(**e.value(), 1);
                stale_answers += 1;
            } else {
                assert_eq!(**e.value(), 3);
                fresh.insert(i);
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(fresh.len(), KEYS, "every key is fresh again");
    assert!(
        stale_answers >= KEYS,
        "each key answered stale while it reloaded"
    );
    assert_eq!(cache.origin_breaker("db").state(), BreakerState::Closed);
    // One load per key, the probe being one of them, each in the background.
    assert_eq!(db.calls() - back, KEYS);
    assert_eq!(cache.stats().refreshes_started - refreshes, KEYS as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_probe_that_hangs_fails_at_the_hard_timeout() {
    let server = RedisServer::start();
    let cache = cache(&server).await;
    let opts = guarded().hard_timeout(Duration::from_millis(200));
    let db = Arc::new(Db::default());
    let key = |i: u32| format!("cache:br:hung:{i}");
    for i in 0..THRESHOLD {
        read(&cache, &db, &opts, &key(i), 1).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    db.down.store(true, Ordering::SeqCst);
    for i in 0..THRESHOLD {
        read(&cache, &db, &opts, &key(i), 2).await.unwrap();
    }
    let breaker = cache.origin_breaker("db");
    assert_eq!(breaker.state(), BreakerState::Open);
    tokio::time::sleep(PROBE + Duration::from_millis(50)).await;
    // The probe hangs far longer than the test: answered stale, probed behind.
    let hung = || async {
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok::<u32, String>(9)
    };
    let e = cache
        .get_or_load_entry_with(&key(0), TTL, &opts, hung)
        .await
        .unwrap();
    assert_eq!(
        (**e.value(), e.is_stale(), e.refresh_started()),
        (1, true, true)
    );
    assert_eq!(breaker.state(), BreakerState::HalfOpen);
    // Past the hard timeout the probe counts as failed: open again, not half-open for good.
    let deadline = Instant::now() + Duration::from_secs(10);
    while breaker.state() != BreakerState::Open && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(breaker.state(), BreakerState::Open);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_failures_do_not_open_it() {
    let server = RedisServer::start();
    let cache = cache(&server).await;
    let opts = LoadOptions::new().origin("db");
    let db = Arc::new(Db::default());
    for round in 0..20 {
        // THRESHOLD - 1 failures, then a success.
        db.down.store(true, Ordering::SeqCst);
        for i in 0..(THRESHOLD - 1) {
            let key = format!("cache:br:iso:{round}:{i}");
            assert!(matches!(
                read(&cache, &db, &opts, &key, 1).await,
                Err(LoadError::Loader(_))
            ));
        }
        db.down.store(false, Ordering::SeqCst);
        read(&cache, &db, &opts, &format!("cache:br:iso:{round}:ok"), 1)
            .await
            .unwrap();
    }
    let stats = cache.stats();
    assert_eq!((stats.breakers_opened, stats.breaker_rejections), (0, 0));
    assert_eq!(db.calls(), 20 * THRESHOLD as usize);
    assert_eq!(cache.origin_breaker("db").state(), BreakerState::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_origin_every_load_calls_the_loader() {
    let server = RedisServer::start();
    let cache = cache(&server).await;
    let opts = LoadOptions::new().fail_safe(Duration::from_secs(3600));
    let db = Arc::new(Db::default());
    db.down.store(true, Ordering::SeqCst);
    for i in 0..(THRESHOLD * 4) {
        let got = read(&cache, &db, &opts, &format!("cache:br:none:{i}"), 1).await;
        assert!(matches!(got, Err(LoadError::Loader(_))));
    }
    assert_eq!(db.calls(), THRESHOLD as usize * 4);
    let stats = cache.stats();
    assert_eq!(
        (
            stats.breakers_opened,
            stats.breaker_rejections,
            stats.origins_open
        ),
        (0, 0, 0)
    );
    // Another origin's breaker is not touched by a different one opening.
    let other = LoadOptions::new().origin("other");
    for i in 0..THRESHOLD {
        let _ = read(&cache, &db, &other, &format!("cache:br:other:{i}"), 1).await;
    }
    assert_eq!(cache.origin_breaker("other").state(), BreakerState::Open);
    assert_eq!(cache.origin_breaker("db").state(), BreakerState::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_with_no_stale_value_fails_fast_while_it_is_open() {
    let server = RedisServer::start();
    let cache = cache(&server).await;
    let opts = guarded();
    let db = Arc::new(Db::default());
    db.down.store(true, Ordering::SeqCst);
    for i in 0..THRESHOLD {
        let _ = read(&cache, &db, &opts, &format!("cache:br:fast:{i}"), 1).await;
    }
    let calls = db.calls();
    db.down.store(false, Ordering::SeqCst);
    // A cold key: nothing stale to serve, the loader is not called.
    let slow = {
        let db = db.clone();
        move || async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            db.load(9).await
        }
    };
    let t0 = Instant::now();
    let got = cache
        .get_or_load_entry_with("cache:br:fast:cold", TTL, &opts, slow)
        .await;
    let Err(LoadError::OriginUnavailable(e)) = got else {
        panic!("expected the fast error, got {got:?}");
    };
    assert!(
        t0.elapsed() < Duration::from_secs(4),
        "at once, not after the loader"
    );
    assert_eq!(e.origin(), "db");
    assert!(e.retry_after() <= PROBE);
    assert!(e.to_string().contains("`db` is unavailable"));
    assert_eq!(db.calls(), calls, "the origin was not asked");
    // Calls guarded by the handle are refused too, and count as rejections.
    let guarded_call = cache
        .origin_breaker("db")
        .run(|| async { Ok::<_, String>(1u32) })
        .await;
    assert!(matches!(guarded_call, Err(LoadError::OriginUnavailable(_))));
    assert_eq!(cache.stats().breaker_rejections, 2);

    // After the probe interval the next load is the probe; it succeeds and closes it.
    tokio::time::sleep(PROBE + Duration::from_millis(50)).await;
    let e = read(&cache, &db, &opts, "cache:br:fast:cold", 4)
        .await
        .unwrap();
    assert_eq!((**e.value(), e.was_loaded()), (4, true));
    assert_eq!(cache.origin_breaker("db").state(), BreakerState::Closed);
    assert_eq!(cache.stats().breaker_probes, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_that_are_errors_do_not_open_it() {
    let server = RedisServer::start();
    let cache = cache(&server).await;
    let opts = LoadOptions::new()
        .origin("db")
        .origin_answered(|e: &String| e.starts_with("not found"));
    for i in 0..(THRESHOLD * 3) {
        let got = cache
            .get_or_load_entry_with(
                &format!("cache:br:nf:{i}"),
                TTL,
                &opts,
                move || async move { Err::<u32, _>(format!("not found: {i}")) },
            )
            .await;
        assert!(matches!(got, Err(LoadError::Loader(_))));
    }
    assert_eq!(cache.origin_breaker("db").state(), BreakerState::Closed);
    assert_eq!(cache.stats().breakers_opened, 0);
}
