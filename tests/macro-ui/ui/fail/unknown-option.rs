use cache_sdk::cache_evict;

#[cache_evict(key = "cache:product:{id}", ttl = "api")]
async fn update_product(id: u64) -> Result<(), String> {
    let _ = id;
    Ok(())
}

fn main() {}
