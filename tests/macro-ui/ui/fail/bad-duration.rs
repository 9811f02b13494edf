use cache_sdk::cached;

#[cached(key = "cache:product:{id}", fail_safe = "1 hour")]
async fn product(id: u64) -> String {
    id.to_string()
}

fn main() {}
