//! Shared by the session tests: an app with the session layer, requests through it, and
//! Redis command counting; [`erp`]: the reference server as a process, for its tests.
#![allow(dead_code)]

pub mod erp;

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, Request, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use cache_sdk::session::{
    CacheSessionStore, Session, SessionConfig, SessionSaveFailed, SessionSecrets, Sessions,
};
use cache_sdk::Cache;
use cache_sdk_tests::{RedisServer, RedisTarget};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use tower::ServiceExt;

/// The session type of the test app (camelCase, like the Node app's fields).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct UserSession {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<u64>,
    pub username: String,
    pub visits: u32,
}

pub async fn cache_on(server: Option<&RedisServer>) -> Cache {
    let mut b = Cache::builder();
    if let Some(s) = server {
        b = b.redis_url(s.url()).require_redis(true);
    }
    b.build().await.expect("cache")
}

/// A cache on a server or a cluster (or in memory for `None`).
pub async fn cache_on_target(target: Option<&RedisTarget>) -> Cache {
    match target {
        Some(RedisTarget::Server(s)) => cache_on(Some(s)).await,
        Some(RedisTarget::Cluster(c)) => Cache::builder()
            .redis_cluster(c.seeds())
            // Connecting to a cluster takes a few round trips: room for a busy machine.
            .connect_timeout(std::time::Duration::from_secs(2))
            .require_redis(true)
            .build()
            .await
            .expect("cache"),
        None => cache_on(None).await,
    }
}

pub fn config(secrets: &[&str]) -> SessionConfig {
    let mut cfg = SessionConfig::new(SessionSecrets::new(secrets).expect("secrets"));
    cfg.cookie.secure = false;
    cfg
}

pub fn sessions(cache: &Cache, cfg: SessionConfig) -> Sessions {
    Sessions::new(CacheSessionStore::new(cache.clone()), cfg).expect("sessions")
}

#[derive(Deserialize)]
struct Login {
    user: u64,
    name: String,
}

async fn login(session: Session<UserSession>, Query(q): Query<Login>) -> impl IntoResponse {
    session.regenerate();
    session.update(|s| {
        s.user_id = Some(q.user);
        s.username = q.name;
    });
    "logged in"
}

async fn profile(session: Option<Session<UserSession>>) -> axum::response::Response {
    match session.map(|s| s.get()) {
        Some(user) if user.user_id.is_some() => Json(user).into_response(),
        _ => StatusCode::UNAUTHORIZED.into_response(),
    }
}

async fn visit(session: Session<UserSession>) -> String {
    session
        .update(|s| {
            s.visits += 1;
            s.visits
        })
        .to_string()
}

async fn logout(session: Session<UserSession>) -> &'static str {
    session.destroy();
    "bye"
}

async fn peek(session: Session<UserSession>) -> String {
    session.read(|s| s.visits).to_string()
}

async fn big(session: Session<UserSession>) -> &'static str {
    session.update(|s| s.username = "x".repeat(10_000));
    "handler result"
}

async fn save_now(session: Session<UserSession>) -> axum::response::Response {
    session.update(|s| s.username = "x".repeat(10_000));
    match session.save().await {
        Ok(()) => "saved".into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

async fn stats(State(sessions): State<Sessions>) -> axum::response::Response {
    match sessions.stats().await {
        Ok(s) => Json(s).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

pub fn app(sessions: Sessions) -> Router {
    Router::new()
        .route("/login", post(login))
        .route("/profile", get(profile))
        .route("/visit", post(visit))
        .route("/peek", get(peek))
        .route("/logout", post(logout))
        .route("/big", post(big))
        .route("/save-now", post(save_now))
        .route("/stats", get(stats))
        .with_state(sessions.clone())
        .layer(cache_sdk::session::SessionLayer::new(sessions))
}

/// What came back.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub set_cookies: Vec<String>,
    pub body: String,
    pub save_failed: Option<SessionSaveFailed>,
}

impl Reply {
    /// The `name=value` pair of the one Set-Cookie, for the next request's `Cookie`.
    pub fn cookie(&self) -> String {
        assert_eq!(
            self.set_cookies.len(),
            1,
            "expected one Set-Cookie: {self:?}"
        );
        self.set_cookies[0]
            .split(';')
            .next()
            .expect("pair")
            .to_owned()
    }
}

pub async fn send(app: &Router, method: &str, uri: &str, cookie: Option<&str>) -> Reply {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(c) = cookie {
        req = req.header(header::COOKIE, c);
    }
    let res = app
        .clone()
        .oneshot(req.body(Body::empty()).expect("request"))
        .await
        .expect("infallible");
    let status = res.status();
    let set_cookies = res
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().expect("ascii").to_owned())
        .collect();
    let save_failed = res.extensions().get::<SessionSaveFailed>().cloned();
    let body = res.into_body().collect().await.expect("body").to_bytes();
    Reply {
        status,
        set_cookies,
        body: String::from_utf8_lossy(&body).into_owned(),
        save_failed,
    }
}

/// `INFO commandstats` as command → calls.
pub fn command_calls(server: &RedisServer) -> HashMap<String, u64> {
    server
        .cli(&["INFO", "commandstats"])
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("cmdstat_")?;
            let (name, stats) = rest.split_once(':')?;
            let calls = stats.split(',').find_map(|kv| kv.strip_prefix("calls="))?;
            Some((name.to_owned(), calls.parse().ok()?))
        })
        .collect()
}

/// Calls of the session-relevant commands since `before`.
pub fn delta(server: &RedisServer, before: &HashMap<String, u64>) -> HashMap<String, u64> {
    let after = command_calls(server);
    ["get", "set", "pexpire", "expire", "del", "scan", "exists"]
        .iter()
        .filter_map(|c| {
            let d = after.get(*c).copied().unwrap_or(0) - before.get(*c).copied().unwrap_or(0);
            (d > 0).then(|| ((*c).to_owned(), d))
        })
        .collect()
}

/// The id in a `name=s%3A<id>.<sig>` cookie pair.
pub fn id_of(cookie: &str) -> String {
    let value = cookie.split_once('=').expect("pair").1;
    let value = value.strip_prefix("s%3A").expect("signed");
    value.split_once('.').expect("sig").0.to_owned()
}
