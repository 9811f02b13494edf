use cache_sdk::cached;

#[cached(key = "cache:product:{id}", tags = [""])]
async fn product(id: u64) -> String {
    format!("{id}")
}

fn main() {}
