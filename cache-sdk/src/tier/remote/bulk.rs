//! Several `SET`s, each with its own TTL, in one pipelined round trip (one pipeline per
//! hash slot on a cluster): the write step of `get_many_or_load`, where loaded values and
//! "absent" markers expire at different times. On the fallback each write is also recorded
//! for replay, as `mset` does.
//!
//! May import: its parent's write path and replay helpers. Must not: know what the bytes
//! mean.

use std::time::Duration;

use super::Remote;
use crate::error::Error;

impl Remote {
    /// Writes every `(key, bytes, ttl)` (not atomically).
    pub(crate) async fn mset_each(
        &self,
        items: Vec<(String, Vec<u8>, Duration)>,
    ) -> Result<(), Error> {
        if items.is_empty() {
            return Ok(());
        }
        self.set_all(
            items
                .into_iter()
                .map(|(k, v, ttl)| (k, v, Some(ttl)))
                .collect(),
        )
        .await
    }
}
