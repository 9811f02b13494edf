//! `get_many_or_load` on real Redis: order, one loader call, one MGET, single-flight
//! across overlapping batches, negative caching, an outage and a cluster.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cache_sdk::{BulkOptions, Cache, Ttl};
use cache_sdk_tests::{RedisCluster, RedisServer};

async fn cache(server: &RedisServer) -> Cache {
    Cache::builder()
        .redis_url(server.url())
        .require_redis(true)
        .build()
        .await
        .expect("build")
}

fn key(id: &u64) -> String {
    format!("cache:bulk:{id}")
}

/// How many times Redis ran `command` (INFO commandstats).
fn calls(server: &RedisServer, command: &str) -> u64 {
    let info = server.cli(&["INFO", "commandstats"]);
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A loader over ids `1..=known` that records every call.
#[derive(Clone, Default)]
struct Origin {
    asked: Arc<Mutex<Vec<Vec<u64>>>>,
    known: u64,
}

impl Origin {
    fn new(known: u64) -> Self {
        Self {
            asked: Arc::default(),
            known,
        }
    }

    fn load(
        &self,
    ) -> impl FnMut(Vec<u64>) -> std::future::Ready<Result<HashMap<u64, String>, String>> + '_ {
        move |ids| {
            self.asked.lock().unwrap().push(ids.clone());
            std::future::ready(Ok(ids
                .into_iter()
                .filter(|id| *id >= 1 && *id <= self.known)
                .map(|id| (id, format!("product {id}")))
                .collect()))
        }
    }

    fn calls(&self) -> Vec<Vec<u64>> {
        let mut v = self.asked.lock().unwrap().clone();
        for c in &mut v {
            c.sort_unstable();
        }
        v
    }
}

