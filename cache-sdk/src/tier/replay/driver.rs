//! The way back to Redis after an outage: probe, switch, replay in the background.
//!
//! One background task per cache ([`supervise`], holding only a weak reference to the
//! remote tier) sleeps until the tier turns `Down`, then probes Redis with exponential
//! backoff and jitter from 10 ms up to `probe_interval`; through Sentinel, a
//! `+switch-master` announcement wakes it at once (and, while `Up`, moves it off the
//! demoted master). When Redis answers, [`recover`]
//! loads the replay scripts. A short outage (at most [`REPLAY_BATCH`] writes) is replayed
//! in one pipeline and the state turns `Up`. Otherwise it turns `Replaying` at once: calls
//! go to Redis again (the listeners are told `Recovered`, L1 is cleared) while the log is
//! replayed in the background, in pipelines of [`REPLAY_BATCH`] writes, [`REPLAY_PARALLEL`]
//! in flight at once on the multiplexed connection. A call that touches a key still pending replays that key first
//! ([`replay_now`]); see `remote.rs`. When nothing is pending any more the state turns `Up`
//! under the log's lock, the fallback is cleared and the listeners are told `Replayed`.
//!
//! May import: the remote tier's shared state, the log, the link. Must not: decide where
//! calls go (that is the state machine in `remote.rs`).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::{marker_key, tombstone_key, Pending, Scripts, MARKER_TTL, TOMBSTONE_TTL, WINDOW_KEY};
use crate::error::{BackendError, BackendErrorKind};
use crate::tier::redis::{Failure, RedisLink};
use crate::tier::remote::{lock, millis, Inner, State, StoreEvent};

/// Writes replayed per pipeline. Calls share the connection with the replay: a call waits
/// behind the pipelines in flight, so they are kept short.
const REPLAY_BATCH: usize = 256;
/// Pipelines in flight at once during a replay.
const REPLAY_PARALLEL: usize = 2;
/// The smallest pipeline a replay shrinks to after timeouts.
const REPLAY_BATCH_MIN: usize = 16;
/// Replay rounds in a row that may time out (each with smaller pipelines) before the
/// replay takes Redis for unavailable again.
const REPLAY_TIMEOUTS: u32 = 3;

/// The background task: while Redis is down, probes it with backoff (and jitter) up to
/// `probe_interval`, then switches back and replays; finishes a replay that a runtime
/// shutdown interrupted.
pub(crate) async fn supervise(weak: Weak<Inner>, wake: Arc<Notify>) {
    // Through Sentinel: `+switch-master` wakes the probe at once.
    let switched = weak
        .upgrade()
        .and_then(|inner| inner.link.as_ref().and_then(|l| l.switched()))
        .unwrap_or_else(|| Arc::new(Notify::new()));
    loop {
        {
            let Some(inner) = weak.upgrade() else { return };
            match inner.state.get() {
                State::Down => {}
                State::Replaying => {
                    if let Some(link) = &inner.link {
                        replay(&inner, link, Instant::now()).await;
                    }
                    continue;
                }
                State::Up | State::Disabled => {
                    drop(inner);
                    tokio::select! {
                        () = wake.notified() => {}
                        () = switched.notified() => {
                            // The master moved while this instance was on the old one (a
                            // planned failover; its connection was dropped): move now, not
                            // at the next call.
                            if let Some(inner) = weak.upgrade() {
                                inner.trip(&"the sentinels moved the master");
                            }
                        }
                    }
                    continue;
                }
            }
        }
        let mut delay = Duration::from_millis(10);
        loop {
            let Some(inner) = weak.upgrade() else { return };
            if inner.state.get() != State::Down || recover(&inner).await {
                // An announcement that came while reconnecting is about the master just
                // reached: it must not move the link off again.
                let _ = futures::FutureExt::now_or_never(switched.notified());
                break;
            }
            let max = inner.probe_interval;
            drop(inner);
            let jittered = delay.mul_f64(rand::random_range(0.5..=1.0));
            tokio::select! {
                () = tokio::time::sleep(jittered) => delay = (delay * 2).min(max),
                // A new master was announced: probe it now.
                () = switched.notified() => delay = Duration::from_millis(10),
            }
        }
    }
}

