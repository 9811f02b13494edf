//! The session layer and extractor, driven through an axum Router against a real
//! redis-server: a login flow, lazy loading, save-when-changed, throttled touch, failed
//! saves, and Redis going away.

mod common;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use cache_sdk::session::Session;
use cache_sdk_tests::{wait_until, RedisServer};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_regenerate_read_logout() {
    cache_sdk_tests::init_tracing();
    let server = RedisServer::start();
    let cache = cache_on(Some(&server)).await;
    let app = app(sessions(&cache, config(&["layer-secret"])));

    // An anonymous visit that writes creates a session.
    let first = send(&app, "POST", "/visit", None).await;
    assert_eq!((first.status, first.body.as_str()), (StatusCode::OK, "1"));
    let anon = first.cookie();
    let anon_id = id_of(&anon);
    assert!(server.get_raw(&format!("sess:{anon_id}")).await.is_some());
    assert!(first.set_cookies[0].contains("HttpOnly"));
    assert!(first.set_cookies[0].contains("SameSite=Lax"));
    assert!(first.set_cookies[0].contains("Path=/"));

    // Login regenerates: new id, same data, the old record is gone.
    let login = send(&app, "POST", "/login?user=7&name=alice", Some(&anon)).await;
    assert_eq!(login.status, StatusCode::OK);
    let cookie = login.cookie();
    let id = id_of(&cookie);
    assert_ne!(id, anon_id);
    assert!(server.get_raw(&format!("sess:{anon_id}")).await.is_none());
    let profile = send(&app, "GET", "/profile", Some(&cookie)).await;
    assert_eq!(profile.status, StatusCode::OK);
    let user: UserSession = serde_json::from_str(&profile.body).expect("json");
    assert_eq!(
        user,
        UserSession {
            user_id: Some(7),
            username: "alice".into(),
            visits: 1
        }
    );
    // The pre-login cookie no longer opens anything.
    assert_eq!(
        send(&app, "GET", "/profile", Some(&anon)).await.status,
        StatusCode::UNAUTHORIZED
    );

    // Logout deletes the record and clears the cookie.
    let out = send(&app, "POST", "/logout", Some(&cookie)).await;
    assert_eq!(out.status, StatusCode::OK);
    assert!(out.set_cookies[0].contains("Max-Age=0"));
    assert!(server.get_raw(&format!("sess:{id}")).await.is_none());
    assert_eq!(
        send(&app, "GET", "/profile", Some(&cookie)).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_and_read_only_requests_cost_at_most_one_get() {
    let server = RedisServer::start();
    let cache = cache_on(Some(&server)).await;
    let app = app(sessions(&cache, config(&["s"])));

    // No cookie and nothing written: no Redis traffic, no cookie, nothing stored.
    let before = command_calls(&server);
    let r = send(&app, "GET", "/profile", None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.set_cookies.is_empty());
    assert!(
        delta(&server, &before).is_empty(),
        "{:?}",
        delta(&server, &before)
    );
    // A handler that does not ask for the session never loads it, even with a cookie.
    let cookie = send(&app, "POST", "/visit", None).await.cookie();
    let before = command_calls(&server);
    let r = send(&app, "GET", "/stats", Some(&cookie)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(delta(&server, &before).get("get"), None);

    // A read-only request: at most one GET (none once the record is in the coherent L1),
    // no write, no touch (saved moments ago).
    let before = command_calls(&server);
    for _ in 0..5 {
        let r = send(&app, "GET", "/peek", Some(&cookie)).await;
        assert_eq!(r.body, "1");
        assert!(r.set_cookies.is_empty());
    }
    let d = delta(&server, &before);
    assert!(d.get("get").is_some_and(|n| (1..=5).contains(n)), "{d:?}");
    assert_eq!(d.len(), 1, "read-only requests wrote: {d:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn touch_extends_the_ttl_without_rewriting_and_is_throttled() {
    let server = RedisServer::start();
    let cache = cache_on(Some(&server)).await;
    // Touch on every read: the expiry is extended and the cookie refreshed each time.
    let app = app(sessions(
        &cache,
        config(&["s"])
            .touch_interval(Duration::ZERO)
            .ttl(Duration::from_secs(1000)),
    ));
    let cookie = send(&app, "POST", "/visit", None).await.cookie();
    let key = format!("sess:{}", id_of(&cookie));
    let record = server.get_raw(&key).await.expect("stored");
    server.cli(&["PEXPIRE", &key, "50000"]);
    let before = command_calls(&server);
    let r = send(&app, "GET", "/peek", Some(&cookie)).await;
    assert_eq!(r.cookie(), cookie, "same id, signed the same way");
    let d = delta(&server, &before);
    assert_eq!(
        (d.get("get"), d.get("pexpire"), d.get("set")),
        (Some(&1), Some(&1), None)
    );
    let pttl = server.pttl(&key).await;
    assert!(pttl > 900_000 && pttl <= 1_000_000, "{pttl}");
    assert_eq!(
        server.get_raw(&key).await.expect("still there"),
        record,
        "touch rewrote the record"
    );

    // With the default interval (60 s) a read right after a save or touch does not touch.
    let app = common::app(sessions(
        &cache,
        config(&["s"]).ttl(Duration::from_secs(1000)),
    ));
    server.cli(&["PEXPIRE", &key, "50000"]);
    let before = command_calls(&server);
    let r = send(&app, "GET", "/peek", Some(&cookie)).await;
    let d = delta(&server, &before);
    // The record was saved (`savedAt`) under a minute ago: no touch yet.
    assert_eq!((d.get("get"), d.get("pexpire")), (Some(&1), None), "{d:?}");
    assert!(r.set_cookies.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_expiry_touches_once_per_interval_for_old_sessions() {
    let server = RedisServer::start();
    let cache = cache_on(Some(&server)).await;
    let sessions = sessions(&cache, config(&["s"]).ttl(Duration::from_secs(1000)));
    let app = app(sessions.clone());
    // A session saved long ago (another instance, or before a restart).
    let user = UserSession {
        user_id: Some(1),
        username: "old".into(),
        visits: 3,
    };
    let id = sessions.create(&user, None).await.expect("create");
    let key = id.key();
    let raw = String::from_utf8(server.get_raw(&key).await.expect("raw")).expect("utf8");
    let old = raw.replacen("\"savedAt\":", "\"savedAt\":1000000000000,\"x\":", 1);
    server.set_raw(&key, old.as_bytes()).await;
    server.cli(&["PEXPIRE", &key, "50000"]);
    // A fresh process has no memory of touching it.
    let app2 = common::app(common::sessions(
        &cache,
        config(&["s"]).ttl(Duration::from_secs(1000)),
    ));
    let cookie = format!(
        "sid={}",
        cache_sdk::session::cookie::encode_value(&sessions.cookie_value(&id))
    );

    let before = command_calls(&server);
    let r = send(&app2, "GET", "/peek", Some(&cookie)).await;
    assert_eq!(r.body, "3");
    assert_eq!(r.set_cookies.len(), 1, "touch refreshes the cookie");
    let r = send(&app2, "GET", "/peek", Some(&cookie)).await;
    assert!(r.set_cookies.is_empty());
    let d = delta(&server, &before);
    assert_eq!(
        (d.get("get"), d.get("pexpire")),
        (Some(&2), Some(&1)),
        "{d:?}"
    );
    assert!(server.pttl(&key).await > 900_000);
    drop(app);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_save_keeps_the_handler_response_and_is_reported() {
    let server = RedisServer::start();
    let cache = cache_on(Some(&server)).await;
    let mut cfg = config(&["s"]);
    cfg.max_record_bytes = 1000;
    let app = app(sessions(&cache, cfg));

    let r = send(&app, "POST", "/big", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, "handler result");
    assert!(
        r.set_cookies.is_empty(),
        "no cookie for a session that was not stored"
    );
    let failed = r.save_failed.expect("reported");
    assert!(
        failed.message.contains("over the limit"),
        "{}",
        failed.message
    );
    assert_eq!(server.cli(&["DBSIZE"]), "0");

    // A handler that saves itself sees the error.
    let r = send(&app, "POST", "/save-now", None).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.body.contains("over the limit"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_save_does_not_revive_a_session_destroyed_meanwhile() {
    let server = RedisServer::start();
    let cache = cache_on(Some(&server)).await;
    let sessions = sessions(&cache, config(&["s"]));
    let app = app(sessions.clone());
    let cookie = send(&app, "POST", "/login?user=1&name=a", None)
        .await
        .cookie();
    let id = id_of(&cookie);

    // A slow request loads the session; a logout finishes first; then the slow one
    // changes the session and its layer saves.
    type Gate = (
        tokio::sync::oneshot::Sender<()>,
        tokio::sync::oneshot::Receiver<()>,
    );
    let (loaded_tx, loaded_rx) = tokio::sync::oneshot::channel();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel();
    let gate: Arc<Mutex<Option<Gate>>> = Arc::new(Mutex::new(Some((loaded_tx, go_rx))));
    let slow = move |session: Session<UserSession>| {
        let gate = gate.clone();
        async move {
            let (loaded, go) = gate.lock().await.take().expect("one call");
            let _ = session.get();
            let _ = loaded.send(());
            let _ = go.await;
            session.update(|s| s.visits += 100);
            "done"
        }
    };
    let slow_app = Router::new()
        .route("/slow", get(slow))
        .layer(cache_sdk::session::SessionLayer::new(sessions.clone()));
    let pending = tokio::spawn({
        let cookie = cookie.clone();
        async move { send(&slow_app, "GET", "/slow", Some(&cookie)).await }
    });
    loaded_rx.await.expect("slow request loaded the session");
    assert_eq!(
        send(&app, "POST", "/logout", Some(&cookie)).await.status,
        StatusCode::OK
    );
    go_tx.send(()).expect("slow request waiting");
    let r = pending.await.expect("task");
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.save_failed.is_none());
    assert!(
        server.get_raw(&format!("sess:{id}")).await.is_none(),
        "logout undone"
    );
    assert!(r.set_cookies[0].contains("Max-Age=0"));
    assert_eq!(
        send(&app, "GET", "/profile", Some(&cookie)).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_keep_working_in_memory_while_redis_is_down() {
    let mut server = RedisServer::start();
    let cache = cache_sdk::Cache::builder()
        .redis_url(server.url())
        .build()
        .await
        .expect("cache");
    let app = app(sessions(&cache, config(&["s"])));
    server.kill();

    let login = send(&app, "POST", "/login?user=5&name=bob", None).await;
    assert_eq!(login.status, StatusCode::OK);
    assert!(login.save_failed.is_none());
    let cookie = login.cookie();
    let profile = send(&app, "GET", "/profile", Some(&cookie)).await;
    assert_eq!(profile.status, StatusCode::OK, "{}", profile.body);
    let stats: serde_json::Value =
        serde_json::from_str(&send(&app, "GET", "/stats", None).await.body).expect("json");
    assert_eq!(stats["store"], "memory");
    assert_eq!(stats["totalSessions"], 1);
    assert_eq!(stats["redisStats"]["usingFallback"], true);
    assert_eq!(stats["redisStats"]["connected"], false);
    assert!(stats["redisStats"]["inMemoryKeys"].as_u64().expect("n") >= 1);

    // Redis returns (empty): the session written during the outage is replayed to it.
    server.restart();
    let key = format!("sess:{}", id_of(&cookie));
    assert!(
        wait_until(Duration::from_secs(10), || cache.stats().connected)
            .await
            .is_some()
    );
    assert!(
        server.get_raw(&key).await.is_some(),
        "outage session replayed to redis"
    );
    assert_eq!(
        send(&app, "GET", "/profile", Some(&cookie)).await.status,
        StatusCode::OK
    );
    let stats: serde_json::Value =
        serde_json::from_str(&send(&app, "GET", "/stats", None).await.body).expect("json");
    assert_eq!(stats["store"], "redis");
    assert_eq!(stats["totalSessions"], 1);
}

#[tokio::test]
async fn missing_layer_is_a_500_that_names_the_fix() {
    async fn h(_s: Session<UserSession>) {}
    let app = Router::new().route("/", get(h));
    let r = send(&app, "GET", "/", None).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        r.body.contains("Is the SessionLayer installed"),
        "{}",
        r.body
    );
}

#[tokio::test]
async fn one_type_per_request() {
    async fn h(_a: Session<UserSession>, _b: Session<u32>) {}
    let cache = cache_sdk::Cache::in_memory();
    let app = Router::new()
        .route("/", get(h))
        .layer(cache_sdk::session::SessionLayer::new(sessions(
            &cache,
            config(&["s"]),
        )));
    let r = send(&app, "GET", "/", None).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(r.body.contains("another type"), "{}", r.body);
}
