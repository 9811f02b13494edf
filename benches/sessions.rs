//! Sessions under load, two app servers on one Redis: cache-sdk's `SessionLayer` (with its
//! coherent L1, and with coherence off) beside tower-sessions with its Redis store (fred)
//! and with its moka caching store in front of Redis, in the same run, on a redis-server
//! the bench starts itself.
//!
//! Each contender is two independent app instances (own cache / own pool / own moka) on the
//! same Redis. Requests alternate between the two: each reads an existing session (the
//! common case: an authenticated page view), 32 requests in flight, through
//! `tower::ServiceExt::oneshot` (no sockets: the numbers compare the session stacks, not
//! HTTP). After each timed run a counting pass reports requests/s and the Redis commands
//! per request from `INFO commandstats` deltas, and a coherence check logs a user out on
//! one instance and asks the other.
//!
//! It also measures how long a write on one cache takes to reach another cache's L1.
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
use cache_sdk::{Cache, Coherence, Ttl};
use cache_sdk_tests::RedisServer;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use tower::ServiceExt;
use tower_sessions::{CachingSessionStore, Expiry, SessionManagerLayer, SessionStore};
use tower_sessions_moka_store::MokaStore;
use tower_sessions_redis_store::fred::prelude::{ClientLike, Config, Pool};
use tower_sessions_redis_store::RedisStore;

const IN_FLIGHT: u64 = 32;
const SESSIONS: usize = 256;
const COUNTED_REQUESTS: u64 = 100_000;

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

/// One contender: two app instances, and the caches behind cache-sdk's (for stats).
struct Contender {
    name: &'static str,
    apps: [Router; 2],
    caches: Vec<Cache>,
}

// ---- cache-sdk ----

async fn ours_read(session: Option<Session<User>>) -> Result<String, StatusCode> {
    session
        .map(|s| s.read(|u| u.username.clone()))
        .ok_or(StatusCode::UNAUTHORIZED)
}

async fn ours_login(session: Session<User>, body: String) -> StatusCode {
    let i: usize = body.parse().unwrap_or(0);
    session.regenerate();
    session.replace(user(i));
    StatusCode::OK
}

async fn ours_logout(session: Session<User>) -> StatusCode {
    session.destroy();
    StatusCode::OK
}

async fn ours_instance(redis: &RedisServer, coherence: Coherence) -> (Router, Cache) {
    let cache = Cache::builder()
        .redis_url(redis.url())
        .coherence(coherence)
        .require_redis(true)
        .build()
        .await
        .expect("cache");
    let mut cfg = SessionConfig::new(
        SessionSecrets::new(["bench-secret-bench-secret-bench!"]).expect("secret"),
    );
    cfg.cookie.secure = false;
    let sessions = Sessions::new(CacheSessionStore::new(cache.clone()), cfg).expect("sessions");
    let app = Router::new()
        .route("/read", get(ours_read))
        .route("/login", post(ours_login))
        .route("/logout", post(ours_logout))
        .layer(SessionLayer::new(sessions));
    (app, cache)
}

async fn ours(redis: &RedisServer, name: &'static str, coherence: Coherence) -> Contender {
    let (a, ca) = ours_instance(redis, coherence).await;
    let (b, cb) = ours_instance(redis, coherence).await;
    Contender {
        name,
        apps: [a, b],
        caches: vec![ca, cb],
    }
}

// ---- tower-sessions ----

async fn theirs_read(session: tower_sessions::Session) -> Result<String, StatusCode> {
    session
        .get::<User>("user")
        .await
        .ok()
        .flatten()
        .map(|u| u.username)
        .ok_or(StatusCode::UNAUTHORIZED)
}

async fn theirs_login(session: tower_sessions::Session, body: String) -> StatusCode {
    let i: usize = body.parse().unwrap_or(0);
    if session.cycle_id().await.is_err() || session.insert("user", user(i)).await.is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    StatusCode::OK
}