/// Reconnects, switches the calls back to Redis, and replays the outage writes. Returns
/// `true` once the replay is over and the state is `Up`.
async fn recover(inner: &Inner) -> bool {
    let Some(link) = &inner.link else { return true };
    if let Err(failure) = link.connect().await {
        tracing::debug!(error = %failure, "redis still unavailable");
        return false;
    }
    // With the scripts, the replay window opens (at once: one round trip): other
    // instances may be replaying too (or this one is about to), and from now on their
    // deletes leave tombstones, so no replayed write can undo them. Before any call of
    // this instance goes to Redis again.
    match tokio::try_join!(Scripts::load(link), open_window(inner, link)) {
        Ok((scripts, ())) => inner.set_scripts(scripts),
        Err(why) => {
            tracing::debug!(error = %why, "redis answers but the replay scripts could not be loaded or the replay window opened");
            return false;
        }
    }
    // A short outage (one pipeline of writes at most) is replayed while calls still use
    // the fallback, and the switch goes straight to `Up`; a longer one is replayed after
    // the switch.
    let started = Instant::now();
    let replayed_before = inner.counters.replayed.load(Ordering::Relaxed);
    let first = {
        let mut log = lock(&inner.log);
        if log.len() <= REPLAY_BATCH {
            log.take(REPLAY_BATCH)
        } else {
            Vec::new()
        }
    };
    if !first.is_empty() {
        if let Err(why) = replay_now(inner, link, first).await {
            tracing::debug!(error = %why, "redis failed again during the replay");
            return false;
        }
    }
    let pending = {
        // Under the log's lock: a write that saw `Down` has recorded itself by now, and
        // every later one sees the new state.
        let log = lock(&inner.log);
        if log.is_empty() {
            if !inner.state.replace(State::Down, State::Up) {
                return false;
            }
            inner.memory.clear();
            drop(log);
            tracing::info!(
                store = "redis",
                address = %link.address,
                replayed = inner.counters.replayed.load(Ordering::Relaxed).saturating_sub(replayed_before),
                replay_ms = started.elapsed().as_millis() as u64,
                "redis is back: outage writes replayed, cache store is redis again"
            );
            inner.notify(StoreEvent::Recovered);
            return true;
        }
        if !inner.state.replace(State::Down, State::Replaying) {
            return false;
        }
        log.len()
    };
    tracing::info!(
        store = "redis",
        address = %link.address,
        pending,
        "redis is back: cache store is redis again; outage writes are replayed in the background"
    );
    inner.notify(StoreEvent::Recovered);
    replay(inner, link, started).await
}

/// Opens (or keeps open) the replay window, for [`TOMBSTONE_TTL`]: while it is open,
/// live deletes of every instance leave tombstones (see the log's module documentation).
/// Not on a cluster, where every delete leaves one. A refusal (an ACL user whose key
/// patterns leave out the window key) is logged, not an outage: that user's deletes then
/// leave a tombstone every time.
async fn open_window(inner: &Inner, link: &RedisLink) -> Result<(), BackendError> {
    if link.is_cluster() {
        return Ok(());
    }
    let mut cmd = redis::cmd("SET");
    cmd.arg(inner.rkey(WINDOW_KEY))
        .arg(&inner.instance)
        .arg("PX")
        .arg(millis(TOMBSTONE_TTL));
    match link.query::<()>(&cmd).await {
        Ok(()) => Ok(()),
        Err(Failure::Rejected(why)) => {
            tracing::debug!(error = %why, "redis refused the replay window key");
            Ok(())
        }
        Err(Failure::Unavailable(why)) => Err(why),
    }
}

/// Takes the next round of writes from the log: up to [`REPLAY_PARALLEL`] batches of
/// `size` writes.
fn take_round(inner: &Inner, size: usize) -> Vec<Vec<(String, Pending)>> {
    let mut log = lock(&inner.log);
    (0..REPLAY_PARALLEL)
        .map(|_| log.take(size))
        .filter(|b| !b.is_empty())
        .collect()
}

/// Replays a round; the batches go out at once on the multiplexed connection, so Redis
/// never waits for the next one.
async fn replay_round(
    inner: &Inner,
    link: &RedisLink,
    batches: Vec<Vec<(String, Pending)>>,
) -> Result<(), BackendError> {
    let results =
        futures::future::join_all(batches.into_iter().map(|b| replay_now(inner, link, b))).await;
    results.into_iter().collect()
}

