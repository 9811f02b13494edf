//! Key patterns and keys: the `#[cached]` pattern parser (the macro crate's own module),
//! the key checks, glob escaping and matching never panic, and an escaped part only ever
//! matches itself.
#![no_main]

use cache_sdk::key::{escape_glob, glob_match, validate, Key};
use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../cache-sdk-macros/src/pattern.rs"]
mod pattern;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lit = syn::LitStr::new(text, proc_macro2::Span::call_site());
    let _ = pattern::Pattern::parse(&lit);

    let _ = validate(text);
    let mid = (0..=text.len() / 2)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    let (a, b) = text.split_at(mid);
    let _ = Key::cache(a, b);
    let _ = Key::user(a, b);
    let _ = glob_match(a, b);
    // An escaped literal matches exactly itself.
    let escaped = escape_glob(text);
    assert!(
        glob_match(&escaped, text),
        "{escaped:?} does not match {text:?}"
    );
});
