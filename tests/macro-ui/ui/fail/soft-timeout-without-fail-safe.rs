use cache_sdk::cached;

#[cached(key = "cache:product:{id}", soft_timeout = "100ms")]
async fn product(id: u64) -> String {
    id.to_string()
}

fn main() {}
