use cache_sdk::cached;

#[cached(key = "cache:product:{id}", fail_safe = 3600)]
async fn product(id: u64) -> String {
    id.to_string()
}

fn main() {}
