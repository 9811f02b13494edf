//! The origin control: development-mode endpoints to watch and disturb this instance's
//! access to the product database (the "origin" behind the cache), so anyone can see what
//! the cache does when its data source slows down or fails.
//!
//! | request | answer |
//! |---|---|
//! | `GET /api/admin/origin` | `{"latencyMs":20,"failing":false,"loads":3}` |
//! | `POST /api/admin/origin` `{"latencyMs":500}` and/or `{"failing":true}` | the new state, same shape |
//!
//! | `POST /api/admin/cache/clear` | `{"cleared":true}`: the whole cache is emptied on every instance ([`Cache::clear`](cache_sdk::Cache::clear)); sessions stay |
//!
//! `latencyMs` is the simulated latency of each database call (`ERP_DB_LATENCY_MS` at
//! start); `failing` makes every call fail after that latency (product reads that reach the
//! database then answer 503); `loads` counts the calls this instance made since it started,
//! failed ones included, a batch read counting once. The settings are this instance's own:
//! other instances on the same database file are not affected.
//!
//! The routes exist only in development mode (`app.rs` leaves them out in production,
//! where they answer 404 like any unknown path). A body that is not JSON is a 400, JSON of
//! the wrong shape (unknown field, wrong type, nothing to change, a latency over 60 s) a 422,
//! both with a JSON error as everywhere in the API.

use std::time::Duration;

use axum::extract::State;
use axum::Json;
use serde::Deserialize;

use crate::app::AppState;
use crate::db::{OriginState, MAX_LATENCY};
use crate::error::{ApiError, JsonBody};

/// The body of `POST /api/admin/origin`: what to change (at least one field).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OriginUpdate {
    /// The new latency of each call, in milliseconds.
    #[serde(default)]
    latency_ms: Option<u64>,
    /// Whether every call fails.
    #[serde(default)]
    failing: Option<bool>,
}

/// `GET /api/admin/origin`
pub async fn get_origin(State(state): State<AppState>) -> Json<OriginState> {
    Json(state.catalog.db().origin())
}

/// `POST /api/admin/origin`
pub async fn set_origin(
    State(state): State<AppState>,
    JsonBody(update): JsonBody<OriginUpdate>,
) -> Result<Json<OriginState>, ApiError> {
    if update.latency_ms.is_none() && update.failing.is_none() {
        return Err(ApiError::unprocessable("Nothing to change")
            .detail("send {\"latencyMs\": <milliseconds>} and/or {\"failing\": <true|false>}"));
    }
    let latency = update.latency_ms.map(Duration::from_millis);
    if latency.is_some_and(|l| l > MAX_LATENCY) {
        return Err(ApiError::unprocessable("Invalid latency").detail(format!(
            "latencyMs must be at most {}",
            MAX_LATENCY.as_millis()
        )));
    }
    let db = state.catalog.db();
    if let Some(latency) = latency {
        db.set_latency(latency);
    }
    if let Some(failing) = update.failing {
        db.set_failing(failing);
    }
    let origin = db.origin();
    tracing::warn!(
        latency_ms = origin.latency_ms,
        failing = origin.failing,
        "origin control changed this instance's access to the product database"
    );
    Ok(Json(origin))
}

/// `POST /api/admin/cache/clear`: empties the cache on every instance (one Redis command;
/// see `Cache::clear`). The next product read on any instance is a miss. Sessions are not
/// cache entries and stay.
pub async fn clear_cache() -> Result<Json<serde_json::Value>, ApiError> {
    cache_sdk::global().clear().await.map_err(|e| {
        tracing::error!(error = %e, "the cache could not be cleared");
        ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "The cache could not be cleared",
        )
        .detail(e.to_string())
    })?;
    tracing::warn!("the cache was cleared on every instance");
    Ok(Json(serde_json::json!({ "cleared": true })))
}
