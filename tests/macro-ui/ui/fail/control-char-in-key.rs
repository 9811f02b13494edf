use cache_sdk::cached;

#[cached(key = "cache:product:\n{id}", ttl = "api")]
async fn product(id: u64) -> String {
    id.to_string()
}

fn main() {}
