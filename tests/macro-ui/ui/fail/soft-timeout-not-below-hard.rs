use cache_sdk::cached;

#[cached(key = "cache:product:{id}", fail_safe = "1h", soft_timeout = "2s", hard_timeout = "1s")]
async fn product(id: u64) -> Option<String> {
    Some(id.to_string())
}

fn main() {}