async fn theirs_logout(session: tower_sessions::Session) -> StatusCode {
    match session.flush().await {
        Ok(()) => StatusCode::OK,
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

async fn redis_store(redis: &RedisServer) -> RedisStore<Pool> {
    let config = Config::from_url(&redis.url()).expect("fred config");
    let pool = Pool::new(config, None, None, None, 2).expect("pool");
    pool.init().await.expect("fred connects");
    RedisStore::new(pool)
}

fn theirs_app<S: SessionStore + Clone>(store: S, always_save: bool) -> Router {
    let layer = SessionManagerLayer::new(store)
        .with_secure(false)
        .with_expiry(Expiry::OnInactivity(time::Duration::days(1)))
        .with_always_save(always_save);
    Router::new()
        .route("/read", get(theirs_read))
        .route("/login", post(theirs_login))
        .route("/logout", post(theirs_logout))
        .layer(layer)
}

async fn theirs_redis(redis: &RedisServer, name: &'static str, always_save: bool) -> Contender {
    Contender {
        name,
        apps: [
            theirs_app(redis_store(redis).await, always_save),
            theirs_app(redis_store(redis).await, always_save),
        ],
        caches: Vec::new(),
    }
}

async fn theirs_moka(redis: &RedisServer, name: &'static str) -> Contender {
    let instance = || async {
        let store =
            CachingSessionStore::new(MokaStore::new(Some(10_000)), redis_store(redis).await);
        theirs_app(store, false)
    };
    Contender {
        name,
        apps: [instance().await, instance().await],
        caches: Vec::new(),
    }
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

/// Logs `n` users in, alternating instances; returns their cookies, each read back on
/// both instances.
async fn logins(apps: &[Router; 2], n: usize) -> Arc<Vec<String>> {
    let mut cookies = Vec::with_capacity(n);
    for i in 0..n {
        let (status, cookie, _) =
            request(&apps[i % 2], "POST", "/login", None, i.to_string()).await;
        assert_eq!(status, StatusCode::OK);
        cookies.push(cookie.expect("login sets a cookie"));
    }
    for app in apps {
        for (i, c) in cookies.iter().enumerate() {
            let (status, _, body) = request(app, "GET", "/read", Some(c), String::new()).await;
            assert_eq!((status, body), (StatusCode::OK, format!("user-{i}")));
        }
    }
    Arc::new(cookies)
}

/// `iters` read-only requests alternating between the two instances, `IN_FLIGHT` at a
/// time; returns the elapsed time.
async fn load(apps: &[Router; 2], cookies: &Arc<Vec<String>>, iters: u64) -> Duration {
    let per_task = iters.div_ceil(IN_FLIGHT);
    let start = Instant::now();
    let tasks: Vec<_> = (0..IN_FLIGHT)
        .map(|t| {
            let apps = apps.clone();
            let cookies = cookies.clone();
            tokio::spawn(async move {
                for i in 0..per_task {
                    let n = (t * per_task + i) as usize;
                    let c = &cookies[n % cookies.len()];
                    let req = Request::get("/read")
                        .header(header::COOKIE, c.as_str())
                        .body(Body::empty())
                        .expect("request");
                    let res = apps[(n / cookies.len() + n) % 2]
                        .clone()
                        .oneshot(req)
                        .await
                        .expect("infallible");
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
async fn count(server: &RedisServer, c: &Contender, cookies: &Arc<Vec<String>>) {
    // `load` runs whole rounds of IN_FLIGHT tasks: a multiple of it is counted exactly.
    let requests = COUNTED_REQUESTS.div_ceil(IN_FLIGHT) * IN_FLIGHT;
    let l1_before: Vec<(u64, u64)> = c
        .caches
        .iter()
        .map(|c| (c.stats().l1_hits, c.stats().l1_misses))
        .collect();
    let before = command_calls(server);
    let elapsed = load(&c.apps, cookies, requests).await;
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
    // `+ 0.0`: an empty sum is -0.0.
    let total: f64 = per_command.iter().map(|(_, n)| n).sum::<f64>() + 0.0;
    let l1 = if c.caches.is_empty() {
        String::new()
    } else {
        let (hits, misses) = c
            .caches
            .iter()
            .zip(&l1_before)
            .map(|(c, (h, m))| (c.stats().l1_hits - h, c.stats().l1_misses - m))
            .fold((0, 0), |(h, m), (dh, dm)| (h + dh, m + dm));
        format!(
            "; L1 hit rate {:.4}; coherence {}",
            hits as f64 / (hits + misses).max(1) as f64,
            c.caches[0].stats().coherence
        )
    };
    println!(
        "SUMMARY {}: {:.0} requests/s; {total:.5} Redis commands per read-only request {per_command:?}{l1}",
        c.name,
        requests as f64 / elapsed.as_secs_f64()
    );
}

/// Logs a user out on instance A and asks instance B right after.
async fn coherence_check(c: &Contender) {
    let cookies = logins(&c.apps, 1).await;
    let cookie = &cookies[0];
    let (status, _, _) = request(&c.apps[0], "POST", "/logout", Some(cookie), String::new()).await;
    assert_eq!(status, StatusCode::OK);
    let (first, _, _) = request(&c.apps[1], "GET", "/read", Some(cookie), String::new()).await;
    let start = Instant::now();
    let mut status = first;
    while status != StatusCode::UNAUTHORIZED && start.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(1)).await;
        status = request(&c.apps[1], "GET", "/read", Some(cookie), String::new())
            .await
            .0;
    }
    println!(
        "SUMMARY {}: after a logout on A, B answers {first} at once{}",
        c.name,
        if status == StatusCode::UNAUTHORIZED {
            if first == StatusCode::UNAUTHORIZED {
                String::new()
            } else {
                format!(", 401 after {:?}", start.elapsed())
            }
        } else {
            ", and still accepts the session 2 s later (not coherent)".to_owned()
        }
    );
}

/// How long a write on one cache takes to reach another cache's L1 (tracking and pub/sub).
async fn propagation(server: &RedisServer) {
    for coherence in [Coherence::Tracking, Coherence::PubSub] {
        let build = || async {
            Cache::builder()
                .redis_url(server.url())
                .coherence(coherence)
                .require_redis(true)
                .build()
                .await
                .expect("cache")
        };
        let (a, b) = (build().await, build().await);
        let key = "cache:propagation:1";
        let mut after_write = Vec::new();
        let mut at_once = 0;
        for i in 0..2_000u64 {
            a.set(key, &i, Ttl::Api).await.expect("set");
            // B holds i in L1.
            loop {
                let hits = b.stats().l1_hits;
                if b.get::<u64>(key).await.expect("get") == Some(i)
                    && b.get::<u64>(key).await.expect("get") == Some(i)
                    && b.stats().l1_hits > hits
                {
                    break;
                }
                tokio::task::yield_now().await;
            }
            let new = i + 1_000_000;
            a.set(key, &new, Ttl::Api).await.expect("set");
            let written = Instant::now();
            let mut reads = 0;
            while b.get::<u64>(key).await.expect("get") != Some(new) {
                reads += 1;
                tokio::task::yield_now().await;
            }
            if reads == 0 {
                at_once += 1;
            }
            after_write.push(written.elapsed());
        }
        after_write.sort();
        let p = |q: f64| after_write[((after_write.len() - 1) as f64 * q).round() as usize];
        println!(
            "SUMMARY propagation ({:?}): after A's write returned, B answered the new value at once in {at_once}/2000; \
             time until B answers it: p50 {:?}, p99 {:?}, max {:?}",
            coherence,
            p(0.5),
            p(0.99),
            after_write[after_write.len() - 1]
        );
    }
}

fn sessions_bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let server = RedisServer::start();
    rt.block_on(propagation(&server));
    let contenders: Vec<Contender> = rt.block_on(async {
        vec![
            ours(&server, "cache-sdk (coherent L1)", Coherence::Auto).await,
            ours(&server, "cache-sdk (coherence off)", Coherence::Off).await,
            theirs_redis(
                &server,
                "tower-sessions + RedisStore (always_save: rolling expiry)",
                true,
            )
            .await,
            theirs_redis(
                &server,
                "tower-sessions + RedisStore (no always_save)",
                false,
            )
            .await,
            theirs_moka(
                &server,
                "tower-sessions + CachingSessionStore(MokaStore, RedisStore)",
            )
            .await,
        ]
    });
    let cookies: Vec<Arc<Vec<String>>> = rt.block_on(async {
        let mut all = Vec::new();
        for c in &contenders {
            all.push(logins(&c.apps, SESSIONS).await);
        }
        all
    });

    let mut group = c.benchmark_group("session read-only request, 2 app servers, 32 in flight");
    group.throughput(Throughput::Elements(1));
    group.sample_size(20);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(5));
    for (contender, cookies) in contenders.iter().zip(&cookies) {
        group.bench_function(contender.name, |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let apps = contender.apps.clone();
                let cookies = cookies.clone();
                async move { load(&apps, &cookies, iters).await }
            });
        });
        rt.block_on(async {
            count(&server, contender, cookies).await;
            coherence_check(contender).await;
        });
    }
    group.finish();
}

criterion_group!(benches, sessions_bench);
criterion_main!(benches);
