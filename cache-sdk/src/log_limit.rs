//! Warnings that can repeat on every request (a value that does not decode, sessions
//! evicted from a full fallback) are logged at most once per interval per call site, with
//! the number of similar warnings left out since the last one.
//!
//! May import: nothing of the crate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// At most one warning per this interval per call site.
const INTERVAL: Duration = Duration::from_secs(10);

/// One call site's limit; a `static` beside the warning.
///
/// ```ignore
/// static LIMIT: LogLimit = LogLimit::new();
/// if let Some(suppressed) = LIMIT.allow() {
///     tracing::warn!(suppressed, "…");
/// }
/// ```
#[derive(Debug)]
pub(crate) struct LogLimit {
    /// When the next warning may be logged, in milliseconds since the first use of any limit.
    next_ms: AtomicU64,
    suppressed: AtomicU64,
}

fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    u64::try_from(START.get_or_init(Instant::now).elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl LogLimit {
    pub(crate) const fn new() -> Self {
        Self {
            next_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when the warning is to be logged now (`n` similar ones were left out since
    /// the last); `None` when it is left out.
    pub(crate) fn allow(&self) -> Option<u64> {
        let now = now_ms();
        let next = self.next_ms.load(Ordering::Relaxed);
        let until = now.saturating_add(u64::try_from(INTERVAL.as_millis()).unwrap_or(u64::MAX));
        if now >= next
            && self
                .next_ms
                .compare_exchange(next, until, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_warning_per_interval_then_the_count_of_those_left_out() {
        let limit = LogLimit::new();
        assert_eq!(limit.allow(), Some(0));
        assert_eq!(limit.allow(), None);
        assert_eq!(limit.allow(), None);
        // Open the window again, as the interval passing would.
        limit.next_ms.store(0, Ordering::Relaxed);
        assert_eq!(limit.allow(), Some(2));
    }
}
