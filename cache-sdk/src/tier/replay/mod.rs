//! The log of writes made on the fallback while Redis was down, replayed when it returns.
//!
//! - One entry per key: the latest write wins (a `SET` after a `DEL` replays the `SET`).
//! - Increments are kept as deltas and replayed with `INCRBY`, so increments made by other
//!   instances meanwhile add up instead of being overwritten.
//! - Entries whose TTL ran out by replay time are dropped; the others keep their remaining TTL.
//! - Conflicts: a value that another instance wrote to Redis **after** the outage write (its
//!   envelope's `written at` is later) is kept; otherwise the outage write wins.
//! - Bounded: at most `capacity` keys. A write to a new key beyond that still succeeds on the
//!   fallback but is not replayed; it is counted in `Stats::replay_dropped` and logged.
//!
//! This module holds the log and the Lua scripts the replay runs; [`driver`] holds the
//! background task that probes Redis while it is down, replays the log and switches the
//! remote tier back to Redis.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use super::redis::{Failure, RedisLink};
use crate::error::BackendError;

pub(crate) mod driver;

/// A write to replay.
#[derive(Debug, Clone)]
pub(crate) enum Pending {
    Set {
        bytes: Arc<[u8]>,
        expires_at: Option<Instant>,
        written_at_ms: u64,
    },
    Delete {
        at_ms: u64,
    },
    Incr {
        delta: i64,
    },
}

#[derive(Debug)]
pub(crate) struct ReplayLog {
    entries: HashMap<String, Pending>,
    capacity: usize,
    pub(crate) dropped: u64,
}

impl ReplayLog {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            capacity,
            dropped: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Records a write, replacing any earlier one for the key.
    pub(crate) fn record(&mut self, key: &str, op: Pending) {
        if let Some(slot) = self.entries.get_mut(key) {
            *slot = op;
        } else if self.entries.len() < self.capacity {
            self.entries.insert(key.to_owned(), op);
        } else {
            self.dropped += 1;
            if self.dropped.is_power_of_two() {
                tracing::warn!(
                    dropped = self.dropped,
                    capacity = self.capacity,
                    "replay log full: writes to new keys during the Redis outage will not be replayed"
                );
            }
        }
    }

    /// Records an increment; `current` is the value after it, as the fallback holds it.
    pub(crate) fn record_incr(&mut self, key: &str, delta: i64, current: Pending) {
        match self.entries.get_mut(key) {
            Some(Pending::Incr { delta: d }) => *d = d.saturating_add(delta),
            Some(_) => self.record(key, current),
            None => self.record(key, Pending::Incr { delta }),
        }
    }

    /// Takes up to `n` entries out of the log.
    pub(crate) fn take(&mut self, n: usize) -> Vec<(String, Pending)> {
        let keys: Vec<String> = self.entries.keys().take(n).cloned().collect();
        keys.into_iter()
            .filter_map(|k| self.entries.remove_entry(&k))
            .collect()
    }

    /// Puts back an entry that could not be replayed, unless a newer write superseded it;
    /// increments made meanwhile add to a restored increment.
    pub(crate) fn restore(&mut self, key: String, op: Pending) {
        match (self.entries.get_mut(&key), op) {
            (Some(Pending::Incr { delta: newer }), Pending::Incr { delta }) => {
                *newer = newer.saturating_add(delta);
            }
            (Some(_), _) => {}
            (None, op) => {
                self.entries.insert(key, op);
            }
        }
    }
}

/// `SET` unless Redis holds an envelope written later than ours.
/// KEYS[1] key; ARGV[1] value, ARGV[2] our written-at ms, ARGV[3] PX ms or 0 for none.
pub(crate) const SET_SCRIPT: &str = r"
local ok, cur = pcall(redis.call, 'GET', KEYS[1])
if ok and cur and string.len(cur) >= 23 and string.byte(cur, 1) == 202 then
  local ts = 0
  for i = 15, 8, -1 do ts = ts * 256 + string.byte(cur, i) end
  if ts > tonumber(ARGV[2]) then return 0 end
end
if ARGV[3] == '0' then
  redis.call('SET', KEYS[1], ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
end
return 1
";

/// `DEL` unless Redis holds an envelope written later than the delete.
/// KEYS[1] key; ARGV[1] the delete's time in ms.
pub(crate) const DEL_SCRIPT: &str = r"
local ok, cur = pcall(redis.call, 'GET', KEYS[1])
if ok and cur and string.len(cur) >= 23 and string.byte(cur, 1) == 202 then
  local ts = 0
  for i = 15, 8, -1 do ts = ts * 256 + string.byte(cur, i) end
  if ts > tonumber(ARGV[1]) then return 0 end
end
return redis.call('DEL', KEYS[1])
";

/// The replay scripts, loaded into the server once per recovery and run with `EVALSHA`.
#[derive(Debug, Default)]
pub(crate) struct Scripts {
    pub(crate) loaded: bool,
    pub(crate) set_sha: String,
    pub(crate) del_sha: String,
}

impl Scripts {
    pub(crate) async fn load(&mut self, link: &RedisLink) -> Result<(), BackendError> {
        // One command each, not a pipeline: on a cluster redis-rs sends `SCRIPT LOAD` to
        // every node, so `EVALSHA` finds the scripts on whichever master holds a key.
        let load = |script: &str| {
            let mut cmd = redis::cmd("SCRIPT");
            cmd.arg("LOAD").arg(script);
            cmd
        };
        let set_sha: String = link
            .query(&load(SET_SCRIPT))
            .await
            .map_err(Failure::into_error)?;
        let del_sha: String = link
            .query(&load(DEL_SCRIPT))
            .await
            .map_err(Failure::into_error)?;
        *self = Scripts {
            loaded: true,
            set_sha,
            del_sha,
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(b: &[u8]) -> Pending {
        Pending::Set {
            bytes: Arc::from(b),
            expires_at: None,
            written_at_ms: 1,
        }
    }

    #[test]
    fn restored_increments_add_to_newer_ones() {
        let mut log = ReplayLog::new(8);
        log.record_incr("c", 2, set(b"2"));
        let taken = log.take(8);
        log.record_incr("c", 3, set(b"5"));
        for (k, op) in taken {
            log.restore(k, op);
        }
        match log.take(8).as_slice() {
            [(k, Pending::Incr { delta })] => assert_eq!((k.as_str(), *delta), ("c", 5)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn latest_write_wins_and_capacity_is_enforced() {
        let mut log = ReplayLog::new(2);
        log.record("a", set(b"1"));
        log.record("a", Pending::Delete { at_ms: 2 });
        log.record("b", set(b"2"));
        log.record("c", set(b"3"));
        assert_eq!(log.len(), 2);
        assert_eq!(log.dropped, 1);
        let taken = log.take(10);
        assert!(taken
            .iter()
            .any(|(k, p)| k == "a" && matches!(p, Pending::Delete { .. })));
        assert!(log.is_empty());
    }

    #[test]
    fn increments_accumulate_until_a_set() {
        let mut log = ReplayLog::new(10);
        log.record_incr("n", 2, set(b"2"));
        log.record_incr("n", 3, set(b"5"));
        assert!(matches!(log.take(1)[0].1, Pending::Incr { delta: 5 }));
        log.record("m", set(b"7"));
        log.record_incr("m", 1, set(b"8"));
        match &log.take(1)[0].1 {
            Pending::Set { bytes, .. } => assert_eq!(&**bytes, b"8"),
            other => panic!("{other:?}"),
        }
    }
}
