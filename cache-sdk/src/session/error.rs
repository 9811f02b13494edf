//! [`SessionError`]: what can go wrong when storing a session.
//!
//! A leaf of the session module: may import only the crate's [`Error`](crate::Error) (the
//! cache's error it wraps).

/// The error of a session store operation or save.
///
/// A bad cookie or a record that does not decode is never an error: the request gets a
/// fresh session. What remains is the store refusing an operation and records that
/// cannot be written.
///
/// ```
/// let e = cache_sdk::session::SessionError::TooLarge { size: 10, limit: 5 };
/// assert_eq!(e.to_string(), "the session record is 10 bytes, over the limit of 5 bytes");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The cache (Redis or the fallback) refused the operation.
    #[error(transparent)]
    Store(#[from] crate::Error),
    /// The session data could not be encoded in the configured format.
    #[error("could not encode the session: {0}")]
    Encode(String),
    /// The encoded record is larger than allowed.
    #[error("the session record is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// The record's size.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// No unused id was found.
    #[error("no unused session id found in {0} attempts")]
    NoFreeId(u32),
    /// Other requests kept changing the session while this one saved: its changes were
    /// merged into theirs this many times without one write going through.
    #[error("the session kept changing during {0} save attempts; not saved")]
    Contended(u32),
    /// The session was destroyed (by another request) before this save.
    #[error("the session no longer exists (destroyed or expired meanwhile); not saved")]
    Gone,
    /// The store does not keep what this operation needs (per-user session indexes:
    /// see [`SessionStore::user_index`](crate::session::SessionStore::user_index)).
    #[error("the session store does not support {0}")]
    Unsupported(&'static str),
}
