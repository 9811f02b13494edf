//! Session ids: 192 bits from the operating system's CSPRNG, written as 32 base64url
//! characters (the shape express-session's `uid-safe` gives, so both sides accept both).
//!
//! May import: only [`SESSION_PREFIX`] from the key leaf (the
//! store key is that prefix and the id). Must not: log an id.

use std::fmt;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::TryRngCore as _;

use crate::key::SESSION_PREFIX;

/// Random bytes in a new id: 24 bytes, 192 bits.
const ID_BYTES: usize = 24;
/// Shortest id accepted from a cookie (16 characters of base64url: 96 bits).
const MIN_LEN: usize = 16;
/// Longest id accepted from a cookie.
const MAX_LEN: usize = 128;

/// A session id. It is a bearer credential: `Debug` hides it, it has no `Display`, and the
/// SDK never logs it. [`SessionId::as_str`] gives the value when it must be written out.
///
/// ```
/// use cache_sdk::session::SessionId;
/// let id = SessionId::generate();
/// assert_eq!(id.as_str().len(), 32);
/// assert_eq!(format!("{id:?}"), "SessionId(<redacted>)");
/// assert_eq!(SessionId::parse(id.as_str()), Some(id.clone()));
/// assert_eq!(SessionId::parse("not an id!"), None);
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SessionId(Arc<str>);

impl SessionId {
    /// A fresh id: 24 bytes from the operating system's CSPRNG, base64url without padding.
    ///
    /// ```
    /// let a = cache_sdk::session::SessionId::generate();
    /// let b = cache_sdk::session::SessionId::generate();
    /// assert_ne!(a, b);
    /// ```
    #[must_use]
    pub fn generate() -> Self {
        let mut bytes = [0u8; ID_BYTES];
        if rand::rngs::OsRng.try_fill_bytes(&mut bytes).is_err() {
            // The OS generator failing is extraordinary; ThreadRng is a CSPRNG (ChaCha,
            // seeded from the OS) and a sound second source.
            rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
        }
        SessionId(URL_SAFE_NO_PAD.encode(bytes).into())
    }

    /// Accepts an id read from a cookie or another store: 16 to 128 characters of
    /// `[A-Za-z0-9_-]` (which covers express-session's 32-character ids).
    ///
    /// ```
    /// use cache_sdk::session::SessionId;
    /// assert!(SessionId::parse("WOef9FivrmsL5Jm4ZfKIhGODeF-zLMFp").is_some());
    /// assert!(SessionId::parse("short").is_none());
    /// assert!(SessionId::parse("has:colon:aaaaaaaaaaaaaaaaaaaa").is_none());
    /// ```
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        let ok = (MIN_LEN..=MAX_LEN).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        ok.then(|| SessionId(s.into()))
    }

    /// The id itself. It is a credential: do not log it.
    ///
    /// ```
    /// let id = cache_sdk::session::SessionId::generate();
    /// assert!(id.as_str().bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    /// ```
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The store key, `sess:{id}`.
    ///
    /// ```
    /// let id = cache_sdk::session::SessionId::parse("WOef9FivrmsL5Jm4ZfKIhGODeF-zLMFp").unwrap();
    /// assert_eq!(id.key(), "sess:WOef9FivrmsL5Jm4ZfKIhGODeF-zLMFp");
    /// ```
    #[must_use]
    pub fn key(&self) -> String {
        let mut key = String::with_capacity(SESSION_PREFIX.len() + self.0.len());
        key.push_str(SESSION_PREFIX);
        key.push_str(&self.0);
        key
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionId(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_are_32_chars_of_base64url_and_distinct() {
        let mut seen = HashSet::new();
        for _ in 0..2000 {
            let id = SessionId::generate();
            assert_eq!(id.as_str().len(), 32);
            assert!(SessionId::parse(id.as_str()).is_some());
            assert!(seen.insert(id));
        }
    }

    #[test]
    fn parse_rejects_bad_characters_and_lengths() {
        assert!(SessionId::parse("").is_none());
        assert!(SessionId::parse(&"a".repeat(15)).is_none());
        assert!(SessionId::parse(&"a".repeat(16)).is_some());
        assert!(SessionId::parse(&"a".repeat(128)).is_some());
        assert!(SessionId::parse(&"a".repeat(129)).is_none());
        assert!(SessionId::parse("aaaaaaaaaaaaaaa+/").is_none());
        assert!(SessionId::parse("aaaaaaaaaaaaaaaa*").is_none());
    }
}
