//! Login, profile and logout on a typed session.
//!
//! The session holds `{"userId":1,"username":"alice"}` (camelCase, the field names the
//! Node backend uses), so with `SESSION_FORMAT=express` the record in Redis is exactly the
//! one express-session + connect-redis write, and either backend can serve the other's
//! logged-in users.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use cache_sdk::session::{Session, Sessions};
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::app::AppState;
use crate::error::{ApiError, JsonBody};
use crate::ratelimit::LoginLimiter;

/// What a session holds. `Default` is the anonymous session.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserSession {
    /// The logged-in user's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<u64>,
    /// The logged-in user's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The user's preferences (`PUT /api/user/preferences/{key}`), kept out of the record
    /// while empty so that a record stays what express-session writes for a login.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub preferences: BTreeMap<String, Value>,
    /// The cart (`POST /api/cart/items`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cart: Vec<CartLine>,
}

/// A cart line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CartLine {
    /// The product.
    pub product_id: u64,
    /// How many.
    pub quantity: u32,
}

/// A user of the demo user table.
#[derive(Debug)]
struct User {
    id: u64,
    username: &'static str,
    password: &'static str,
}

/// The demo user table. A real application keeps password hashes (argon2, bcrypt) in its
/// database and verifies with the hashing library; plain-text passwords are for the demo
/// only.
const USERS: [User; 2] = [
    User {
        id: 1,
        username: "alice",
        password: "alice-pass",
    },
    User {
        id: 2,
        username: "bob",
        password: "bob-pass",
    },
];

/// Compares without stopping at the first difference, so the answer time does not tell
/// how much of a guess was right.
fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut diff = u8::from(a.len() != b.len());
    for (i, x) in a.iter().enumerate() {
        diff |= x ^ b.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

/// The user with these credentials. Every user is checked, so that an unknown name costs
/// as much as a wrong password.
fn authenticate(username: &str, password: &str) -> Option<&'static User> {
    let mut found = None;
    for user in &USERS {
        if same(user.username, username) & same(user.password, password) {
            found = Some(user);
        }
    }
    found
}

/// The body of `POST /api/auth/login`.
#[derive(Debug, Deserialize)]
pub struct Credentials {
    username: String,
    password: String,
}

/// `{"userId":1,"username":"alice"}`
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    user_id: u64,
    username: String,
}

fn success() -> Json<Value> {
    Json(json!({ "success": true }))
}

/// Notes that the logged-in user's session was just used (its `lastSeenAt` in
/// `GET /api/user/sessions`). The SDK writes at most once per touch interval, so this costs
/// no Redis command on most requests; a failure only leaves `lastSeenAt` older.
pub(crate) async fn note_seen(sessions: &Sessions, session: &Session<UserSession>) {
    let (Some(user_id), Some(id)) = (session.read(|u| u.user_id), session.id()) else {
        return;
    };
    if let Err(e) = sessions.user_seen(&id, &user_id.to_string()).await {
        tracing::debug!(error = %e, user_id, "could not note a session as seen");
    }
}

/// `POST /api/auth/login`: checks the failed-login limits (`ratelimit.rs`: 429 with
/// `Retry-After` once a username or a client address has used up its failures) and the
/// credentials, then stores the user in the session under a new id (so an id planted
/// before the login is worthless after it), and records the session as the user's (with
/// the `User-Agent`), for `GET /api/user/sessions` and `POST /api/auth/logout-all`.
pub async fn login(
    State(state): State<AppState>,
    Extension(limiter): Extension<LoginLimiter>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    session: Session<UserSession>,
    JsonBody(creds): JsonBody<Credentials>,
) -> Response {
    let client = limiter.client_addr(peer.map(|Extension(ConnectInfo(a))| a), &headers);
    let attempt = limiter.attempt(&creds.username, client);
    if let Err(blocked) = limiter.check(&attempt).await {
        tracing::info!("login refused: too many failures");
        return blocked.into_response();
    }
    let Some(user) = authenticate(&creds.username, &creds.password) else {
        tracing::info!("login refused: invalid credentials");
        if let Err(blocked) = limiter.failed(&attempt).await {
            return blocked.into_response();
        }
        return ApiError::unauthorized("Invalid credentials").into_response();
    };
    limiter.succeeded(&attempt).await;
    match start_session(&state, &headers, &session, user).await {
        Ok(()) => success().into_response(),
        Err(e) => e.into_response(),
    }
}

/// The login itself, once the credentials are checked.
async fn start_session(
    state: &AppState,
    headers: &HeaderMap,
    session: &Session<UserSession>,
    user: &User,
) -> Result<(), ApiError> {
    session.regenerate();
    session.replace(UserSession {
        user_id: Some(user.id),
        username: Some(user.username.to_owned()),
        ..UserSession::default()
    });
    // Saved now rather than after the handler, so that a store failure is an error the
    // client sees instead of a login that silently did not stick.
    if let Err(e) = session.save().await {
        tracing::error!(error = %e, "login: the session could not be stored");
        return Err(ApiError::internal("Failed to login"));
    }
    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok());
    let bound = match session.id() {
        Some(id) => state
            .sessions
            .bind_user(&id, &user.id.to_string(), user_agent)
            .await
            .map_err(|e| e.to_string()),
        None => Err("the saved session has no id".to_owned()),
    };
    if let Err(e) = bound {
        // A session the user's "log out everywhere" could not reach must not stay logged
        // in: undo the login.
        tracing::error!(error = %e, user_id = user.id, "login: the session could not be recorded as the user's");
        session.destroy();
        if let Err(e) = session.save().await {
            tracing::error!(error = %e, "login: the unrecorded session could not be deleted");
        }
        return Err(ApiError::internal("Failed to login"));
    }
    tracing::info!(user_id = user.id, "login");
    Ok(())
}

/// `GET /api/user/profile`: the logged-in user, or 401.
pub async fn profile(
    State(state): State<AppState>,
    session: Option<Session<UserSession>>,
) -> Result<Json<Profile>, ApiError> {
    if let Some(s) = &session {
        note_seen(&state.sessions, s).await;
    }
    let user = session.map(|s| s.get()).unwrap_or_default();
    match (user.user_id, user.username) {
        (Some(user_id), Some(username)) => Ok(Json(Profile { user_id, username })),
        _ => Err(ApiError::unauthorized("Not authenticated")),
    }
}

/// `POST /api/auth/logout`: deletes the session and clears the cookie. Without a session
/// there is nothing to do, which is a success too.
pub async fn logout(session: Option<Session<UserSession>>) -> Result<Json<Value>, ApiError> {
    if let Some(session) = session {
        let user_id = session.read(|u| u.user_id);
        session.destroy();
        if let Err(e) = session.save().await {
            tracing::error!(error = %e, "logout: the session could not be deleted");
            return Err(ApiError::internal("Failed to logout"));
        }
        tracing::info!(user_id, "logout");
    }
    Ok(success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_matching_pairs_authenticate() {
        assert_eq!(authenticate("alice", "alice-pass").map(|u| u.id), Some(1));
        assert_eq!(authenticate("bob", "bob-pass").map(|u| u.id), Some(2));
        for (u, p) in [
            ("alice", "bob-pass"),
            ("alice", "alice-pas"),
            ("alice", "alice-pass "),
            ("alic", "alice-pass"),
            ("", ""),
            ("carol", "carol-pass"),
        ] {
            assert!(authenticate(u, p).is_none(), "{u}/{p}");
        }
    }
}
