use cache_sdk::cached;

#[cached(key = "cache:square:{n}", ttl = "api")]
fn square(n: u64) -> u64 {
    n * n
}

fn main() {}
