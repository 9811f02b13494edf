//! The tiers below [`Cache`](crate::Cache): the typed in-process L1 ([`local`]), and the
//! remote L2 ([`remote`]) that talks to Redis or, when Redis is absent, to the in-memory
//! fallback store ([`memory`]); [`coherence`] keeps the L1 of several instances in step.
//! [`replay`] brings the outage writes back to Redis, and [`tasks`] keeps the background
//! tasks on whichever Tokio runtime uses the cache.

use std::time::{Duration, Instant};

pub(crate) mod coherence;
pub(crate) mod local;
pub(crate) mod memory;
pub(crate) mod redis;
pub(crate) mod remote;
pub(crate) mod replay;
pub(crate) mod sentinel;
pub(crate) mod tasks;
pub(crate) mod watch;

/// An entry that knows when it expires; moka asks it through [`DeadlineExpiry`].
pub(crate) trait HasDeadline {
    fn deadline(&self) -> Option<Instant>;
}

/// A moka [`Expiry`](moka::Expiry) that expires each entry at its own deadline.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct DeadlineExpiry;

impl<K, V: HasDeadline> moka::Expiry<K, V> for DeadlineExpiry {
    fn expire_after_create(&self, _key: &K, value: &V, now: Instant) -> Option<Duration> {
        value.deadline().map(|d| d.saturating_duration_since(now))
    }

    fn expire_after_update(
        &self,
        _key: &K,
        value: &V,
        now: Instant,
        _current: Option<Duration>,
    ) -> Option<Duration> {
        value.deadline().map(|d| d.saturating_duration_since(now))
    }
}
