use cache_sdk::cached;

#[cached(key = "cache:product:{id}", tier = "l1", tags = ["catalog"])]
fn product(id: u64) -> String {
    format!("{id}")
}

fn main() {}
