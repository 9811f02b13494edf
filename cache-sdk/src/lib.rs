#![doc = include_str!("../README.md")]
//!
//! # Guide
//!
//! - [`Cache`]: the typed two-tier cache (L1 moka in the process, L2 Redis or the in-memory
//!   fallback); build it with [`Cache::builder`].
//! - [`CacheConfig`]: every setting, and the environment variables that set them;
//!   [`RedisConfig`]: one server, a Redis Cluster, or a master found through Redis
//!   Sentinel ([`SentinelConfig`]), TLS (a private CA, client certificates) and ACL users.
//! - [`Ttl`] and [`TtlPresets`]: sessions 24 h, API responses 10 min, user preferences 7 days,
//!   and presets of your own.
//! - [`Key`]: the key patterns `cache:{resource}:{id}`, `user:{userId}:{field}`, `sess:{id}`.
//! - [`codec`]: the envelope values are stored in.
//! - [`Stats`]: what [`Cache::stats`] reports.
//! - [`cached`], [`cache_evict`], [`cache_put`]: attributes that cache a function's result,
//!   and evict or write keys when a writer runs; [`install`] sets the cache they use.
//! - [`Cache::publish`] and [`Cache::subscribe`]: typed messages across instances
//!   ([`pubsub`]: delivery rules, outages, bounded buffers).
//! - [`session`] (feature `sessions`): typed web sessions (signed cookies, `sess:{id}`
//!   records, the axum extractor and tower layer with `axum`, express-session
//!   compatibility).
//! - `cache_sdk::metrics` (feature `metrics`): counters, gauges and histograms through the
//!   `metrics` facade, for Prometheus, OpenTelemetry or any exporter; debug-level `tracing`
//!   spans around each operation that reaches Redis (`docs/observability.md`).
//! - [Cargo features](#cargo-features): what each feature adds, which are on by default, and
//!   the crates the cache alone needs.
//!
//! # Redis is optional
//!
//! Without Redis (not configured, unreachable at start, or lost later) every operation runs
//! on a bounded in-memory store; [`Stats::using_fallback`] says so. Every Redis call is
//! bounded by a timeout (100 ms by default); the first failure opens a circuit breaker so
//! that calls go straight to memory, and a background task probes Redis (backoff up to
//! 100 ms). When Redis answers, writes made during the outage are replayed, L1 is cleared
//! (other instances may have written meanwhile), and operations return to Redis.
//!
//! On a Redis Cluster, multi-key operations are split by hash slot (keys with one hash tag,
//! such as `cache:{tenant:42}:…`, travel together), pattern listing and counting scan every
//! master, and losing a master means the fallback until the cluster has failed over.
//!
//! # Several instances
//!
//! With Redis, a write or delete on one instance (or by any Redis client) evicts the key
//! from every instance's L1 within one push from Redis ([`Coherence`]; `CLIENT TRACKING`,
//! or a pub/sub channel where tracking is refused). Every key the SDK writes is covered:
//! the namespace when one is set, every key otherwise; [`CacheConfig::coherence_prefixes`]
//! narrows it. While that link is down, L1 is not
//! used. [`Stats::coherence`] says which mechanism is in use.
#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod breaker;
mod builder;
mod cache;
pub mod codec;
mod config;
mod error;
mod flight;
mod global;
pub mod key;
mod log_limit;
mod macros;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;
#[cfg(not(feature = "metrics"))]
mod metrics;
pub mod pubsub;
#[cfg(feature = "sessions")]
#[cfg_attr(docsrs, doc(cfg(feature = "sessions")))]
pub mod session;
mod stats;
mod tier;
mod tls;
mod ttl;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

pub use breaker::{
    BreakerSettings, BreakerState, OriginBreaker, OriginUnavailable, DEFAULT_FAILURE_THRESHOLD,
    DEFAULT_PROBE_INTERVAL,
};
pub use builder::CacheBuilder;
pub use cache::bulk::BulkOptions;
pub use cache::load::{
    Entry, LoadError, LoadOptions, LoadTimeout, StaleReason, DEFAULT_FAIL_SAFE_THROTTLE,
};
pub use cache::stampede::{Stampede, DEFAULT_STAMPEDE_LOCK_TTL, DEFAULT_STAMPEDE_POLL};
pub use cache::tags::SetOptions;
pub use cache::{Cache, CacheValue};
pub use codec::Codec;
pub use config::{CacheConfig, Coherence, RedisConfig, SentinelConfig, MAX_VALUE_SIZE_LIMIT};
pub use error::{BackendError, BackendErrorKind, BuildError, ConfigError, Error, Result};
pub use global::{global, install};
pub use key::Key;
pub use macros::{cache_evict, cache_put, cached};
pub use pubsub::{Lagged, PubSubStats, Subscription};
pub use stats::{CoherenceState, Stats, StoreKind};
pub use ttl::{Ttl, TtlPresets, MAX_TTL};
