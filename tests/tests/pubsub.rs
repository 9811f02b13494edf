//! Typed publish/subscribe against real redis-servers: messages cross instances; foreign and
//! corrupt messages are skipped; a subscription comes back after Redis restarts; during an
//! outage messages still reach this instance's subscribers; a slow subscriber is bounded;
//! namespaces keep apps apart; a Redis Cluster uses sharded pub/sub.

use std::time::Duration;

use cache_sdk::pubsub::SUBSCRIBER_CAPACITY;
use cache_sdk::{Cache, Lagged, Subscription};
use cache_sdk_tests::{wait_until, RedisCluster, RedisServer};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

/// Generous bound: catches a lost message, not a slow one.
const BOUND: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ProductChanged {
    id: u64,
    name: String,
}

async fn cache(server: &RedisServer, namespace: Option<&str>) -> Cache {
    let mut b = Cache::builder().redis_url(server.url()).require_redis(true);
    if let Some(ns) = namespace {
        b = b.namespace(ns);
    }
    b.build().await.expect("cache")
}

async fn next<T>(sub: &mut Subscription<T>) -> Result<T, Lagged>
where
    T: cache_sdk::CacheValue,
{
    tokio::time::timeout(BOUND, sub.next())
        .await
        .expect("a message in time")
        .expect("the stream goes on")
}

async fn nothing<T: cache_sdk::CacheValue + std::fmt::Debug>(sub: &mut Subscription<T>) {
    if let Ok(item) = tokio::time::timeout(Duration::from_millis(300), sub.next()).await {
        panic!("unexpected message {item:?}");
    }
}

#[tokio::test]
async fn typed_messages_cross_instances_once() {
    let server = RedisServer::start();
    let a = cache(&server, None).await;
    let b = cache(&server, None).await;
    let mut on_a = a.subscribe::<ProductChanged>("products").await.unwrap();
    let mut on_b = b.subscribe::<ProductChanged>("products").await.unwrap();
    assert!(b.pubsub_stats().connected);
    let desk = ProductChanged {
        id: 3,
        name: "Desk".into(),
    };
    a.publish("products", &desk).await.unwrap();
    assert_eq!(next(&mut on_b).await, Ok(desk.clone()));
    // The publisher's own subscriber gets it once (locally), not a second time from Redis.
    assert_eq!(next(&mut on_a).await, Ok(desk));
    nothing(&mut on_a).await;
    let stats = b.pubsub_stats();
    assert_eq!((stats.received, stats.subscribers), (1, 1));
    assert_eq!(a.pubsub_stats().local_only, 0);
    // The channel appears in Redis under its plain name (no namespace here).
    assert!(server
        .cli(&["PUBSUB", "CHANNELS"])
        .lines()
        .any(|l| l == "products"));
}

#[tokio::test]
async fn foreign_and_corrupt_messages_are_skipped() {
    let server = RedisServer::start();
    let a = cache(&server, None).await;
    let b = cache(&server, None).await;
    let mut sub = b.subscribe::<u64>("numbers").await.unwrap();
    // Another program's message, and one of another type from the SDK.
    server.cli(&["PUBLISH", "numbers", "hello from redis-cli"]);
    a.publish("numbers", &"not a number".to_string())
        .await
        .unwrap();
    a.publish("numbers", &42u64).await.unwrap();
    assert_eq!(next(&mut sub).await, Ok(42));
    assert_eq!(b.pubsub_stats().skipped, 2);
}

#[tokio::test]
async fn namespaces_keep_apps_apart() {
    let server = RedisServer::start();
    let a = cache(&server, Some("app1")).await;
    let b = cache(&server, Some("app2")).await;
    let a2 = cache(&server, Some("app1")).await;
    let mut on_b = b.subscribe::<u8>("events").await.unwrap();
    let mut on_a2 = a2.subscribe::<u8>("events").await.unwrap();
    a.publish("events", &1u8).await.unwrap();
    assert_eq!(next(&mut on_a2).await, Ok(1));
    nothing(&mut on_b).await;
    assert!(server
        .cli(&["PUBSUB", "CHANNELS"])
        .lines()
        .any(|l| l == "app1:events"));
}

