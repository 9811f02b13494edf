//! The product catalog: reads through `#[cached]`, writes with `#[cache_put]`, deletes with
//! `#[cache_evict]`, all under the key `cache:product:{id}` in the global cache.
//!
//! | request | database | cache |
//! |---|---|---|
//! | `GET /api/products/{id}` | read on a miss only | `#[cached]`: L1, then Redis, then the database; the value is kept 10 min (the `api` preset) |
//! | `PUT /api/products/{id}` | update | `#[cache_put]`: the new value replaces the cached one in L1 and Redis |
//! | `DELETE /api/products/{id}` | delete | `#[cache_evict]`: the key is removed from L1 and Redis |
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

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use cache_sdk::{cache_evict, cache_put, cached};
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

    /// Reads a product: from the cache when it holds it, else from the database (then
    /// cached for the `api` preset, 10 minutes).
    #[cached(key = "cache:product:{id}", ttl = "api")]
    pub async fn product(&self, id: u64) -> Result<Product, DbError> {
        self.db.find(id).await
    }

    /// Updates a product and writes the new value to the cache, so the next read needs
    /// no query and no reader sees the old one.
    #[cache_put(key = "cache:product:{product.id}", ttl = "api")]
    pub async fn update_product(&self, product: Product) -> Result<Product, DbError> {
        self.db.update(product).await
    }

    /// Deletes a product and evicts it from the cache.
    #[cache_evict(key = "cache:product:{id}")]
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

/// `GET /api/products/{id}`
pub async fn get_product(
    State(state): State<AppState>,
    ProductId(id): ProductId,
) -> Result<Json<Product>, ApiError> {
    Ok(Json(state.catalog.product(id).await?))
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
