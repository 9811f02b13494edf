//! The way back to Redis after an outage: probe, replay, drain, switch to `Up`.
//!
//! One background task per cache ([`supervise`], holding only a weak reference to the
//! remote tier) sleeps until the tier turns `Down`, then probes Redis with exponential
//! backoff and jitter from 10 ms up to `probe_interval`. When Redis answers, [`recover`]
//! turns the state `Recovering` and replays the log in pipelines of [`REPLAY_BATCH`] writes,
//! [`REPLAY_PARALLEL`] in flight at once on the multiplexed connection. After
//! [`CATCH_UP_ROUNDS`] passes the state turns `Draining`, so that writers wait for the switch
//! instead of growing the log; the switch to `Up` happens under the log's lock when the log
//! is empty, then the fallback is cleared and the listeners told (`Recovered`).
//!
//! May import: the remote tier's shared state, the log, the link. Must not: decide where
//! calls go (that is the state machine in `remote.rs`).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::{Pending, ReplayLog, Scripts};
use crate::error::BackendError;
use crate::tier::redis::RedisLink;
use crate::tier::remote::{lock, millis, Inner, State, StoreEvent};

/// Writes replayed per pipeline.
const REPLAY_BATCH: usize = 512;
/// Pipelines in flight at once during a replay.
const REPLAY_PARALLEL: usize = 4;
/// Replay passes made while writers still add to the log, before they are held back.
const CATCH_UP_ROUNDS: u32 = 4;

/// The background task: while Redis is down, probes it with backoff (and jitter) up to
/// `probe_interval`, then replays and switches back.
pub(crate) async fn supervise(weak: Weak<Inner>, wake: Arc<Notify>) {
    loop {
        {
            let Some(inner) = weak.upgrade() else { return };
            if inner.state.get() != State::Down {
                drop(inner);
                wake.notified().await;
                continue;
            }
        }
        let mut delay = Duration::from_millis(10);
        loop {
            let Some(inner) = weak.upgrade() else { return };
            if inner.state.get() != State::Down || recover(&inner).await {
                break;
            }
            let max = inner.probe_interval;
            drop(inner);
            let jittered = delay.mul_f64(rand::random_range(0.5..=1.0));
            tokio::time::sleep(jittered).await;
            delay = (delay * 2).min(max);
        }
    }
}

/// Writes taken out of the log for one round of the replay. Dropped before they were
/// settled (the runtime shut down during the replay), they go back to the log.
struct Taken<'a> {
    log: &'a Mutex<ReplayLog>,
    batches: Vec<Vec<(String, Pending)>>,
}

impl Taken<'_> {
    fn settle(mut self) -> Vec<Vec<(String, Pending)>> {
        std::mem::take(&mut self.batches)
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        if self.batches.is_empty() {
            return;
        }
        let mut log = lock(self.log);
        for (k, op) in self.batches.drain(..).flatten() {
            log.restore(k, op);
        }
    }
}

/// Reconnects and replays the outage writes. Returns `true` once back `Up`.
///
/// Writers keep writing to the fallback (and the log) while the replay runs, so the replay
/// could chase them for ever under load. After [`CATCH_UP_ROUNDS`] passes the state turns
/// `Draining`: new writes then wait (at most the command timeout) for the switch instead of
/// growing the log, and the replay finishes what is left.
async fn recover(inner: &Inner) -> bool {
    let Some(link) = &inner.link else { return true };
    if let Err(failure) = link.connect().await {
        tracing::debug!(error = %failure, "redis still unavailable");
        return false;
    }
    inner.state.set(State::Recovering);
    let started = Instant::now();
    let mut replayed = 0u64;
    let mut rounds = 0u32;
    let mut scripts = Scripts::default();
    loop {
        if !scripts.loaded {
            if let Err(why) = scripts.load(link).await {
                return replay_failed(inner, replayed, &why);
            }
        }
        let taken = {
            let mut log = lock(&inner.log);
            let batches: Vec<_> = (0..REPLAY_PARALLEL)
                .map(|_| log.take(REPLAY_BATCH))
                .filter(|b| !b.is_empty())
                .collect();
            Taken {
                log: &inner.log,
                batches,
            }
        };
        if taken.batches.is_empty() {
            let log = lock(&inner.log);
            if !log.is_empty() {
                continue;
            }
            inner.state.set(State::Up);
            inner.memory.clear();
            drop(log);
            inner.drained.notify_waiters();
            inner
                .counters
                .replayed
                .fetch_add(replayed, Ordering::Relaxed);
            tracing::info!(
                store = "redis",
                address = %link.address,
                replayed,
                replay_ms = started.elapsed().as_millis() as u64,
                "redis is back: outage writes replayed, cache store is redis again"
            );
            inner.notify(StoreEvent::Recovered);
            return true;
        }
        rounds += 1;
        if rounds == CATCH_UP_ROUNDS {
            inner.state.set(State::Draining);
        }
        // The batches go out at once on the multiplexed connection, so Redis never waits
        // for the next one.
        let results = futures::future::join_all(
            taken
                .batches
                .iter()
                .map(|batch| replay_batch(inner, link, &scripts, batch)),
        )
        .await;
        let mut failure = None;
        for (batch, result) in taken.settle().into_iter().zip(results) {
            match result {
                Ok(outcome) => {
                    replayed += outcome.applied;
                    if !outcome.retry.is_empty() {
                        // The server lost the scripts (restarted or flushed): load them
                        // again and retry these writes.
                        scripts.loaded = false;
                        let mut log = lock(&inner.log);
                        for (k, o) in outcome.retry {
                            log.restore(k, o);
                        }
                    }
                }
                Err(why) => {
                    let mut log = lock(&inner.log);
                    for (k, o) in batch {
                        log.restore(k, o);
                    }
                    failure = Some(why);
                }
            }
        }
        if let Some(why) = failure {
            return replay_failed(inner, replayed, &why);
        }
    }
}

