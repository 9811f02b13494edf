use cache_sdk::cached;

pub struct Point {
    pub x: i32,
    pub y: i32,
}

#[cached(key = "cache:tile:{point}", ttl = "api")]
async fn tile(point: Point) -> String {
    format!("{},{}", point.x, point.y)
}

fn main() {}
