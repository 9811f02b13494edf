//! The logged-in user's session data: the whole session, preferences and the cart.
//!
//! Each change is one `Session::update`; the SDK saves it over the record this request
//! read, merging into a record another request saved meanwhile, so a page that sends many
//! of these at once (on any instance) keeps every change.

use axum::extract::Path;
use axum::Json;
use cache_sdk::session::Session;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::{CartLine, UserSession};
use crate::error::{ApiError, JsonBody};

/// The session of a logged-in user, or 401.
fn logged_in(session: Option<Session<UserSession>>) -> Result<Session<UserSession>, ApiError> {
    match session {
        Some(s) if s.read(|u| u.user_id.is_some()) => Ok(s),
        _ => Err(ApiError::unauthorized("Not authenticated")),
    }
}

/// `GET /api/session`: `{"userId","username","preferences":{…},"cart":[…]}`.
pub async fn get_session(session: Option<Session<UserSession>>) -> Result<Json<Value>, ApiError> {
    let session = logged_in(session)?;
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
