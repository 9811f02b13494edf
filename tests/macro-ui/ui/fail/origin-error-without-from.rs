use cache_sdk::cached;

#[derive(Debug)]
struct AppError;

#[cached(key = "cache:product:{id}", origin = "products")]
async fn product(id: u64) -> Result<String, AppError> {
    Ok(id.to_string())
}

fn main() {}
