use cache_sdk::cached;

#[cached(key = "cache:product:{id}", fail_safe = "1h", hard_timeout = "0ms")]
async fn product(id: u64) -> Option<String> {
    Some(id.to_string())
}

fn main() {}
