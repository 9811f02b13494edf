//! A minimal HTTP app server for comparing the read-only session path over real sockets:
//! the same two routes on either session stack, driven by `scripts/bench-sessions-http.sh`
//! (wrk).
//!
//! - `ours`: cache-sdk's `SessionLayer` + `Session<UserSession>` on a real Redis, with the
//!   cache's defaults (coherence `auto`, so sessions are kept decoded in L1 and evicted on
//!   every instance when they change), the native format, the default touch interval.
//! - `theirs`: tower-sessions 0.14 with its in-process `MemoryStore` (no Redis at all: the
//!   ceiling a session layer on Redis can reach), `Expiry::OnInactivity(1 day)`, no
//!   `always_save`.
//!
//! Routes: `POST /login` (body: a user number) stores a logged-in session and sets the
//! cookie; `GET /read` reads the typed session and answers `{"userId":…,"username":…}`
//! (401 without a session). No access logs, no tracing subscriber.
//!
//! ```text
//! session-http ours 127.0.0.1:8001 redis://127.0.0.1:6390
//! session-http theirs 127.0.0.1:8002
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;

use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use cache_sdk::session::{
    CacheSessionStore, Session, SessionConfig, SessionLayer, SessionSecrets, Sessions,
};
use cache_sdk::Cache;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The session of a logged-in user, as the reference app keeps it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UserSession {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    user_id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    username: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    preferences: BTreeMap<String, Value>,
}

/// The read-only answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Profile {
    user_id: u64,
    username: String,
}

fn user(body: &str) -> UserSession {
    let i: u64 = body.trim().parse().unwrap_or(0);
    UserSession {
        user_id: Some(i),
        username: Some(format!("user-{i}")),
        preferences: BTreeMap::from([("theme".to_owned(), Value::from("dark"))]),
    }
}

fn profile(u: &UserSession) -> Result<Json<Profile>, StatusCode> {
    match (u.user_id, &u.username) {
        (Some(user_id), Some(username)) => Ok(Json(Profile {
            user_id,
            username: username.clone(),
        })),
        _ => Err(StatusCode::UNAUTHORIZED),
    }
}

// ---- cache-sdk ----

async fn ours_read(session: Option<Session<UserSession>>) -> Result<Json<Profile>, StatusCode> {
    session.ok_or(StatusCode::UNAUTHORIZED)?.read(profile)
}

async fn ours_login(session: Session<UserSession>, body: String) -> StatusCode {
    session.regenerate();
    session.replace(user(&body));
    match session.save().await {
        Ok(()) => StatusCode::OK,
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

async fn ours(redis_url: &str) -> Result<Router, Box<dyn std::error::Error>> {
    let cache = Cache::builder()
        .redis_url(redis_url)
        .require_redis(true)
        .build()
        .await?;
    let mut config = SessionConfig::new(SessionSecrets::new(["bench-secret-bench-secret-bench!"])?);
    config.cookie.secure = false;
    let sessions = Sessions::new(CacheSessionStore::new(cache), config)?;
    Ok(Router::new()
        .route("/read", get(ours_read))
        .route("/login", post(ours_login))
        .layer(SessionLayer::new(sessions)))
}

// ---- tower-sessions ----

async fn theirs_read(session: tower_sessions::Session) -> Result<Json<Profile>, StatusCode> {
    let user = session
        .get::<UserSession>("user")
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?
        .ok_or(StatusCode::UNAUTHORIZED)?;
    profile(&user)
}

async fn theirs_login(session: tower_sessions::Session, body: String) -> StatusCode {
    if session.cycle_id().await.is_err() || session.insert("user", user(&body)).await.is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    StatusCode::OK
}

fn theirs() -> Router {
    let layer = tower_sessions::SessionManagerLayer::new(tower_sessions::MemoryStore::default())
        .with_secure(false)
        .with_expiry(tower_sessions::Expiry::OnInactivity(time::Duration::days(
            1,
        )));
    Router::new()
        .route("/read", get(theirs_read))
        .route("/login", post(theirs_login))
        .layer(layer)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: session-http ours ADDR REDIS_URL | session-http theirs ADDR";
    let (kind, addr) = match (args.first(), args.get(1)) {
        (Some(k), Some(a)) => (k.as_str(), a.parse::<SocketAddr>()?),
        _ => return Err(usage.into()),
    };
    let app = match (kind, args.get(2)) {
        ("ours", Some(url)) => ours(url).await?,
        ("theirs", _) => theirs(),
        _ => return Err(usage.into()),
    };
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
