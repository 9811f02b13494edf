#![deny(warnings)]
// A test program of signatures: its futures are built and never run, its types need no
// `Debug`, and the bounds are where the signatures under test put them.
#![allow(
    missing_debug_implementations,
    clippy::let_underscore_future,
    clippy::multiple_bound_locations
)]

use cache_sdk::{cache_evict, cache_put, cached};

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Product {
    id: u64,
    name: String,
}

#[cached(key = "cache:product:{id}", ttl = "api", tags = ["product:{id}", "catalog"])]
async fn product(id: u64) -> Option<Product> {
    Some(Product {
        id,
        name: "Desk".into(),
    })
}

#[cached(key = "cache:price:{id}", fail_safe = "1h", tags = ["product:{id}"])]
async fn price(id: u64) -> Result<u64, std::io::Error> {
    Ok(id * 100)
}

#[cache_put(key = "cache:product:{p.id}", tags = ["product:{p.id}", "catalog"])]
async fn save(p: Product) -> Product {
    p
}

#[cache_evict(key = "cache:product:{id}", tags = ["catalog"])]
async fn delete(id: u64) -> bool {
    id > 0
}

#[cache_evict(tags = ["catalog"])]
async fn reset_catalog() {}

async fn use_them() {
    let _ = product(1).await;
    let _ = price(1).await;
    let _ = save(Product {
        id: 1,
        name: String::new(),
    })
    .await;
    let _ = delete(1).await;
    reset_catalog().await;
    let _ = product_invalidate_tags(1).await;
}

fn main() {
    let _ = use_them;
}
