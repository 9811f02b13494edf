//! Typed web sessions on the two-tier cache: signed cookies, records under `sess:{id}` in
//! Redis (or the in-memory fallback while Redis is away), rolling expiry, id regeneration,
//! stats, and wire compatibility with express-session + connect-redis.
//!
//! # Pieces
//!
//! | piece | what it does |
//! |---|---|
//! | [`SessionConfig`] | cookie name and attributes, lifetime, touch interval, format, secrets; from env |
//! | [`SessionStore`] / [`CacheSessionStore`] | where records live (contract, and the cache-backed store) |
//! | [`Sessions`] | typed load/create/save/touch/destroy/count/stats, cookie signing |
//! | [`SessionLayer`] (feature `axum`) | tower middleware: lazy load, save when changed, cookies |
//! | [`Session<T>`] (feature `axum`) | the axum extractor handlers use |
//! | [`SessionFormat`] | native JSON envelope, or express-session's record |
//! | [`RecordCache`] | decoded records in L1, in front of a [`CacheSessionStore`] |
//! | [`UserIndex`] | a user's sessions (`sess-user:{user_id}`): list, log out everywhere |
//!
//! # Layout (what may import what)
//!
//! ```text
//! layer.rs ───┐
//! extract.rs ─┴─► request.rs ─► manager.rs ─┬─► store.rs ─► record_cache.rs ─► crate::cache
//!                                           └─► format/ (mod ─► native, express), cookie.rs
//! id.rs, error.rs, date.rs: leaves used by the files above; id.rs uses key::SESSION_PREFIX
//! ```
//!
//! `manager.rs` reaches the record cache only through
//! [`SessionStore::record_cache`] (no downcast to a concrete store), and the record cache
//! receives the store's read as a closure, so it does not import the store.
//!
//! Arrows only point down: the cache and its tiers never import this module (the record
//! cache uses the cache's generic hook for values kept with their stored bytes), and the
//! session prefix is [`SESSION_PREFIX`](crate::key::SESSION_PREFIX) in the key leaf.
//!
//! # Quick start
//!
//! With the `axum` feature (on by default):
//!
#![cfg_attr(feature = "axum", doc = "```")]
#![cfg_attr(not(feature = "axum"), doc = "```ignore")]
//! use axum::{routing::get, Router};
//! use cache_sdk::session::{CacheSessionStore, Session, SessionConfig, SessionLayer, Sessions};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! #[derive(Default, serde::Serialize, serde::Deserialize)]
//! struct Prefs { theme: String }
//!
//! async fn theme(session: Session<Prefs>) -> String {
//!     session.read(|p| p.theme.clone())
//! }
//!
//! let cache = cache_sdk::Cache::builder().build().await?;   // `.from_env()?` in an app
//! let config = SessionConfig::development();                 // `SessionConfig::from_env()?`
//! let sessions = Sessions::new(CacheSessionStore::new(cache), config)?;
//! let app: Router = Router::new()
//!     .route("/theme", get(theme))
//!     .layer(SessionLayer::new(sessions));
//! # let _ = app;
//! # Ok(()) }
//! ```
//!
//! # Cookies
//!
//! `Path=/; HttpOnly; SameSite=Lax`, plus `Secure` outside development. The value is
//! `s:{id}.{HMAC-SHA256(id)}` (express-session's), signed with the first secret and
//! verified with any (constant-time comparison). A tampered, malformed, unknown, expired
//! or oversized (over 4096 bytes) cookie gives a fresh anonymous session, never an error.
//! Session ids are 192 random bits from the operating system's CSPRNG.
//!
//! # Sharing sessions with express-session
//!
//! With [`SessionFormat::Express`] (`SESSION_FORMAT=express`), the same `SESSION_SECRET` as
//! the Node app and the cookie name `connect.sid`, records and cookies are what
//! express-session + connect-redis read and write. Keys are `sess:{id}`, connect-redis'
//! default prefix. A cache namespace (`CACHE_NAMESPACE=app`) is put before every Redis key,
//! session keys included (`app:sess:{id}`): give connect-redis the same prefix
//! (`new RedisStore({ client, prefix: "app:sess:" })`), or leave the namespace unset.

mod config;
pub mod cookie;
mod count;
mod date;
mod error;
mod format;
mod id;
mod manager;
#[cfg(feature = "axum")]
mod merge;
mod record_cache;
mod store;
mod users;

#[cfg(feature = "axum")]
mod extract;
#[cfg(feature = "axum")]
mod layer;
#[cfg(feature = "axum")]
mod request;

pub use config::{
    Environment, SessionConfig, DEFAULT_MAX_RECORD_BYTES, DEFAULT_TOUCH_INTERVAL, DEFAULT_TTL,
};
pub use cookie::{SameSite, SessionSecrets, Verified};
pub use error::SessionError;
pub use format::SessionFormat;
pub use id::SessionId;
pub use manager::{Loaded, SessionStats, Sessions};
pub use record_cache::RecordCache;
pub use store::{CacheSessionStore, SaveIf, SessionStore, StoreStatus, MAX_ID_ATTEMPTS};
pub use users::{opaque_id, UserIndex, UserSessionInfo, MAX_SESSIONS_PER_USER, USER_INDEX_PREFIX};

#[cfg(feature = "axum")]
pub use extract::{Session, SessionData, SessionRejection};
#[cfg(feature = "axum")]
pub use layer::{SessionLayer, SessionSaveFailed, SessionService};