/// Replays the log while the state is `Replaying`; turns it `Up` when nothing is pending.
/// `false` when Redis failed again (the state is then `Down`).
///
/// A round that times out (a busy server, or calls queued on the same connection) is not
/// an outage by itself: its writes are back in the log and the next rounds go out in
/// smaller pipelines; only [`REPLAY_TIMEOUTS`] timed-out rounds in a row, or any other
/// failure, take Redis for unavailable. (Calls that time out meanwhile still do.)
async fn replay(inner: &Inner, link: &RedisLink, started: Instant) -> bool {
    let replayed_before = inner.counters.replayed.load(Ordering::Relaxed);
    let mut size = REPLAY_BATCH;
    let mut timeouts = 0;
    // The replay window is renewed while the replay lasts (and opened again when a replay
    // that a runtime shutdown interrupted resumes).
    let mut window_at: Option<Instant> = None;
    loop {
        if inner.state.get() != State::Replaying {
            return false;
        }
        if window_at.is_none_or(|at| at.elapsed() >= TOMBSTONE_TTL / 4) {
            if let Err(why) = open_window(inner, link).await {
                tracing::warn!(error = %why, "redis failed again during the replay");
                inner.trip(&why);
                return false;
            }
            window_at = Some(Instant::now());
        }
        let batches = take_round(inner, size);
        {
            let log = lock(&inner.log);
            if batches.is_empty() && log.is_empty() {
                // Nothing waits and nothing is in flight: under the lock, so no write can
                // be recorded between the check and the switch.
                if !inner.state.replace(State::Replaying, State::Up) {
                    return false;
                }
                inner.memory.clear();
                drop(log);
                let replayed = inner
                    .counters
                    .replayed
                    .load(Ordering::Relaxed)
                    .saturating_sub(replayed_before);
                tracing::info!(
                    store = "redis",
                    address = %link.address,
                    replayed,
                    replay_ms = started.elapsed().as_millis() as u64,
                    "outage writes replayed"
                );
                inner.notify(StoreEvent::Replayed);
                return true;
            }
        }
        if batches.is_empty() {
            // Only keys that calls are replaying themselves are left: wait for them.
            let settled = inner.settled.notified();
            let _ = tokio::time::timeout(Duration::from_millis(10), settled).await;
            continue;
        }
        match replay_round(inner, link, batches).await {
            Ok(()) => {
                timeouts = 0;
                size = (size * 2).min(REPLAY_BATCH);
            }
            Err(why)
                if why.kind() == BackendErrorKind::Timeout && timeouts + 1 < REPLAY_TIMEOUTS =>
            {
                timeouts += 1;
                size = (size / 4).max(REPLAY_BATCH_MIN);
                tracing::debug!(error = %why, size, "replay round timed out; replaying in smaller pipelines");
            }
            Err(why) => {
                tracing::warn!(error = %why, "redis failed again during the replay");
                inner.trip(&why);
                return false;
            }
        }
    }
}

/// Writes taken out of the log for one replay. Dropped before they were settled (the
/// runtime shut down during the replay), they go back to the log.
struct Taken<'a> {
    inner: &'a Inner,
    batch: Vec<(String, Pending)>,
}

impl Taken<'_> {
    fn settle(mut self) -> Vec<(String, Pending)> {
        std::mem::take(&mut self.batch)
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let mut log = lock(&self.inner.log);
        for (k, op) in self.batch.drain(..) {
            log.restore(k, op);
        }
        drop(log);
        self.inner.settled.notify_waiters();
    }
}

/// Replays writes taken from the log (by the background replay, or by a call about to
/// touch these keys) in one pipeline, and settles them: done, or back in the log. `Err`
/// means Redis is unavailable; the writes are back in the log (some may have been applied:
/// sending them again is harmless, see the log's module documentation).
pub(crate) async fn replay_now(
    inner: &Inner,
    link: &RedisLink,
    batch: Vec<(String, Pending)>,
) -> Result<(), BackendError> {
    let taken = Taken { inner, batch };
    let scripts = inner.scripts();
    let result = replay_batch(inner, link, &scripts, &taken.batch).await;
    let batch = taken.settle();
    let mut lost_scripts = false;
    {
        let mut log = lock(&inner.log);
        match &result {
            Ok(retry) => {
                for ((k, op), again) in batch.into_iter().zip(retry) {
                    if *again {
                        log.restore(k, op);
                        lost_scripts = true;
                    } else {
                        log.settle(&k);
                    }
                }
            }
            Err(_) => {
                for (k, op) in batch {
                    log.restore(k, op);
                }
            }
        }
    }
    inner.settled.notify_waiters();
    result?;
    if lost_scripts {
        // The server lost the scripts (restarted or flushed): load them again; the writes
        // that met it are back in the log.
        inner.set_scripts(Scripts::load(link).await?);
    }
    Ok(())
}