fn named(ids: &[u64]) -> Vec<Option<String>> {
    ids.iter().map(|id| Some(format!("product {id}"))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_one_mget_and_one_loader_call_with_only_the_missing_ids() {
    cache_sdk_tests::init_tracing();
    let server = RedisServer::start();
    let a = cache(&server).await;
    a.set("cache:bulk:2", &"product 2".to_string(), Ttl::Api)
        .await
        .unwrap();
    a.clear_local();
    let origin = Origin::new(100);
    let ids = [5u64, 2, 9, 1, 5];
    let mget_before = calls(&server, "mget");
    let got = a
        .get_many_or_load(&ids, key, Ttl::Api, origin.load())
        .await
        .unwrap();
    assert_eq!(got, named(&ids));
    assert_eq!(
        origin.calls(),
        vec![vec![1, 5, 9]],
        "one call, only the missing ids"
    );
    assert_eq!(calls(&server, "mget") - mget_before, 1, "one MGET");

    // Another instance reads everything from Redis with one MGET and no load.
    let b = cache(&server).await;
    let other = Origin::new(100);
    let ids: Vec<u64> = vec![9, 1, 2, 5];
    let mget_before = calls(&server, "mget");
    let got = b
        .get_many_or_load(&ids, key, Ttl::Api, other.load())
        .await
        .unwrap();
    assert_eq!(got, named(&ids));
    assert!(other.calls().is_empty());
    assert_eq!(calls(&server, "mget") - mget_before, 1);
    // Written with the TTL.
    let pttl = server.pttl("cache:bulk:9").await;
    assert!(pttl > 0 && pttl <= 600_000, "{pttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_batch_of_fifty_is_one_call_and_unknown_ids_are_none() {
    let server = RedisServer::start();
    let cache = cache(&server).await;
    let origin = Origin::new(40);
    let ids: Vec<u64> = (1..=50).rev().collect();
    let got = cache
        .get_many_or_load(&ids, key, Ttl::Api, origin.load())
        .await
        .unwrap();
    assert_eq!(origin.calls().len(), 1);
    for (id, v) in ids.iter().zip(&got) {
        assert_eq!(v.is_some(), *id <= 40, "{id}");
    }
    // Without negative caching, unknown ids are asked again (alone).
    cache
        .get_many_or_load(&ids, key, Ttl::Api, origin.load())
        .await
        .unwrap();
    assert_eq!(origin.calls()[1], (41..=50).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_batches_on_two_tasks_load_each_id_once() {
    let server = RedisServer::start();
    let cache = cache(&server).await;
    let loads = Arc::new(Mutex::new(Vec::<u64>::new()));
    let gate = Arc::new(tokio::sync::Notify::new());
    let batch = |ids: Vec<u64>| {
        let (cache, loads, gate) = (cache.clone(), loads.clone(), gate.clone());
        tokio::spawn(async move {
            cache
                .get_many_or_load(&ids, key, Ttl::Api, |missing: Vec<u64>| {
                    loads.lock().unwrap().extend(missing.iter().copied());
                    let gate = gate.clone();
                    async move {
                        // Hold the load until the other batch has joined.
                        tokio::time::timeout(Duration::from_millis(300), gate.notified())
                            .await
                            .ok();
                        Ok::<_, String>(
                            missing
                                .into_iter()
                                .map(|id| (id, format!("product {id}")))
                                .collect::<HashMap<_, _>>(),
                        )
                    }
                })
                .await
        })
    };
    let first = batch((1..=20).collect());
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = batch((10..=30).collect());
    let (first, second) = (
        first.await.unwrap().unwrap(),
        second.await.unwrap().unwrap(),
    );
    assert_eq!(first, named(&(1..=20).collect::<Vec<_>>()));
    assert_eq!(second, named(&(10..=30).collect::<Vec<_>>()));
    let mut loads = loads.lock().unwrap().clone();
    loads.sort_unstable();
    assert_eq!(
        loads,
        (1..=30).collect::<Vec<_>>(),
        "every id loaded exactly once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_caching_remembers_absent_ids_for_their_own_ttl_on_every_instance() {
    let server = RedisServer::start();
    let a = cache(&server).await;
    let b = cache(&server).await;
    let opts = BulkOptions::new().cache_absent(Ttl::secs(1));
    let origin = Origin::new(2);
    let ids = [1u64, 3, 2];
    let got = a
        .get_many_or_load_with(&ids, key, Ttl::Api, &opts, origin.load())
        .await
        .unwrap();
    assert_eq!(
        got,
        vec![Some("product 1".into()), None, Some("product 2".into())]
    );
    let pttl = server.pttl("cache:bulk:3").await;
    assert!(
        pttl > 0 && pttl <= 1000,
        "the marker has its own TTL: {pttl}"
    );
    // B knows 3 is absent from Redis, without loading.
    let got = b
        .get_many_or_load_with(&ids, key, Ttl::Api, &opts, origin.load())
        .await
        .unwrap();
    assert_eq!(got[1], None);
    assert_eq!(origin.calls().len(), 1);
    // A plain read of the marker is a miss.
    assert_eq!(b.get::<String>("cache:bulk:3").await.unwrap(), None);
    // After its TTL the id is asked again.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    b.clear_local();
    b.get_many_or_load_with(&ids, key, Ttl::Api, &opts, origin.load())
        .await
        .unwrap();
    assert_eq!(origin.calls()[1], vec![3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_an_outage_the_fallback_serves_and_the_writes_are_replayed() {
    let mut server = RedisServer::start();
    let cache = cache(&server).await;
    server.kill();
    let origin = Origin::new(100);
    let ids: Vec<u64> = (1..=10).collect();
    let got = cache
        .get_many_or_load(&ids, key, Ttl::Api, origin.load())
        .await
        .unwrap();
    assert_eq!(got, named(&ids));
    assert_eq!(origin.calls().len(), 1);
    assert!(cache.stats().using_fallback);
    // Served from the fallback now, no load.
    cache.clear_local();
    cache
        .get_many_or_load(&ids, key, Ttl::Api, origin.load())
        .await
        .unwrap();
    assert_eq!(origin.calls().len(), 1);
    server.restart();
    let replayed = cache_sdk_tests::wait_until(Duration::from_secs(10), || {
        cache.stats().connected && cache.stats().replay_pending == 0
    })
    .await;
    assert!(replayed.is_some(), "{:?}", cache.stats());
    assert!(
        server.get_raw("cache:bulk:7").await.is_some(),
        "replayed to Redis"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_keys_on_every_master_take_one_loader_call() {
    cache_sdk_tests::init_tracing();
    let cluster = RedisCluster::start(3, 0);
    let build = || {
        Cache::builder()
            .redis_cluster(cluster.seeds())
            .connect_timeout(Duration::from_secs(2))
            .require_redis(true)
            .build()
    };
    let a = build().await.expect("build");
    let origin = Origin::new(100);
    let ids: Vec<u64> = (1..=60).collect();
    let got = a
        .get_many_or_load(&ids, key, Ttl::Api, origin.load())
        .await
        .unwrap();
    assert_eq!(got, named(&ids));
    assert_eq!(origin.calls().len(), 1);
    assert!(
        cluster.keys_per_master().iter().all(|n| *n > 0),
        "keys on every master: {:?}",
        cluster.keys_per_master()
    );
    let b = build().await.expect("build");
    let got = b
        .get_many_or_load(&ids, key, Ttl::Api, origin.load())
        .await
        .unwrap();
    assert_eq!(got, named(&ids));
    assert_eq!(origin.calls().len(), 1, "read back from every slot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loader_error_caches_nothing_and_reaches_only_its_caller() {
    let server = RedisServer::start();
    let cache = cache(&server).await;
    let tries = AtomicUsize::new(0);
    let err = cache
        .get_many_or_load(&[1u64, 2], key, Ttl::Api, |_: Vec<u64>| {
            tries.fetch_add(1, Ordering::SeqCst);
            async { Err::<HashMap<u64, String>, _>("db down".to_string()) }
        })
        .await
        .unwrap_err();
    assert_eq!(err, "db down");
    assert_eq!(tries.load(Ordering::SeqCst), 1);
    assert!(server.get_raw("cache:bulk:1").await.is_none());
    assert_eq!(cache.stats().load_errors, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_cached_before_a_clear_or_a_tag_invalidation_are_loaded_again() {
    let server = RedisServer::start();
    let (a, b) = (cache(&server).await, cache(&server).await);
    let origin = Origin::new(100);
    let ids = [1u64, 2, 3];
    let first = a
        .get_many_or_load(&ids, key, Ttl::Api, origin.load())
        .await
        .unwrap();
    assert_eq!(first, named(&ids));
    // A value tagged `catalog`, written by `set_with`, then read in bulk.
    let tagged = cache_sdk::SetOptions::new().tags(["catalog"]);
    a.set_with(&key(&4), &"product 4".to_string(), Ttl::Api, &tagged)
        .await
        .unwrap();

    // B reads them from Redis (not from its L1): all cached, no load.
    b.clear_local();
    let all = [1u64, 2, 3, 4];
    assert_eq!(
        b.get_many_or_load(&all, key, Ttl::Api, origin.load())
            .await
            .unwrap(),
        named(&all)
    );
    assert_eq!(origin.calls().len(), 1, "B found every value in Redis");

    // A tag invalidated on A: B's next bulk read from Redis loads the tagged id alone.
    a.invalidate_tag("catalog").await.unwrap();
    b.clear_local();
    assert_eq!(
        b.get_many_or_load(&all, key, Ttl::Api, origin.load())
            .await
            .unwrap(),
        named(&all)
    );
    assert_eq!(
        origin.calls().last(),
        Some(&vec![4]),
        "only the tagged value"
    );

    // A clear on A: B's next bulk read loads every id again, in one call.
    a.clear().await.unwrap();
    b.clear_local();
    assert_eq!(
        b.get_many_or_load(&all, key, Ttl::Api, origin.load())
            .await
            .unwrap(),
        named(&all)
    );
    assert_eq!(
        origin.calls().last(),
        Some(&vec![1, 2, 3, 4]),
        "every value"
    );
    assert_eq!(origin.calls().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_loaded_in_bulk_carry_the_shared_and_per_key_tags() {
    let server = RedisServer::start();
    let (a, b) = (cache(&server).await, cache(&server).await);
    let origin = Origin::new(100);
    let opts = BulkOptions::new().tags(["catalog"]).tags_by_key(|k| {
        k.strip_prefix("cache:")
            .map(str::to_owned)
            .into_iter()
            .collect()
    });
    let all = [1u64, 2, 3];
    assert_eq!(
        a.get_many_or_load_with(&all, key, Ttl::Api, &opts, origin.load())
            .await
            .unwrap(),
        named(&all)
    );
    // B has every value in its L1 (read from Redis), and A in its own from the load.
    assert_eq!(
        b.get_many_or_load_with(&all, key, Ttl::Api, &opts, origin.load())
            .await
            .unwrap(),
        named(&all)
    );
    assert_eq!(origin.calls().len(), 1);
    // A reads once more: its L1 copies are served once it has read the tags' stamps.
    a.get_many_or_load_with(&all, key, Ttl::Api, &opts, origin.load())
        .await
        .unwrap();
    assert_eq!(origin.calls().len(), 1);

    // A per-key tag, invalidated on B: B loads that id alone again; A's L1 copy depends
    // on the tag's stamp, which coherence evicts, so A reads the reloaded value from Redis.
    b.invalidate_tag("bulk:2").await.unwrap();
    assert_eq!(
        b.get_many_or_load_with(&all, key, Ttl::Api, &opts, origin.load())
            .await
            .unwrap(),
        named(&all)
    );
    assert_eq!(origin.calls().last(), Some(&vec![2]));
    let l2_hits = a.stats().l2_hits;
    let mut read_again = false;
    for _ in 0..250 {
        let got = a
            .get_many_or_load_with(&all, key, Ttl::Api, &opts, origin.load())
            .await
            .unwrap();
        assert_eq!(got, named(&all));
        if a.stats().l2_hits > l2_hits {
            read_again = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        read_again,
        "A's copy of id 2 was dropped when its tag was invalidated"
    );
    assert_eq!(a.stats().l2_hits, l2_hits + 1, "only id 2 was read again");
    assert_eq!(origin.calls().len(), 2, "the value B reloaded served A");
    let reloads = origin.calls().len();

    // The shared tag: every id is a miss again, in one call.
    a.invalidate_tag("catalog").await.unwrap();
    assert_eq!(
        a.get_many_or_load_with(&all, key, Ttl::Api, &opts, origin.load())
            .await
            .unwrap(),
        named(&all)
    );
    assert_eq!(origin.calls().last(), Some(&vec![1, 2, 3]));
    assert_eq!(origin.calls().len(), reloads + 1);

    // An invalid per-key tag: the value is answered but not cached.
    let bad = BulkOptions::new().tags_by_key(|_| vec![String::new()]);
    assert_eq!(
        a.get_many_or_load_with(&[7], key, Ttl::Api, &bad, origin.load())
            .await
            .unwrap(),
        named(&[7])
    );
    assert!(server.get_raw("cache:bulk:7").await.is_none());
}
