use cache_sdk::cached;

#[cached(key = "cache:product:{id}", refresh_ahead = 1.5)]
async fn product(id: u64) -> String {
    id.to_string()
}

fn main() {}
