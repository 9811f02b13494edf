//! The session store and `Sessions`, run against a real redis-server, a real Redis Cluster
//! and the in-memory store, so all promise the same behaviour; plus what only Redis can show
//! (TTLs in Redis, a new app instance on the same Redis).

mod common;

use std::time::Duration;

use cache_sdk::session::{CacheSessionStore, SessionId, SessionStore, Sessions};
use cache_sdk_tests::{RedisServer, RedisTarget};
use common::*;

struct Env {
    server: Option<RedisTarget>,
}

impl Env {
    async fn sessions(&self) -> Sessions {
        let cache = cache_on_target(self.server.as_ref()).await;
        common::sessions(&cache, config(&["store-secret"]))
    }
}

cache_sdk_tests::target_suite!(
    create_load_save_touch_destroy_count,
    create_never_overwrites_and_ids_are_fresh,
    records_that_do_not_decode_are_no_session,
    per_session_ttl_is_kept,
    stats_have_the_seed_shape,
);

fn user(name: &str) -> UserSession {
    UserSession {
        user_id: Some(1),
        username: name.into(),
        visits: 0,
    }
}

async fn create_load_save_touch_destroy_count(env: Env) {
    let sessions = env.sessions().await;
    assert_eq!(sessions.count().await.expect("count"), 0);
    let a = sessions.create(&user("a"), None).await.expect("create");
    let b = sessions.create(&user("b"), None).await.expect("create");
    assert_eq!(sessions.count().await.expect("count"), 2);

    let mut loaded = sessions
        .load::<UserSession>(&a)
        .await
        .expect("load")
        .expect("found");
    assert_eq!(loaded.data, user("a"));
    assert_eq!(loaded.ttl, Duration::from_secs(86_400));
    loaded.data.visits = 9;
    sessions.save(&a, &loaded).await.expect("save");
    assert_eq!(
        sessions
            .load::<UserSession>(&a)
            .await
            .expect("load")
            .expect("found")
            .data
            .visits,
        9
    );

    assert!(sessions
        .touch(&a, Duration::from_secs(100))
        .await
        .expect("touch"));
    assert!(sessions.destroy(&a).await.expect("destroy"));
    assert!(!sessions.destroy(&a).await.expect("destroy"));
    assert!(sessions
        .load::<UserSession>(&a)
        .await
        .expect("load")
        .is_none());
    assert!(!sessions
        .touch(&a, Duration::from_secs(100))
        .await
        .expect("touch"));
    // A destroyed session is not brought back by a save.
    assert!(matches!(
        sessions.save(&a, &loaded).await,
        Err(cache_sdk::session::SessionError::Gone)
    ));
    assert_eq!(sessions.count().await.expect("count"), 1);
    assert!(sessions
        .load::<UserSession>(&b)
        .await
        .expect("load")
        .is_some());
}

async fn create_never_overwrites_and_ids_are_fresh(env: Env) {
    let cache = cache_on_target(env.server.as_ref()).await;
    let store = CacheSessionStore::new(cache.clone());
    let mut ids = std::collections::HashSet::new();
    for i in 0..50 {
        let id = store
            .create(format!("{i}").into_bytes(), Duration::from_secs(60))
            .await
            .expect("create");
        assert_eq!(id.as_str().len(), 32);
        assert!(ids.insert(id));
    }
    for id in &ids {
        assert!(store.load(id).await.expect("load").is_some());
    }
    // The primitive create relies on: an existing id is never overwritten.
    let id = ids.iter().next().expect("one").clone();
    let before = store.load(&id).await.expect("load");
    assert!(!cache
        .set_raw_nx(&id.key(), b"other".to_vec(), cache_sdk::Ttl::Session)
        .await
        .expect("nx"));
    assert_eq!(store.load(&id).await.expect("load"), before);
}

