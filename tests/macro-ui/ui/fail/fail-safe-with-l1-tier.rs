use cache_sdk::cached;

#[cached(key = "cache:product:{id}", tier = "l1", fail_safe = "1h")]
async fn product(id: u64) -> String {
    id.to_string()
}

fn main() {}
