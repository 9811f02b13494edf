// A test program of signatures: its futures are built and never run, its types need no
// `Debug`, and the bounds are where the signatures under test put them.
#![allow(
    missing_debug_implementations,
    clippy::let_underscore_future,
    clippy::multiple_bound_locations
)]
use std::sync::Arc;

use cache_sdk::{cached, LoadTimeout};

#[derive(Debug)]
pub enum AppError {
    Db,
    Timeout(LoadTimeout),
}

impl From<LoadTimeout> for AppError {
    fn from(t: LoadTimeout) -> Self {
        AppError::Timeout(t)
    }
}

pub struct Db;

#[cached(
    key = "cache:product:{id}",
    ttl = "api",
    fail_safe = "1h",
    soft_timeout = "100ms",
    hard_timeout = "2s",
    refresh_ahead = 0.8
)]
pub async fn product(db: Arc<Db>, id: u64) -> Result<String, AppError> {
    let _ = db;
    if id == 0 {
        return Err(AppError::Db);
    }
    Ok(id.to_string())
}

#[cached(key = "cache:price:{id}", fail_safe = "30m", hard_timeout = "1s")]
pub async fn price(id: u64) -> Option<u64> {
    Some(id)
}

#[cached(key = "cache:name:{id}", refresh_ahead = 0.5)]
pub async fn name(id: u64) -> String {
    id.to_string()
}

fn main() {
    let _ = product(Arc::new(Db), 1);
    let _ = product_refresh(Arc::new(Db), 1);
    let _ = price(1);
    let _ = name_invalidate(1);
}
