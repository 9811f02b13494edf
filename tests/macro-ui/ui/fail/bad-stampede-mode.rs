use cache_sdk::cached;

#[cached(key = "cache:product:{id}", stampede = "cluster")]
async fn product(id: u64) -> String {
    id.to_string()
}

fn main() {}
