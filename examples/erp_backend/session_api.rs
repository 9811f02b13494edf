//! The logged-in user's session data: the whole session, preferences and the cart.
//!
//! Each change is one `Session::update`; the SDK saves it over the record this request
//! read, merging into a record another request saved meanwhile, so a page that sends many
//! of these at once (on any instance) keeps every change.

use axum::extract::{Path, State};
use axum::Json;
use cache_sdk::session::{Session, UserSessionInfo};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::app::AppState;
use crate::auth::{note_seen, CartLine, UserSession};
use crate::error::{ApiError, JsonBody};

/// The session of a logged-in user, or 401.
fn logged_in(session: Option<Session<UserSession>>) -> Result<Session<UserSession>, ApiError> {
    match session {
        Some(s) if s.read(|u| u.user_id.is_some()) => Ok(s),
        _ => Err(ApiError::unauthorized("Not authenticated")),
    }
}

/// `GET /api/session`: `{"userId","username","preferences":{…},"cart":[…]}`.
pub async fn get_session(
    State(state): State<AppState>,
    session: Option<Session<UserSession>>,
) -> Result<Json<Value>, ApiError> {
    let session = logged_in(session)?;
    note_seen(&state.sessions, &session).await;
    Ok(Json(session.read(|u| {
        json!({
            "userId": u.user_id,
            "username": u.username,
            "preferences": u.preferences,
            "cart": u.cart,
        })
    })))
}

/// The body of `PUT /api/user/preferences/{key}`.
#[derive(Debug, Deserialize)]
pub struct PreferenceBody {
    value: Value,
}

/// `PUT /api/user/preferences/{key}` with `{"value": <any JSON>}`.
pub async fn put_preference(
    session: Option<Session<UserSession>>,
    Path(key): Path<String>,
    JsonBody(body): JsonBody<PreferenceBody>,
) -> Result<Json<Value>, ApiError> {
    let session = logged_in(session)?;
    session.update(|u| u.preferences.insert(key, body.value));
    Ok(Json(json!({ "success": true })))
}

/// The body of `POST /api/cart/items`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CartItemBody {
    product_id: u64,
    quantity: u32,
}

/// `POST /api/cart/items` with `{"productId": <u64>, "quantity": <u32>}`: adds a line.
pub async fn add_cart_item(
    session: Option<Session<UserSession>>,
    JsonBody(body): JsonBody<CartItemBody>,
) -> Result<Json<Value>, ApiError> {
    let session = logged_in(session)?;
    session.update(|u| {
        u.cart.push(CartLine {
            product_id: body.product_id,
            quantity: body.quantity,
        });
    });
    Ok(Json(json!({ "success": true })))
}

/// The logged-in user's id and the current session's id, or 401.
fn user_and_id(
    session: Option<Session<UserSession>>,
) -> Result<(Session<UserSession>, String, cache_sdk::session::SessionId), ApiError> {
    let session = logged_in(session)?;
    let user_id = session.read(|u| u.user_id).unwrap_or_default().to_string();
    let id = session
        .id()
        .ok_or(ApiError::unauthorized("Not authenticated"))?;
    Ok((session, user_id, id))
}

/// `GET /api/user/sessions`: the user's live sessions, most recently seen first:
/// `[{"id": "<opaque>", "current", "createdAt", "lastSeenAt", "userAgent"}]` (times in
/// Unix ms; `id` names a session without revealing its cookie).
pub async fn list_user_sessions(
    State(state): State<AppState>,
    session: Option<Session<UserSession>>,
) -> Result<Json<Vec<UserSessionInfo>>, ApiError> {
    let (session, user_id, id) = user_and_id(session)?;
    note_seen(&state.sessions, &session).await;
    match state.sessions.user_sessions(&user_id, Some(&id)).await {
        Ok(list) => Ok(Json(list)),
        Err(e) => {
            tracing::error!(error = %e, "the user's sessions could not be listed");
            Err(ApiError::internal("Failed to list sessions"))
        }
    }
}

/// `POST /api/auth/logout-all`: logs the user out of every other session, on every
/// instance at once; this one stays logged in. `{"success": true, "loggedOut": n}`.
pub async fn logout_all(
    State(state): State<AppState>,
    session: Option<Session<UserSession>>,
) -> Result<Json<Value>, ApiError> {
    let (_session, user_id, id) = user_and_id(session)?;
    match state
        .sessions
        .destroy_user_sessions(&user_id, Some(&id))
        .await
    {
        Ok(n) => {
            crate::ws::user_sessions_ended(&state, &user_id, &id).await;
            tracing::info!(user_id = %user_id, logged_out = n, "logout everywhere else");
            Ok(Json(json!({ "success": true, "loggedOut": n })))
        }
        Err(e) => {
            tracing::error!(error = %e, "logout everywhere: the sessions could not be destroyed");
            Err(ApiError::internal("Failed to logout"))
        }
    }
}