#[tokio::test]
async fn subscriptions_come_back_after_redis_restarts_and_local_delivery_goes_on() {
    let mut server = RedisServer::start();
    let a = cache(&server, None).await;
    let b = cache(&server, None).await;
    let mut on_a = a.subscribe::<u32>("ticks").await.unwrap();
    let mut on_b = b.subscribe::<u32>("ticks").await.unwrap();
    a.publish("ticks", &1u32).await.unwrap();
    assert_eq!(next(&mut on_b).await, Ok(1));
    assert_eq!(next(&mut on_a).await, Ok(1));

    server.kill();
    let (ca, cb) = (a.clone(), b.clone());
    assert!(
        wait_until(BOUND, move || !ca.pubsub_stats().connected
            && !cb.pubsub_stats().connected)
        .await
        .is_some(),
        "the links notice the outage"
    );
    // Outage: this instance's subscribers still hear this instance.
    a.publish("ticks", &2u32).await.unwrap();
    assert_eq!(next(&mut on_a).await, Ok(2));
    assert!(a.pubsub_stats().local_only >= 1);

    server.restart();
    let (ca, cb) = (a.clone(), b.clone());
    assert!(
        wait_until(BOUND, move || ca.pubsub_stats().connected
            && cb.pubsub_stats().connected)
        .await
        .is_some(),
        "the links come back"
    );
    // The message published during the outage is lost for b (pub/sub keeps no history);
    // new ones flow again, both ways.
    let (ca, cb) = (a.clone(), b.clone());
    let resubscribed = wait_until(BOUND, move || {
        ca.pubsub_stats().resubscribes >= 1 && cb.pubsub_stats().resubscribes >= 1
    })
    .await;
    assert!(resubscribed.is_some(), "stats say the link came back");
    a.publish("ticks", &3u32).await.unwrap();
    assert_eq!(next(&mut on_b).await, Ok(3));
    assert_eq!(next(&mut on_a).await, Ok(3));
    b.publish("ticks", &4u32).await.unwrap();
    assert_eq!(next(&mut on_a).await, Ok(4));
    assert_eq!(next(&mut on_b).await, Ok(4));
}

#[tokio::test]
async fn a_slow_subscriber_is_bounded_and_told_what_it_lost() {
    let server = RedisServer::start();
    let a = cache(&server, None).await;
    let b = cache(&server, None).await;
    let mut slow = b.subscribe::<u64>("firehose").await.unwrap();
    let mut fast = b.subscribe::<u64>("firehose").await.unwrap();
    let total = SUBSCRIBER_CAPACITY as u64 * 3;
    let reader = tokio::spawn(async move {
        let mut last = None;
        while let Some(item) = fast.next().await {
            if let Ok(v) = item {
                last = Some(v);
                if v + 1 == total {
                    break;
                }
            }
        }
        last
    });
    for i in 0..total {
        a.publish("firehose", &i).await.unwrap();
    }
    assert_eq!(
        tokio::time::timeout(BOUND, reader).await.unwrap().unwrap(),
        Some(total - 1),
        "a reader that keeps up gets the last message"
    );
    // The slow one never read: it is told how many it lost, then gets the newest ones only.
    let Err(Lagged(lost)) = next(&mut slow).await else {
        panic!("the slow subscriber should lag");
    };
    assert!(lost >= total - SUBSCRIBER_CAPACITY as u64, "lost {lost}");
    let mut kept = 0;
    while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_millis(200), slow.next()).await
    {
        kept += 1;
    }
    assert!(kept <= SUBSCRIBER_CAPACITY, "kept {kept}");
    assert!(b.pubsub_stats().lagged >= lost);
}

#[tokio::test]
async fn without_redis_messages_stay_in_the_instance() {
    let cache = Cache::builder().build().await.unwrap();
    let mut sub = cache.subscribe::<String>("local").await.unwrap();
    cache.publish("local", &"hi".to_string()).await.unwrap();
    assert_eq!(next(&mut sub).await, Ok("hi".to_string()));
    let stats = cache.pubsub_stats();
    assert!(!stats.redis_configured && !stats.connected);
}

#[tokio::test]
async fn a_cluster_uses_sharded_pubsub_where_it_can() {
    let cluster = RedisCluster::start(3, 0);
    let build = || async {
        Cache::builder()
            .redis_cluster(cluster.seeds())
            .require_redis(true)
            .build()
            .await
            .expect("cache")
    };
    let a = build().await;
    let b = build().await;
    let mut subs = Vec::new();
    // Channels on different slots (and so, shards).
    for ch in ["alpha", "beta", "gamma", "delta"] {
        subs.push((ch, b.subscribe::<String>(ch).await.unwrap()));
    }
    for (ch, _) in &subs {
        a.publish(ch, &ch.to_string()).await.unwrap();
    }
    for (ch, sub) in &mut subs {
        assert_eq!(next(sub).await, Ok(ch.to_string()));
    }
    let version = cluster.cli(&["INFO", "server"]);
    let major: u32 = version
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .and_then(|v| v.split('.').next()?.trim().parse().ok())
        .unwrap_or(0);
    assert_eq!(b.pubsub_stats().sharded, major >= 7);
}
