//! Sessions under load: an axum app with cache-sdk's `SessionLayer` beside the same app
//! with tower-sessions and its Redis store (fred), in the same run, on a redis-server the
//! bench starts itself.
//!
//! Each request reads an existing session (the common case: an authenticated page view)
//! with 32 requests in flight, through `tower::ServiceExt::oneshot` (no sockets: the
//! numbers compare the session stacks, not HTTP). After the timed runs, a counting pass
//! reports the Redis commands per request from `INFO commandstats` deltas.
//!
//! ```text
//! cargo bench -p cache-sdk-benches --bench sessions
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use cache_sdk::session::{
    CacheSessionStore, Session, SessionConfig, SessionLayer, SessionSecrets, Sessions,
};
use cache_sdk::Cache;
use cache_sdk_tests::RedisServer;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use tower::ServiceExt;
use tower_sessions::{Expiry, SessionManagerLayer};
use tower_sessions_redis_store::fred::prelude::{ClientLike, Config, Pool};
use tower_sessions_redis_store::RedisStore;

const IN_FLIGHT: u64 = 32;
const SESSIONS: usize = 256;
const COUNTED_REQUESTS: u64 = 5_000;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct User {
    user_id: u64,
    username: String,
    roles: Vec<String>,
}

fn user(i: usize) -> User {
    User {
        user_id: i as u64,
        username: format!("user-{i}"),
        roles: vec!["reader".into(), "editor".into()],
    }
}

// ---- cache-sdk ----

async fn ours_read(session: Session<User>) -> String {
    session.read(|u| u.username.clone())
}

async fn ours_login(session: Session<User>, body: String) -> StatusCode {
    let i: usize = body.parse().unwrap_or(0);
    session.regenerate();
    session.replace(user(i));
    StatusCode::OK
}

async fn ours_app(redis: &RedisServer) -> Router {
    let cache = Cache::builder()
        .redis_url(redis.url())
        .require_redis(true)
        .build()
        .await
        .expect("cache");
    let mut cfg = SessionConfig::new(
        SessionSecrets::new(["bench-secret-bench-secret-bench!"]).expect("secret"),
    );
    cfg.cookie.secure = false;
    let sessions = Sessions::new(CacheSessionStore::new(cache), cfg).expect("sessions");
    Router::new()
        .route("/read", get(ours_read))
        .route("/login", post(ours_login))
        .layer(SessionLayer::new(sessions))
}

// ---- tower-sessions ----

async fn theirs_read(session: tower_sessions::Session) -> String {
    session
        .get::<User>("user")
        .await
        .ok()
        .flatten()
        .map(|u| u.username)
        .unwrap_or_default()
}

async fn theirs_login(session: tower_sessions::Session, body: String) -> StatusCode {
    let i: usize = body.parse().unwrap_or(0);
    if session.cycle_id().await.is_err() || session.insert("user", user(i)).await.is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    StatusCode::OK
}

async fn theirs_app(redis: &RedisServer, always_save: bool) -> Router {
    let config = Config::from_url(&redis.url()).expect("fred config");
    let pool = Pool::new(config, None, None, None, 2).expect("pool");
    pool.init().await.expect("fred connects");
    let layer = SessionManagerLayer::new(RedisStore::new(pool))
        .with_secure(false)
        .with_expiry(Expiry::OnInactivity(time::Duration::days(1)))
        .with_always_save(always_save);
    Router::new()
        .route("/read", get(theirs_read))
        .route("/login", post(theirs_login))
        .layer(layer)
}

// ---- driving ----

async fn request(
    app: &Router,
    method: &str,
    uri: &str,
    cookie: Option<&str>,
    body: String,
) -> (StatusCode, Option<String>, String) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(c) = cookie {
        req = req.header(header::COOKIE, c);
    }
    let res = app
        .clone()
        .oneshot(req.body(Body::from(body)).expect("request"))
        .await
        .expect("infallible");
    let status = res.status();
    let cookie = res
        .headers()
        .get(header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::to_owned);
    let body = res.into_body().collect().await.expect("body").to_bytes();
    (status, cookie, String::from_utf8_lossy(&body).into_owned())
}

