use cache_sdk::cached;

#[cached(key = "cache:product:{id}", ttl = "api", ttl = "15m")]
async fn product(id: u64) -> String {
    id.to_string()
}

fn main() {}
