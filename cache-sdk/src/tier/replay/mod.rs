//! The log of writes made on the fallback while Redis was down, replayed when it returns.
//!
//! - One entry per key: the latest write wins (a `SET` after a `DEL` replays the `SET`).
//! - Increments are kept as deltas and replayed with `INCRBY`, so increments made by other
//!   instances meanwhile add up instead of being overwritten.
//! - Entries whose TTL ran out by replay time are dropped; the others keep their remaining TTL.
//! - Conflicts: a value that another instance wrote to Redis **at or after** the outage
//!   write (its envelope's `written at` is not older) is kept; otherwise the outage write
//!   wins.
//! - Bounded: at most `capacity` keys. A write to a new key beyond that still succeeds on the
//!   fallback but is not replayed; it is counted in `Stats::replay_dropped` and logged.
//!
//! **Replaying twice is harmless.** A replay command can time out after Redis applied it;
//! its entry then goes back to the log and is sent again. A `SET` or `DEL` sent again
//! compares written-at times and finds its own value (or its own absence): a no-op. An
//! increment carries sequence numbers: each increment sent gets the next number of this
//! instance, and the script records, in a small key beside the counter (this instance's
//! *marker*, [`marker_key`], kept for [`MARKER_TTL`]), the highest number it applied. An increment put back after a failed replay keeps its number and travels with
//! the increments made meanwhile; the script adds only the parts whose numbers are above
//! the recorded one, so each increment is applied once, whichever of the attempts runs.
//!
//! **A delete made elsewhere is not undone.** After a `DEL` nothing is left in Redis to
//! compare an older replayed `SET` with, so deletes leave a *tombstone* beside the key
//! ([`tombstone_key`], `<key>:~deleted`, holding the delete's time, kept for
//! [`TOMBSTONE_TTL`]), and the replayed `SET` is skipped when the tombstone is at or after
//! its written-at time. A replayed delete always leaves one. A live delete leaves one only
//! while the *replay window* is open: every instance that comes back from an outage opens
//! it ([`window_key`], a key set for [`TOMBSTONE_TTL`], renewed while it replays) before it
//! serves from Redis again, and the delete script checks it atomically. On a cluster the
//! window key lives in another hash slot than the deleted key, so every delete leaves a
//! tombstone there.
//!
//! A key is *pending* while its entry waits in the log or is *in flight* (taken by a
//! replay whose answer has not come). The remote tier asks the log about the keys of each
//! call while it replays ([`ReplayLog::take_keys`]); see `remote.rs` for the rule.
//!
//! This module holds the log and the Lua scripts the replay runs; [`driver`] holds the
//! background task that probes Redis while it is down, replays the log and switches the
//! remote tier back to Redis.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::redis::{Failure, RedisLink};
use crate::error::BackendError;
use crate::key::glob_match;

pub(crate) mod driver;

/// How long Redis remembers which increments of an instance it applied. An increment whose
/// replay failed and is sent again later than this after the first attempt may count twice.
pub(crate) const MARKER_TTL: Duration = Duration::from_secs(3600);

/// How long a delete's tombstone is kept, and how long the replay window stays open after
/// the last instance came back from an outage (or last renewed it while replaying). A
/// replayed `SET` that reaches its key later than this after another instance deleted the
/// key (a replay that keeps failing for that long) may bring the key back.
pub(crate) const TOMBSTONE_TTL: Duration = Duration::from_secs(60);

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
    /// Increments: `delta` was never sent; `sent` holds the parts sent at least once
    /// without a definite answer (they may have been applied), with their sequence numbers,
    /// in increasing order.
    Incr {
        delta: i64,
        sent: Vec<(u64, i64)>,
    },
}

impl Pending {
    fn incr(delta: i64) -> Self {
        Pending::Incr {
            delta,
            sent: Vec::new(),
        }
    }
}

/// What a key in flight is being replayed as: an increment, or a value (`SET`/`DEL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flying {
    Incr,
    Value,
}

#[derive(Debug)]
pub(crate) struct ReplayLog {
    /// Writes waiting to be replayed.
    entries: HashMap<String, Pending>,
    /// Keys taken by a replay whose outcome is not settled yet.
    flying: HashMap<String, Flying>,
    capacity: usize,
    pub(crate) dropped: u64,
    /// The last sequence number given to an increment sent.
    seq: u64,
}

