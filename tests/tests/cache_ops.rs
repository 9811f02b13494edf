//! Every cache operation, run three times: against a real redis-server, a real three-master
//! Redis Cluster, and the in-memory store, so all promise the same behaviour.
#![allow(clippy::unwrap_used)] // test helpers called by the suite macro, not #[test] fns

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cache_sdk::codec::{Header, TypeTag};
use cache_sdk::{Cache, Codec, Key, Ttl};
use cache_sdk_tests::{RedisServer, RedisTarget};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Product {
    id: u64,
    name: String,
    price_cents: i64,
}

fn product(id: u64) -> Product {
    Product {
        id,
        name: format!("Product {id}"),
        price_cents: 1999,
    }
}

/// A backend for one test: a fresh redis-server, a fresh cluster, or none.
struct Env {
    server: Option<RedisTarget>,
}

impl Env {
    async fn cache(&self) -> Cache {
        self.cache_with(|b| b).await
    }

    async fn cache_with(
        &self,
        f: impl FnOnce(cache_sdk::CacheBuilder) -> cache_sdk::CacheBuilder,
    ) -> Cache {
        let mut b = Cache::builder();
        match &self.server {
            Some(RedisTarget::Server(s)) => b = b.redis_url(s.url()).require_redis(true),
            Some(RedisTarget::Cluster(c)) => {
                // Connecting to a cluster takes a few round trips: room for a busy machine.
                b = b
                    .redis_cluster(c.seeds())
                    .connect_timeout(Duration::from_secs(2))
                    .require_redis(true);
            }
            None => {}
        }
        f(b).build().await.expect("build")
    }
}

cache_sdk_tests::target_suite!(
    set_get_delete_exists,
    typed_values_survive_a_fresh_l1,
    ttl_is_applied,
    expire_changes_the_ttl,
    get_many_and_set_many,
    incr_is_atomic,
    scan_lists_by_pattern_and_escapes_globs,
    get_or_load_runs_the_loader_once,
    loader_errors_are_not_cached,
    wrong_type_is_a_miss,
    json_codec_round_trips,
    invalid_input_is_an_error,
    stats_count_tiers,
);

async fn set_get_delete_exists(env: Env) {
    let cache = env.cache().await;
    let key = Key::cache("product", 1).unwrap();
    assert_eq!(cache.get::<Product>(&key).await.unwrap(), None);
    cache.set(&key, &product(1), Ttl::Api).await.unwrap();
    assert_eq!(cache.get::<Product>(&key).await.unwrap(), Some(product(1)));
    assert!(cache.exists(&key).await.unwrap());
    assert!(cache.delete(&key).await.unwrap());
    assert!(!cache.exists(&key).await.unwrap());
    assert_eq!(cache.get::<Product>(&key).await.unwrap(), None);
    assert!(!cache.delete(&key).await.unwrap());
}

async fn typed_values_survive_a_fresh_l1(env: Env) {
    let cache = env.cache().await;
    cache
        .set("cache:product:2", &product(2), Ttl::Api)
        .await
        .unwrap();
    if cache.stats().coherence == cache_sdk::CoherenceState::Tracking {
        // Tracking tells this instance about its own write too: let that push arrive
        // first, or it could evict the entry the read below puts back into L1.
        let c = cache.clone();
        cache_sdk_tests::wait_until(Duration::from_secs(2), move || c.stats().invalidations > 0)
            .await;
    }
    cache.clear_local();
    assert_eq!(
        cache.get::<Product>("cache:product:2").await.unwrap(),
        Some(product(2))
    );
    let s = cache.stats();
    assert_eq!((s.l1_hits, s.l2_hits), (0, 1));
    // Now it is in L1 again.
    cache.get::<Product>("cache:product:2").await.unwrap();
    assert_eq!(cache.stats().l1_hits, 1);
    if let Some(server) = &env.server {
        // A second instance (another app server) reads it from Redis.
        let other = env.cache().await;
        assert_eq!(
            other.get::<Product>("cache:product:2").await.unwrap(),
            Some(product(2))
        );
        assert_eq!(other.stats().l2_hits, 1);
        assert!(server.get_raw("cache:product:2").await.is_some());
    }
}

