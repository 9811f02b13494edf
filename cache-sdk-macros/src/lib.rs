//! Implementation detail of `cache-sdk`: the `#[cached]`, `#[cache_evict]` and
//! `#[cache_put]` attribute macros. Use them through `cache_sdk`, which documents them;
//! the code they generate calls only `cache_sdk::__private`, which may change in any
//! release, so this crate is pinned to the exact `cache-sdk` version.
//!
//! The pipeline: `attr` parses the options, `ast` reads the function, `pattern`
//! parses key patterns, `valid` checks that they fit, `expand` generates the code, and
//! `fallback` emits the function unchanged beside the error when something does not fit.

use proc_macro::TokenStream;

mod ast;
mod attr;
mod expand;
mod fallback;
mod pattern;
mod tags;
mod valid;

use attr::Which;

// Documented on the re-export, `cache_sdk::cached`.
#[proc_macro_attribute]
pub fn cached(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand::run(Which::Cached, attr.into(), item.into()).into()
}

// Documented on the re-export, `cache_sdk::cache_evict`.
#[proc_macro_attribute]
pub fn cache_evict(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand::run(Which::Evict, attr.into(), item.into()).into()
}

// Documented on the re-export, `cache_sdk::cache_put`.
#[proc_macro_attribute]
pub fn cache_put(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand::run(Which::Put, attr.into(), item.into()).into()
}
