//! What operators look at: session stats, cache stats, health.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use cache_sdk::session::SessionStats;
use cache_sdk::{Stats, StoreKind};
use serde::Serialize;

use crate::app::AppState;
use crate::error::ApiError;

/// The session stats answer: the library's [`SessionStats`] with the Node backend's
/// `"success": true` in front.
#[derive(Debug, Serialize)]
pub struct SessionStatsResponse {
    /// Always `true`, as the Node backend answered.
    success: bool,
    /// `store`, `totalSessions`, `redisStats`.
    #[serde(flatten)]
    stats: SessionStats,
}

/// `GET /api/session/stats`:
/// `{"success":true,"store":"redis"|"memory","totalSessions":n,"redisStats":{"connected":b,"usingFallback":b,"inMemoryKeys":n}}`.
pub async fn session_stats(
    State(state): State<AppState>,
) -> Result<Json<SessionStatsResponse>, ApiError> {
    match state.sessions.stats().await {
        Ok(stats) => Ok(Json(SessionStatsResponse {
            success: true,
            stats,
        })),
        Err(e) => {
            tracing::error!(error = %e, "session stats: the store could not be read");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "Session store unavailable",
            ))
        }
    }
}

/// The cache's stats, plus how many queries reached the demo database.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheStats {
    /// State and counters of the cache (`connected`, `usingFallback`, `inMemoryKeys`,
    /// `store`, `l1Hits`, `l1Misses`, `l2Hits`, `l2Misses`, `loads`, …).
    #[serde(flatten)]
    cache: Stats,
    /// Queries the demo database ran.
    db_queries: u64,
}

/// `GET /api/cache/stats`: hits and misses per tier, loads, fallback state, outages and
/// replay counters (see [`cache_sdk::Stats`]).
pub async fn cache_stats(State(state): State<AppState>) -> Json<CacheStats> {
    Json(CacheStats {
        cache: state.cache.stats(),
        db_queries: state.catalog.db().queries(),
    })
}

/// The health answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    /// `"ok"`, or `"degraded"` while a configured Redis is unreachable.
    status: &'static str,
    /// Where cache entries and sessions go now: `"redis"` or `"memory"`.
    store: StoreKind,
    /// Whether Redis is configured.
    redis_configured: bool,
    /// What the status means.
    detail: &'static str,
}

/// A key that is never written: the health check asks whether it exists.
const PROBE_KEY: &str = "cache:healthz:probe";

/// `GET /healthz`: 200 whenever the process serves. Redis being down is not unhealthy
/// (requests are still answered, from memory): the body says `"degraded"`, for dashboards
/// and alerts, without making an orchestrator restart a server that works.
///
/// The check makes one cheap call (`EXISTS`) so that its answer is current even when no
/// other request ran lately: a Redis that died is noticed here, within the cache's command
/// timeout, rather than by the next user.
pub async fn healthz(State(state): State<AppState>) -> Json<Health> {
    let probe = state.cache.exists(PROBE_KEY).await;
    let stats = state.cache.stats();
    let (status, detail) = match (stats.redis_configured, stats.connected, probe) {
        (false, _, _) => (
            "ok",
            "Redis is not configured: cache and sessions are in memory",
        ),
        (true, true, Ok(_)) => ("ok", "cache and sessions are in Redis"),
        (true, true, Err(e)) => {
            tracing::warn!(error = %e, "health check: Redis answered an error");
            ("degraded", "Redis answers with errors")
        }
        (true, false, _) => (
            "degraded",
            "Redis is unreachable: serving from memory until it answers again",
        ),
    };
    Json(Health {
        status,
        store: stats.store,
        redis_configured: stats.redis_configured,
        detail,
    })
}
