//! `GET /api/products?ids=1,2,3`: many products in one request, in the order asked.
//!
//! The products come through `Cache::get_many_or_load` under the same keys as single
//! reads (`cache:product:{id}`), so both share what is cached: L1 first, then one Redis
//! `MGET` for the rest, then **one** database query (`SELECT … WHERE id IN (…)`, counted
//! once in `loads` of `GET /api/admin/origin`) for the ids still missing, whose rows are
//! written back with one pipelined round trip.
//!
//! The answer is a JSON array with one entry per id asked, in the order asked (a repeated
//! id is answered at each place). An id with no product gets an entry of its own rather
//! than being left out, so positions always match the request:
//! `{"id": 999, "status": 404, "error": "Product 999 not found"}`. Unknown ids are not
//! cached (a product created later is found at once).
//!
//! Products cached by this route carry the same tags as single reads (`product:{id}` and
//! `catalog`, through `BulkOptions::tags` and `tags_by_key`), so invalidating either reaches
//! them too.
//!
//! The batch query goes through the circuit breaker of the origin `products`
//! ([`Cache::origin_breaker`](cache_sdk::Cache::origin_breaker)), shared with single
//! reads: while it is open the database is not queried and the request is a 503 at once
//! (not counted in `loads`), and a failed batch counts towards opening it.
//!
//! At most [`MAX_IDS`] ids per request; an empty, malformed or longer list is a 400, a
//! failing database a 503 (as for single reads).

use std::sync::Arc;

use axum::http::StatusCode;
use axum::Json;
use cache_sdk::{BulkOptions, LoadError, Ttl};
use serde::Serialize;

use crate::app::AppState;
use crate::db::{DbError, Product};
use crate::error::ApiError;
use crate::products::{Catalog, PRODUCTS_ORIGIN};

/// The most ids one request may ask for.
pub const MAX_IDS: usize = 100;

/// One entry of the answer: the product, or why there is none.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum ProductSlot {
    /// The product.
    Found(Product),
    /// No product has this id.
    Missing {
        /// The id asked for.
        id: u64,
        /// Always 404.
        status: u16,
        /// `Product <id> not found`
        error: String,
    },
}

impl Catalog {
    /// The products with these ids, in order (`None` for an unknown id): cached ones from
    /// the cache, the rest with one database query.
    ///
    /// # Errors
    /// [`DbError::Unavailable`] when the database fails for the ids not cached.
    pub async fn products_by_ids(
        self: &Arc<Self>,
        ids: &[u64],
    ) -> Result<Vec<Option<Product>>, DbError> {
        let opts = BulkOptions::new()
            .tags([crate::catalog::CATALOG_TAG])
            .tags_by_key(|key| {
                // `cache:product:{id}` carries `product:{id}`, as single reads tag it.
                key.strip_prefix("cache:")
                    .map(str::to_owned)
                    .into_iter()
                    .collect()
            });
        let cache = cache_sdk::global();
        let products = cache.origin_breaker(PRODUCTS_ORIGIN);
        cache
            .get_many_or_load_with(
                ids,
                |id| format!("cache:product:{id}"),
                Ttl::Api,
                &opts,
                |missing: Vec<u64>| {
                    let catalog = self.clone();
                    let products = products.clone();
                    async move {
                        products
                            .run(|| catalog.db().get_many(&missing))
                            .await
                            .map_err(|e| match e {
                                LoadError::Loader(e) => e,
                                _ => DbError::Unavailable(
                                    "the database is failing; not asked until it answers a probe",
                                ),
                            })
                    }
                },
            )
            .await
    }
}

/// Parses `1,2,3` (spaces allowed around ids).
fn parse_ids(raw: &str) -> Result<Vec<u64>, ApiError> {
    let bad = |detail: String| ApiError::new(StatusCode::BAD_REQUEST, "Invalid ids").detail(detail);
    let ids = raw
        .split(',')
        .map(|s| {
            s.trim().parse::<u64>().map_err(|_| {
                bad(format!(
                    "`{}` is not a product id (ids are whole numbers, as in ?ids=1,2,3)",
                    s.trim()
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if ids.len() > MAX_IDS {
        return Err(bad(format!(
            "{} ids asked; at most {MAX_IDS} per request",
            ids.len()
        )));
    }
    Ok(ids)
}

/// The answer for `?ids=…` (see the module docs).
///
/// # Errors
/// 400 for a bad list, 503 when the database fails.
pub async fn by_ids(state: &AppState, raw: &str) -> Result<Json<Vec<ProductSlot>>, ApiError> {
    let ids = parse_ids(raw)?;
    let found = state.catalog.products_by_ids(&ids).await?;
    Ok(Json(
        ids.iter()
            .zip(found)
            .map(|(&id, p)| match p {
                Some(p) => ProductSlot::Found(p),
                None => ProductSlot::Missing {
                    id,
                    status: StatusCode::NOT_FOUND.as_u16(),
                    error: DbError::NotFound(id).to_string(),
                },
            })
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_parsed_in_order_and_bounded() {
        assert_eq!(parse_ids("3, 1,2").unwrap(), vec![3, 1, 2]);
        assert_eq!(parse_ids("7,7").unwrap(), vec![7, 7]);
        assert!(parse_ids("").is_err());
        assert!(parse_ids("1,x").is_err());
        assert!(parse_ids("1,,2").is_err());
        let many = (0..=MAX_IDS)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",");
        assert!(parse_ids(&many).is_err());
    }
}
