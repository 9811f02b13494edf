//! The product catalog: reads through `#[cached]`, writes with `#[cache_put]`, deletes with
//! `#[cache_evict]`, all under the key `cache:product:{id}` in the global cache.
//!
//! | request | database | cache |
//! |---|---|---|
//! | `GET /api/products/{id}` | read on a miss only | `get_or_load_entry_with`: L1, then Redis, then the database; fresh for the `api` preset (10 min, `CACHE_TTL_API`), kept 1 h more for fail-safe, refreshed in the background after 80 % of it; a slow database (over 100 ms) is answered from the stale value, no caller waits over 2 s; with Redis, one instance of the fleet reads a cold product (distributed stampede lock) and the others wait for its value; the origin `products` has a circuit breaker: after 5 failed reads in a row the database is asked only by one probe per 250 ms until it answers, meanwhile products are answered stale (or 503 at once for one never cached). The `Cache-Status` header (RFC 9211) says which (a stale answer, whether the database failed or the breaker kept the read from it, is `cache-sdk; hit; detail=stale`) |
//! | `GET /api/products?ids=1,2,3` | one batch read for the ids not cached, through the same `products` breaker | `get_many_or_load` (`products_bulk.rs`) |
//! | `PUT /api/products/{id}` | update | `#[cache_evict(tags = ["catalog"])]` after the update (every cached catalogue page is a miss on every instance), then `#[cache_put]`: the new value replaces the cached one in L1 and Redis |
//! | `DELETE /api/products/{id}` | delete | `#[cache_evict]`: the key is removed from L1 and Redis, and the tag `catalog` is invalidated |
//!
//! Every product is cached with the tags `product:{id}` and `catalog`, and the catalogue
//! lists (`catalog.rs`) with `catalog`.
//!
//! Errors are never cached: an unknown id (`DbError::NotFound`, 404) reaches the database
//! each time, and so does a read while the database is unavailable (`DbError::Unavailable`,
//! 503 `{"error":"Product database unavailable","detail":...}`, e.g. while the origin
//! control of `admin.rs` makes it fail). Cache trouble never fails a request: with Redis away the cache answers from
//! memory, and a cache write Redis refuses is logged while the request goes on.
//!
//! `PUT` replaces an existing product (an unknown id is a 404; products are not created
//! here). Its body is `{"name","priceCents","stock"}`, optionally with `"id"`: the id comes
//! from the path, and a body `id` that differs from it is refused with a 422 rather than
//! guessed at. Unknown fields are refused too (422), so a typo cannot be silently ignored.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cache_sdk::{cache_evict, cache_put, Entry, LoadError, LoadOptions, Stampede, Ttl};

/// The origin name of the product database: its circuit breaker is shared by single and
/// batch product reads.
pub const PRODUCTS_ORIGIN: &str = "products";
use serde::Deserialize;

use crate::app::AppState;
use crate::db::{Database, DbError, Product};
use crate::error::{ApiError, JsonBody, ProductId};
use crate::ws::Event;

/// The longest product name accepted, in characters.
const MAX_NAME_CHARS: usize = 200;

/// The catalog service: the database behind the cache.
#[derive(Debug)]
pub struct Catalog {
    db: Database,
}

impl Catalog {
    /// The catalog over a database.
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// The database (for its call counter and the origin control).
    pub fn db(&self) -> &Database {
        &self.db
    }

    /// How product reads behave when the database fails or slows down.
    pub fn load_options() -> LoadOptions {
        LoadOptions::new()
            .fail_safe(Duration::from_secs(3600))
            .fail_safe_throttle(Duration::from_secs(5))
            .soft_timeout(Duration::from_millis(100))
            .hard_timeout(Duration::from_secs(2))
            .refresh_ahead(0.8)
            // One database read per cold product across every instance on the same Redis.
            .stampede(Stampede::Distributed)
            // A down database is asked by one probe per interval, not once per product;
            // an unknown id is an answer, not a failure.
            .origin(PRODUCTS_ORIGIN)
            .origin_answered(|e: &DbError| matches!(e, DbError::NotFound(_)))
    }

    /// The options of one product's read: [`Catalog::load_options`] with its tags.
    fn product_options(id: u64) -> LoadOptions {
        Self::load_options().tags([format!("product:{id}"), "catalog".to_owned()])
    }

    /// Reads a product with what the cache did: from the cache when it holds it fresh,
    /// else from the database (cached for the `api` preset); when the database fails or
    /// is slow and an expired value exists, that value, marked stale.
    pub async fn product_entry(
        self: &Arc<Self>,
        id: u64,
    ) -> Result<Entry<Product>, LoadError<DbError>> {
        let catalog = self.clone();
        cache_sdk::global()
            .get_or_load_entry_with(
                &format!("cache:product:{id}"),
                Ttl::Api,
                &Self::product_options(id),
                move || async move { catalog.db.find(id).await },
            )
            .await
    }

