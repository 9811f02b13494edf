//! Sessions per user (`Sessions::bind_user`, `user_sessions`, `destroy_user_sessions`),
//! run against a real redis-server, a real Redis Cluster and the in-memory store, so all
//! promise the same behaviour; plus what only Redis can show (the index key and its TTL).

mod common;

use std::time::Duration;

use cache_sdk::session::{opaque_id, SessionId, Sessions, USER_INDEX_PREFIX};
use cache_sdk_tests::{RedisServer, RedisTarget};
use common::*;

struct Env {
    server: Option<RedisTarget>,
}

impl Env {
    async fn sessions(&self) -> Sessions {
        let cache = cache_on_target(self.server.as_ref()).await;
        common::sessions(&cache, config(&["users-secret"]))
    }
}

cache_sdk_tests::target_suite!(
    list_flags_the_current_session_and_drops_ended_ones,
    logout_everywhere_keeps_only_the_current_session,
    concurrent_logins_are_all_listed,
    last_seen_is_not_rewritten_within_the_touch_interval,
);

fn user(name: &str) -> UserSession {
    UserSession {
        user_id: Some(1),
        username: name.into(),
        visits: 0,
    }
}

async fn three_sessions(sessions: &Sessions) -> [SessionId; 3] {
    let mut ids = Vec::new();
    for ua in ["firefox", "curl", "safari"] {
        let id = sessions.create(&user("alice"), None).await.expect("create");
        sessions.bind_user(&id, "1", Some(ua)).await.expect("bind");
        ids.push(id);
    }
    ids.try_into().expect("three")
}

async fn list_flags_the_current_session_and_drops_ended_ones(env: Env) {
    let sessions = env.sessions().await;
    let [a, b, c] = three_sessions(&sessions).await;
    // Another user's session is not listed.
    let other = sessions.create(&user("bob"), None).await.expect("create");
    sessions.bind_user(&other, "2", None).await.expect("bind");

    let list = sessions.user_sessions("1", Some(&b)).await.expect("list");
    assert_eq!(list.len(), 3);
    for s in &list {
        assert_eq!(s.current, s.id == opaque_id(&b), "{s:?}");
        assert!(s.created_at_ms > 0 && s.last_seen_at_ms >= s.created_at_ms);
        for id in [&a, &b, &c] {
            assert!(!s.id.contains(id.as_str()), "a listing shows a session id");
        }
    }
    let mut agents: Vec<_> = list.iter().filter_map(|s| s.user_agent.clone()).collect();
    agents.sort();
    assert_eq!(agents, ["curl", "firefox", "safari"]);

    sessions.destroy(&c).await.expect("destroy");
    let list = sessions.user_sessions("1", Some(&b)).await.expect("list");
    let names: Vec<_> = list.iter().map(|s| s.id.clone()).collect();
    assert_eq!(names.len(), 2);
    assert!(names.contains(&opaque_id(&a)) && names.contains(&opaque_id(&b)));
    // The ended session's entry was dropped from the index, not only hidden.
    sessions.destroy(&a).await.expect("destroy");
    assert_eq!(
        sessions.user_sessions("1", None).await.expect("list").len(),
        1
    );
    assert_eq!(
        sessions.user_sessions("2", None).await.expect("list").len(),
        1
    );
}

async fn logout_everywhere_keeps_only_the_current_session(env: Env) {
    let sessions = env.sessions().await;
    let [a, b, c] = three_sessions(&sessions).await;
    assert_eq!(
        sessions
            .destroy_user_sessions("1", Some(&b))
            .await
            .expect("logout all"),
        2
    );
    for gone in [&a, &c] {
        assert!(sessions
            .load::<UserSession>(gone)
            .await
            .expect("load")
            .is_none());
    }
    assert!(sessions
        .load::<UserSession>(&b)
        .await
        .expect("load")
        .is_some());
    let list = sessions.user_sessions("1", Some(&b)).await.expect("list");
    assert_eq!(list.len(), 1);
    assert!(list[0].current);

    // Without a session to keep, every one goes.
    assert_eq!(
        sessions
            .destroy_user_sessions("1", None)
            .await
            .expect("logout all"),
        1
    );
    assert!(sessions
        .user_sessions("1", None)
        .await
        .expect("list")
        .is_empty());
}

async fn concurrent_logins_are_all_listed(env: Env) {
    let sessions = env.sessions().await;
    let mut tasks = Vec::new();
    for i in 0..16 {
        let sessions = sessions.clone();
        tasks.push(tokio::spawn(async move {
            let id = sessions.create(&user("alice"), None).await.expect("create");
            sessions
                .bind_user(&id, "1", Some(&format!("client {i}")))
                .await
                .expect("bind");
            id
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.expect("task"));
    }
    let list = sessions.user_sessions("1", None).await.expect("list");
    assert_eq!(list.len(), 16, "a concurrent login was lost from the index");
    for id in &ids {
        assert!(list.iter().any(|s| s.id == opaque_id(id)));
    }
}

async fn last_seen_is_not_rewritten_within_the_touch_interval(env: Env) {
    let sessions = env.sessions().await;
    assert!(sessions.config().touch_interval >= Duration::from_secs(1));
    let id = sessions.create(&user("alice"), None).await.expect("create");
    sessions.bind_user(&id, "1", None).await.expect("bind");
    let before = sessions.user_sessions("1", None).await.expect("list")[0].last_seen_at_ms;
    tokio::time::sleep(Duration::from_millis(20)).await;
    for _ in 0..5 {
        sessions.user_seen(&id, "1").await.expect("seen");
    }
    let after = sessions.user_sessions("1", None).await.expect("list")[0].last_seen_at_ms;
    assert_eq!(before, after);
}

/// The index is one key per user, `sess-user:{user_id}`, that lives as long as a session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_is_one_key_with_the_session_lifetime() {
    cache_sdk_tests::init_tracing();
    let server = RedisServer::start();
    let cache = cache_on(Some(&server)).await;
    let mut cfg = config(&["users-secret"]);
    cfg.ttl = Duration::from_secs(600);
    let sessions = common::sessions(&cache, cfg);
    let id = sessions.create(&user("alice"), None).await.expect("create");
    sessions
        .bind_user(&id, "42", Some("curl"))
        .await
        .expect("bind");
    let key = format!("{USER_INDEX_PREFIX}42");
    assert!(server.get_raw(&key).await.is_some());
    let pttl = server.pttl(&key).await;
    assert!(pttl > 590_000 && pttl <= 600_000, "{pttl}");
}

/// A login while Redis is away goes to the in-memory fallback and is still listed (and
/// logged out) from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_works_on_the_fallback_during_an_outage() {
    cache_sdk_tests::init_tracing();
    let mut server = RedisServer::start();
    let cache = cache_on(Some(&server)).await;
    let sessions = common::sessions(&cache, config(&["users-secret"]));
    server.kill();
    let [a, b, _] = three_sessions(&sessions).await;
    assert!(cache.stats().using_fallback);
    let list = sessions.user_sessions("1", Some(&a)).await.expect("list");
    assert_eq!(list.len(), 3);
    assert_eq!(
        sessions
            .destroy_user_sessions("1", Some(&a))
            .await
            .expect("logout all"),
        2
    );
    assert!(sessions
        .load::<UserSession>(&b)
        .await
        .expect("load")
        .is_none());
    assert_eq!(
        sessions.user_sessions("1", None).await.expect("list").len(),
        1
    );
}