/// Replays a batch in one pipeline (on a cluster, one per hash slot, sent at once). Skipped
/// writes (expired, Redis holds a newer value, an increment already applied) and refused
/// ones are counted. Answers, per write, whether it met a server without the scripts and
/// must be sent again.
async fn replay_batch(
    inner: &Inner,
    link: &RedisLink,
    scripts: &Scripts,
    batch: &[(String, Pending)],
) -> Result<Vec<bool>, BackendError> {
    let mut retry = vec![false; batch.len()];
    // One command per key: slot-safe on a cluster, where the batch is split by slot.
    let mut cmds: Vec<(String, redis::Cmd)> = Vec::with_capacity(batch.len());
    // Per command sent: its index in the batch, and whether it is conditional.
    let mut sent: Vec<(usize, bool)> = Vec::with_capacity(batch.len());
    let now = Instant::now();
    for (index, (key, op)) in batch.iter().enumerate() {
        let rkey = inner.rkey(key);
        let mut cmd = redis::Cmd::new();
        // Whether an answer of 0 means "skipped" (the scripts that compare).
        let mut conditional = true;
        match op {
            Pending::Set {
                bytes,
                expires_at,
                written_at_ms,
            } => {
                let px = match expires_at {
                    None => 0,
                    Some(t) => match t.checked_duration_since(now) {
                        Some(d) if !d.is_zero() => millis(d),
                        _ => {
                            inner
                                .counters
                                .replay_skipped
                                .fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    },
                };
                let tombstone = tombstone_key(&rkey, link.is_cluster());
                cmd.arg("EVALSHA")
                    .arg(&scripts.set_sha)
                    .arg(1 + usize::from(tombstone.is_some()))
                    .arg(&rkey)
                    .arg(tombstone)
                    .arg(&bytes[..])
                    .arg(*written_at_ms)
                    .arg(px);
            }
            Pending::Delete { at_ms } => {
                let tombstone = tombstone_key(&rkey, link.is_cluster());
                cmd.arg("EVALSHA")
                    .arg(&scripts.del_sha)
                    .arg(1 + usize::from(tombstone.is_some()))
                    .arg(&rkey)
                    .arg(tombstone)
                    .arg(*at_ms)
                    .arg(millis(TOMBSTONE_TTL));
                conditional = false;
            }
            Pending::Incr { delta, sent: parts } => {
                match marker_key(&rkey, &inner.instance, link.is_cluster()) {
                    Some(marker) if !parts.is_empty() => {
                        cmd.arg("EVALSHA")
                            .arg(&scripts.incr_sha)
                            .arg(2)
                            .arg(&rkey)
                            .arg(marker)
                            .arg(millis(MARKER_TTL));
                        for (seq, d) in parts {
                            cmd.arg(*seq).arg(*d);
                        }
                    }
                    _ => {
                        // No marker fits this key on a cluster (see `marker_key`).
                        let total = parts
                            .iter()
                            .fold(*delta, |sum, (_, d)| sum.saturating_add(*d));
                        cmd.arg("INCRBY").arg(&rkey).arg(total);
                        conditional = false;
                    }
                }
            }
        }
        sent.push((index, conditional));
        cmds.push((rkey, cmd));
    }
    if sent.is_empty() {
        return Ok(retry);
    }
    let results: Vec<redis::RedisResult<i64>> =
        link.batch(cmds).await.map_err(|f| f.into_error())?;
    let mut applied = 0u64;
    for (result, (index, conditional)) in results.into_iter().zip(sent) {
        match result {
            Ok(0) if conditional => {
                inner
                    .counters
                    .replay_skipped
                    .fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => applied += 1,
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                if let Some(again) = retry.get_mut(index) {
                    *again = true;
                }
            }
            Err(e) => {
                inner
                    .counters
                    .replay_skipped
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "redis refused a replayed write; it stays only in memory");
            }
        }
    }
    inner
        .counters
        .replayed
        .fetch_add(applied, Ordering::Relaxed);
    Ok(retry)
}
