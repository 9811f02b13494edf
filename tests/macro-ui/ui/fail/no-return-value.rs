use cache_sdk::cached;

#[cached(key = "cache:ping:{id}", ttl = "api")]
async fn ping(id: u64) {
    let _ = id;
}

fn main() {}