fn replay_failed(inner: &Inner, replayed: u64, why: &BackendError) -> bool {
    inner.state.set(State::Down);
    inner.drained.notify_waiters();
    inner
        .counters
        .replayed
        .fetch_add(replayed, Ordering::Relaxed);
    tracing::warn!(error = %why, "redis failed again during replay");
    false
}

#[derive(Default)]
struct BatchOutcome {
    applied: u64,
    retry: Vec<(String, Pending)>,
}

/// Replays a batch in one pipeline (on a cluster, one per hash slot, sent at once). Skipped
/// writes (expired, or Redis holds a newer value) and refused ones are counted; writes that
/// met a server without the scripts come back in `retry`. An error means Redis is
/// unavailable again; the batch goes back to the log (part of it may have been applied:
/// replaying a `SET` or `DEL` twice is harmless, an increment may count twice).
async fn replay_batch(
    inner: &Inner,
    link: &RedisLink,
    scripts: &Scripts,
    batch: &[(String, Pending)],
) -> Result<BatchOutcome, BackendError> {
    // One EVALSHA or INCRBY per key: slot-safe on a cluster, where the batch is split by
    // slot.
    let mut cmds: Vec<(String, redis::Cmd)> = Vec::with_capacity(batch.len());
    // Per command sent: its index in the batch, and whether an answer of 0 means "skipped"
    // (the conditional SET).
    let mut sent: Vec<(usize, bool)> = Vec::with_capacity(batch.len());
    let now = Instant::now();
    for (index, (key, op)) in batch.iter().enumerate() {
        let rkey = inner.rkey(key);
        let mut cmd = redis::Cmd::new();
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
                cmd.arg("EVALSHA")
                    .arg(&scripts.set_sha)
                    .arg(1)
                    .arg(&rkey)
                    .arg(&bytes[..])
                    .arg(*written_at_ms)
                    .arg(px);
                sent.push((index, true));
            }
            Pending::Delete { at_ms } => {
                cmd.arg("EVALSHA")
                    .arg(&scripts.del_sha)
                    .arg(1)
                    .arg(&rkey)
                    .arg(*at_ms);
                sent.push((index, false));
            }
            Pending::Incr { delta } => {
                cmd.arg("INCRBY").arg(&rkey).arg(*delta);
                sent.push((index, false));
            }
        }
        cmds.push((rkey, cmd));
    }
    let mut outcome = BatchOutcome::default();
    if sent.is_empty() {
        return Ok(outcome);
    }
    let results: Vec<redis::RedisResult<i64>> =
        link.batch(cmds).await.map_err(|f| f.into_error())?;
    for (result, (index, conditional)) in results.into_iter().zip(sent) {
        match result {
            Ok(0) if conditional => {
                inner
                    .counters
                    .replay_skipped
                    .fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => outcome.applied += 1,
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                if let Some(entry) = batch.get(index) {
                    outcome.retry.push(entry.clone());
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
    Ok(outcome)
}