async fn ttl_is_applied(env: Env) {
    let cache = env.cache().await;
    cache.set("cache:t:1", &1u32, Ttl::Api).await.unwrap();
    cache
        .set("user:1:theme", &1u32, Ttl::UserPreferences)
        .await
        .unwrap();
    cache.set("cache:t:2", &1u32, Ttl::secs(1)).await.unwrap();
    let api = cache.ttl("cache:t:1").await.unwrap().unwrap();
    assert!(
        api > Duration::from_secs(590) && api <= Duration::from_secs(600),
        "{api:?}"
    );
    let prefs = cache.ttl("user:1:theme").await.unwrap().unwrap();
    assert!(prefs > Duration::from_secs(604_790), "{prefs:?}");
    if let Some(server) = &env.server {
        let pttl = server.pttl("cache:t:1").await;
        assert!((590_000..=600_000).contains(&pttl), "PTTL {pttl}");
        let pttl = server.pttl("user:1:theme").await;
        assert!((604_790_000..=604_800_000).contains(&pttl), "PTTL {pttl}");
    }
    // The short one expires from both tiers.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(cache.get::<u32>("cache:t:2").await.unwrap(), None);
}

async fn expire_changes_the_ttl(env: Env) {
    let cache = env.cache().await;
    cache
        .set("cache:e:1", &"x".to_string(), Ttl::Session)
        .await
        .unwrap();
    assert!(cache.expire("cache:e:1", Ttl::secs(30)).await.unwrap());
    let ttl = cache.ttl("cache:e:1").await.unwrap().unwrap();
    assert!(ttl <= Duration::from_secs(30) && ttl > Duration::from_secs(28));
    assert!(!cache.expire("cache:e:none", Ttl::secs(30)).await.unwrap());
    if let Some(server) = &env.server {
        assert!(server.pttl("cache:e:1").await <= 30_000);
    }
}

async fn get_many_and_set_many(env: Env) {
    let cache = env.cache().await;
    let items: Vec<(String, Product)> = (1..=5)
        .map(|i| (Key::cache("product", i).unwrap(), product(i)))
        .collect();
    cache.set_many(&items, Ttl::Api).await.unwrap();
    cache.clear_local();
    // Warm one in L1 so the read mixes tiers.
    cache.get::<Product>("cache:product:3").await.unwrap();
    let keys = [
        "cache:product:1",
        "cache:product:3",
        "cache:product:missing",
        "cache:product:5",
    ];
    let got = cache.get_many::<Product>(&keys).await.unwrap();
    assert_eq!(
        got,
        vec![Some(product(1)), Some(product(3)), None, Some(product(5))]
    );
    if let Some(server) = &env.server {
        assert!(server.pttl("cache:product:4").await > 590_000);
    }
}