    /// Updates a product and writes the new value to the cache, so the next read needs
    /// no query and no reader sees the old one.
    #[cache_put(
        key = "cache:product:{product.id}",
        ttl = "api",
        tags = ["product:{product.id}", "catalog"]
    )]
    pub async fn update_product(&self, product: Product) -> Result<Product, DbError> {
        self.update_row(product).await
    }

    /// The update itself; once it succeeded, every cached catalogue list is invalidated
    /// (before the new value is written, so that value is not invalidated with them).
    #[cache_evict(tags = ["catalog"])]
    async fn update_row(&self, product: Product) -> Result<Product, DbError> {
        self.db.update(product).await
    }

    /// Deletes a product and evicts it from the cache, and the catalogue lists with it.
    #[cache_evict(key = "cache:product:{id}", tags = ["catalog"])]
    pub async fn delete_product(&self, id: u64) -> Result<(), DbError> {
        self.db.delete(id).await
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::NotFound(_) => ApiError::not_found(e.to_string()),
            DbError::Unavailable(why) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "Product database unavailable",
            )
            .detail(why),
        }
    }
}

/// The body of `PUT /api/products/{id}`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProductInput {
    /// Optional; must equal the path's id when given.
    #[serde(default)]
    id: Option<u64>,
    name: String,
    price_cents: u64,
    stock: u32,
}

impl ProductInput {
    /// The product to store under `id`, or why the body is not acceptable.
    fn into_product(self, id: u64) -> Result<Product, ApiError> {
        if let Some(body_id) = self.id.filter(|b| *b != id) {
            return Err(ApiError::unprocessable("Product id mismatch").detail(format!(
                "the body says id {body_id} but the path says {id}; leave \"id\" out or make them equal"
            )));
        }
        let name = self.name.trim();
        if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
            return Err(ApiError::unprocessable("Invalid product")
                .detail(format!("name must be 1 to {MAX_NAME_CHARS} characters")));
        }
        if i64::try_from(self.price_cents).is_err() {
            return Err(ApiError::unprocessable("Invalid product")
                .detail(format!("priceCents must be at most {}", i64::MAX)));
        }
        Ok(Product {
            id,
            name: name.to_owned(),
            price_cents: self.price_cents,
            stock: self.stock,
        })
    }
}

/// `GET /api/products/{id}`: the product, with an RFC 9211 `Cache-Status` header.
pub async fn get_product(
    State(state): State<AppState>,
    ProductId(id): ProductId,
) -> Result<Response, ApiError> {
    let entry = state.catalog.product_entry(id).await.map_err(|e| match e {
        LoadError::Loader(e) => ApiError::from(e),
        LoadError::Timeout(t) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Product database unavailable",
        )
        .detail(t.to_string()),
        LoadError::OriginUnavailable(u) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Product database unavailable",
        )
        .detail(u.to_string()),
        _ => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Product database unavailable",
        )
        .detail("the server is shutting down"),
    })?;
    let status = HeaderValue::from_static(cache_status(&entry));
    let mut response = Json((**entry.value()).clone()).into_response();
    response.headers_mut().insert("cache-status", status);
    Ok(response)
}

/// The `Cache-Status` value (RFC 9211) for what the cache did.
pub(crate) fn cache_status<T>(entry: &Entry<T>) -> &'static str {
    match (
        entry.is_stale(),
        entry.was_loaded(),
        entry.refresh_started(),
    ) {
        (true, _, _) => "cache-sdk; hit; detail=stale",
        (false, true, _) => "cache-sdk; fwd=miss; stored",
        (false, false, true) => "cache-sdk; hit; detail=refresh",
        (false, false, false) => "cache-sdk; hit",
    }
}

/// `PUT /api/products/{id}`
pub async fn put_product(
    State(state): State<AppState>,
    ProductId(id): ProductId,
    JsonBody(input): JsonBody<ProductInput>,
) -> Result<Json<Product>, ApiError> {
    let product = input.into_product(id)?;
    let saved = state.catalog.update_product(product).await?;
    tracing::info!(product_id = id, "product updated");
    state.realtime.publish(Event::ProductUpdated(id)).await;
    Ok(Json(saved))
}

/// `DELETE /api/products/{id}`
pub async fn delete_product(
    State(state): State<AppState>,
    ProductId(id): ProductId,
) -> Result<StatusCode, ApiError> {
    state.catalog.delete_product(id).await?;
    tracing::info!(product_id = id, "product deleted");
    state.realtime.publish(Event::ProductDeleted(id)).await;
    Ok(StatusCode::NO_CONTENT)
}
