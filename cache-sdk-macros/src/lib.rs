//! Implementation detail of `cache-sdk`.
