// A test program of signatures: its futures are built and never run, its types need no
// `Debug`, and the bounds are where the signatures under test put them.
#![allow(
    missing_debug_implementations,
    clippy::let_underscore_future,
    clippy::multiple_bound_locations
)]

use cache_sdk::{cached, LoadTimeout, OriginUnavailable};

#[derive(Debug)]
pub enum AppError {
    Db,
    Timeout(LoadTimeout),
    Unavailable(OriginUnavailable),
}

impl From<LoadTimeout> for AppError {
    fn from(t: LoadTimeout) -> Self {
        AppError::Timeout(t)
    }
}

impl From<OriginUnavailable> for AppError {
    fn from(u: OriginUnavailable) -> Self {
        AppError::Unavailable(u)
    }
}

#[cached(key = "cache:product:{id}", fail_safe = "1h", origin = "products")]
pub async fn product(id: u64) -> Result<String, AppError> {
    if id == 0 {
        return Err(AppError::Db);
    }
    Ok(id.to_string())
}

#[cached(key = "cache:price:{id}", hard_timeout = "1s", origin = "products")]
pub async fn price(id: u64) -> Result<u64, AppError> {
    Ok(id)
}

#[cached(key = "cache:stock:{id}", origin = "inventory")]
pub async fn stock(id: u64) -> Option<u64> {
    Some(id)
}

fn main() {}
