use cache_sdk::cached;

#[derive(Debug)]
struct AppError;

#[cached(key = "cache:product:{id}", hard_timeout = "2s")]
async fn product(id: u64) -> Result<String, AppError> {
    Ok(id.to_string())
}

fn main() {}
