use cache_sdk::cached;

#[cached(key = "cache:product:{id}", fail_safe = "1h")]
async fn product(name: &str, id: u64) -> String {
    format!("{name}{id}")
}

fn main() {}
