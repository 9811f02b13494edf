use cache_sdk::cached;

#[cached(key = "cache:product:{id}", hard_timeout = "2s")]
async fn product(id: u64) -> String {
    id.to_string()
}

fn main() {}
