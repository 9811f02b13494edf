//! The catalogue: `GET /api/products` lists the products, cached with the tag `catalog`.
//!
//! | request | answer |
//! |---|---|
//! | `GET /api/products` | every product, ordered by id (a JSON array) |
//! | `GET /api/products?page=N` | page `N` (from 1) of 20 products, ordered by id; an empty array past the end |
//! | `GET /api/products?ids=1,2,3` | those products, in that order (`products_bulk.rs`) |
//!
//! Each answer is one database call on a miss, cached under `cache:catalog:all` or
//! `cache:catalog:page:{N}` for the `api` preset with the tag `catalog`. `PUT` and `DELETE`
//! of a product invalidate that tag (`products.rs`), so every list on every instance is a
//! miss right after, and the next read reflects the change. The `Cache-Status` header says
//! whether the list came from the cache. A `page` that is not a number from 1 is a 422.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use axum::Json;
use cache_sdk::{LoadError, LoadOptions, Ttl};

use crate::app::AppState;
use crate::error::ApiError;

/// Products per page of `GET /api/products?page=N`.
pub const PAGE_SIZE: u64 = 20;

/// The tag every cached product and list carries.
pub const CATALOG_TAG: &str = "catalog";

/// `GET /api/products[?page=N]`, and `?ids=…` (handed to `products_bulk.rs`).
pub async fn list_products(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    if let Some(raw) = query.get("ids") {
        return crate::products_bulk::by_ids(&state, raw)
            .await
            .map(IntoResponse::into_response);
    }
    let page = match query.get("page") {
        None => None,
        Some(p) => Some(
            p.parse::<u64>()
                .ok()
                .filter(|p| (1..=u64::MAX / PAGE_SIZE).contains(p))
                .ok_or_else(|| {
                    ApiError::unprocessable("Invalid page")
                        .detail("page must be a whole number from 1")
                })?,
        ),
    };
    let key = page.map_or_else(
        || "cache:catalog:all".to_owned(),
        |p| format!("cache:catalog:page:{p}"),
    );
    let opts = LoadOptions::new()
        .fail_safe(std::time::Duration::from_secs(3600))
        .hard_timeout(std::time::Duration::from_secs(2))
        .tags([CATALOG_TAG]);
    let catalog = state.catalog.clone();
    let entry = cache_sdk::global()
        .get_or_load_entry_with(&key, Ttl::Api, &opts, move || async move {
            let (offset, limit) =
                page.map_or((0, None), |p| ((p - 1) * PAGE_SIZE, Some(PAGE_SIZE)));
            catalog.db().list(offset, limit).await
        })
        .await
        .map_err(|e| match e {
            LoadError::Loader(e) => ApiError::from(e),
            other => ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "Product database unavailable",
            )
            .detail(other.to_string()),
        })?;
    let status = HeaderValue::from_static(crate::products::cache_status(&entry));
    let mut response = Json(entry.value().as_ref().clone()).into_response();
    response.headers_mut().insert("cache-status", status);
    Ok(response)
}
