use cache_sdk::cached;

#[cached(key = "cache:product:{id}", ttl = "api", tags = ["product:{idd}", "catalog"])]
async fn product(id: u64) -> String {
    format!("{id}")
}

fn main() {}