async fn incr_is_atomic(env: Env) {
    let cache = env.cache().await;
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move {
                for _ in 0..50 {
                    cache.incr("cache:counter:hits").await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        cache.counter("cache:counter:hits").await.unwrap(),
        Some(1000)
    );
    assert_eq!(cache.incr_by("cache:counter:hits", -1000).await.unwrap(), 0);
    cache
        .set("cache:counter:text", &"abc".to_string(), Ttl::Api)
        .await
        .unwrap();
    assert!(cache.incr("cache:counter:text").await.is_err());
    if let Some(server) = &env.server {
        assert_eq!(server.cli(&["GET", "cache:counter:hits"]), "0");
    }
}

async fn scan_lists_by_pattern_and_escapes_globs(env: Env) {
    let cache = env.cache().await;
    for k in [
        "user:7:theme",
        "user:7:lang",
        "user:70:theme",
        "user:a*:x",
        "user:ab:x",
    ] {
        cache.set(k, &1u8, Ttl::Api).await.unwrap();
    }
    for i in 0..300 {
        cache
            .set(&format!("cache:bulk:{i}"), &1u8, Ttl::Api)
            .await
            .unwrap();
    }
    let mut keys = cache.scan(&Key::user_pattern(7).unwrap()).await.unwrap();
    keys.sort();
    assert_eq!(keys, vec!["user:7:lang", "user:7:theme"]);
    let keys = cache.scan(&Key::user_pattern("a*").unwrap()).await.unwrap();
    assert_eq!(keys, vec!["user:a*:x"]);
    let mut bulk = cache.scan("cache:bulk:*").await.unwrap();
    bulk.sort();
    bulk.dedup();
    assert_eq!(bulk.len(), 300);
}

async fn get_or_load_runs_the_loader_once(env: Env) {
    let cache = env.cache().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let cache = cache.clone();
            let calls = calls.clone();
            tokio::spawn(async move {
                cache
                    .get_or_load("cache:product:cold", Ttl::Api, || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok::<_, std::io::Error>(product(77))
                    })
                    .await
                    .unwrap()
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), product(77));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(cache.stats().loads, 1);
    if let Some(server) = &env.server {
        assert!(server.pttl("cache:product:cold").await > 590_000);
        // Another instance finds it in Redis and does not load.
        let other = env.cache().await;
        let v = other
            .get_or_load("cache:product:cold", Ttl::Api, || async {
                Err::<Product, _>("must not load")
            })
            .await
            .unwrap();
        assert_eq!(v, product(77));
    }
}

async fn loader_errors_are_not_cached(env: Env) {
    let cache = env.cache().await;
    let r: Result<u32, &str> = cache
        .get_or_load("cache:flaky:1", Ttl::Api, || async { Err("db down") })
        .await;
    assert_eq!(r, Err("db down"));
    assert!(!cache.exists("cache:flaky:1").await.unwrap());
    let r: Result<u32, &str> = cache
        .get_or_load("cache:flaky:1", Ttl::Api, || async { Ok(5) })
        .await;
    assert_eq!(r, Ok(5));
    assert_eq!(cache.stats().load_errors, 1);
}

async fn wrong_type_is_a_miss(env: Env) {
    let cache = env.cache().await;
    cache.set("cache:typed:1", &42u64, Ttl::Api).await.unwrap();
    cache.clear_local();
    assert_eq!(cache.get::<String>("cache:typed:1").await.unwrap(), None);
    assert_eq!(cache.get::<u64>("cache:typed:1").await.unwrap(), Some(42));
    // In L1 as u64: asking for another type is still a miss, not a panic.
    assert_eq!(cache.get::<Product>("cache:typed:1").await.unwrap(), None);
    assert!(cache.stats().decode_errors >= 1);
}

