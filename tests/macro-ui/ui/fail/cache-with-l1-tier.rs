use cache_sdk::{cached, Cache};
use std::sync::LazyLock;

static CACHE: LazyLock<Cache> = LazyLock::new(Cache::in_memory);

#[cached(key = "cache:product:{id}", tier = "l1", cache = CACHE)]
async fn product(id: u64) -> String {
    id.to_string()
}

fn main() {}