impl ReplayLog {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            flying: HashMap::new(),
            capacity,
            dropped: 0,
            seq: 0,
        }
    }

    /// Keys pending: waiting or in flight.
    pub(crate) fn len(&self) -> usize {
        self.entries.len() + self.flying.len()
    }

    /// Nothing waits and nothing is in flight.
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.flying.is_empty()
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
    /// It is recorded as that value when the entry is a value (or a value is in flight: the
    /// increment must not be replayed onto what Redis held before that value).
    pub(crate) fn record_incr(&mut self, key: &str, delta: i64, current: Pending) {
        match self.entries.get_mut(key) {
            Some(Pending::Incr { delta: d, .. }) => *d = d.saturating_add(delta),
            Some(_) => self.record(key, current),
            None if self.flying.get(key) == Some(&Flying::Value) => self.record(key, current),
            None => self.record(key, Pending::incr(delta)),
        }
    }

    /// Takes an entry for replay: the key is in flight until [`ReplayLog::settle`] or
    /// [`ReplayLog::restore`]. An increment's unsent part gets its sequence number here.
    fn take_entry(&mut self, key: String, op: Pending) -> (String, Pending) {
        let op = match op {
            Pending::Incr { delta, mut sent } => {
                if delta != 0 || sent.is_empty() {
                    self.seq += 1;
                    sent.push((self.seq, delta));
                }
                Pending::Incr { delta: 0, sent }
            }
            other => other,
        };
        let kind = match op {
            Pending::Incr { .. } => Flying::Incr,
            _ => Flying::Value,
        };
        self.flying.insert(key.clone(), kind);
        (key, op)
    }

    /// Takes up to `n` waiting entries for replay.
    pub(crate) fn take(&mut self, n: usize) -> Vec<(String, Pending)> {
        let keys: Vec<String> = self.entries.keys().take(n).cloned().collect();
        let mut taken = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some((k, op)) = self.entries.remove_entry(&key) {
                taken.push(self.take_entry(k, op));
            }
        }
        taken
    }

    /// Takes the waiting entries of `keys` for replay; `true` beside them when one of the
    /// keys is in flight in another replay.
    pub(crate) fn take_keys<'k>(
        &mut self,
        keys: impl IntoIterator<Item = &'k str>,
    ) -> (Vec<(String, Pending)>, bool) {
        let mut taken = Vec::new();
        let mut busy = false;
        for key in keys {
            if let Some((k, op)) = self.entries.remove_entry(key) {
                taken.push(self.take_entry(k, op));
            } else if self.flying.contains_key(key) {
                busy = true;
            }
        }
        (taken, busy)
    }

    /// Like [`ReplayLog::take_keys`], for the keys matching a glob pattern.
    pub(crate) fn take_matching(&mut self, pattern: &str) -> (Vec<(String, Pending)>, bool) {
        let keys: Vec<String> = self
            .entries
            .keys()
            .filter(|k| glob_match(pattern, k))
            .cloned()
            .collect();
        let busy = self.flying.keys().any(|k| glob_match(pattern, k));
        let (taken, _) = self.take_keys(keys.iter().map(String::as_str));
        (taken, busy)
    }

    /// The replay of `key` is over (applied, skipped or refused).
    pub(crate) fn settle(&mut self, key: &str) {
        self.flying.remove(key);
    }

    /// Puts back an entry whose replay failed (or was not sent), unless a newer write
    /// superseded it; increments made meanwhile add to a restored increment, which keeps the
    /// sequence numbers it was sent with.
    pub(crate) fn restore(&mut self, key: String, op: Pending) {
        self.flying.remove(&key);
        match (self.entries.get_mut(&key), op) {
            (
                Some(Pending::Incr { delta: newer, sent }),
                Pending::Incr {
                    delta,
                    sent: earlier,
                },
            ) => {
                *newer = newer.saturating_add(delta);
                sent.extend(earlier);
                sent.sort_unstable_by_key(|(seq, _)| *seq);
            }
            (Some(_), _) => {}
            (None, op) => {
                self.entries.insert(key, op);
            }
        }
    }
}

