//! Tags and clear against real redis-servers: several `Cache` instances on one Redis, a tag
//! invalidated (or the cache cleared) on one instance seen on the others, both during an
//! outage and replayed after it, on a cluster, and through the macros.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cache_sdk::{cache_evict, cache_put, cached, Cache, CoherenceState, SetOptions, Ttl};
use cache_sdk_tests::{wait_until, RedisCluster, RedisServer};

/// Generous bound: catches a missing invalidation, not a slow one.
const BOUND: Duration = Duration::from_secs(2);

async fn cache_on(server: &RedisServer) -> Cache {
    let cache = Cache::builder()
        .redis_url(server.url())
        .require_redis(true)
        .build()
        .await
        .expect("cache");
    linked(&cache).await;
    cache
}

async fn linked(cache: &Cache) {
    let c = cache.clone();
    let up = wait_until(Duration::from_secs(5), move || {
        matches!(
            c.stats().coherence,
            CoherenceState::Tracking | CoherenceState::PubSub
        )
    })
    .await;
    assert!(up.is_some(), "coherence is {}", cache.stats().coherence);
}

fn tagged(tags: &[&str]) -> SetOptions {
    SetOptions::new().tags(tags.iter().copied())
}

/// Reads `key` on `cache` until it is `want`, within the bound.
async fn until_is(cache: &Cache, key: &str, want: Option<u64>) {
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let got = cache.get::<u64>(key).await.expect("get");
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{key}: {got:?}, expected {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Reads `key` twice so that the second read is an L1 hit (when L1 serves).
async fn hold(cache: &Cache, key: &str) -> Option<u64> {
    let _ = cache.get::<u64>(key).await.expect("get");
    cache.get::<u64>(key).await.expect("get")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_invalidated_on_one_instance_is_a_miss_on_the_others() {
    cache_sdk_tests::init_tracing();
    let server = RedisServer::start();
    let (a, b, c) = (
        cache_on(&server).await,
        cache_on(&server).await,
        cache_on(&server).await,
    );
    for i in 0..50u64 {
        let tags: &[&str] = if i % 2 == 0 {
            &["catalog", "even"]
        } else {
            &["catalog"]
        };
        a.set_with(&format!("cache:p:{i}"), &i, Ttl::Api, &tagged(tags))
            .await
            .unwrap();
    }
    a.set("cache:plain", &7u64, Ttl::Api).await.unwrap();
    for cache in [&b, &c] {
        assert_eq!(hold(cache, "cache:p:2").await, Some(2));
        assert_eq!(hold(cache, "cache:p:3").await, Some(3));
        assert_eq!(hold(cache, "cache:plain").await, Some(7));
    }
    let hits = b.stats().l1_hits;
    assert_eq!(b.get::<u64>("cache:p:2").await.unwrap(), Some(2));
    assert!(b.stats().l1_hits > hits, "a tagged read is served by L1");

    a.invalidate_tag("even").await.unwrap();
    for cache in [&a, &b, &c] {
        until_is(cache, "cache:p:2", None).await;
        assert_eq!(cache.get::<u64>("cache:p:3").await.unwrap(), Some(3));
        assert_eq!(cache.get::<u64>("cache:plain").await.unwrap(), Some(7));
    }
    // One stamp written; the entries stay in Redis until their TTL.
    assert!(server.get_raw("__cache-sdk__:tag:even").await.is_some());
    assert!(server.get_raw("cache:p:2").await.is_some());

    c.invalidate_tag("catalog").await.unwrap();
    for cache in [&a, &b, &c] {
        for i in [1u64, 3, 48, 49] {
            until_is(cache, &format!("cache:p:{i}"), None).await;
        }
        assert_eq!(cache.get::<u64>("cache:plain").await.unwrap(), Some(7));
    }
    // Written after the invalidation: a value again, on every instance.
    b.set_with("cache:p:3", &33u64, Ttl::Api, &tagged(&["catalog"]))
        .await
        .unwrap();
    for cache in [&a, &b, &c] {
        until_is(cache, "cache:p:3", Some(33)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_or_load_with_tags_reloads_after_the_tag_is_invalidated() {
    cache_sdk_tests::init_tracing();
    let server = RedisServer::start();
    let (a, b) = (cache_on(&server).await, cache_on(&server).await);
    let loads = Arc::new(AtomicU32::new(0));
    let opts = cache_sdk::LoadOptions::new().tags(["product:1", "catalog"]);
    let read = |cache: Cache| {
        let loads = loads.clone();
        let opts = opts.clone();
        async move {
            cache
                .get_or_load_with("cache:product:1", Ttl::Api, &opts, move || async move {
                    Ok::<_, ()>(u64::from(loads.fetch_add(1, Ordering::SeqCst)))
                })
                .await
                .unwrap()
        }
    };
    assert_eq!(read(a.clone()).await, 0);
    assert_eq!(read(b.clone()).await, 0, "B reads A's value");
    assert_eq!(read(b.clone()).await, 0);
    a.invalidate_tag("product:1").await.unwrap();
    let b2 = b.clone();
    let read2 = read;
    let reloaded = async move {
        for _ in 0..200 {
            if read2(b2.clone()).await == 1 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        false
    };
    assert!(reloaded.await, "B reloads after A invalidated the tag");
    assert_eq!(loads.load(Ordering::SeqCst), 2);
    assert_eq!(read(a.clone()).await, 1, "A reads B's reload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_on_one_instance_empties_every_instance_but_keeps_raw_values() {
    cache_sdk_tests::init_tracing();
    let server = RedisServer::start();
    let (a, b) = (cache_on(&server).await, cache_on(&server).await);
    a.set("cache:x", &1u64, Ttl::Api).await.unwrap();
    a.set_with("cache:y", &2u64, Ttl::Api, &tagged(&["t"]))
        .await
        .unwrap();
    a.set_raw("sess:keep", b"{}".to_vec(), Ttl::Session)
        .await
        .unwrap();
    a.incr_by("cache:counter", 3).await.unwrap();
    assert_eq!(hold(&b, "cache:x").await, Some(1));
    assert_eq!(hold(&b, "cache:y").await, Some(2));
    a.clear().await.unwrap();
    assert_eq!(a.get::<u64>("cache:x").await.unwrap(), None);
    until_is(&b, "cache:x", None).await;
    until_is(&b, "cache:y", None).await;
    assert_eq!(
        b.get_raw("sess:keep").await.unwrap().as_deref(),
        Some(&b"{}"[..])
    );
    assert_eq!(b.counter("cache:counter").await.unwrap(), Some(3));
    b.set("cache:x", &10u64, Ttl::Api).await.unwrap();
    until_is(&a, "cache:x", Some(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_and_clear_during_an_outage_are_replayed_to_redis() {
    cache_sdk_tests::init_tracing();
    let server = RedisServer::start();
    let a = cache_on(&server).await;
    a.set_with("cache:t:1", &1u64, Ttl::Api, &tagged(&["t"]))
        .await
        .unwrap();
    a.set_with("cache:u:1", &2u64, Ttl::Api, &tagged(&["u"]))
        .await
        .unwrap();
    a.set("cache:plain", &3u64, Ttl::Api).await.unwrap();
    server.pause();
    // The first call finds Redis unavailable: the fallback serves from then on.
    a.set("cache:trip", &0u64, Ttl::Api).await.unwrap();
    assert!(!a.stats().connected);
    a.invalidate_tag("t").await.unwrap();
    assert_eq!(a.get::<u64>("cache:t:1").await.unwrap(), None);
    // Written on the fallback during the outage, then cleared.
    a.set_with("cache:u:2", &4u64, Ttl::Api, &tagged(&["u"]))
        .await
        .unwrap();
    a.clear().await.unwrap();
    assert_eq!(a.get::<u64>("cache:u:2").await.unwrap(), None);
    server.resume();
    let a2 = a.clone();
    let back = wait_until(Duration::from_secs(10), move || {
        let s = a2.stats();
        s.connected && s.replay_pending == 0
    })
    .await;
    assert!(back.is_some(), "back on Redis: {:?}", a.stats());
    assert!(server.get_raw("__cache-sdk__:tag:t").await.is_some());
    assert!(server.get_raw("__cache-sdk__:clear").await.is_some());
    // A fresh instance reads Redis only: both the tag and the clear were replayed.
    let fresh = cache_on(&server).await;
    for key in ["cache:t:1", "cache:u:1", "cache:plain", "cache:u:2"] {
        assert_eq!(fresh.get::<u64>(key).await.unwrap(), None, "{key}");
    }
    fresh
        .set_with("cache:t:1", &5u64, Ttl::Api, &tagged(&["t"]))
        .await
        .unwrap();
    until_is(&a, "cache:t:1", Some(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_and_clear_work_on_a_cluster() {
    cache_sdk_tests::init_tracing();
    let cluster = RedisCluster::start(3, 0);
    let on = || async {
        let cache = Cache::builder()
            .redis_cluster(cluster.seeds())
            .connect_timeout(Duration::from_secs(2))
            .require_redis(true)
            .build()
            .await
            .expect("build");
        linked(&cache).await;
        cache
    };
    let (a, b) = (on().await, on().await);
    let keys: Vec<String> = (0..30).map(|i| format!("cache:c:{i}")).collect();
    for (i, k) in keys.iter().enumerate() {
        a.set_with(
            k,
            &(i as u64),
            Ttl::Api,
            &tagged(&["group", &format!("item:{i}")]),
        )
        .await
        .unwrap();
    }
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let got = b.get_many::<u64>(&refs).await.unwrap();
    assert!(got.iter().all(Option::is_some));
    a.invalidate_tag("item:4").await.unwrap();
    until_is(&b, "cache:c:4", None).await;
    assert_eq!(b.get::<u64>("cache:c:5").await.unwrap(), Some(5));
    b.invalidate_tag("group").await.unwrap();
    for k in &keys {
        until_is(&a, k, None).await;
    }
    a.set("cache:c:plain", &1u64, Ttl::Api).await.unwrap();
    assert_eq!(hold(&b, "cache:c:plain").await, Some(1));
    a.clear().await.unwrap();
    until_is(&b, "cache:c:plain", None).await;
}

/// A service whose functions carry tags, through the macros.
struct Shop {
    cache: Cache,
    loads: AtomicU32,
}

impl Shop {
    #[cached(key = "cache:m:product:{id}", ttl = "api", cache = self.cache, tags = ["product:{id}", "catalog"])]
    async fn product(&self, id: u64) -> u64 {
        self.loads.fetch_add(1, Ordering::SeqCst);
        id * 10
    }

    #[cache_put(key = "cache:m:product:{id}", ttl = "api", cache = self.cache, tags = ["product:{id}", "catalog"])]
    async fn save(&self, id: u64, value: u64) -> u64 {
        let _ = id;
        value
    }

    #[cache_evict(cache = self.cache, tags = ["catalog"])]
    async fn reset_catalog(&self) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn macros_write_and_invalidate_tags() {
    cache_sdk_tests::init_tracing();
    let server = RedisServer::start();
    let shop = Shop {
        cache: cache_on(&server).await,
        loads: AtomicU32::new(0),
    };
    let other = cache_on(&server).await;
    assert_eq!(shop.product(1).await, 10);
    assert_eq!(shop.product(1).await, 10);
    assert_eq!(shop.loads.load(Ordering::SeqCst), 1);
    assert_eq!(
        other.get::<u64>("cache:m:product:1").await.unwrap(),
        Some(10)
    );
    shop.product_invalidate_tags(1).await.unwrap();
    until_is(&other, "cache:m:product:1", None).await;
    assert_eq!(shop.product(1).await, 10);
    assert_eq!(shop.loads.load(Ordering::SeqCst), 2);
    assert_eq!(shop.save(1, 11).await, 11);
    until_is(&other, "cache:m:product:1", Some(11)).await;
    shop.reset_catalog().await;
    until_is(&other, "cache:m:product:1", None).await;
    assert!(server.get_raw("__cache-sdk__:tag:catalog").await.is_some());
}
