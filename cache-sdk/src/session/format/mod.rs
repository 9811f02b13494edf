//! How a session is stored: the [`SessionFormat`] choice and what every format shares
//! (the decoded record, the format error), with one child per format: `native.rs` (the
//! SDK's envelope) and `express.rs` (express-session + connect-redis' record).
//!
//! May import: serde, the cookie attributes (the express record carries them) and the
//! date helpers. Must not: touch a store, a cache or a request; the children import only
//! this parent, never each other.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

use super::cookie::CookieAttributes;

mod express;
mod native;

/// How session records are written under `sess:{id}`.
///
/// # Native format
///
/// Compact JSON in a small envelope, readable with `redis-cli GET sess:<id>`:
///
/// ```text
/// {"v":1,"ttl":86400,"savedAt":1764183056263,"data":{…the session type…}}
/// ```
///
/// - `v`: the envelope version (1). Anything else is not read.
/// - `ttl`: this session's lifetime in seconds (the configured TTL unless the handler chose
///   another with [`Session::set_ttl`](crate::session::Session::set_ttl)); every touch
///   extends the key to this.
/// - `savedAt`: Unix milliseconds of the last save, which lets the first request after a
///   save skip the touch.
/// - `data`: the session type as JSON.
///
/// Expiry is the Redis key's TTL only: a touch (`PEXPIRE`) does not rewrite the record.
/// A record that does not decode (corrupt, another envelope version, a type that changed
/// incompatibly) is treated as no session: the request gets a fresh one and a warning is
/// logged, never an error response.
///
/// ```
/// use cache_sdk::session::SessionFormat;
/// assert_eq!("express".parse::<SessionFormat>(), Ok(SessionFormat::Express));
/// assert_eq!("native".parse::<SessionFormat>(), Ok(SessionFormat::Native));
/// assert!("xml".parse::<SessionFormat>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SessionFormat {
    /// JSON in the SDK's envelope (see above).
    #[default]
    Native,
    /// What express-session + connect-redis write: `{"cookie":{…},…fields}`, the TTL from
    /// `cookie.originalMaxAge`, touch as an expiry update. With the same Redis, secret and
    /// cookie name (`connect.sid`), a Node backend and a Rust service share sessions both
    /// ways.
    ///
    /// A record is compact JSON: a `cookie` object first, then the application's fields at the
    /// top level, e.g.
    /// `{"cookie":{"originalMaxAge":86400000,"expires":"2026-11-26T18:50:56.263Z","secure":false,"httpOnly":true,"path":"/","sameSite":"lax"},"userId":1,"username":"alice"}`.
    ///
    /// - The session type must serialize as a JSON object without a `cookie` field.
    /// - Fields the Rust type does not know (written by the Node side) are kept as they were
    ///   when the Rust side saves, so neither side erases the other's data. A field the Rust
    ///   type knows and no longer serializes (a `None` skipped with `skip_serializing_if`) is
    ///   removed.
    /// - The TTL is `cookie.originalMaxAge` (connect-redis derives it from `cookie.expires`,
    ///   which express-session sets to now + `originalMaxAge` before every save and touch);
    ///   without it, the configured TTL. `cookie.expires` itself is not checked when reading,
    ///   as connect-redis does not check it either: expiry is the Redis key's TTL.
    /// - The `cookie` object is written from this side's cookie attributes (`secure`,
    ///   `httpOnly`, `path`, `sameSite`, `domain`), and express-session applies what it reads
    ///   there: configure both sides' cookies alike (name `connect.sid`, same secret list).
    Express,
}

impl std::str::FromStr for SessionFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "native" => Ok(SessionFormat::Native),
            "express" | "express-session" | "connect-redis" => Ok(SessionFormat::Express),
            _ => Err("expected `native` or `express`".into()),
        }
    }
}

/// Why a record could not be read or written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FormatError(pub(crate) String);

/// A decoded record.
#[derive(Debug)]
pub(crate) struct Decoded<T> {
    pub(crate) data: T,
    /// The session's own TTL, when the record says.
    pub(crate) ttl: Option<Duration>,
    /// When it was last saved (Unix ms), when the record says.
    pub(crate) saved_at_ms: Option<u64>,
    /// Express: stored fields the type does not account for, written back unchanged.
    pub(crate) extra: Map<String, Value>,
}

impl SessionFormat {
    /// Decodes a stored record as `T`.
    pub(crate) fn decode<T: DeserializeOwned + Serialize + Default>(
        self,
        bytes: &[u8],
    ) -> Result<Decoded<T>, FormatError> {
        match self {
            SessionFormat::Express => express::decode(bytes),
            SessionFormat::Native => native::decode(bytes),
        }
    }

    /// Encodes a record: `extra` holds stored fields `T` does not account for (express),
    /// `attrs` the cookie attributes (express writes them into the record).
    pub(crate) fn encode<T: Serialize>(
        self,
        data: &T,
        extra: &Map<String, Value>,
        attrs: &CookieAttributes,
        ttl: Duration,
        now_ms: u64,
    ) -> Result<Vec<u8>, FormatError> {
        match self {
            SessionFormat::Express => express::encode(data, extra, attrs, ttl, now_ms),
            SessionFormat::Native => native::encode(data, ttl, now_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, PartialEq, Serialize, serde::Deserialize)]
    struct S {
        n: u32,
    }

    #[test]
    fn each_format_reads_only_its_own_records() {
        let attrs = CookieAttributes::new("sid");
        let ttl = Duration::from_secs(60);
        for (format, other) in [
            (SessionFormat::Native, SessionFormat::Express),
            (SessionFormat::Express, SessionFormat::Native),
        ] {
            let out = format
                .encode(&S { n: 7 }, &Map::new(), &attrs, ttl, 1000)
                .expect("encodes");
            let d = format.decode::<S>(&out).expect("decodes");
            assert_eq!(d.data, S { n: 7 });
            assert_eq!(d.ttl, Some(ttl));
            assert!(other.decode::<S>(&out).is_err());
        }
    }
}
