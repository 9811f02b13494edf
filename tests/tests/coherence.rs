//! L1 coherence across instances, against real redis-servers: two caches (and two session
//! apps) on one Redis; writes by the SDK and by other clients evict L1 everywhere; a lost
//! invalidation link suspends L1 until it is back; sessions stay in L1 and survive an
//! outage.
//!
//! Latencies are printed (run with `--nocapture` to see them) and asserted only against
//! generous bounds.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use cache_sdk::session::{
    CacheSessionStore, RecordCache, SessionError, SessionId, SessionStore, Sessions, StoreStatus,
};
use cache_sdk::{Cache, Coherence, CoherenceState, Ttl};
use cache_sdk_tests::{wait_until, RedisServer};
use common::*;

/// Generous bound: catches a missing invalidation, not a slow one.
const BOUND: Duration = Duration::from_secs(1);

async fn cache_with(server: &RedisServer, coherence: Coherence) -> Cache {
    let cache = Cache::builder()
        .redis_url(server.url())
        .require_redis(true)
        .coherence(coherence)
        .build()
        .await
        .expect("cache");
    let want = match coherence {
        Coherence::PubSub => CoherenceState::PubSub,
        Coherence::Off => CoherenceState::Off,
        _ => CoherenceState::Tracking,
    };
    linked(&cache, want).await;
    cache
}

async fn linked(cache: &Cache, want: CoherenceState) {
    let c = cache.clone();
    assert!(
        wait_until(Duration::from_secs(5), move || c.stats().coherence == want)
            .await
            .is_some(),
        "coherence is {}",
        cache.stats().coherence
    );
}