async fn records_that_do_not_decode_are_no_session(env: Env) {
    let cache = cache_on_target(env.server.as_ref()).await;
    let sessions = common::sessions(&cache, config(&["s"]));
    let store = CacheSessionStore::new(cache.clone());
    for garbage in [
        &b"\x00\x01\x02"[..],
        b"{}",
        br#"{"v":9,"ttl":1,"savedAt":1,"data":{}}"#,
        br#"{"v":1,"ttl":60,"savedAt":1,"data":{"visits":"many"}}"#,
        br#"{"cookie":{},"userId":1}"#,
    ] {
        let id = store
            .create(garbage.to_vec(), Duration::from_secs(60))
            .await
            .expect("create");
        assert!(sessions
            .load::<UserSession>(&id)
            .await
            .expect("load")
            .is_none());
    }
    // Over the size limit: not even decoded.
    let mut small = config(&["s"]);
    small.max_record_bytes = 100;
    let strict = common::sessions(&cache, small);
    let id = sessions
        .create(&user(&"x".repeat(200)), None)
        .await
        .expect("create");
    assert!(strict
        .load::<UserSession>(&id)
        .await
        .expect("load")
        .is_none());
    assert!(sessions
        .load::<UserSession>(&id)
        .await
        .expect("load")
        .is_some());
}

async fn per_session_ttl_is_kept(env: Env) {
    let sessions = env.sessions().await;
    let id = sessions
        .create(&user("a"), Some(Duration::from_secs(30 * 86_400)))
        .await
        .expect("create");
    let loaded = sessions
        .load::<UserSession>(&id)
        .await
        .expect("load")
        .expect("found");
    assert_eq!(loaded.ttl, Duration::from_secs(30 * 86_400));
    assert!(loaded.saved_at_ms.is_some());
}

async fn stats_have_the_seed_shape(env: Env) {
    let sessions = env.sessions().await;
    sessions.create(&user("a"), None).await.expect("create");
    let json = serde_json::to_value(sessions.stats().await.expect("stats")).expect("json");
    let redis = env.server.is_some();
    assert_eq!(
        json,
        serde_json::json!({
            "store": if redis { "redis" } else { "memory" },
            "totalSessions": 1,
            "redisStats": {
                "connected": redis,
                "usingFallback": !redis,
                "inMemoryKeys": if redis { 0 } else { 1 },
            }
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_and_touch_are_visible_in_redis_and_counting_uses_scan() {
    let server = RedisServer::start();
    let cache = cache_on(Some(&server)).await;
    let sessions = common::sessions(&cache, config(&["s"]));
    let id = sessions.create(&user("a"), None).await.expect("create");
    let pttl = server.pttl(&id.key()).await;
    assert!(pttl > 86_000_000 && pttl <= 86_400_000, "{pttl}");
    let raw = server.get_raw(&id.key()).await.expect("raw");
    server.cli(&["PEXPIRE", &id.key(), "5000"]);
    assert!(sessions
        .touch(&id, Duration::from_secs(86_400))
        .await
        .expect("touch"));
    let pttl = server.pttl(&id.key()).await;
    assert!(pttl > 86_000_000, "{pttl}");
    assert_eq!(
        server.get_raw(&id.key()).await.expect("raw"),
        raw,
        "touch must not rewrite"
    );

    // Other keys are not sessions; counting goes through SCAN, never KEYS.
    server.cli(&["SET", "cache:product:1", "x"]);
    server.cli(&["SET", "session-like", "x"]);
    let before = command_calls(&server);
    assert_eq!(sessions.count().await.expect("count"), 1);
    let after = command_calls(&server);
    assert!(after.get("scan").copied().unwrap_or(0) > before.get("scan").copied().unwrap_or(0));
    assert_eq!(after.get("keys"), before.get("keys"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_survives_a_restart_of_the_app() {
    let server = RedisServer::start();
    let id: SessionId;
    let cookie: String;
    {
        let cache = cache_on(Some(&server)).await;
        let app = app(common::sessions(&cache, config(&["restart-secret"])));
        let login = send(&app, "POST", "/login?user=3&name=carol", None).await;
        cookie = login.cookie();
        id = SessionId::parse(&id_of(&cookie)).expect("id");
    }
    // A new process: new cache, new store, same Redis and secret.
    let cache = cache_on(Some(&server)).await;
    let sessions = common::sessions(&cache, config(&["restart-secret"]));
    let loaded = sessions
        .load::<UserSession>(&id)
        .await
        .expect("load")
        .expect("found");
    assert_eq!(loaded.data.username, "carol");
    let app = app(sessions);
    let profile = send(&app, "GET", "/profile", Some(&cookie)).await;
    assert_eq!(profile.status, axum::http::StatusCode::OK);
    assert!(profile.body.contains("carol"));
}
