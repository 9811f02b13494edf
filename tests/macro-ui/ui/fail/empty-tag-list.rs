use cache_sdk::cache_evict;

#[cache_evict(tags = [])]
async fn reset() {}

fn main() {}