/// Logs `SESSIONS` users in; returns their cookies.
async fn logins(app: &Router) -> Arc<Vec<String>> {
    let mut cookies = Vec::with_capacity(SESSIONS);
    for i in 0..SESSIONS {
        let (status, cookie, _) = request(app, "POST", "/login", None, i.to_string()).await;
        assert_eq!(status, StatusCode::OK);
        cookies.push(cookie.expect("login sets a cookie"));
    }
    // Every cookie reads its user back.
    for (i, c) in cookies.iter().enumerate() {
        let (status, _, body) = request(app, "GET", "/read", Some(c), String::new()).await;
        assert_eq!((status, body), (StatusCode::OK, format!("user-{i}")));
    }
    Arc::new(cookies)
}

/// `iters` read-only requests, `IN_FLIGHT` at a time; returns the elapsed time.
async fn load(app: &Router, cookies: &Arc<Vec<String>>, iters: u64) -> Duration {
    let per_task = iters.div_ceil(IN_FLIGHT);
    let start = Instant::now();
    let tasks: Vec<_> = (0..IN_FLIGHT)
        .map(|t| {
            let app = app.clone();
            let cookies = cookies.clone();
            tokio::spawn(async move {
                for i in 0..per_task {
                    let c = &cookies[((t * per_task + i) as usize) % cookies.len()];
                    let req = Request::get("/read")
                        .header(header::COOKIE, c.as_str())
                        .body(Body::empty())
                        .expect("request");
                    let res = app.clone().oneshot(req).await.expect("infallible");
                    assert_eq!(res.status(), StatusCode::OK);
                    let _ = res.into_body().collect().await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    // Scale to exactly `iters` requests.
    start
        .elapsed()
        .mul_f64(iters as f64 / (per_task * IN_FLIGHT) as f64)
}

fn command_calls(server: &RedisServer) -> HashMap<String, u64> {
    server
        .cli(&["INFO", "commandstats"])
        .lines()
        .filter_map(|l| {
            let (name, stats) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = stats.split(',').find_map(|kv| kv.strip_prefix("calls="))?;
            Some((name.to_owned(), calls.parse().ok()?))
        })
        .collect()
}

/// Requests/s and Redis commands per request over `COUNTED_REQUESTS` requests.
async fn count(name: &str, server: &RedisServer, app: &Router, cookies: &Arc<Vec<String>>) {
    // `load` runs whole rounds of IN_FLIGHT tasks: a multiple of it is counted exactly.
    let requests = COUNTED_REQUESTS.div_ceil(IN_FLIGHT) * IN_FLIGHT;
    let before = command_calls(server);
    let elapsed = load(app, cookies, requests).await;
    let after = command_calls(server);
    let mut per_command: Vec<(String, f64)> = after
        .iter()
        .filter(|(k, _)| k.as_str() != "info")
        .filter_map(|(k, v)| {
            let d = v - before.get(k).copied().unwrap_or(0);
            (d > 0).then(|| (k.clone(), d as f64 / requests as f64))
        })
        .collect();
    per_command.sort_by(|a, b| a.0.cmp(&b.0));
    let total: f64 = per_command.iter().map(|(_, n)| n).sum();
    println!(
        "SUMMARY {name}: {:.0} requests/s; {total:.3} Redis commands per read-only request {per_command:?}",
        requests as f64 / elapsed.as_secs_f64()
    );
}

fn sessions_bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let server = RedisServer::start();
    let apps: Vec<(&str, Router)> = rt.block_on(async {
        vec![
            ("cache-sdk", ours_app(&server).await),
            (
                "tower-sessions (always_save: rolling expiry)",
                theirs_app(&server, true).await,
            ),
            (
                "tower-sessions (no always_save)",
                theirs_app(&server, false).await,
            ),
        ]
    });
    let cookies: Vec<Arc<Vec<String>>> = rt.block_on(async {
        let mut all = Vec::new();
        for (_, app) in &apps {
            all.push(logins(app).await);
        }
        all
    });

    let mut group = c.benchmark_group("session read-only request, 32 in flight");
    group.throughput(Throughput::Elements(1));
    group.sample_size(20);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(5));
    for ((name, app), cookies) in apps.iter().zip(&cookies) {
        group.bench_function(*name, |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let app = app.clone();
                let cookies = cookies.clone();
                async move { load(&app, &cookies, iters).await }
            });
        });
    }
    group.finish();

    rt.block_on(async {
        for ((name, app), cookies) in apps.iter().zip(&cookies) {
            count(name, &server, app, cookies).await;
        }
    });
}

criterion_group!(benches, sessions_bench);
criterion_main!(benches);
