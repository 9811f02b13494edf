//! What only a Redis Cluster can show: keys spread over the masters, multi-key operations
//! split by hash slot, hash tags keeping keys together, listing and counting across every
//! master, and a master killed under load (fallback while the cluster fails over, then
//! back on the cluster with the outage writes). The behaviour suite itself also runs on a
//! cluster: see `cache_ops.rs` and `session_store.rs`.

use std::time::{Duration, Instant};

use cache_sdk::session::{CacheSessionStore, SessionStore};
use cache_sdk::{Cache, CacheConfig, RedisConfig, Ttl};
use cache_sdk_tests::{wait_until, RedisCluster};

/// Generous bound that only catches hangs (timeouts are 100 ms); not a performance claim.
const HANG: Duration = Duration::from_secs(2);

async fn cache_on(cluster: &RedisCluster) -> Cache {
    Cache::builder()
        .redis_cluster(cluster.seeds())
        // Connecting to a cluster takes a few round trips: room for a busy machine.
        .connect_timeout(Duration::from_secs(2))
        .require_redis(true)
        .build()
        .await
        .expect("build")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_spread_over_masters_and_multi_key_ops_span_slots() {
    cache_sdk_tests::init_tracing();
    let cluster = RedisCluster::start(3, 0);
    // Configured from the environment's variable, as an application would.
    let cfg = CacheConfig::from_vars([("REDIS_CLUSTER_NODES", cluster.seeds().join(","))])
        .expect("config");
    assert!(cfg.redis.as_ref().is_some_and(RedisConfig::is_cluster));
    let cache = Cache::builder()
        .config(cfg)
        .connect_timeout(Duration::from_secs(2))
        .require_redis(true)
        .build()
        .await
        .expect("build");
    assert!(cache.stats().connected);

    let items: Vec<(String, u64)> = (0..200).map(|i| (format!("cache:spread:{i}"), i)).collect();
    cache.set_many(&items, Ttl::Api).await.expect("set_many");
    let per_master = cluster.keys_per_master();
    assert_eq!(per_master.len(), 3);
    assert!(per_master.iter().all(|&n| n > 20), "{per_master:?}");
    assert_eq!(per_master.iter().sum::<u64>(), 200);

    cache.clear_local();
    let keys: Vec<&str> = items.iter().map(|(k, _)| k.as_str()).collect();
    let got = cache.get_many::<u64>(&keys).await.expect("get_many");
    assert_eq!(got, (0..200).map(Some).collect::<Vec<_>>());

    let mut listed = cache.scan("cache:spread:*").await.expect("scan");
    listed.sort();
    listed.dedup();
    assert_eq!(listed.len(), 200);

    // Keys with one hash tag share a slot, hence a master.
    let tagged: Vec<(String, u8)> = (0..10)
        .map(|i| (format!("cache:{{tenant:42}}:item:{i}"), i))
        .collect();
    cache.set_many(&tagged, Ttl::Api).await.expect("set_many");
    let slots: std::collections::HashSet<String> = tagged
        .iter()
        .map(|(k, _)| cluster.cli(&["CLUSTER", "KEYSLOT", k]))
        .collect();
    assert_eq!(slots.len(), 1, "{slots:?}");
    assert_eq!(
        cache.scan("cache:{tenant:42}:*").await.expect("scan").len(),
        10
    );
    assert_eq!(cache.stats().backend_errors, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_counted_across_masters() {
    cache_sdk_tests::init_tracing();
    let cluster = RedisCluster::start(3, 0);
    let cache = cache_on(&cluster).await;
    let store = CacheSessionStore::new(cache.clone());
    for i in 0..60 {
        store
            .create(format!("{i}").into_bytes(), Duration::from_secs(60))
            .await
            .expect("create");
    }
    let per_master = cluster.keys_per_master();
    assert!(per_master.iter().all(|&n| n > 0), "{per_master:?}");
    assert_eq!(store.count().await.expect("count"), 60);
    let status = store.status();
    assert!(status.connected && !status.using_fallback);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_other_than_0_is_rejected_on_a_cluster() {
    let err =
        CacheConfig::from_vars([("REDIS_CLUSTER_NODES", "127.0.0.1:7000"), ("REDIS_DB", "3")])
            .and_then(|cfg| cfg.validate())
            .expect_err("db 3 on a cluster");
    assert!(err.to_string().starts_with("REDIS_DB=\"3\""), "{err}");
    assert!(err.to_string().contains("only database 0"), "{err}");

    let err = Cache::builder()
        .redis(RedisConfig::cluster(["127.0.0.1:7000"]).with_db(2))
        .build()
        .await
        .expect_err("db 2 on a cluster")
        .to_string();
    assert!(
        err.contains("REDIS_DB") && err.contains("only database 0"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_killed_under_load_falls_back_then_returns_to_the_cluster() {
    cache_sdk_tests::init_tracing();
    let mut cluster = RedisCluster::start(3, 1);
    let cache = cache_on(&cluster).await;
    for i in 0..50u64 {
        cache
            .set(&format!("cache:before:{i}"), &i, Ttl::Api)
            .await
            .expect("set");
    }
    let killed = cluster.kill_master_of("cache:before:0");

    // Operations keep succeeding, on the fallback while the cluster fails over, then on
    // the cluster again; none errors, none hangs.
    let started = Instant::now();
    let mut saw_fallback = false;
    let mut written = Vec::new();
    let mut i = 0u64;
    loop {
        let key = format!("cache:during:{i}");
        let op = async {
            cache.set(&key, &i, Ttl::Api).await?;
            cache.get::<u64>(&key).await
        };
        let got = tokio::time::timeout(HANG, op)
            .await
            .expect("an operation hung")
            .expect("an operation failed");
        assert_eq!(got, Some(i));
        let connected = cache.stats().connected;
        if !connected {
            saw_fallback = true;
            written.push(key);
        }
        if saw_fallback && connected {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "not back on the cluster 30 s after killing the master on port {killed}: {:?}",
            cache.stats()
        );
        i += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(saw_fallback, "killing a master was not noticed");
    // Back on the cluster at once; the outage writes are replayed in the background.
    let c = cache.clone();
    wait_until(Duration::from_secs(30), move || {
        let s = c.stats();
        s.replay_pending == 0 && s.in_memory_keys == 0
    })
    .await
    .expect("the outage writes were not replayed");
    let s = cache.stats();
    assert!(s.connected && s.outages >= 1, "{s:?}");
    assert_eq!(s.backend_errors, 0, "{s:?}");
    assert!(s.replayed >= 1, "{s:?}");
    assert_eq!((s.replay_pending, s.in_memory_keys), (0, 0), "{s:?}");

    // The outage writes reached the cluster (whichever master holds their slot now).
    let mut conn = cluster.conn().await;
    for key in &written {
        let exists: bool = redis::cmd("EXISTS")
            .arg(key)
            .query_async(&mut conn)
            .await
            .expect("EXISTS");
        assert!(exists, "{key} not replayed");
    }
    let other = cache_on(&cluster).await;
    assert_eq!(
        other.get::<u64>(&written[0]).await.expect("get"),
        cache.get::<u64>(&written[0]).await.expect("get")
    );
    let c = cache.clone();
    wait_until(HANG, move || c.stats().connected)
        .await
        .expect("still on the cluster");
}
