//! The router: routes, shared state, the session layer and request logging.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post, put};
use axum::Router;
use cache_sdk::session::{SessionLayer, Sessions};
use cache_sdk::Cache;

use crate::db::Database;
use crate::products::Catalog;
use crate::ws::Realtime;
use crate::{admin, auth, catalog, error, metrics, ops, products, session_api, ws};

/// What handlers share. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The cache (also installed as the global cache the macros use).
    pub cache: Cache,
    /// The sessions (for the stats endpoint; handlers use the `Session` extractor).
    pub sessions: Sessions,
    /// The product catalog.
    pub catalog: Arc<Catalog>,
    /// Development mode: the origin control (`/api/admin/origin`) is served.
    pub origin_control: bool,
    /// Live updates: the WebSockets of this instance and the events between instances.
    pub realtime: Realtime,
}

impl AppState {
    /// The state over a cache, sessions and the product database; `origin_control` in
    /// development mode only.
    pub fn new(
        cache: Cache,
        sessions: Sessions,
        db: Database,
        origin_control: bool,
        realtime: Realtime,
    ) -> Self {
        Self {
            cache,
            sessions,
            catalog: Arc::new(Catalog::new(db)),
            origin_control,
            realtime,
        }
    }
}

/// Every route of the API.
pub fn router(state: AppState) -> Router {
    let sessions = SessionLayer::new(state.sessions.clone());
    let mut routes = Router::new();
    if state.origin_control {
        // Development only: in production the path is unknown (404), not forbidden.
        routes = routes.route(
            "/api/admin/origin",
            get(admin::get_origin).post(admin::set_origin),
        );
        routes = routes.route("/api/admin/cache/clear", post(admin::clear_cache));
    }
    routes
        .route(
            "/api/auth/login",
            post(auth::login).layer(middleware::map_response(no_store)),
        )
        .route(
            "/api/auth/logout",
            post(auth::logout)
                .layer(middleware::from_fn_with_state(
                    state.clone(),
                    ws::after_logout,
                ))
                .layer(middleware::map_response(no_store)),
        )
        .route(
            "/api/auth/logout-all",
            post(session_api::logout_all).layer(middleware::map_response(no_store)),
        )
        .route(
            "/api/user/sessions",
            get(session_api::list_user_sessions).layer(middleware::map_response(no_store)),
        )
        .route(
            "/api/session",
            get(session_api::get_session).layer(middleware::map_response(no_store)),
        )
        .route(
            "/api/user/preferences/{key}",
            put(session_api::put_preference),
        )
        .route("/api/cart/items", post(session_api::add_cart_item))
        .route("/api/ws", get(ws::upgrade))
        .route("/api/ws/stats", get(ws::stats))
        .route(
            "/api/user/profile",
            get(auth::profile).layer(middleware::map_response(no_store)),
        )
        .route(
            "/api/session/stats",
            get(ops::session_stats).layer(middleware::map_response(no_store)),
        )
        .route(
            "/api/products/{id}",
            get(products::get_product)
                .put(products::put_product)
                .delete(products::delete_product),
        )
        .route("/api/products", get(catalog::list_products))
        .route("/api/cache/stats", get(ops::cache_stats))
        .route("/healthz", get(ops::healthz))
        .route("/metrics", get(metrics::render))
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .with_state(state)
        // The session layer only checks the cookie's signature here; the store is read
        // when a handler extracts `Session`, and written after it when the session changed.
        .layer(sessions)
        .layer(middleware::from_fn(log_request))
        .layer(middleware::from_fn(metrics::track))
}

/// `Cache-Control: no-store` on answers that carry session data or set the session cookie,
/// so that no browser or proxy cache keeps them.
async fn no_store(mut res: Response) -> Response {
    res.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    res
}

/// One log line per request: method, path, status, time.
async fn log_request(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let start = Instant::now();
    let res = next.run(req).await;
    let status = res.status().as_u16();
    let latency = start.elapsed();
    if res.status().is_server_error() {
        tracing::warn!(%method, path, status, ?latency, "request");
    } else {
        tracing::info!(%method, path, status, ?latency, "request");
    }
    res
}