async fn json_codec_round_trips(env: Env) {
    let cache = env.cache_with(|b| b.codec(Codec::Json)).await;
    cache
        .set("cache:product:9", &product(9), Ttl::Api)
        .await
        .unwrap();
    cache.clear_local();
    assert_eq!(
        cache.get::<Product>("cache:product:9").await.unwrap(),
        Some(product(9))
    );
    if let Some(server) = &env.server {
        let raw = server.get_raw("cache:product:9").await.unwrap();
        let text = String::from_utf8_lossy(&raw[cache_sdk::codec::HEADER_LEN..]).into_owned();
        assert_eq!(text, r#"{"id":9,"name":"Product 9","price_cents":1999}"#);
    }
}

async fn invalid_input_is_an_error(env: Env) {
    let cache = env.cache_with(|b| b.max_value_size(1024)).await;
    assert!(cache.get::<u8>("").await.is_err());
    assert!(cache.set("bad\nkey", &1u8, Ttl::Api).await.is_err());
    assert!(cache.set("cache:a:1", &1u8, Ttl::secs(0)).await.is_err());
    assert!(cache
        .set("cache:a:1", &1u8, Ttl::named("nope"))
        .await
        .is_err());
    let err = cache
        .set("cache:big:1", &vec![0u8; 4096], Ttl::Api)
        .await
        .unwrap_err();
    assert!(
        matches!(err, cache_sdk::Error::ValueTooLarge { .. }),
        "{err}"
    );
    assert!(!cache.exists("cache:big:1").await.unwrap());
}

async fn stats_count_tiers(env: Env) {
    let cache = env.cache().await;
    cache.set("cache:s:1", &1u8, Ttl::Api).await.unwrap();
    if matches!(env.server, Some(RedisTarget::Server(_))) {
        // With tracking (a single server), the cache hears of its own write through the
        // invalidation link too, which drops the key from L1; wait for that before
        // counting. (On a cluster, pub/sub is used, and an instance ignores its own
        // messages.)
        let c = cache.clone();
        cache_sdk_tests::wait_until(Duration::from_secs(2), move || c.stats().invalidations > 0)
            .await
            .unwrap();
    }
    cache.clear_local();
    cache.get::<u8>("cache:s:1").await.unwrap();
    cache.get::<u8>("cache:s:1").await.unwrap();
    cache.get::<u8>("cache:s:2").await.unwrap();
    let s = cache.stats();
    assert_eq!(
        (s.l1_hits, s.l1_misses, s.l2_hits, s.l2_misses),
        (1, 2, 1, 1)
    );
    let json = serde_json::to_value(&s).unwrap();
    let redis = env.server.is_some();
    assert_eq!(json["connected"], redis);
    assert_eq!(json["usingFallback"], !redis);
    assert_eq!(json["store"], if redis { "redis" } else { "memory" });
    if redis {
        assert_eq!(json["inMemoryKeys"], 0);
    } else {
        assert_eq!(json["inMemoryKeys"], 1);
    }
    assert!(cache.is_ready());
    let coherence = match env.server {
        Some(RedisTarget::Server(_)) => "tracking",
        Some(RedisTarget::Cluster(_)) => "pubsub",
        None => "off",
    };
    assert_eq!(json["coherence"], coherence);
}

#[tokio::test]
async fn corrupt_bytes_in_redis_are_a_miss() {
    let server = RedisServer::start();
    let cache = Cache::builder()
        .redis_url(server.url())
        .require_redis(true)
        .build()
        .await
        .unwrap();
    let good =
        cache_sdk::codec::encode(&product(1), Codec::Bincode, TypeTag::UNTAGGED, None).unwrap();
    let cases: Vec<Vec<u8>> = vec![
        b"garbage".to_vec(),
        vec![],
        good[..good.len() / 2].to_vec(),
        {
            let mut v = good.clone();
            v[1] = 99; // another format version
            v
        },
        {
            let mut v = good.clone();
            v[2] = 7; // unknown codec
            v
        },
        {
            let mut v = good.clone();
            v.extend_from_slice(&[1, 2, 3]);
            v
        },
        br#"{"cookie":{}}"#.to_vec(),
    ];
    for (i, bytes) in cases.iter().enumerate() {
        let key = format!("cache:corrupt:{i}");
        server.set_raw(&key, bytes).await;
        assert_eq!(cache.get::<Product>(&key).await.unwrap(), None, "case {i}");
    }
    assert_eq!(cache.stats().decode_errors, cases.len() as u64);
    // A hash under the key: Redis says WRONGTYPE, which is a typed error, not a panic.
    server.cli(&["HSET", "cache:hash:1", "f", "v"]);
    assert!(matches!(
        cache.get::<Product>("cache:hash:1").await,
        Err(cache_sdk::Error::Backend(_))
    ));
    // get_or_load replaces a corrupt value with a loaded one.
    let v = cache
        .get_or_load("cache:corrupt:0", Ttl::Api, || async {
            Ok::<_, ()>(product(5))
        })
        .await
        .unwrap();
    assert_eq!(v, product(5));
    cache.clear_local();
    assert_eq!(
        cache.get::<Product>("cache:corrupt:0").await.unwrap(),
        Some(product(5))
    );
}

#[tokio::test]
async fn namespace_prefixes_redis_keys() {
    let server = RedisServer::start();
    let cache = Cache::builder()
        .redis_url(server.url())
        .namespace("erp")
        .require_redis(true)
        .build()
        .await
        .unwrap();
    cache
        .set("cache:product:1", &product(1), Ttl::Api)
        .await
        .unwrap();
    assert!(server.get_raw("erp:cache:product:1").await.is_some());
    assert!(server.get_raw("cache:product:1").await.is_none());
    assert_eq!(
        cache.scan("cache:product:*").await.unwrap(),
        vec!["cache:product:1"]
    );
}

/// A cache on `server` that names `Product` at `version` (or leaves it untagged).
async fn cache_naming_product(server: &RedisServer, version: Option<u32>) -> Cache {
    let mut b = Cache::builder().redis_url(server.url()).require_redis(true);
    if let Some(version) = version {
        b = b.value_type::<Product>("product", version);
    }
    b.build().await.unwrap()
}

async fn stored_tag(server: &RedisServer, key: &str) -> u32 {
    let raw = server.get_raw(key).await.unwrap();
    Header::parse(&raw).unwrap().type_tag
}

#[tokio::test]
async fn a_type_version_bump_turns_older_values_into_misses() {
    let server = RedisServer::start();
    let untagged = cache_naming_product(&server, None).await;
    let v1 = cache_naming_product(&server, Some(1)).await;
    let v2 = cache_naming_product(&server, Some(2)).await;

    v1.set("cache:product:1", &product(1), Ttl::Api)
        .await
        .unwrap();
    untagged
        .set("cache:product:2", &product(2), Ttl::Api)
        .await
        .unwrap();
    let tag_v1 = TypeTag::named("product", 1).unwrap().value();
    assert_eq!(stored_tag(&server, "cache:product:1").await, tag_v1);
    assert_eq!(stored_tag(&server, "cache:product:2").await, 0);

    // A reader expecting version 2: both are misses, counted as decode errors.
    assert_eq!(v2.get::<Product>("cache:product:1").await.unwrap(), None);
    assert_eq!(v2.get::<Product>("cache:product:2").await.unwrap(), None);
    assert_eq!(v2.stats().decode_errors, 2);

    // Version 1 and untagged readers read both: untagged values survive naming a type at
    // version 1, and an untagged reader lets the decode decide.
    for reader in [&v1, &untagged] {
        reader.clear_local();
        assert_eq!(
            reader.get::<Product>("cache:product:1").await.unwrap(),
            Some(product(1))
        );
        assert_eq!(
            reader.get::<Product>("cache:product:2").await.unwrap(),
            Some(product(2))
        );
        assert_eq!(reader.stats().decode_errors, 0);
    }

    // The version 2 reader reloads and overwrites; version 1 then misses on that value.
    let loaded = v2
        .get_or_load("cache:product:1", Ttl::Api, || async {
            Ok::<_, ()>(product(11))
        })
        .await
        .unwrap();
    assert_eq!(loaded, product(11));
    assert_eq!(v2.stats().loads, 1);
    assert_eq!(
        stored_tag(&server, "cache:product:1").await,
        TypeTag::named("product", 2).unwrap().value()
    );
    v1.clear_local();
    assert_eq!(v1.get::<Product>("cache:product:1").await.unwrap(), None);
    untagged.clear_local();
    assert_eq!(
        untagged.get::<Product>("cache:product:1").await.unwrap(),
        Some(product(11))
    );
}

#[tokio::test]
async fn invalid_type_names_fail_the_build() {
    let builders = [
        Cache::builder().value_type::<Product>("", 1),
        Cache::builder().value_type::<Product>("product", 0),
        Cache::builder().value_type::<Product>("pro@duct", 1),
        Cache::builder()
            .value_type::<Product>("product", 1)
            .value_type::<Product>("item", 1),
        Cache::builder()
            .value_type::<Product>("product", 1)
            .value_type::<u64>("product", 1),
    ];
    for (i, b) in builders.into_iter().enumerate() {
        assert!(
            matches!(b.build().await, Err(cache_sdk::BuildError::Config(_))),
            "case {i}"
        );
    }
    // Distinct names, or versions, are fine.
    Cache::builder()
        .value_type::<Product>("product", 1)
        .value_type::<u64>("count", 1)
        .value_type::<String>("label", 3)
        .build()
        .await
        .unwrap();
}
