//! Redis lost and found again: killed, down at start, paused, slow, connections killed,
//! out of memory, wrong password. Operations never fail or hang; outage writes reach Redis.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_sdk::session::{CacheSessionStore, SessionConfig, SessionId, Sessions};
use cache_sdk::{BackendErrorKind, Cache, Ttl};
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

/// Waits until calls go to Redis again (the replay may still run); returns how long that
/// took, polling every millisecond.
async fn serving_from_redis(cache: &Cache) -> Duration {
    let started = Instant::now();
    while !cache.stats().connected {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the cache did not return to Redis"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    started.elapsed()
}

/// Waits until the cache is back on Redis and every outage write is replayed (a hang
/// bound: a replay on a loaded machine may time out and start again).
/// A cache that reads Redis itself (no L1), with a timeout long enough that a loaded
/// machine does not send its checks to an (empty) fallback.
async fn verifier(server: &RedisServer) -> Cache {
    Cache::builder()
        .redis_url(server.url())
        .l1_capacity(0)
        .timeout(Duration::from_secs(5))
        .build()
        .await
        .expect("build")
}

async fn back_on_redis(cache: &Cache) -> Duration {
    let c = cache.clone();
    wait_until(Duration::from_secs(30), move || {
        let s = c.stats();
        s.connected && s.replay_pending == 0 && s.in_memory_keys == 0
    })
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
        matches!(err, cache_sdk::BuildError::RedisRequired(ref e)
            if e.kind() == BackendErrorKind::Unreachable),
        "{err:?}"
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_under_load_gives_no_errors_and_no_hang() {
    cache_sdk_tests::init_tracing();
    let mut server = RedisServer::start();
    let cache = cache_on(&server).await;
    let sessions = Sessions::new(
        CacheSessionStore::new(cache.clone()),
        SessionConfig::development(),
    )
    .unwrap();
    let shared = Arc::new(LoadShared::default());
    let runner = tokio::spawn(load(cache.clone(), sessions, 64, shared.clone()));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let kill_at = Instant::now();
    *shared.kill_at.lock().unwrap() = Some(kill_at);
    server.kill();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert!(!cache.stats().connected);
    let pending = cache.stats().replay_pending;
    server.restart();
    let answering_at = Instant::now();
    let serving = serving_from_redis(&cache).await;
    back_on_redis(&cache).await;
    let recovery = answering_at.elapsed();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    shared.stop.store(true, Ordering::Relaxed);
    let report = runner.await.unwrap();
    let s = cache.stats();
    tracing::warn!(
        ops = report.ops,
        errors = report.errors,
        worst_ms = report.worst.as_secs_f64() * 1000.0,
        pending_at_restart = pending,
        back_on_redis_ms = serving.as_secs_f64() * 1000.0,
        replay_done_ms = recovery.as_secs_f64() * 1000.0,
        outage_ms = answering_at.duration_since(kill_at).as_millis() as u64,
        replayed = s.replayed,
        replay_skipped = s.replay_skipped,
        checked = report.last_writes.len(),
        sessions = report.sessions.len(),
        "kill under load"
    );
    assert_eq!(report.errors, 0);
    assert!(report.ops > 1000, "{}", report.ops);
    assert!(report.worst < HANG, "{:?}", report.worst);
    assert_eq!(s.replay_pending, 0, "{s:?}");
    assert!(s.replayed > 0, "{s:?}");

    // Nothing written after the kill was lost: read Redis through a fresh cache (no L1).
    let fresh = verifier(&server).await;
    assert!(fresh.stats().connected);
    let mut checked = 0;
    for ((key, value), at) in &report.last_writes {
        if *at > kill_at {
            assert_eq!(fresh.get::<u64>(key).await.unwrap(), Some(*value), "{key}");
            checked += 1;
        }
    }
    assert!(checked > 100, "{checked}");
    // Increments made after the kill all reached Redis (replayed as deltas).
    for (key, (after_kill, total)) in &report.counters {
        let in_redis = fresh.counter(key).await.unwrap().unwrap_or(0);
        assert!(
            in_redis >= *after_kill && in_redis <= *total,
            "{key}: {in_redis} not in {after_kill}..={total}"
        );
    }
    // Sessions created after the kill are valid through another instance.
    let other = Sessions::new(
        CacheSessionStore::new(fresh.clone()),
        SessionConfig::development(),
    )
    .unwrap();
    let mut sessions_checked = 0;
    for (id, value, at) in &report.sessions {
        if *at > kill_at {
            let loaded = other.load::<u64>(id).await.unwrap();
            assert_eq!(loaded.map(|l| l.data), Some(*value));
            sessions_checked += 1;
        }
    }
    assert!(sessions_checked > 10, "{sessions_checked}");
    assert_eq!(fresh.stats().outages, 0, "the checks read Redis itself");
}

#[derive(Default)]
struct LoadShared {
    stop: std::sync::atomic::AtomicBool,
    kill_at: std::sync::Mutex<Option<Instant>>,
}

impl LoadShared {
    fn after_kill(&self, at: Instant) -> bool {
        self.kill_at.lock().unwrap().is_some_and(|k| at > k)
    }
}

#[derive(Default)]
struct LoadReport {
    ops: u64,
    errors: u64,
    worst: Duration,
    /// The last value each key was given, and when that write started.
    last_writes: HashMap<(String, u64), Instant>,
    /// Per counter key: increments started after the kill, and all increments.
    counters: HashMap<String, (i64, i64)>,
    /// Sessions created: id, data, when.
    sessions: Vec<(SessionId, u64, Instant)>,
}

/// Runs `tasks` concurrent loops of mixed cache and session operations until `stop`.
async fn load(
    cache: Cache,
    sessions: Sessions,
    tasks: usize,
    shared: Arc<LoadShared>,
) -> LoadReport {
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let (cache, sessions, shared) = (cache.clone(), sessions.clone(), shared.clone());
            tokio::spawn(async move {
                let mut r = LoadReport::default();
                let mut last: HashMap<String, (u64, Instant)> = HashMap::new();
                let counter = format!("cache:load:count:{t}");
                let mut i = 0u64;
                while !shared.stop.load(Ordering::Relaxed) {
                    i += 1;
                    let key = format!("cache:load:{t}:{}", i % 50);
                    let started = Instant::now();
                    let ok = match i % 5 {
                        0 => {
                            let ok = cache.set(&key, &i, Ttl::Api).await.is_ok();
                            last.insert(key, (i, started));
                            ok
                        }
                        1 => cache.get::<u64>(&key).await.is_ok(),
                        2 => {
                            let ran = AtomicBool::new(false);
                            let got = cache
                                .get_or_load(&key, Ttl::Api, || async {
                                    ran.store(true, Ordering::Relaxed);
                                    Ok::<_, ()>(i)
                                })
                                .await;
                            if ran.load(Ordering::Relaxed) {
                                last.insert(key, (i, started));
                            }
                            got.is_ok()
                        }
                        3 => {
                            let ok = cache.incr(&counter).await.is_ok();
                            let e = r.counters.entry(counter.clone()).or_default();
                            e.1 += 1;
                            if shared.after_kill(started) {
                                e.0 += 1;
                            }
                            ok
                        }
                        _ => match sessions.create(&i, None).await {
                            Ok(id) => {
                                r.sessions.push((id, i, started));
                                true
                            }
                            Err(_) => false,
                        },
                    };
                    let took = started.elapsed();
                    r.worst = r.worst.max(took);
                    r.ops += 1;
                    if !ok {
                        r.errors += 1;
                    }
                    // A request does other work between cache calls; without this, 64
                    // CPU-bound loops on two threads measure the run queue, not the cache.
                    tokio::task::yield_now().await;
                }
                r.last_writes = last.into_iter().map(|(k, (v, at))| ((k, v), at)).collect();
                r
            })
        })
        .collect();
    let mut total = LoadReport::default();
    for h in handles {
        let r = h.await.unwrap();
        total.ops += r.ops;
        total.errors += r.errors;
        total.worst = total.worst.max(r.worst);
        total.last_writes.extend(r.last_writes);
        total.counters.extend(r.counters);
        total.sessions.extend(r.sessions);
    }
    total
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
    eprintln!("SIGSTOP: first call {first:?}, next 100 calls {next_hundred:?}");
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
    let server = RedisServer::start_with(&["--enable-debug-command", "local"]);
    let cache = cache_on(&server).await;
    let blocker = tokio::task::spawn_blocking({
        let port = server.port();
        move || {
            std::process::Command::new("redis-cli")
                .args(["-p", &port.to_string(), "DEBUG", "SLEEP", "1"])
                .output()
        }
    });
    // Wait until the server is inside DEBUG SLEEP: a PING from another client goes
    // unanswered.
    let port = server.port();
    let asleep = wait_until(Duration::from_secs(5), move || {
        std::process::Command::new("timeout")
            .args(["0.2", "redis-cli", "-p", &port.to_string(), "PING"])
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(false)
    })
    .await;
    assert!(asleep.is_some(), "the server never went to sleep");
    let started = Instant::now();
    cache.set("cache:slow:1", &1u32, Ttl::Api).await.unwrap();
    let took = started.elapsed();
    eprintln!("DEBUG SLEEP 1: the call took {took:?}");
    assert!(took < HANG);
    // The slow answer counted as a failure: the write went to the fallback.
    assert!(cache.stats().outages >= 1);
    let output = blocker.await.unwrap().unwrap();
    assert!(output.status.success(), "{output:?}");
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
        matches!(err, cache_sdk::Error::Backend(ref e)
            if e.kind() == BackendErrorKind::Rejected && e.code() == Some("OOM")),
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
        .unwrap_err();
    assert!(
        matches!(err, cache_sdk::BuildError::RedisRequired(ref e)
            if e.kind() == BackendErrorKind::Authentication),
        "{err:?}"
    );
    let err = err.to_string();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_type_in_redis_is_a_typed_error_not_a_fallback() {
    cache_sdk_tests::init_tracing();
    let server = RedisServer::start();
    let cache = cache_on(&server).await;
    server.cli(&["RPUSH", "cache:wt:list", "a"]);
    server.cli(&["SET", "cache:wt:text", "not a number"]);
    let err = cache.get::<u32>("cache:wt:list").await.unwrap_err();
    assert!(
        matches!(err, cache_sdk::Error::Backend(ref e)
            if e.kind() == BackendErrorKind::Rejected && e.code() == Some("WRONGTYPE")),
        "{err}"
    );
    assert!(err.to_string().contains("WRONGTYPE"), "{err}");
    // The Redis error itself is the source, for callers that want all of it.
    let cause = std::error::Error::source(&err)
        .and_then(|s| s.downcast_ref::<redis::RedisError>())
        .expect("the redis error is the source");
    assert_eq!(cause.code(), Some("WRONGTYPE"));
    let err = cache.incr("cache:wt:text").await.unwrap_err();
    assert!(
        matches!(err, cache_sdk::Error::Backend(ref e) if e.code() == Some("ERR")),
        "{err}"
    );
    // A plain string that is not an envelope is a miss.
    assert_eq!(cache.get::<u32>("cache:wt:text").await.unwrap(), None);
    // Redis stays the store: these are answers about the data, not an outage.
    assert!(cache.stats().connected);
    assert!(cache.stats().backend_errors >= 2);
}

/// A cache on `url` (a server that refuses us) builds without hanging and serves from
/// memory; with `require_redis` the build fails instead. Returns that error's text.
async fn serves_from_memory_then_refuses_when_required(url: &str) -> String {
    let started = Instant::now();
    let cache = Cache::builder().redis_url(url).build().await.unwrap();
    assert!(started.elapsed() < HANG);
    assert!(!cache.stats().connected);
    cache.set("cache:refused:1", &1u32, Ttl::Api).await.unwrap();
    assert_eq!(cache.get::<u32>("cache:refused:1").await.unwrap(), Some(1));
    Cache::builder()
        .redis_url(url)
        .require_redis(true)
        .build()
        .await
        .unwrap_err()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_password_falls_back_with_a_clear_error() {
    cache_sdk_tests::init_tracing();
    let server = RedisServer::start_with(&["--requirepass", "right-password"]);
    let url = format!("redis://127.0.0.1:{}", server.port());
    let err = serves_from_memory_then_refuses_when_required(&url).await;
    assert!(
        err.contains("NOAUTH") || err.to_lowercase().contains("auth"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_out_of_range_falls_back_with_a_clear_error() {
    cache_sdk_tests::init_tracing();
    let server = RedisServer::start_with(&["--databases", "2"]);
    let url = format!("redis://127.0.0.1:{}/9", server.port());
    let err = serves_from_memory_then_refuses_when_required(&url).await;
    assert!(
        err.contains("DB index") || err.contains("out of range"),
        "{err}"
    );
}

/// Raw `MGET` of many keys, in chunks.
async fn raw_values(server: &RedisServer, keys: &[String]) -> Vec<Option<Vec<u8>>> {
    let mut conn = server.conn().await;
    let mut out = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(1000) {
        let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
            .arg(chunk)
            .query_async(&mut conn)
            .await
            .unwrap();
        out.extend(values);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn increments_are_replayed_once_when_a_replay_times_out_after_redis_applied_it() {
    cache_sdk_tests::init_tracing();
    let mut server = RedisServer::start();
    let cache = cache_on(&server).await;
    server.kill();
    const N: usize = 30_000;
    let counters: Vec<String> = (0..N).map(|i| format!("cache:once:n:{i}")).collect();
    let values: Vec<String> = (0..N / 3).map(|i| format!("cache:once:v:{i}")).collect();
    for (i, key) in counters.iter().enumerate() {
        cache.incr_by(key, 2).await.unwrap();
        if i % 10 == 0 {
            cache.incr(key).await.unwrap();
        }
    }
    for (i, key) in values.iter().enumerate() {
        cache.set(key, &(i as u64), Ttl::Api).await.unwrap();
    }
    server.restart();
    serving_from_redis(&cache).await;
    // The replay is under way: stop the server while pipelines are in flight. They time
    // out on our side; Redis applies them when it resumes, and they are sent again. The
    // pause outlasts the replay's timed-out rounds in a row (3 of the 100 ms timeout, with
    // shrinking pipelines) by far, so the cache surely takes Redis for down again.
    let pending = cache.stats().replay_pending;
    server.pause();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    server.resume();
    back_on_redis(&cache).await;
    let s = cache.stats();
    eprintln!(
        "replay interrupted with {pending} keys pending; replayed {}, skipped {}, outages {}",
        s.replayed, s.replay_skipped, s.outages
    );
    assert!(
        pending > 0 && s.outages >= 2,
        "the replay was not interrupted: {s:?}"
    );
    let in_redis = raw_values(&server, &counters).await;
    for (i, (key, raw)) in counters.iter().zip(in_redis).enumerate() {
        let expected = if i % 10 == 0 { "3" } else { "2" };
        assert_eq!(raw.as_deref(), Some(expected.as_bytes()), "{key}");
    }
    let fresh = verifier(&server).await;
    for (i, key) in values.iter().enumerate().step_by(7) {
        assert_eq!(
            fresh.get::<u64>(key).await.unwrap(),
            Some(i as u64),
            "{key}"
        );
    }
    assert_eq!(fresh.stats().outages, 0, "the checks read Redis itself");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_on_redis_at_once_with_50000_outage_keys_and_no_stale_read() {
    cache_sdk_tests::init_tracing();
    let mut server = RedisServer::start();
    // A timeout that a loaded test machine does not hit: a call that times out after the
    // replay ended would (rightly) answer from the emptied fallback, and say nothing about
    // the replay rule checked here.
    let cache = Cache::builder()
        .redis_url(server.url())
        .timeout(Duration::from_secs(1))
        .build()
        .await
        .expect("build");
    server.kill();
    const N: u64 = 50_000;
    const COUNTERS: u64 = 200;
    let key = |i: u64| format!("cache:bulk:{i}");
    let counter = |i: u64| format!("cache:bulk:n:{i}");
    let written = Instant::now();
    for i in 0..N {
        cache.set(&key(i), &i, Ttl::Api).await.unwrap();
    }
    for i in 0..COUNTERS {
        cache.incr_by(&counter(i), 5).await.unwrap();
    }
    let written = written.elapsed();
    let pending = cache.stats().replay_pending;
    assert!(pending >= N + COUNTERS, "{pending}");

    // Redis restarts empty: a read that missed a pending write would see nothing.
    server.restart();
    let answering_at = Instant::now();
    let serving = serving_from_redis(&cache).await;
    let replay_end = tokio::spawn({
        let cache = cache.clone();
        async move {
            while cache.stats().replay_pending > 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            answering_at.elapsed()
        }
    });

    // During the replay: every third touched key is read (the outage value), written (the
    // new value must win over the replayed one), or deleted (it must stay deleted).
    let mut touched_while_pending = 0u64;
    let mut pending_now = true;
    for (n, i) in (0..N).step_by(7).enumerate() {
        if n % 64 == 0 {
            pending_now = cache.stats().replay_pending > 0;
        }
        if pending_now {
            touched_while_pending += 1;
        }
        match i % 3 {
            0 => assert_eq!(cache.get::<u64>(&key(i)).await.unwrap(), Some(i), "{i}"),
            1 => cache.set(&key(i), &(i + N), Ttl::Api).await.unwrap(),
            _ => assert!(cache.delete(&key(i)).await.unwrap(), "{i}"),
        }
    }
    // An increment of a pending counter counts the outage increments once.
    for i in 0..COUNTERS {
        assert_eq!(cache.incr(&counter(i)).await.unwrap(), 6, "{i}");
    }
    back_on_redis(&cache).await;
    let replayed_after = replay_end.await.unwrap();
    let s = cache.stats();
    eprintln!(
        "50,000 outage keys: written in {written:?}; {pending} pending at the restart; back on \
         Redis {serving:?} after it answered; replay finished after {replayed_after:?}; \
         {touched_while_pending} keys touched while the replay ran; replayed {}, skipped {}",
        s.replayed, s.replay_skipped
    );
    tracing::warn!(
        back_on_redis_ms = serving.as_secs_f64() * 1000.0,
        replay_done_ms = replayed_after.as_secs_f64() * 1000.0,
        pending,
        touched_while_pending,
        "50,000 outage keys"
    );
    assert!(s.connected && s.replay_pending == 0, "{s:?}");

    // Nothing lost, nothing stale: read Redis itself.
    let fresh = verifier(&server).await;
    let keys: Vec<String> = (0..N).map(key).collect();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let mut values = Vec::with_capacity(keys.len());
    for chunk in refs.chunks(1000) {
        values.extend(fresh.get_many::<u64>(chunk).await.unwrap());
    }
    for (i, value) in (0..N).zip(values) {
        let expected = match (i % 7, i % 3) {
            (0, 1) => Some(i + N),
            (0, 2) => None,
            _ => Some(i),
        };
        assert_eq!(value, expected, "{i}");
    }
    for i in 0..COUNTERS {
        assert_eq!(fresh.counter(&counter(i)).await.unwrap(), Some(6), "{i}");
    }
    assert_eq!(fresh.stats().outages, 0, "the checks read Redis itself");
}

/// A cache whose background tasks (the probe and the replay) and connection run on a
/// runtime of their own, on a thread that holds that runtime still until `release` is
/// sent: the cache stays cut off from Redis after Redis returns, for as long as the test
/// wants. Dropping `release` also lets the thread end.
struct HeldCache {
    cache: Cache,
    release: std::sync::mpsc::Sender<()>,
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

fn held_cache(url: String) -> HeldCache {
    let (cache_tx, cache_rx) = std::sync::mpsc::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let cache = rt.block_on(async {
            Cache::builder()
                .redis_url(url)
                .l1_capacity(0)
                .build()
                .await
                .expect("build")
        });
        cache_tx.send(cache).unwrap();
        // Held: nothing spawned on this runtime runs until the release.
        let _ = released.recv();
        rt.block_on(async {
            let _ = stopped.await;
        });
    });
    HeldCache {
        cache: cache_rx.recv().unwrap(),
        release,
        stop,
        thread,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_and_newer_writes_of_another_instance_survive_the_replay() {
    cache_sdk_tests::init_tracing();
    let mut server = RedisServer::start();
    let a = held_cache(server.url());
    let b = Cache::builder()
        .redis_url(server.url())
        .l1_capacity(0)
        .build()
        .await
        .expect("build");
    server.kill();
    // A writes during the outage: more than one pipeline, so that A replays after its
    // switch back, in the `Replaying` state.
    const N: u64 = 2_000;
    let key = |i: u64| format!("cache:replay-vs-b:{i}");
    for i in 0..N {
        a.cache.set(&key(i), &i, Ttl::Api).await.unwrap();
    }
    assert!(!a.cache.stats().connected);
    // B notices the outage too (its first call trips to its fallback).
    assert_eq!(b.get::<u64>("cache:replay-vs-b:none").await.unwrap(), None);
    assert!(!b.stats().connected);

    // Redis returns (empty). B is back first; A is held cut off.
    server.restart();
    back_on_redis(&b).await;
    assert!(!a.cache.stats().connected);
    // B, after A's outage writes: deletes every third key, overwrites the next one, and
    // deletes a key that Redis does not hold anymore (A's outage write of it is pending).
    for i in (0..N).step_by(3) {
        assert!(!b.delete(&key(i)).await.unwrap(), "Redis restarted empty");
        b.set(&key(i + 1), &(i + 1 + N), Ttl::Api).await.unwrap();
    }
    let tombstones = server.cli(&["KEYS", "*:~deleted"]).lines().count();

    // A returns and replays its 2,000 outage writes over B's changes.
    a.release.send(()).unwrap();
    back_on_redis(&a.cache).await;
    let s = a.cache.stats();
    eprintln!(
        "replay over another instance's changes: {N} outage writes, replayed {}, skipped {} \
         (B deleted {} keys, leaving {tombstones} tombstones, and overwrote {} keys)",
        s.replayed,
        s.replay_skipped,
        N.div_ceil(3),
        N.div_ceil(3)
    );

    let fresh = verifier(&server).await;
    for i in 0..N {
        let expected = match i % 3 {
            0 => None,
            1 => Some(i + N),
            _ => Some(i),
        };
        assert_eq!(fresh.get::<u64>(&key(i)).await.unwrap(), expected, "{i}");
    }
    assert_eq!(
        tombstones as u64,
        N.div_ceil(3),
        "B's deletes left tombstones: the window was open"
    );
    assert!(s.replay_skipped >= 2 * N.div_ceil(3), "{s:?}");

    a.stop.send(()).unwrap();
    a.thread.join().unwrap();
}
