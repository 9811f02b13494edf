// A test program of signatures: its futures are built and never run, its types need no
// `Debug`, and the bounds are where the signatures under test put them.
#![allow(
    missing_debug_implementations,
    clippy::let_underscore_future,
    clippy::multiple_bound_locations
)]
use cache_sdk::cached;

#[cached(key = "cache:product:{id}", ttl = "api", stampede = "distributed")]
pub async fn product(id: u64) -> String {
    id.to_string()
}

#[cached(
    key = "cache:price:{id}",
    fail_safe = "1h",
    hard_timeout = "2s",
    stampede = "distributed"
)]
pub async fn price(id: u64) -> Option<u64> {
    Some(id)
}

#[cached(key = "cache:stock:{id}", stampede = "local")]
pub async fn stock(id: u64) -> u32 {
    id as u32
}

fn main() {}