/// Reads `key` until the value comes from L1 (a read that fills L1 may be skipped when an
/// invalidation overlaps it).
async fn hold(cache: &Cache, key: &str) -> Option<u64> {
    for _ in 0..50 {
        let v = cache.get::<u64>(key).await.expect("get");
        let hits = cache.stats().l1_hits;
        let again = cache.get::<u64>(key).await.expect("get");
        if cache.stats().l1_hits > hits && again == v {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("{key} never stayed in L1");
}

/// Reads until `key` holds `want`, for at most `BOUND`; returns how long that took.
async fn sees(cache: &Cache, key: &str, want: Option<u64>) -> Duration {
    sees_counting(cache, key, want).await.0
}

/// As [`sees`], also returning how many reads it took.
async fn sees_counting(cache: &Cache, key: &str, want: Option<u64>) -> (Duration, u32) {
    let start = Instant::now();
    let mut reads = 0;
    loop {
        reads += 1;
        if cache.get::<u64>(key).await.expect("get") == want {
            return (start.elapsed(), reads);
        }
        assert!(
            start.elapsed() < BOUND,
            "{key} still not {want:?} after {BOUND:?}"
        );
        tokio::task::yield_now().await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_one_instance_evicts_the_others_l1() {
    cache_sdk_tests::init_tracing();
    let server = RedisServer::start();
    let a = cache_with(&server, Coherence::Auto).await;
    let b = cache_with(&server, Coherence::Auto).await;
    let key = "cache:product:1";

    let mut after_write = Vec::new();
    let mut at_once = 0;
    for i in 0..500u64 {
        a.set(key, &i, Ttl::Api).await.expect("set");
        sees(&b, key, Some(i)).await;
        assert_eq!(hold(&b, key).await, Some(i));
        let start = Instant::now();
        a.set(key, &(i + 1000), Ttl::Api).await.expect("set");
        // From the start of A's write until B stops answering the old value.
        let (_, reads) = sees_counting(&b, key, Some(i + 1000)).await;
        after_write.push(start.elapsed());
        if reads == 1 {
            at_once += 1;
        }
    }
    after_write.sort();
    println!(
        "propagation from the start of A's write until B answers the new value (tracking, 500 writes): \
         p50 {:?}, p99 {:?}, max {:?}; B's first read after the write returned already new in {at_once}/500",
        percentile(&after_write, 0.5),
        percentile(&after_write, 0.99),
        after_write[after_write.len() - 1]
    );

    // Delete on A: B answers None.
    a.set(key, &7u64, Ttl::Api).await.expect("set");
    sees(&b, key, Some(7)).await;
    assert_eq!(hold(&b, key).await, Some(7));
    a.delete(key).await.expect("delete");
    sees(&b, key, None).await;

    let s = b.stats();
    assert_eq!(s.coherence, CoherenceState::Tracking);
    assert!(s.invalidations >= 200, "{s:?}");
    assert!(s.connected && !s.using_fallback);
    let json = serde_json::to_value(&s).expect("json");
    assert_eq!(json["coherence"], "tracking");
    assert!(json["invalidations"].as_u64().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_by_other_clients_and_flushes_evict_every_l1() {
    let server = RedisServer::start();
    let a = cache_with(&server, Coherence::Auto).await;
    let b = cache_with(&server, Coherence::Tracking).await;
    let key = "cache:price:9";

    // redis-cli DEL.
    a.set(key, &1u64, Ttl::Api).await.expect("set");
    sees(&b, key, Some(1)).await;
    assert_eq!(hold(&a, key).await, Some(1));
    assert_eq!(hold(&b, key).await, Some(1));
    let t = Instant::now();
    assert_eq!(server.cli(&["DEL", key]), "1");
    let (da, db) = (sees(&a, key, None).await, sees(&b, key, None).await);
    println!(
        "redis-cli DEL seen by both within {:?} of redis-cli starting ({da:?} / {db:?} after it exited)",
        t.elapsed()
    );

    // Another client writes a new value (an envelope written by a plain Redis connection).
    a.set("cache:price:template", &2u64, Ttl::Api)
        .await
        .expect("set");
    let envelope = server
        .get_raw("cache:price:template")
        .await
        .expect("stored");
    a.set(key, &1u64, Ttl::Api).await.expect("set");
    sees(&b, key, Some(1)).await;
    assert_eq!(hold(&a, key).await, Some(1));
    assert_eq!(hold(&b, key).await, Some(1));
    server.set_raw(key, &envelope).await;
    sees(&a, key, Some(2)).await;
    sees(&b, key, Some(2)).await;

    // redis-cli SET of something that is not a cached value: a miss, never the old value.
    assert_eq!(hold(&b, key).await, Some(2));
    assert_eq!(hold(&a, key).await, Some(2));
    assert_eq!(server.cli(&["SET", key, "not-an-envelope"]), "OK");
    sees(&a, key, None).await;
    sees(&b, key, None).await;

    // FLUSHALL clears everything.
    a.set(key, &3u64, Ttl::Api).await.expect("set");
    a.set("user:4:theme", &4u64, Ttl::Api).await.expect("set");
    sees(&b, key, Some(3)).await;
    sees(&b, "user:4:theme", Some(4)).await;
    for c in [&a, &b] {
        assert_eq!(hold(c, key).await, Some(3));
        assert_eq!(hold(c, "user:4:theme").await, Some(4));
    }
    assert_eq!(server.cli(&["FLUSHALL"]), "OK");
    for c in [&a, &b] {
        sees(c, key, None).await;
        sees(c, "user:4:theme", None).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_is_tracked_as_a_whole_and_stripped() {
    let server = RedisServer::start();
    let build = || async {
        let c = Cache::builder()
            .redis_url(server.url())
            .namespace("shop")
            .require_redis(true)
            .build()
            .await
            .expect("cache");
        linked(&c, CoherenceState::Tracking).await;
        c
    };
    let (a, b) = (build().await, build().await);
    // A key outside the standard prefixes: covered by the namespace prefix.
    a.set("inventory:5", &5u64, Ttl::Api).await.expect("set");
    sees(&b, "inventory:5", Some(5)).await;
    assert_eq!(hold(&b, "inventory:5").await, Some(5));
    assert_eq!(server.cli(&["DEL", "shop:inventory:5"]), "1");
    sees(&b, "inventory:5", None).await;
    assert_eq!(a.get::<u64>("inventory:5").await.expect("get"), None);
}

/// A key outside the usual prefixes (`report:daily`), written through the SDK on A or by
/// another client, is evicted from B's L1: tracking covers every key the SDK writes, with a
/// namespace (`<ns>:`) and without one (every key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_under_any_prefix_is_evicted_everywhere() {
    let server = RedisServer::start();
    for namespace in [None, Some("erp")] {
        let build = || async {
            let mut b = Cache::builder()
                .redis_url(server.url())
                .coherence(Coherence::Tracking)
                .require_redis(true);
            if let Some(ns) = namespace {
                b = b.namespace(ns);
            }
            let c = b.build().await.expect("cache");
            linked(&c, CoherenceState::Tracking).await;
            c
        };
        let (a, b) = (build().await, build().await);
        let key = "report:daily";
        let stored = match namespace {
            Some(ns) => format!("{ns}:{key}"),
            None => key.to_owned(),
        };

        a.set(key, &1u64, Ttl::Api).await.expect("set");
        sees(&b, key, Some(1)).await;
        assert_eq!(hold(&b, key).await, Some(1), "namespace {namespace:?}");
        // B holds 1 in L1 (for the 30 s L1 TTL): only an eviction lets it see 2 in time.
        a.set(key, &2u64, Ttl::Api).await.expect("set");
        sees(&b, key, Some(2)).await;

        // Another client's write too.
        assert_eq!(hold(&b, key).await, Some(2));
        assert_eq!(server.cli(&["DEL", &stored]), "1");
        sees(&b, key, None).await;
        sees(&a, key, None).await;
    }
}

/// Restricting the tracked prefixes leaves other keys to the L1 TTL, as documented.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restricted_prefixes_track_only_those_keys() {
    let server = RedisServer::start();
    let build = || async {
        let c = Cache::builder()
            .redis_url(server.url())
            .coherence(Coherence::Tracking)
            .coherence_prefixes(["cache:"])
            .require_redis(true)
            .build()
            .await
            .expect("cache");
        linked(&c, CoherenceState::Tracking).await;
        c
    };
    let (a, b) = (build().await, build().await);
    for key in ["cache:x", "report:daily"] {
        a.set(key, &1u64, Ttl::Api).await.expect("set");
        sees(&b, key, Some(1)).await;
        assert_eq!(hold(&b, key).await, Some(1));
    }
    assert_eq!(server.cli(&["DEL", "cache:x"]), "1");
    sees(&b, "cache:x", None).await;
    assert_eq!(server.cli(&["DEL", "report:daily"]), "1");
    // Not tracked: B keeps serving its L1 copy (for up to the L1 TTL).
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        b.get::<u64>("report:daily").await.expect("get"),
        Some(1),
        "an untracked key stays in L1"
    );
}

/// The ids of the invalidation links connected to `server`.
async fn link_ids(ctl: &mut redis::aio::MultiplexedConnection) -> Vec<String> {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(ctl)
        .await
        .expect("CLIENT LIST");
    list.lines()
        .filter(|l| l.contains("name=cache-sdk-coherence "))
        .filter_map(|l| l.split(' ').find_map(|kv| kv.strip_prefix("id=")))
        .map(str::to_owned)
        .collect()
}

async fn ctl_cmd(ctl: &mut redis::aio::MultiplexedConnection, args: &[&str]) -> redis::Value {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(ctl).await.expect("command")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_invalidation_link_suspends_l1_until_it_is_back() {
    cache_sdk_tests::init_tracing();
    let server = RedisServer::start();
    // The writer has no link of its own: its writes reach B only through B's link.
    let writer = cache_with(&server, Coherence::Off).await;
    let b = cache_with(&server, Coherence::Auto).await;
    let mut ctl = server.conn().await;
    let key = "cache:stock:3";

    // 1. Killed, and reconnecting at once: B never answers the old value.
    writer.set(key, &1u64, Ttl::Api).await.expect("set");
    sees(&b, key, Some(1)).await;
    assert_eq!(hold(&b, key).await, Some(1));
    let ids = link_ids(&mut ctl).await;
    assert_eq!(ids.len(), 1, "one link: {ids:?}");
    ctl_cmd(&mut ctl, &["CLIENT", "KILL", "ID", &ids[0]]).await;
    writer.set(key, &2u64, Ttl::Api).await.expect("set");
    assert_eq!(b.get::<u64>(key).await.expect("get"), Some(2));
    linked(&b, CoherenceState::Tracking).await;
    assert!(b.stats().l1_resets >= 1);
    assert_eq!(hold(&b, key).await, Some(2));
    writer.set(key, &3u64, Ttl::Api).await.expect("set");
    sees(&b, key, Some(3)).await;

    // 2. Killed, and kept from coming back (no new connections accepted): L1 is not used
    //    at all meanwhile, so every read is fresh; when the link returns, L1 serves again.
    assert_eq!(hold(&b, key).await, Some(3));
    ctl_cmd(&mut ctl, &["CONFIG", "SET", "maxclients", "1"]).await;
    let ids = link_ids(&mut ctl).await;
    ctl_cmd(&mut ctl, &["CLIENT", "KILL", "ID", &ids[0]]).await;
    linked(&b, CoherenceState::Down).await;
    for i in 10..20u64 {
        writer.set(key, &i, Ttl::Api).await.expect("set");
        assert_eq!(b.get::<u64>(key).await.expect("get"), Some(i));
        let hits = b.stats().l1_hits;
        assert_eq!(b.get::<u64>(key).await.expect("get"), Some(i));
        assert_eq!(b.stats().l1_hits, hits, "L1 served while suspended");
    }
    ctl_cmd(&mut ctl, &["CONFIG", "SET", "maxclients", "10000"]).await;
    let back = {
        let b = b.clone();
        wait_until(Duration::from_secs(5), move || {
            b.stats().coherence == CoherenceState::Tracking
        })
        .await
        .expect("link back")
    };
    println!("link back {back:?} after new connections were accepted again");
    assert_eq!(hold(&b, key).await, Some(19));
    writer.delete(key).await.expect("delete");
    sees(&b, key, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_mode_evicts_on_sdk_writes_and_survives_a_killed_subscriber() {
    let server = RedisServer::start();
    let a = cache_with(&server, Coherence::PubSub).await;
    let b = cache_with(&server, Coherence::PubSub).await;
    let key = "cache:order:8";

    let mut lat = Vec::new();
    for i in 0..100u64 {
        a.set(key, &i, Ttl::Api).await.expect("set");
        sees(&b, key, Some(i)).await;
        assert_eq!(hold(&b, key).await, Some(i));
        let start = Instant::now();
        a.set(key, &(i + 100), Ttl::Api).await.expect("set");
        sees(&b, key, Some(i + 100)).await;
        lat.push(start.elapsed());
    }
    lat.sort();
    println!(
        "propagation from the start of A's write until B answers the new value (pubsub, 100 writes): \
         p50 {:?}, p99 {:?}, max {:?}",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat[lat.len() - 1]
    );
    assert_eq!(hold(&b, key).await, Some(199));
    a.delete(key).await.expect("delete");
    sees(&b, key, None).await;
    a.set_many(&[("cache:order:1", 1u64), ("cache:order:2", 2)], Ttl::Api)
        .await
        .expect("set_many");
    sees(&b, "cache:order:2", Some(2)).await;
    assert_eq!(hold(&b, "cache:order:2").await, Some(2));
    a.expire("cache:order:2", Ttl::secs(5))
        .await
        .expect("expire");
    // The entry is dropped (its deadline changed) and read again.
    let (_, reads) = sees_counting(&b, "cache:order:2", Some(2)).await;
    assert_eq!(reads, 1);

    // The subscribers are killed: both suspend, resubscribe, and work again.
    assert_eq!(hold(&b, "cache:order:1").await, Some(1));
    let killed = server.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert_eq!(killed, "2", "two subscribers");
    a.set("cache:order:1", &11u64, Ttl::Api).await.expect("set");
    sees(&b, "cache:order:1", Some(11)).await;
    linked(&b, CoherenceState::PubSub).await;
    linked(&a, CoherenceState::PubSub).await;
    assert_eq!(hold(&b, "cache:order:1").await, Some(11));
    a.set("cache:order:1", &12u64, Ttl::Api).await.expect("set");
    sees(&b, "cache:order:1", Some(12)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_uses_pubsub_where_tracking_is_refused() {
    let server = RedisServer::start_with(&[
        "--user",
        "default",
        "on",
        "nopass",
        "~*",
        "&*",
        "+@all",
        "-client|tracking",
    ]);
    let a = cache_with(&server, Coherence::Off).await;
    let b = Cache::builder()
        .redis_url(server.url())
        .require_redis(true)
        .build()
        .await
        .expect("cache");
    linked(&b, CoherenceState::PubSub).await;
    let c = Cache::builder()
        .redis_url(server.url())
        .require_redis(true)
        .build()
        .await
        .expect("cache");
    linked(&c, CoherenceState::PubSub).await;
    c.set("cache:x:1", &1u64, Ttl::Api).await.expect("set");
    sees(&b, "cache:x:1", Some(1)).await;
    assert_eq!(hold(&b, "cache:x:1").await, Some(1));
    c.set("cache:x:1", &2u64, Ttl::Api).await.expect("set");
    sees(&b, "cache:x:1", Some(2)).await;
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_keeps_the_l1_ttl_bound_and_reports_off() {
    let server = RedisServer::start();
    let a = cache_with(&server, Coherence::Off).await;
    assert_eq!(a.stats().coherence, CoherenceState::Off);
    assert_eq!(Cache::in_memory().stats().coherence, CoherenceState::Off);
    let mut ctl = server.conn().await;
    assert!(link_ids(&mut ctl).await.is_empty());
}

// ---- sessions: two app servers on one Redis ----

async fn session_app(server: &RedisServer) -> (Cache, axum::Router) {
    let cache = cache_on(Some(server)).await;
    linked(&cache, CoherenceState::Tracking).await;
    let app = app(sessions(&cache, config(&["coh-secret"])));
    (cache, app)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_on_one_app_server_is_a_401_on_the_other() {
    let server = RedisServer::start();
    let (_ca, a) = session_app(&server).await;
    let (cb, b) = session_app(&server).await;

    let cookie = send(&a, "POST", "/login?user=3&name=carol", None)
        .await
        .cookie();
    // Read on B until it comes from L1, then read-only requests cost no Redis command.
    for _ in 0..5 {
        assert_eq!(
            send(&b, "GET", "/profile", Some(&cookie)).await.status,
            StatusCode::OK
        );
    }
    let before = command_calls(&server);
    let hits = cb.stats().l1_hits;
    for _ in 0..100 {
        let r = send(&b, "GET", "/profile", Some(&cookie)).await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.set_cookies.is_empty());
    }
    let d = delta(&server, &before);
    assert!(d.is_empty(), "read-only requests sent {d:?}");
    assert!(cb.stats().l1_hits >= hits + 100);

    // A change on A is seen by B.
    assert_eq!(send(&a, "POST", "/visit", Some(&cookie)).await.body, "1");
    let b2 = b.clone();
    let c2 = cookie.clone();
    let start = Instant::now();
    loop {
        if send(&b2, "GET", "/peek", Some(&c2)).await.body == "1" {
            break;
        }
        assert!(start.elapsed() < BOUND, "B still shows the old visits");
    }

    // Logout on A: B answers 401.
    assert_eq!(
        send(&b, "GET", "/profile", Some(&cookie)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        send(&a, "POST", "/logout", Some(&cookie)).await.status,
        StatusCode::OK
    );
    let start = Instant::now();
    let first = send(&b, "GET", "/profile", Some(&cookie)).await.status;
    let mut status = first;
    while status != StatusCode::UNAUTHORIZED {
        assert!(
            start.elapsed() < BOUND,
            "B still accepts a logged-out session"
        );
        status = send(&b, "GET", "/profile", Some(&cookie)).await.status;
    }
    println!(
        "logout on A: B's first request answered {first}, 401 after {:?}",
        start.elapsed()
    );

    // A session changed by another client (redis-cli) is evicted too.
    let cookie = send(&a, "POST", "/login?user=4&name=dave", None)
        .await
        .cookie();
    for _ in 0..3 {
        send(&b, "GET", "/profile", Some(&cookie)).await;
    }
    let key = format!("sess:{}", id_of(&cookie));
    assert_eq!(server.cli(&["DEL", &key]), "1");
    let start = Instant::now();
    while send(&b, "GET", "/profile", Some(&cookie)).await.status != StatusCode::UNAUTHORIZED {
        assert!(start.elapsed() < BOUND);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn express_sessions_are_cached_and_evicted_too() {
    let server = RedisServer::start();
    let mk = |cache: &Cache| {
        app(sessions(
            cache,
            config(&["coh-secret"]).format(cache_sdk::session::SessionFormat::Express),
        ))
    };
    let ca = cache_on(Some(&server)).await;
    let cb = cache_on(Some(&server)).await;
    linked(&ca, CoherenceState::Tracking).await;
    linked(&cb, CoherenceState::Tracking).await;
    let (a, b) = (mk(&ca), mk(&cb));
    let login = send(&a, "POST", "/login?user=9&name=erin", None).await;
    let cookie = login.cookie();
    for _ in 0..3 {
        assert_eq!(
            send(&b, "GET", "/profile", Some(&cookie)).await.status,
            StatusCode::OK
        );
    }
    let before = command_calls(&server);
    for _ in 0..20 {
        send(&b, "GET", "/peek", Some(&cookie)).await;
    }
    assert!(delta(&server, &before).is_empty());
    send(&a, "POST", "/visit", Some(&cookie)).await;
    let start = Instant::now();
    while send(&b, "GET", "/peek", Some(&cookie)).await.body != "1" {
        assert!(start.elapsed() < BOUND);
    }
    // The record in Redis is still express-session's.
    let raw = server
        .get_raw(&format!("sess:{}", id_of(&cookie)))
        .await
        .expect("stored");
    assert!(raw.starts_with(b"{\"cookie\":{"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_held_in_l1_survives_an_outage_and_its_changes_are_replayed() {
    cache_sdk_tests::init_tracing();
    let mut server = RedisServer::start();
    let (cache, app) = session_app(&server).await;
    let cookie = send(&app, "POST", "/login?user=5&name=bob", None)
        .await
        .cookie();
    for _ in 0..3 {
        assert_eq!(
            send(&app, "GET", "/profile", Some(&cookie)).await.status,
            StatusCode::OK
        );
    }
    // A session never read on this instance is not in L1.
    let other = {
        let (_c2, app2) = session_app(&server).await;
        send(&app2, "POST", "/login?user=6&name=zed", None)
            .await
            .cookie()
    };

    server.kill();
    let r = send(&app, "GET", "/profile", Some(&cookie)).await;
    assert_eq!(r.status, StatusCode::OK, "logged out by the outage");
    let user: UserSession = serde_json::from_str(&r.body).expect("json");
    assert_eq!(user.username, "bob");
    // Changes during the outage work.
    assert_eq!(send(&app, "POST", "/visit", Some(&cookie)).await.body, "1");
    assert!(cache.stats().using_fallback);
    assert_eq!(send(&app, "POST", "/visit", Some(&cookie)).await.body, "2");
    assert_eq!(send(&app, "GET", "/peek", Some(&cookie)).await.body, "2");
    assert_eq!(
        send(&app, "GET", "/profile", Some(&other)).await.status,
        StatusCode::UNAUTHORIZED
    );

    // Redis returns empty: the changed session is replayed to it.
    server.restart();
    let c = cache.clone();
    wait_until(Duration::from_secs(10), move || c.stats().connected)
        .await
        .expect("back on redis");
    let key = format!("sess:{}", id_of(&cookie));
    let raw = String::from_utf8(server.get_raw(&key).await.expect("replayed")).expect("utf8");
    assert!(raw.contains("\"visits\":2"), "{raw}");
    linked(&cache, CoherenceState::Tracking).await;
    assert_eq!(send(&app, "GET", "/peek", Some(&cookie)).await.body, "2");
    // And it is coherent again: a logout by another client is seen.
    assert_eq!(server.cli(&["DEL", &key]), "1");
    let start = Instant::now();
    while send(&app, "GET", "/profile", Some(&cookie)).await.status != StatusCode::UNAUTHORIZED {
        assert!(start.elapsed() < BOUND);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_coherence_sessions_are_read_from_redis_every_time() {
    let server = RedisServer::start();
    let cache = cache_with(&server, Coherence::Off).await;
    let app = app(sessions(&cache, config(&["s"])));
    let cookie = send(&app, "POST", "/visit", None).await.cookie();
    let before = command_calls(&server);
    for _ in 0..5 {
        send(&app, "GET", "/peek", Some(&cookie)).await;
    }
    assert_eq!(delta(&server, &before).get("get"), Some(&5));
}

/// A store in front of a [`CacheSessionStore`] (say, one that audits logouts): forwards
/// everything, and its record cache only when `forward_cache` is set.
#[derive(Debug)]
struct Wrapping {
    inner: CacheSessionStore,
    forward_cache: bool,
}

#[async_trait::async_trait]
impl SessionStore for Wrapping {
    async fn load(&self, id: &SessionId) -> Result<Option<Vec<u8>>, SessionError> {
        self.inner.load(id).await
    }
    async fn create(&self, record: Vec<u8>, ttl: Duration) -> Result<SessionId, SessionError> {
        self.inner.create(record, ttl).await
    }
    async fn save(
        &self,
        id: &SessionId,
        record: Vec<u8>,
        ttl: Duration,
    ) -> Result<bool, SessionError> {
        self.inner.save(id, record, ttl).await
    }
    async fn touch(&self, id: &SessionId, ttl: Duration) -> Result<bool, SessionError> {
        self.inner.touch(id, ttl).await
    }
    async fn destroy(&self, id: &SessionId) -> Result<bool, SessionError> {
        self.inner.destroy(id).await
    }
    async fn count(&self) -> Result<u64, SessionError> {
        self.inner.count().await
    }
    fn status(&self) -> StoreStatus {
        self.inner.status()
    }
    fn record_cache(&self) -> Option<&RecordCache> {
        if self.forward_cache {
            self.inner.record_cache()
        } else {
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrapping_store_keeps_sessions_in_l1_only_when_it_forwards_the_record_cache() {
    let server = RedisServer::start();
    for forward_cache in [true, false] {
        let cache = cache_with(&server, Coherence::Tracking).await;
        let store = Wrapping {
            inner: CacheSessionStore::new(cache.clone()),
            forward_cache,
        };
        let app = app(Sessions::new(store, config(&["wrap"])).expect("sessions"));
        let cookie = send(&app, "POST", "/visit", None).await.cookie();
        // Tracking tells this instance about its own write: let that push arrive before
        // the read that fills L1, or it could evict the entry just filled.
        let c = cache.clone();
        wait_until(Duration::from_secs(2), move || c.stats().invalidations > 0).await;
        // The first read fills L1 (when it may).
        send(&app, "GET", "/peek", Some(&cookie)).await;
        let before = command_calls(&server);
        for _ in 0..5 {
            assert_eq!(send(&app, "GET", "/peek", Some(&cookie)).await.body, "1");
        }
        let gets = delta(&server, &before).get("get").copied();
        if forward_cache {
            assert_eq!(
                gets, None,
                "read from L1 through the forwarded record cache"
            );
        } else {
            assert_eq!(gets, Some(5), "no record cache: every read goes to Redis");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_writes_on_one_instance_evict_the_others_l1() {
    cache_sdk_tests::init_tracing();
    let cluster = cache_sdk_tests::RedisCluster::start(3, 0);
    let on_cluster = || async {
        let cache = Cache::builder()
            .redis_cluster(cluster.seeds())
            .connect_timeout(Duration::from_secs(2))
            .require_redis(true)
            .build()
            .await
            .expect("cache on the cluster");
        linked(&cache, CoherenceState::PubSub).await;
        cache
    };
    let (a, b) = (on_cluster().await, on_cluster().await);
    // Keys on different masters.
    for i in 0..6u64 {
        let key = format!("cache:cluster:{i}");
        a.set(&key, &i, Ttl::Api).await.unwrap();
        assert_eq!(hold(&b, &key).await, Some(i));
        a.set(&key, &(i + 100), Ttl::Api).await.unwrap();
        let took = sees(&b, &key, Some(i + 100)).await;
        eprintln!("cluster, pub/sub: {key} seen by the other instance after {took:?}");
        a.delete(&key).await.unwrap();
        sees(&b, &key, None).await;
    }
    assert!(b.stats().invalidations >= 12, "{:?}", b.stats());
}

/// Records the instants of the coherence module's `trace` event "L1 entries evicted", on
/// the threads where it is the default subscriber.
#[derive(Debug, Default)]
struct EvictionClock {
    at: std::sync::Mutex<Vec<Instant>>,
}

impl tracing::Subscriber for EvictionClock {
    fn enabled(&self, m: &tracing::Metadata<'_>) -> bool {
        m.is_event()
            && *m.level() == tracing::Level::TRACE
            && m.target() == "cache_sdk::tier::coherence"
    }
    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::TRACE)
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, _: &tracing::Event<'_>) {
        self.at.lock().unwrap().push(Instant::now());
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// A tracking client on a plain blocking socket read by an OS thread of its own (no Tokio):
/// the instant each invalidation push arrives, as close to Redis' delivery as a client
/// can see it.
fn thread_observer(
    port: u16,
    prefix: &str,
) -> (
    Arc<std::sync::Mutex<Vec<Instant>>>,
    std::net::TcpStream,
    std::thread::JoinHandle<()>,
) {
    use std::io::{Read, Write};
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    sock.set_nodelay(true).unwrap();
    write!(
        sock,
        "HELLO 3\r\nCLIENT TRACKING ON BCAST PREFIX {prefix}\r\n"
    )
    .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen.windows(5).any(|w| w == b"+OK\r\n") {
        let n = sock.read(&mut buf).unwrap();
        assert!(n > 0, "tracking refused");
        seen.extend_from_slice(&buf[..n]);
    }
    let stamps = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (out, closer) = (stamps.clone(), sock.try_clone().unwrap());
    let thread = std::thread::spawn(move || loop {
        let n = match sock.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let now = Instant::now();
        let pushes = buf[..n].windows(10).filter(|w| w == b"invalidate").count();
        out.lock().unwrap().extend(std::iter::repeat_n(now, pushes));
    });
    (stamps, closer, thread)
}

fn summary(name: &str, mut v: Vec<f64>) -> String {
    v.sort_by(f64::total_cmp);
    let p = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    format!(
        "{name}: p50 {:.3} p99 {:.3} p99.9 {:.3} max {:.3} ms",
        p(0.5),
        p(0.99),
        p(0.999),
        v[v.len() - 1]
    )
}

/// Where the propagation time goes: for each write by A, from the start of A's `SET` to
/// its reply, to the push reaching a plain OS thread (Redis and the kernel), to the push
/// reaching a Tokio task on the reader's runtime (the same path as the reader's link), and
/// to the reader's L1 eviction (its link's push handler). Prints the distributions; the
/// figures are recorded in `RESILIENCE.md`. `COHERENCE_TAIL_WRITES` sets the number of
/// writes (2,000 by default).
#[test]
fn where_the_propagation_time_goes() {
    let writes: usize = std::env::var("COHERENCE_TAIL_WRITES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let clock = Arc::new(EvictionClock::default());
    let dispatch = tracing::Dispatch::from(clock.clone());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(move || {
            // For the life of the worker thread.
            std::mem::forget(tracing::dispatcher::set_default(&dispatch));
        })
        .build()
        .unwrap();
    let server = RedisServer::start();
    let key = "cache:tail:k";
    let (thread_stamps, closer, observer) = thread_observer(server.port(), "cache:tail");
    rt.block_on(async {
        let writer = Cache::builder()
            .redis_url(server.url())
            .require_redis(true)
            .l1_capacity(0)
            .build()
            .await
            .expect("writer");
        let reader = cache_with(&server, Coherence::Tracking).await;
        // A tracking client on a Tokio task of the reader's runtime.
        let task_stamps = Arc::new(std::sync::Mutex::new(Vec::new()));
        let config = {
            let out = task_stamps.clone();
            redis::AsyncConnectionConfig::new().set_push_sender(move |p: redis::PushInfo| {
                if p.kind == redis::PushKind::Invalidate {
                    out.lock().unwrap().push(Instant::now());
                }
                Ok::<(), std::convert::Infallible>(())
            })
        };
        let client = redis::Client::open(format!("{}?protocol=resp3", server.url())).unwrap();
        let mut task_conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .unwrap();
        redis::cmd("CLIENT")
            .arg(&["TRACKING", "ON", "BCAST", "PREFIX", "cache:tail"])
            .query_async::<()>(&mut task_conn)
            .await
            .unwrap();
        let (mut reply, mut thread, mut task, mut evict, mut after_reply) =
            (vec![], vec![], vec![], vec![], vec![]);
        // Per write, after the writer's SET reply: (eviction, plain thread, Tokio task).
        let mut worst: Vec<(f64, f64, f64)> = vec![];
        // The reader's eviction after the plain thread read the push: the Tokio side.
        let mut tokio_side = vec![];
        // The plain OS thread's read of the push after the writer's SET reply (0 if before).
        let mut thread_after_reply = vec![];
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let started = Instant::now();
        // Write 0 only puts the key in place.
        for i in 0..=writes {
            if i > 0 {
                assert_eq!(hold(&reader, key).await, Some(i as u64 - 1));
            }
            let t0 = Instant::now();
            writer.set(key, &(i as u64), Ttl::Api).await.expect("set");
            let t1 = Instant::now();
            let got = wait_until(BOUND, || {
                thread_stamps.lock().unwrap().len() > i
                    && task_stamps.lock().unwrap().len() > i
                    && clock.at.lock().unwrap().len() > i
            })
            .await;
            assert!(got.is_some(), "write {i} was not seen everywhere");
            if i == 0 {
                continue;
            }
            let at = |v: &std::sync::Mutex<Vec<Instant>>| v.lock().unwrap()[i];
            let (th, ta, ev) = (at(&thread_stamps), at(&task_stamps), at(&clock.at));
            reply.push(ms(t1 - t0));
            thread.push(ms(th.saturating_duration_since(t0)));
            task.push(ms(ta.saturating_duration_since(t0)));
            evict.push(ms(ev.saturating_duration_since(t0)));
            after_reply.push(ms(ev.saturating_duration_since(t1)));
            let signed = |a: Instant, b: Instant| {
                if a >= b {
                    ms(a - b)
                } else {
                    -ms(b - a)
                }
            };
            worst.push((signed(ev, t1), signed(th, t1), signed(ta, t1)));
            tokio_side.push(signed(ev, th));
            thread_after_reply.push(ms(th.saturating_duration_since(t1)));
        }
        worst.sort_by(|a, b| b.0.total_cmp(&a.0));
        let worst: Vec<String> = worst
            .iter()
            .take(8)
            .map(|(e, th, ta)| format!("eviction {e:.2} / OS thread {th:.2} / Tokio task {ta:.2}"))
            .collect();
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        println!(
            "coherence propagation, {writes} writes in {:?} (load average {}), from the start of the writer's SET:\n  {}\n  {}\n  {}\n  {}\n  {}\n  {}\n  {}\n  slowest evictions after the SET reply, ms (and when the push reached the OS thread, the Tokio task):\n    {}",
            started.elapsed(),
            load.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
            summary("writer's SET reply", reply),
            summary("push read by a plain OS thread", thread),
            summary("push read by a Tokio task on the reader's runtime", task),
            summary("reader's L1 eviction", evict),
            summary("reader's L1 eviction after the writer's SET reply", after_reply),
            summary("push read by the plain OS thread after the writer's SET reply", thread_after_reply),
            summary("reader's L1 eviction after the plain OS thread read the push (Tokio wakeup)", tokio_side),
            worst.join("\n    "),
        );
    });
    closer.shutdown(std::net::Shutdown::Both).unwrap();
    observer.join().unwrap();
}