/// The key beside a counter where Redis records the increments it applied (see the module
/// documentation). It starts with the counter's key, so ACL key patterns that allow the
/// counter allow it too, and is in the counter's hash slot, as a script's keys must be on a
/// cluster. `None` on a cluster for a key with braces but no usable hash tag (such as
/// `a}b` or `a{b`): no marker fits, and the increment is replayed without one (an increment whose
/// replay failed may then count twice).
pub(crate) fn marker_key(rkey: &str, instance: &str, cluster: bool) -> Option<String> {
    beside(rkey, &format!(":~replayed:{instance}"), cluster)
}

/// The key beside `rkey` where a delete leaves its time (see the module documentation);
/// in the same hash slot, as [`marker_key`] is. `None` where no such key fits on a cluster
/// (the delete then leaves no tombstone).
pub(crate) fn tombstone_key(rkey: &str, cluster: bool) -> Option<String> {
    beside(rkey, ":~deleted", cluster)
}

/// Whether `rkey` is one of the replay's keys beside a cache key (a tombstone or an
/// increment marker), which a `SCAN` of the cache's keys leaves out.
pub(crate) fn is_beside_key(rkey: &str) -> bool {
    rkey.ends_with(":~deleted") || rkey.contains(":~deleted{") || rkey.contains(":~replayed:")
}

/// The key that holds the replay window open (see the module documentation), given the
/// namespaced form of [`WINDOW_KEY`].
pub(crate) const WINDOW_KEY: &str = "__cache-sdk__:replay-window";

/// `rkey` followed by `suffix`, in `rkey`'s hash slot on a cluster.
fn beside(rkey: &str, suffix: &str, cluster: bool) -> Option<String> {
    if !cluster || hash_tag(rkey).is_some() {
        // On a cluster a key with a hash tag keeps it when something is appended.
        Some(format!("{rkey}{suffix}"))
    } else if !rkey.contains(['{', '}']) {
        // The whole key is hashed: make it the new key's hash tag.
        Some(format!("{rkey}{suffix}{{{rkey}}}"))
    } else {
        None
    }
}

/// The part of a key that Redis Cluster hashes when it is not the whole key: between the
/// first `{` and the next `}`, when not empty.
fn hash_tag(key: &str) -> Option<&str> {
    let open = key.find('{')?;
    let rest = &key[open + 1..];
    let close = rest.find('}')?;
    (close > 0).then(|| &rest[..close])
}

/// `SET` unless Redis holds an envelope written at or after ours (a newer write, or this
/// very write applied by an earlier attempt), or the key was deleted at or after it (its
/// tombstone).
/// KEYS[1] key, KEYS[2] (optional) its tombstone; ARGV[1] value, ARGV[2] our written-at
/// ms, ARGV[3] PX ms or 0 for none.
pub(crate) const SET_SCRIPT: &str = r"
local ok, cur = pcall(redis.call, 'GET', KEYS[1])
if ok and cur and string.len(cur) >= 23 and string.byte(cur, 1) == 202 then
  local ts = 0
  for i = 15, 8, -1 do ts = ts * 256 + string.byte(cur, i) end
  if ts >= tonumber(ARGV[2]) then return 0 end
end
if KEYS[2] then
  local okd, del = pcall(redis.call, 'GET', KEYS[2])
  if okd and del and (tonumber(del) or 0) >= tonumber(ARGV[2]) then return 0 end
