//! Redis Sentinel: a master, a replica and three sentinels, all real processes. The cache
//! finds the master through the sentinels, follows a failover by itself (master killed
//! under load, or demoted by `SENTINEL FAILOVER`), serves from the fallback meanwhile and
//! replays the outage writes to the new master; the invalidation link follows too.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cache_sdk::{Cache, CoherenceState, Ttl};
use cache_sdk_tests::{free_port, wait_until, RedisSentinels};

/// Generous bound that only catches hangs (timeouts are 100 ms); not a performance claim.
const HANG: Duration = Duration::from_secs(2);

/// A cache configured the way an application would be: from the variables.
async fn cache_on(set: &RedisSentinels, l1: u64) -> Cache {
    Cache::builder()
        .from_vars([
            ("REDIS_SENTINELS", set.sentinel_addrs().join(",")),
            ("REDIS_SENTINEL_MASTER", set.master_name().to_owned()),
        ])
        .expect("sentinel variables")
        .l1_capacity(l1)
        .build()
        .await
        .expect("build")
}

async fn back_on_redis(cache: &Cache, within: Duration) -> Duration {
    let c = cache.clone();
    wait_until(within, move || c.stats().connected)
        .await
        .expect("the cache did not return to Redis")
}

/// Without traffic a cache cannot notice that its master is gone: calls until one has
/// tripped to the fallback (or went to the new master), then waits for Redis.
async fn follow_with_traffic(cache: &Cache, outages_before: u64) {
    let started = Instant::now();
    while cache.stats().outages == outages_before && started.elapsed() < Duration::from_secs(5) {
        cache.get::<u64>("poke").await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    back_on_redis(cache, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finds_the_master_through_the_sentinels() {
    cache_sdk_tests::init_tracing();
    let set = RedisSentinels::start();
    let cache = cache_on(&set, 1000).await;
    let s = cache.stats();
    assert!(s.connected, "{s:?}");
    cache.set("sentinel:k", &42u64, Ttl::Api).await.unwrap();
    assert_eq!(cache.get::<u64>("sentinel:k").await.unwrap(), Some(42));
    // The write went to the master (and from there to the replica).
    let master = set.master_port().unwrap();
    assert!(set.server(master).get_raw("sentinel:k").await.is_some());

    // A dead sentinel in the list costs nothing: the others answer.
    let mut nodes = vec![format!("127.0.0.1:{}", free_port())];
    nodes.extend(set.sentinel_addrs());
    let started = Instant::now();
    let other = Cache::builder()
        .redis_sentinel(nodes, set.master_name())
        .build()
        .await
        .unwrap();
    assert!(other.stats().connected);
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(other.get::<u64>("sentinel:k").await.unwrap(), Some(42));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_master_name_is_an_outage_with_a_clear_error() {
    cache_sdk_tests::init_tracing();
    let set = RedisSentinels::start();
    let err = Cache::builder()
        .redis_sentinel(set.sentinel_addrs(), "no-such-master")
        .require_redis(true)
        .build()
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("no-such-master"), "{err}");
    // Without `require_redis`, the fallback serves.
    let cache = Cache::builder()
        .redis_sentinel(set.sentinel_addrs(), "no-such-master")
        .build()
        .await
        .unwrap();
    assert!(!cache.stats().connected);
    cache.set("k", &1u64, Ttl::Api).await.unwrap();
    assert_eq!(cache.get::<u64>("k").await.unwrap(), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_master_under_load_fails_over_with_no_error_and_no_lost_write() {
    cache_sdk_tests::init_tracing();
    let mut set = RedisSentinels::start();
    let cache = cache_on(&set, 10_000).await;
    assert!(cache.stats().connected);
    let shared = Arc::new(LoadShared::default());
    let runner = tokio::spawn(load(cache.clone(), 48, shared.clone()));
    tokio::time::sleep(Duration::from_millis(1000)).await;

    let kill_at = Instant::now();
    *shared.kill_at.lock().unwrap() = Some(kill_at);
    let old = set.kill_master();
    // The data link trips to the fallback, then comes back on the new master: watched
    // every millisecond by a task of its own (nothing else delays it).
    let back_watch = tokio::spawn({
        let cache = cache.clone();
        async move {
            let mut tripped = false;
            loop {
                let connected = cache.stats().connected;
                tripped |= !connected;
                if tripped && connected {
                    return Instant::now();
                }
                assert!(
                    kill_at.elapsed() < Duration::from_secs(30),
                    "not back on Redis"
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    });
    let (new, promoted_at) = set.wait_promoted(old, Duration::from_secs(20)).await;
    // The invalidation link names itself on the new master (`redis-cli` runs off the
    // runtime's threads).
    let port = new.to_string();
    let linked_at = tokio::task::spawn_blocking(move || loop {
        let out = std::process::Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port, "CLIENT", "LIST"])
            .output()
            .expect("redis-cli");
        if String::from_utf8_lossy(&out.stdout).contains("name=cache-sdk-coherence") {
            return Instant::now();
        }
        assert!(promoted_at.elapsed() < Duration::from_secs(20), "no link");
        std::thread::sleep(Duration::from_millis(2));
    })
    .await
    .unwrap();
    let back_at = back_watch.await.unwrap();
    let back = back_at.duration_since(kill_at);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    shared.stop.store(true, Ordering::Relaxed);
    let report = runner.await.unwrap();
    // Calls went back to Redis at once; the outage writes may still be replaying (and a
    // replay pipeline that timed out on a loaded machine sends the cache down and back).
    let c = cache.clone();
    let replay_done = wait_until(Duration::from_secs(30), move || {
        let s = c.stats();
        s.connected && s.replay_pending == 0
    })
    .await
    .expect("the replay did not finish");
    let s = cache.stats();
    let promotion_to_redis = back_at.saturating_duration_since(promoted_at);

    // Every write that started after the kill was acknowledged by the fallback (or the new
    // master) and must be on the new master now. Writes acknowledged by the old master
    // just before the kill may not have reached the replica (Redis replicates
    // asynchronously): counted, not asserted.
    // Without L1, and with a timeout that a loaded machine does not hit: a check that
    // timed out would read the (empty) fallback and count a write as lost.
    let fresh = Cache::builder()
        .redis_sentinel(set.sentinel_addrs(), set.master_name())
        .l1_capacity(0)
        .timeout(Duration::from_secs(5))
        .build()
        .await
        .expect("build");
    assert!(fresh.stats().connected);
    assert_eq!(set.master_port(), Some(new));
    let (mut checked, mut lost, mut pre_kill_lost) = (0, 0, 0);
    for ((key, value), at) in &report.last_writes {
        let in_redis = fresh.get::<u64>(key).await.unwrap();
        if *at > kill_at {
            checked += 1;
            if in_redis != Some(*value) {
                lost += 1;
            }
        } else if in_redis != Some(*value) {
            pre_kill_lost += 1;
        }
    }
    // Increments made after the kill all reached the new master (replayed as deltas).
    let (mut counters_short, mut counters_over) = (0, 0);
    for (key, (after_kill, total)) in &report.counters {
        let in_redis = fresh.counter(key).await.unwrap().unwrap_or(0);
        if in_redis < *after_kill {
            counters_short += 1;
        }
        // A replay pipeline that Redis applied but did not acknowledge in time is replayed
        // again: an increment may count twice (a documented limit of the replay).
        if in_redis > *total {
            counters_over += 1;
        }
    }
    tracing::warn!(
        ops = report.ops,
        failed_calls = report.errors,
        slowest_call_ms = report.worst.as_secs_f64() * 1000.0,
        kill_to_promotion_ms = promoted_at.duration_since(kill_at).as_millis() as u64,
        promotion_to_back_on_redis_ms = promotion_to_redis.as_secs_f64() * 1000.0,
        promotion_to_link_on_new_master_ms =
            linked_at.saturating_duration_since(promoted_at).as_millis() as u64,
        kill_to_back_on_redis_ms = back.as_millis() as u64,
        replay_done_after_load_ms = replay_done.as_millis() as u64,
        post_kill_writes_checked = checked,
        post_kill_writes_lost = lost,
        pre_kill_writes_lost_to_async_replication = pre_kill_lost,
        replayed = s.replayed,
        counters_over_counted = counters_over,
        outages = s.outages,
        "sentinel failover under load"
    );
    println!(
        "sentinel failover under load: ops={} failed_calls={} slowest_call_ms={:.1} \
         kill_to_promotion_ms={} promotion_to_link_on_new_master_ms={} \
         promotion_to_back_on_redis_ms={:.1} post_kill_writes_checked={} \
         post_kill_writes_lost={} pre_kill_writes_lost_to_async_replication={} replayed={} \
         counters_over_counted={}",
        report.ops,
        report.errors,
        report.worst.as_secs_f64() * 1000.0,
        promoted_at.duration_since(kill_at).as_millis(),
        linked_at.saturating_duration_since(promoted_at).as_millis(),
        promotion_to_redis.as_secs_f64() * 1000.0,
        checked,
        lost,
        pre_kill_lost,
        s.replayed,
        counters_over
    );
    assert_eq!(report.errors, 0);
    assert!(report.ops > 1000, "{}", report.ops);
    assert!(report.worst < HANG, "{:?}", report.worst);
    assert_eq!(s.replay_pending, 0, "{s:?}");
    assert!(s.replayed > 0, "{s:?}");
    assert!(checked > 100, "{checked}");
    assert_eq!(fresh.stats().outages, 0, "the checks read Redis itself");
    assert_eq!(lost, 0, "writes acknowledged after the kill are missing");
    assert_eq!(
        counters_short, 0,
        "increments made after the kill are missing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demoted_master_answering_readonly_is_left_for_the_new_one() {
    cache_sdk_tests::init_tracing();
    let set = RedisSentinels::start();
    let cache = cache_on(&set, 1000).await;
    let old = set.master_port().unwrap();
    // A planned failover: the old master stays up and becomes a replica, so the cache's
    // connection to it keeps working until a write meets READONLY.
    let sentinel = set.sentinel_addrs()[0].clone();
    let port = sentinel.rsplit_once(':').unwrap().1.to_owned();
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &port, "SENTINEL", "FAILOVER", set.master_name()])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("OK"),
        "{out:?}"
    );
    let (new, _) = set.wait_promoted(old, Duration::from_secs(20)).await;
    // The sentinels publish `+switch-master` as they finish; the cache drops its
    // connection to the old master, which would otherwise take writes (and lose them) until
    // the sentinels turn it into a replica, up to ten seconds later. Writes made between
    // the promotion and `+switch-master` are a Redis limit, left out here.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut worst = Duration::ZERO;
    for i in 0..200u64 {
        let started = Instant::now();
        cache
            .set(&format!("demoted:{i}"), &i, Ttl::Api)
            .await
            .unwrap();
        worst = worst.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    back_on_redis(&cache, Duration::from_secs(10)).await;
    assert!(worst < HANG, "{worst:?}");
    // Every write is on the new master, the ones made on the fallback replayed there.
    let master = set.server(new);
    for i in 0..200u64 {
        assert!(
            master.get_raw(&format!("demoted:{i}")).await.is_some(),
            "demoted:{i}"
        );
    }
    assert!(cache.stats().outages >= 1);
    assert!(
        set.server(old).get_raw("demoted:0").await.is_none()
            || set.server(old).cli(&["ROLE"]).starts_with("slave"),
        "a write went to the demoted master"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidations_reach_the_other_instance_after_a_failover() {
    cache_sdk_tests::init_tracing();
    let mut set = RedisSentinels::start();
    let a = cache_on(&set, 1000).await;
    let b = cache_on(&set, 1000).await;
    assert_eq!(b.stats().coherence, CoherenceState::Tracking);
    a.set("coh:k", &1u64, Ttl::Api).await.unwrap();
    assert_eq!(b.get::<u64>("coh:k").await.unwrap(), Some(1)); // now in b's L1

    let (outages_a, outages_b) = (a.stats().outages, b.stats().outages);
    let old = set.kill_master();
    set.wait_promoted(old, Duration::from_secs(20)).await;
    follow_with_traffic(&a, outages_a).await;
    follow_with_traffic(&b, outages_b).await;
    let tracking = wait_until(Duration::from_secs(10), || {
        a.stats().coherence == CoherenceState::Tracking
            && b.stats().coherence == CoherenceState::Tracking
    })
    .await;
    assert!(tracking.is_some(), "the invalidation links did not follow");

    // b caches the value from the new master, then a changes it: b must see the change.
    a.set("coh:k", &2u64, Ttl::Api).await.unwrap();
    assert_eq!(b.get::<u64>("coh:k").await.unwrap(), Some(2));
    let before = b.stats().invalidations;
    let changed_at = Instant::now();
    a.set("coh:k", &3u64, Ttl::Api).await.unwrap();
    let mut seen = None;
    while changed_at.elapsed() < Duration::from_secs(2) {
        if b.get::<u64>("coh:k").await.unwrap() == Some(3) {
            seen = Some(changed_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let seen = seen.expect("b kept serving the old value from L1 after the failover");
    assert!(b.stats().invalidations > before);
    println!(
        "invalidation seen by the other instance {:.2} ms after the write, on the new master",
        seen.as_secs_f64() * 1000.0
    );
}

#[derive(Default)]
struct LoadShared {
    stop: AtomicBool,
    kill_at: Mutex<Option<Instant>>,
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
}

/// `tasks` concurrent loops of `set`, `get` and `incr` until `stop`.
async fn load(cache: Cache, tasks: usize, shared: Arc<LoadShared>) -> LoadReport {
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let (cache, shared) = (cache.clone(), shared.clone());
            tokio::spawn(async move {
                let mut r = LoadReport::default();
                let mut last: HashMap<String, (u64, Instant)> = HashMap::new();
                let counter = format!("sentinel:load:count:{t}");
                let mut i = 0u64;
                while !shared.stop.load(Ordering::Relaxed) {
                    i += 1;
                    let key = format!("sentinel:load:{t}:{}", i % 50);
                    let started = Instant::now();
                    let ok = match i % 3 {
                        0 => {
                            let ok = cache.set(&key, &i, Ttl::Api).await.is_ok();
                            last.insert(key, (i, started));
                            ok
                        }
                        1 => cache.get::<u64>(&key).await.is_ok(),
                        _ => {
                            let ok = cache.incr(&counter).await.is_ok();
                            let e = r.counters.entry(counter.clone()).or_default();
                            e.1 += 1;
                            if shared.after_kill(started) {
                                e.0 += 1;
                            }
                            ok
                        }
                    };
                    r.worst = r.worst.max(started.elapsed());
                    r.ops += 1;
                    if !ok {
                        r.errors += 1;
                    }
                    // A request does other work between cache calls; without this, 48
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
    }
    total
}
