use cache_sdk::cached;

#[cached(key = "cache:product:{id}", origin = "")]
async fn product(id: u64) -> Option<String> {
    Some(id.to_string())
}

fn main() {}
