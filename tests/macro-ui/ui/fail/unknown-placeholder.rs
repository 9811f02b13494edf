use cache_sdk::cached;

#[cached(key = "cache:product:{idd}", ttl = "api")]
async fn product(id: u64, verbose: bool) -> String {
    format!("{id} {verbose}")
}

fn main() {}
