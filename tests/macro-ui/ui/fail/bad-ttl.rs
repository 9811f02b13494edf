use cache_sdk::cached;

#[cached(key = "cache:product:{id}", ttl = "5 minutes")]
async fn product(id: u64) -> String {
    id.to_string()
}

fn main() {}
