//! Arbitrary bytes as a value read from Redis: the header parser and the decoder must
//! answer an error, never panic, and never allocate past the size limit.
#![no_main]

use std::collections::HashMap;

use cache_sdk::codec::{self, Header, TypeTag};
use libfuzzer_sys::fuzz_target;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Product {
    id: u64,
    name: String,
    tags: Vec<String>,
    price: Option<f64>,
    attrs: HashMap<String, i32>,
}

const LIMIT: usize = 64 * 1024;
const ANY: TypeTag = TypeTag::UNTAGGED;

fuzz_target!(|data: &[u8]| {
    let _ = Header::parse(data).map(|h| h.remaining());
    let _ = codec::decode::<u64>(data, ANY, LIMIT);
    let _ = codec::decode::<String>(data, ANY, LIMIT);
    let _ = codec::decode::<Vec<u8>>(data, ANY, LIMIT);
    let _ = codec::decode::<Product>(data, ANY, LIMIT);
    let _ = codec::decode::<(u8, Option<Vec<Product>>)>(data, ANY, LIMIT);
    if let Ok(named) = TypeTag::named("product", 1) {
        let _ = codec::decode::<Product>(data, named, LIMIT);
    }
});