end
if ARGV[3] == '0' then
  redis.call('SET', KEYS[1], ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
end
return 1
";

/// `DEL` unless Redis holds an envelope written later than the delete; a delete that
/// applies leaves its tombstone (a later tombstone is kept).
/// KEYS[1] key, KEYS[2] (optional) its tombstone; ARGV[1] the delete's time in ms,
/// ARGV[2] the tombstone's TTL in ms.
pub(crate) const DEL_SCRIPT: &str = r"
local ok, cur = pcall(redis.call, 'GET', KEYS[1])
if ok and cur and string.len(cur) >= 23 and string.byte(cur, 1) == 202 then
  local ts = 0
  for i = 15, 8, -1 do ts = ts * 256 + string.byte(cur, i) end
  if ts > tonumber(ARGV[1]) then return 0 end
end
if KEYS[2] then
  local okd, del = pcall(redis.call, 'GET', KEYS[2])
  if not (okd and del and (tonumber(del) or 0) >= tonumber(ARGV[1])) then
    redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
  end
end
return redis.call('DEL', KEYS[1])
";

/// A live `DEL` that leaves its tombstone while the replay window is open (always, when no
/// window key is given: on a cluster). Answers the number of keys deleted, as `DEL`.
/// KEYS[1] key, KEYS[2] its tombstone, KEYS[3] (optional) the window key; ARGV[1] the
/// delete's time in ms, ARGV[2] the tombstone's TTL in ms.
pub(crate) const LIVE_DEL_SCRIPT: &str = r"
if (not KEYS[3]) or redis.call('EXISTS', KEYS[3]) == 1 then
  local okd, del = pcall(redis.call, 'GET', KEYS[2])
  if not (okd and del and (tonumber(del) or 0) >= tonumber(ARGV[1])) then
    redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
  end
end
return redis.call('DEL', KEYS[1])
";

/// `INCRBY` once per sequence number (see the module documentation). Answers 0 (skipped)
/// when every part was applied before, or when the key now holds an envelope (a value
/// written since replaced the counter).
/// KEYS[1] counter, KEYS[2] this instance's marker; ARGV[1] marker TTL ms, then pairs of
/// sequence number and delta, in increasing order of sequence number.
pub(crate) const INCR_SCRIPT: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur and string.len(cur) >= 23 and string.byte(cur, 1) == 202 then return 0 end
local last = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
local top = tonumber(ARGV[#ARGV - 1])
if top <= last then return 0 end
redis.call('SET', KEYS[2], ARGV[#ARGV - 1], 'PX', ARGV[1])
for i = 2, #ARGV, 2 do
  if tonumber(ARGV[i]) > last then redis.call('INCRBY', KEYS[1], ARGV[i + 1]) end
end
return 1
";

/// The replay scripts, loaded into the server once per recovery and run with `EVALSHA`.
#[derive(Debug, Default)]
pub(crate) struct Scripts {
    pub(crate) set_sha: String,
    pub(crate) del_sha: String,
    pub(crate) incr_sha: String,
}

impl Scripts {
    /// Loads the scripts (again: a server that restarted or was flushed lost them).
    pub(crate) async fn load(link: &RedisLink) -> Result<Self, BackendError> {
        // At once: one round trip, not three.
        let (set_sha, del_sha, incr_sha) = tokio::try_join!(
            load_script(link, SET_SCRIPT),
            load_script(link, DEL_SCRIPT),
            load_script(link, INCR_SCRIPT)
        )?;
        Ok(Scripts {
            set_sha,
            del_sha,
            incr_sha,
        })
    }
}

/// `SCRIPT LOAD` as one command, not in a pipeline: on a cluster redis-rs sends it to every
/// node, so `EVALSHA` finds the script on whichever master holds a key.
async fn load_script(link: &RedisLink, script: &str) -> Result<String, BackendError> {
    let mut cmd = redis::cmd("SCRIPT");
    cmd.arg("LOAD").arg(script);
    link.query(&cmd).await.map_err(Failure::into_error)
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

    fn incr_parts(op: &Pending) -> (i64, Vec<(u64, i64)>) {
        match op {
            Pending::Incr { delta, sent } => (*delta, sent.clone()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn restored_increments_add_to_newer_ones_and_keep_their_numbers() {
        let mut log = ReplayLog::new(8);
        log.record_incr("c", 2, set(b"2"));
        let taken = log.take(8);
        assert_eq!(incr_parts(&taken[0].1), (0, vec![(1, 2)]));
        assert_eq!(log.len(), 1, "in flight counts as pending");
        log.record_incr("c", 3, set(b"5"));
        for (k, op) in taken {
            log.restore(k, op);
        }
        // The failed part keeps number 1; the newer increment is sent as number 2.
        let again = log.take(8);
        assert_eq!(again[0].0, "c");
        assert_eq!(incr_parts(&again[0].1), (0, vec![(1, 2), (2, 3)]));
        // Sent again without anything new: the same numbers, nothing added.
        for (k, op) in again {
            log.restore(k, op);
        }
        assert_eq!(incr_parts(&log.take(8)[0].1), (0, vec![(1, 2), (2, 3)]));
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
        assert_eq!(log.len(), 2);
        for (k, _) in &taken {
            log.settle(k);
        }
        assert!(log.is_empty());
    }

    #[test]
    fn increments_accumulate_until_a_set() {
        let mut log = ReplayLog::new(10);
        log.record_incr("n", 2, set(b"2"));
        log.record_incr("n", 3, set(b"5"));
        assert_eq!(incr_parts(&log.take(1)[0].1), (0, vec![(1, 5)]));
        log.record("m", set(b"7"));
        log.record_incr("m", 1, set(b"8"));
        match &log.take(1)[0].1 {
            Pending::Set { bytes, .. } => assert_eq!(&**bytes, b"8"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_increment_while_a_value_is_in_flight_is_recorded_as_the_value() {
        let mut log = ReplayLog::new(10);
        log.record("v", set(b"7"));
        let taken = log.take(1);
        log.record_incr("v", 1, set(b"8"));
        // The value's replay fails: the newer absolute value stays.
        for (k, op) in taken {
            log.restore(k, op);
        }
        match &log.take(1)[0].1 {
            Pending::Set { bytes, .. } => assert_eq!(&**bytes, b"8"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn keys_are_taken_or_found_in_flight() {
        let mut log = ReplayLog::new(10);
        log.record("a:1", set(b"1"));
        log.record("a:2", set(b"2"));
        log.record("b:1", set(b"3"));
        let (taken, busy) = log.take_keys(["a:1", "zzz"]);
        assert_eq!((taken.len(), busy), (1, false));
        let (again, busy) = log.take_keys(["a:1"]);
        assert!(again.is_empty() && busy);
        let (matching, busy) = log.take_matching("a:*");
        assert_eq!(matching.len(), 1);
        assert_eq!(matching[0].0, "a:2");
        assert!(busy, "a:1 is in flight");
        log.settle("a:1");
        log.settle("a:2");
        let (rest, busy) = log.take_matching("a:*");
        assert!(rest.is_empty() && !busy);
        assert_eq!(log.len(), 1);
    }

    #[test]
    #[cfg(feature = "cluster")]
    fn a_marker_shares_the_counter_prefix_and_hash_slot() {
        use redis::cluster_routing::Slot;
        assert_eq!(
            marker_key("cache:n", "i1", false).as_deref(),
            Some("cache:n:~replayed:i1")
        );
        for key in ["cache:n", "ns:cache:{user7}:n", "cache:load:count:3"] {
            let Some(marker) = marker_key(key, "i1", true) else {
                panic!("{key}: no marker");
            };
            assert!(marker.starts_with(key), "{marker}");
            assert_eq!(
                Slot::for_key(key),
                Slot::for_key(&marker),
                "{key} vs {marker}"
            );
        }
        assert_eq!(marker_key("a}b", "i1", true), None);
        assert_eq!(marker_key("a{b", "i1", true), None);
        assert_eq!(marker_key("a{}b", "i1", true), None);
    }

    #[test]
    #[cfg(feature = "cluster")]
    fn a_tombstone_shares_the_key_prefix_and_hash_slot() {
        use redis::cluster_routing::Slot;
        assert_eq!(
            tombstone_key("cache:k", false).as_deref(),
            Some("cache:k:~deleted")
        );
        for key in ["cache:k", "ns:sess:{abc}", "cache:user:7"] {
            let Some(tombstone) = tombstone_key(key, true) else {
                panic!("{key}: no tombstone");
            };
            assert!(tombstone.starts_with(key), "{tombstone}");
            assert_eq!(Slot::for_key(key), Slot::for_key(&tombstone), "{key}");
        }
        assert_eq!(tombstone_key("a}b", true), None);
        for key in ["cache:k", "sess:abc"] {
            assert!(is_beside_key(&tombstone_key(key, false).unwrap()));
            assert!(is_beside_key(&tombstone_key(key, true).unwrap()));
            assert!(is_beside_key(&marker_key(key, "i1", true).unwrap()));
            assert!(!is_beside_key(key));
        }
    }
}
