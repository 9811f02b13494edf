//! L2: Redis when it answers, the in-memory fallback when it does not.
//!
//! This file is the state machine and the commands. States ([`State`]):
//!
//! | state | calls go to | entered |
//! |---|---|---|
//! | `Disabled` | memory, for good | no Redis configured |
//! | `Up` | Redis | start, or the end of a replay |
//! | `Down` | memory (no timeout is paid) and the replay log | the first call that finds Redis unavailable |
//! | `Replaying` | Redis, each call's pending keys replayed first | the probe, as soon as Redis answers |
//!
//! **Back on Redis at once.** When Redis answers, a short outage (at most 256 writes to
//! replay, one pipeline) is replayed before the switch, which goes straight to `Up`. After
//! a longer one, calls go to Redis at once while the outage writes are replayed in the
//! background. Per-key correctness rests on one
//! rule: *before a call touches a key that is still pending (waiting in the replay log, or
//! in flight in a replay), that key's outage write is replayed first*: the call takes the
//! key's entry out of the log and replays it itself (one pipeline for all its keys), or
//! waits (at most the command timeout) for the replay that has it in flight. Then the call
//! runs on Redis as usual. So:
//!
//! - a read never sees Redis without the outage write (no stale read), nor the outage write
//!   over a newer one: the replay keeps a value written at or after it (written-at times in
//!   the envelopes);
//! - a write to a pending key lands after the key's replay, so an older replayed `SET`
//!   cannot overwrite it, and a delete cannot be undone by it. Writes and deletes of
//!   *other* instances are protected by the replay scripts instead: a value's written-at
//!   time, and the tombstone a delete leaves while the replay window is open (see
//!   [`replay`](super::replay));
//! - an increment of a pending key is applied after the pending delta, which is applied
//!   once (the replay of increments is idempotent, see [`replay`](super::replay)), so
//!   `incr` answers the full count;
//! - `get_many`, `set_many`, `exists`, `pttl`, `expire` touch their keys the same way, and
//!   `scan` the pending keys that match its pattern.
//!
//! Keys that nothing touches are replayed by the background task. When nothing is pending
//! the state turns `Up` under the log's lock, and the fallback is cleared. If Redis fails
//! during the replay the state turns `Down` again; nothing is lost (the entries of a failed
//! replay go back to the log). A call that cannot get its keys replayed in time (Redis
//! slow, the wait ran out) uses the fallback and the log, as during the outage.
//!
//! Listeners hear `Lost` when Redis is lost, `Recovered` at the switch to `Replaying` (L1
//! is cleared then: other instances may have written anything meanwhile) and `Replayed`
//! at the end (in pub/sub coherence mode the other instances are told to drop their L1
//! once more, since replayed writes are not published one by one).
//!
//! The probe, the replay and the switch back live beside the log, in
//! [`replay::driver`](super::replay::driver). The connection and the background tasks
//! follow the runtime that uses the cache ([`tasks`](super::tasks)): a call made after the
//! runtime that ran them has shut down reconnects and restarts them on its own runtime
//! ([`Remote::on_runtime`]).
//!
//! May import: the link (`redis.rs`), the fallback (`memory.rs`), the replay log and
//! driver, the tasks, codec times, config, errors. Must not: know about L1, coherence or
//! sessions (they listen through [`Remote::on_event`]).

#[cfg_attr(not(feature = "sessions"), allow(dead_code))]
pub(crate) mod cas;
// Per-key TTLs in one pipeline (`get_many_or_load`'s write).
pub(crate) mod bulk;
// The distributed stampede lock's commands.
pub(crate) mod lock;

use std::borrow::Cow;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::memory::{MemEntry, MemoryStore};
use super::redis::{classify, Failure, RedisLink};
use super::replay::driver::{replay_now, supervise};
use super::replay::{
    is_beside_key, tombstone_key, Pending, ReplayLog, Scripts, LIVE_DEL_SCRIPT, TOMBSTONE_TTL,
    WINDOW_KEY,
};
use super::tasks::Tasks;
use crate::codec::now_ms;
use crate::config::CacheConfig;
use crate::error::{BackendError, BuildError, Error};
use crate::tls::TlsMaterial;

/// Where the calls of the remote tier go. Kept in one atomic byte ([`StateCell`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum State {
    /// No Redis configured: memory only, for good.
    Disabled = 0,
    /// Calls go to Redis.
    Up = 1,
    /// Redis is unavailable: calls go to memory (no timeout is paid), the probe runs.
    Down = 2,
    /// Redis answers again: calls go to Redis, each replaying its pending keys first,
    /// while the outage writes are replayed in the background.
    Replaying = 3,
}

/// The [`State`] in an atomic byte; the only place where it is converted.
pub(crate) struct StateCell(AtomicU8);

impl StateCell {
    fn new(state: State) -> Self {
        StateCell(AtomicU8::new(state as u8))
    }

    pub(crate) fn get(&self) -> State {
        match self.0.load(Ordering::Acquire) {
            0 => State::Disabled,
            1 => State::Up,
            2 => State::Down,
            // Only `new`, `set` and `replace` write the byte, always from a `State`.
            _ => State::Replaying,
        }
    }

    pub(crate) fn set(&self, state: State) {
        self.0.store(state as u8, Ordering::Release);
    }

    /// Moves from `from` to `to`; `false` when the state was not `from`.
    pub(crate) fn replace(&self, from: State, to: State) -> bool {
        self.0
            .compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

impl std::fmt::Debug for StateCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.get().fmt(f)
    }
}

/// What listeners are told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StoreEvent {
    /// Redis became unavailable; the fallback serves.
    Lost,
    /// Redis is back and serves; the outage writes are being replayed.
    Recovered,
    /// The outage writes are all replayed.
    Replayed,
}

type Listener = Arc<dyn Fn(StoreEvent) + Send + Sync>;

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) fallback_ops: AtomicU64,
    pub(crate) backend_errors: AtomicU64,
    pub(crate) outages: AtomicU64,
    pub(crate) replayed: AtomicU64,
    pub(crate) replay_skipped: AtomicU64,
}

/// What the state machine and the replay driver share.
pub(crate) struct Inner {
    pub(crate) link: Option<RedisLink>,
    pub(crate) memory: MemoryStore,
    pub(crate) state: StateCell,
    pub(crate) log: Mutex<ReplayLog>,
    namespace: Option<String>,
    /// Wakes the probe: Redis was found unavailable (or the cache is gone).
    pub(crate) wake: Arc<Notify>,
    /// Woken whenever replayed keys are settled (done, or back in the log).
    pub(crate) settled: Notify,
    /// How long a call waits for its keys' replay before it uses the fallback.
    replay_wait: Duration,
    /// How deletes are sent ([`DeleteMode`] as a byte): an ACL user whose key patterns
    /// leave out the window key (or the tombstone) moves it down, once.
    delete_mode: AtomicU8,
    /// The replay scripts as loaded into the server.
    scripts: Mutex<Arc<Scripts>>,
    /// Names this instance in the markers of replayed increments.
    pub(crate) instance: String,
    listeners: Mutex<Vec<Listener>>,
    pub(crate) counters: Counters,
    pub(crate) probe_interval: Duration,
    /// The probe, and the tasks of the tiers above (the coherence link).
    tasks: Tasks,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Lets the supervisor task notice that the cache is gone.
        self.wake.notify_one();
    }
}

/// A point-in-time view of the remote tier.
#[derive(Debug, Clone)]
pub(crate) struct RemoteStatus {
    pub(crate) redis_configured: bool,
    pub(crate) connected: bool,
    pub(crate) in_memory_keys: u64,
    pub(crate) replay_pending: usize,
    pub(crate) replay_dropped: u64,
}

/// The remote tier. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Remote {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("link", &self.inner.link)
            .field("state", &self.inner.state.get())
            .finish_non_exhaustive()
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave them inconsistent (each critical
    // section is a single map operation), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Remote {
    /// Builds the tier; Redis (when configured) is not contacted until [`Remote::start`].
    /// `tls` is the material the configuration's validation loaded.
    pub(crate) fn new(cfg: &CacheConfig, tls: &TlsMaterial) -> Result<Self, BuildError> {
        let link = cfg
            .redis
            .as_ref()
            .map(|r| RedisLink::new(r, tls, cfg.timeout, cfg.connect_timeout))
            .transpose()?;
        Ok(Self::with_link(cfg, link))
    }

    /// A tier without Redis.
    pub(crate) fn memory_only(cfg: &CacheConfig) -> Self {
        Self::with_link(cfg, None)
    }

    fn with_link(cfg: &CacheConfig, link: Option<RedisLink>) -> Self {
        let inner = Arc::new(Inner {
            state: StateCell::new(if link.is_some() {
                State::Down
            } else {
                State::Disabled
            }),
            link,
            memory: MemoryStore::new(cfg.fallback_max_bytes),
            log: Mutex::new(ReplayLog::new(cfg.replay_capacity)),
            namespace: cfg.namespace.clone(),
            wake: Arc::new(Notify::new()),
            settled: Notify::new(),
            replay_wait: cfg.timeout,
            delete_mode: AtomicU8::new(DeleteMode::Window as u8),
            scripts: Mutex::new(Arc::new(Scripts::default())),
            instance: format!("{:016x}", rand::random::<u64>()),
            listeners: Mutex::new(Vec::new()),
            counters: Counters::default(),
            probe_interval: cfg.probe_interval,
            tasks: Tasks::new(),
        });
        Remote { inner }
    }

    /// Makes one attempt to reach Redis, logs which store is in use, and starts the task
    /// that watches Redis.
    ///
    /// # Errors
    /// [`BuildError::RedisRequired`] when Redis must be reachable and is not;
    /// [`BuildError::NoRuntime`] outside a Tokio runtime (with Redis configured).
    pub(crate) async fn start(&self, cfg: &CacheConfig) -> Result<(), BuildError> {
        let Some(link) = &self.inner.link else {
            tracing::info!(
                store = "memory",
                "cache store: in-memory (Redis is not configured: set REDIS_ENABLED=true or REDIS_URL to use it)"
            );
            return Ok(());
        };
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(BuildError::NoRuntime);
        }
        match link.connect().await {
            Ok(()) => {
                self.inner.state.set(State::Up);
                tracing::info!(
                    store = "redis",
                    address = %link.address,
                    cluster = link.is_cluster(),
                    "cache store: redis"
                );
            }
            Err(failure) => {
                if cfg.require_redis {
                    return Err(BuildError::RedisRequired(failure.into_error()));
                }
                self.inner.counters.outages.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    store = "memory",
                    address = %link.address,
                    error = %failure,
                    "cache store: in-memory fallback (Redis unreachable at start); will switch to Redis when it answers"
                );
            }
        }
        let weak = Arc::downgrade(&self.inner);
        let wake = self.inner.wake.clone();
        self.inner
            .tasks
            .spawn(move || supervise(weak.clone(), wake.clone()), None);
        Ok(())
    }

    /// Runs a background task of a tier above (the coherence link) on the current
    /// runtime, and again on the runtime of the next call when that one shuts down first
    /// (see [`tasks`](super::tasks)). `on_lost` runs, inside the shutdown, when the
    /// runtime drops the task.
    pub(crate) fn keep_running<F, Fut>(&self, start: F, on_lost: impl Fn() + Send + Sync + 'static)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.inner.tasks.spawn(start, Some(Arc::new(on_lost)));
    }

    /// Before a call that may reach Redis: Redis needs a Tokio runtime, and the one that
    /// ran the connection and the background tasks may have shut down since (the cache
    /// was built in another `#[tokio::test]`, or in a `LazyLock`). Then the connection is
    /// opened again and the tasks restarted here, once, under a lock. Not an outage:
    /// nothing is counted, and the state (and so the replay log) is kept.
    ///
    /// # Errors
    /// [`Error::NoRuntime`] outside a Tokio runtime (with Redis configured).
    async fn on_runtime(&self) -> Result<(), Error> {
        let Some(link) = &self.inner.link else {
            return Ok(());
        };
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::NoRuntime);
        }
        if !self.inner.tasks.orphaned() {
            return Ok(());
        }
        let Some(_restarting) = self.inner.tasks.restarting().await else {
            return Ok(());
        };
        match self.state() {
            State::Up | State::Replaying => {
                // A replay that ran on the old runtime stopped with it (the writes it had
                // taken went back to the log); the restarted task finishes it.
                if let Err(failure) = link.connect().await {
                    // Redis itself is unavailable now: that is an outage.
                    self.trip(&failure);
                }
            }
            State::Down | State::Disabled => {}
        }
        self.inner.tasks.restart_here();
        tracing::info!(
            address = %link.address,
            state = ?self.state(),
            "cache: the Tokio runtime that ran its Redis connection and background tasks has shut down; they now run on the current runtime"
        );
        Ok(())
    }

    /// Registers a callback for store changes.
    pub(crate) fn on_event(&self, f: impl Fn(StoreEvent) + Send + Sync + 'static) {
        lock(&self.inner.listeners).push(Arc::new(f));
    }

    pub(crate) fn status(&self) -> RemoteStatus {
        let log = lock(&self.inner.log);
        RemoteStatus {
            redis_configured: self.inner.link.is_some(),
            connected: self.is_up(),
            in_memory_keys: self.inner.memory.len(),
            replay_pending: log.len(),
            replay_dropped: log.dropped,
        }
    }

    /// Whether operations go to Redis now (a replay may still run).
    pub(crate) fn is_up(&self) -> bool {
        matches!(self.state(), State::Up | State::Replaying)
    }

    /// A handle on the in-memory fallback store.
    pub(crate) fn fallback_store(&self) -> MemoryStore {
        self.inner.memory.clone()
    }

    /// `PUBLISH` through the data connection when Redis is up; a failure is only logged
    /// (the message is a hint to other instances, not data).
    pub(crate) async fn publish(&self, channel: &str, payload: &[u8]) {
        if self.on_runtime().await.is_err() {
            return;
        }
        let Some(link) = self.up_link() else { return };
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(channel).arg(payload);
        if let Err(failure) = link.query::<i64>(&cmd).await {
            tracing::debug!(error = %failure, "invalidation message not published");
        }
    }

    pub(crate) fn counters(&self) -> &Counters {
        &self.inner.counters
    }

    fn state(&self) -> State {
        self.inner.state.get()
    }

    fn rkey<'a>(&self, key: &'a str) -> Cow<'a, str> {
        match &self.inner.namespace {
            Some(ns) => Cow::Owned(format!("{ns}:{key}")),
            None => Cow::Borrowed(key),
        }
    }

    fn up_link(&self) -> Option<&RedisLink> {
        if self.is_up() {
            self.inner.link.as_ref()
        } else {
            None
        }
    }

    fn trip(&self, why: &dyn std::fmt::Display) {
        self.inner.trip(why);
    }

    fn rejected(&self, why: BackendError) -> Error {
        self.inner
            .counters
            .backend_errors
            .fetch_add(1, Ordering::Relaxed);
        Error::Backend(why)
    }

    /// Redis, ready for a call on `keys`: in `Up`, at once; in `Replaying`, once the keys'
    /// pending writes are replayed (see the module documentation). `None`: use the
    /// fallback (Redis is down, failed during the replay, or the wait ran out).
    async fn ready(&self, keys: Touch<'_>) -> Option<&RedisLink> {
        let link = self.up_link()?;
        if self.state() == State::Up {
            return Some(link);
        }
        let deadline = tokio::time::Instant::now() + self.inner.replay_wait;
        loop {
            let settled = self.inner.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            let (mine, busy) = {
                let mut log = lock(&self.inner.log);
                if log.is_empty() {
                    (Vec::new(), false)
                } else {
                    match keys {
                        Touch::Keys(keys) => log.take_keys(keys.iter().copied()),
                        Touch::Pattern(pattern) => log.take_matching(pattern),
                    }
                }
            };
            if !mine.is_empty() {
                if let Err(why) = replay_now(&self.inner, link, mine).await {
                    self.trip(&why);
                    return None;
                }
            } else if !busy {
                return self.up_link();
            } else if tokio::time::timeout_at(deadline, settled).await.is_err() {
                return None;
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
        }
    }

    /// A read of `keys`: Redis when up (after their replay), else the fallback.
    async fn read<'s, R, Fut>(
        &'s self,
        keys: Touch<'_>,
        on_redis: impl FnOnce(&'s RedisLink) -> Fut,
        on_memory: impl FnOnce(&MemoryStore) -> R,
    ) -> Result<R, Error>
    where
        Fut: Future<Output = Result<R, Failure>>,
    {
        self.on_runtime().await?;
        if let Some(link) = self.ready(keys).await {
            match on_redis(link).await {
                Ok(v) => return Ok(v),
                Err(Failure::Unavailable(why)) => self.trip(&why),
                Err(Failure::Rejected(why)) => return Err(self.rejected(why)),
            }
        }
        // The fallback answers without waiting on anything: spend the task's cooperative
        // budget so that a loop of fallback calls still lets other tasks and timers run.
        tokio::task::consume_budget().await;
        self.inner
            .counters
            .fallback_ops
            .fetch_add(1, Ordering::Relaxed);
        Ok(on_memory(&self.inner.memory))
    }

    /// A write to `keys`: Redis when up (after their replay); else the fallback plus the
    /// replay log, atomically with the state check so a write never lands in memory after
    /// the switch back to Redis without being replayed.
    async fn write<'s, R, Fut>(
        &'s self,
        keys: &[&str],
        on_redis: impl Fn(&'s RedisLink) -> Fut,
        on_memory: impl FnOnce(&MemoryStore, Option<&mut ReplayLog>) -> R,
    ) -> Result<R, Error>
    where
        Fut: Future<Output = Result<R, Failure>>,
    {
        self.on_runtime().await?;
        let mut attempts = 0;
        loop {
            attempts += 1;
            if let Some(link) = self.ready(Touch::Keys(keys)).await {
                let replaying = self.state() == State::Replaying;
                match on_redis(link).await {
                    Ok(v) => {
                        if replaying {
                            // The fallback still holds the outage values until the replay
                            // ends; should Redis fail again meanwhile, it must not answer
                            // with one that this write made stale.
                            for k in keys {
                                self.inner.memory.delete(k);
                            }
                        }
                        return Ok(v);
                    }
                    Err(Failure::Unavailable(why)) => self.trip(&why),
                    Err(Failure::Rejected(why)) => return Err(self.rejected(why)),
                }
            }
            tokio::task::consume_budget().await;
            self.inner
                .counters
                .fallback_ops
                .fetch_add(1, Ordering::Relaxed);
            if self.state() == State::Disabled {
                return Ok(on_memory(&self.inner.memory, None));
            }
            let mut log = lock(&self.inner.log);
            if self.state() == State::Up {
                if attempts < 3 {
                    continue;
                }
                // Flapping: open the breaker ourselves so the probe replays this write.
                self.trip(&"redis keeps failing");
            }
            return Ok(on_memory(&self.inner.memory, Some(&mut log)));
        }
    }

    pub(crate) async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        let rkey = self.rkey(key);
        let cmd = {
            let mut c = redis::cmd("GET");
            c.arg(&*rkey);
            c
        };
        self.read(
            Touch::Keys(&[key]),
            |l| l.query::<Option<Vec<u8>>>(&cmd),
            |m| m.get(key).map(|e| e.bytes.to_vec()),
        )
        .await
    }

    pub(crate) async fn mget(&self, keys: &[&str]) -> Result<Vec<Option<Vec<u8>>>, Error> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("MGET");
        for k in keys {
            cmd.arg(&*self.rkey(k));
        }
        self.read(
            Touch::Keys(keys),
            |l| l.query::<Vec<Option<Vec<u8>>>>(&cmd),
            |m| {
                keys.iter()
                    .map(|k| m.get(k).map(|e| e.bytes.to_vec()))
                    .collect()
            },
        )
        .await
    }

    pub(crate) async fn set(
        &self,
        key: &str,
        bytes: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<(), Error> {
        self.set_if(key, bytes, ttl, SetIf::Always)
            .await
            .map(|_| ())
    }

    /// Sets only when absent; returns whether it was set.
    pub(crate) async fn set_nx(
        &self,
        key: &str,
        bytes: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<bool, Error> {
        self.set_if(key, bytes, ttl, SetIf::Absent).await
    }

    /// Sets only when present (`SET XX`); returns whether it was set.
    pub(crate) async fn set_xx(
        &self,
        key: &str,
        bytes: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<bool, Error> {
        self.set_if(key, bytes, ttl, SetIf::Present).await
    }

    /// A `SET`, plain or conditional (`NX`, `XX`); returns whether it was set. Only a write
    /// that happened goes into the replay log.
    async fn set_if(
        &self,
        key: &str,
        bytes: Vec<u8>,
        ttl: Option<Duration>,
        cond: SetIf,
    ) -> Result<bool, Error> {
        let cmd = set_cmd(&self.rkey(key), &bytes, ttl, cond);
        self.write(
            &[key],
            |l| {
                let cmd = &cmd;
                async move { Ok(l.query::<Option<String>>(cmd).await?.is_some()) }
            },
            |m, log| {
                let bytes: Arc<[u8]> = bytes.into();
                let set = match cond {
                    SetIf::Absent => m.set_nx(key, bytes.clone(), ttl),
                    SetIf::Present => m.set_xx(key, bytes.clone(), ttl),
                    SetIf::Always => {
                        m.set(key, bytes.clone(), ttl);
                        true
                    }
                };
                if let (true, Some(log)) = (set, log) {
                    log.record(key, pending_set(&bytes, ttl));
                }
                set
            },
        )
        .await
    }

    pub(crate) async fn mset(
        &self,
        items: Vec<(String, Vec<u8>)>,
        ttl: Option<Duration>,
    ) -> Result<(), Error> {
        self.set_all(items.into_iter().map(|(k, v)| (k, v, ttl)).collect())
            .await
    }

    /// The write of `mset` and `mset_each`: a `SET` of every `(key, bytes, ttl)` in one
    /// batch (not atomically); on the fallback each is also recorded for replay.
    async fn set_all(&self, items: Vec<(String, Vec<u8>, Option<Duration>)>) -> Result<(), Error> {
        let cmds: Vec<(String, redis::Cmd)> = items
            .iter()
            .map(|(k, v, ttl)| {
                let rkey = self.rkey(k).into_owned();
                let cmd = set_cmd(&rkey, v, *ttl, SetIf::Always);
                (rkey, cmd)
            })
            .collect();
        let names: Vec<String> = items.iter().map(|(k, _, _)| k.clone()).collect();
        let keys: Vec<&str> = names.iter().map(String::as_str).collect();
        self.write(
            &keys,
            |l| {
                let cmds = cmds.clone();
                async move {
                    // Each SET answers on its own; the first error decides, as one failed
                    // command of a pipeline would.
                    match l.batch::<()>(cmds).await?.into_iter().find_map(Result::err) {
                        Some(e) => Err(classify(&e)),
                        None => Ok(()),
                    }
                }
            },
            |m, mut log| {
                for (k, v, ttl) in items {
                    let bytes: Arc<[u8]> = v.into();
                    if let Some(log) = log.as_deref_mut() {
                        log.record(&k, pending_set(&bytes, ttl));
                    }
                    m.set(&k, bytes, ttl);
                }
            },
        )
        .await
    }

    /// A `DEL` that leaves a tombstone while the replay window is open (on a cluster,
    /// always), so that an older outage write replayed by another instance cannot bring the
    /// key back (see [`replay`](super::replay)). An ACL user not allowed the window key
    /// (`NOPERM`) leaves a tombstone at every delete instead; one not allowed that either
    /// sends a plain `DEL`.
    pub(crate) async fn delete(&self, key: &str) -> Result<bool, Error> {
        let rkey = self.rkey(key);
        let window = self.inner.rkey(WINDOW_KEY);
        let delete_cmd = |mode: DeleteMode, cluster: bool| {
            let tombstone = match mode {
                DeleteMode::Plain => None,
                _ => tombstone_key(&rkey, cluster),
            };
            let Some(tombstone) = tombstone else {
                let mut cmd = redis::cmd("DEL");
                cmd.arg(&*rkey);
                return cmd;
            };
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(LIVE_DEL_SCRIPT);
            if mode == DeleteMode::Window {
                cmd.arg(3).arg(&*rkey).arg(tombstone).arg(&window);
            } else {
                cmd.arg(2).arg(&*rkey).arg(tombstone);
            }
            cmd.arg(now_ms()).arg(millis(TOMBSTONE_TTL));
            cmd
        };
        self.write(
            &[key],
            |l| {
                let delete_cmd = &delete_cmd;
                async move {
                    loop {
                        let mut mode = DeleteMode::from(self.inner.delete_mode.load(Ordering::Relaxed));
                        if l.is_cluster() && mode == DeleteMode::Window {
                            // The window key is in another hash slot: always a tombstone.
                            mode = DeleteMode::Always;
                        }
                        match l.query::<i64>(&delete_cmd(mode, l.is_cluster())).await {
                            Err(Failure::Rejected(e))
                                if e.code() == Some("NOPERM") && mode != DeleteMode::Plain =>
                            {
                                let next = if mode == DeleteMode::Window {
                                    DeleteMode::Always
                                } else {
                                    DeleteMode::Plain
                                };
                                self.inner.delete_mode.store(next as u8, Ordering::Relaxed);
                                tracing::warn!(
                                    error = %e,
                                    mode = ?next,
                                    "redis refused the delete script (ACL): deletes now leave {}",
                                    if next == DeleteMode::Always {
                                        "a tombstone every time"
                                    } else {
                                        "no tombstone (an older write replayed by another instance after an outage may undo them)"
                                    }
                                );
                            }
                            answer => return Ok(answer? > 0),
                        }
                    }
                }
            },
            |m, log| {
                if let Some(log) = log {
                    log.record(key, Pending::Delete { at_ms: now_ms() });
                }
                m.delete(key)
            },
        )
        .await
    }

    pub(crate) async fn exists(&self, key: &str) -> Result<bool, Error> {
        let mut cmd = redis::cmd("EXISTS");
        cmd.arg(&*self.rkey(key));
        self.read(
            Touch::Keys(&[key]),
            |l| {
                let cmd = &cmd;
                async move { Ok(l.query::<i64>(cmd).await? > 0) }
            },
            |m| m.exists(key),
        )
        .await
    }

    pub(crate) async fn expire(&self, key: &str, ttl: Duration) -> Result<bool, Error> {
        let mut cmd = redis::cmd("PEXPIRE");
        cmd.arg(&*self.rkey(key)).arg(millis(ttl));
        self.write(
            &[key],
            |l| {
                let cmd = &cmd;
                async move { Ok(l.query::<i64>(cmd).await? > 0) }
            },
            |m, log| {
                let found = m.expire(key, ttl);
                if let (true, Some(log), Some(e)) = (found, log, m.get(key)) {
                    log.record(key, pending_set(&e.bytes, Some(ttl)));
                }
                found
            },
        )
        .await
    }

    /// `None`: no such key; `Some(None)`: no expiry.
    pub(crate) async fn pttl(&self, key: &str) -> Result<Option<Option<Duration>>, Error> {
        let mut cmd = redis::cmd("PTTL");
        cmd.arg(&*self.rkey(key));
        self.read(
            Touch::Keys(&[key]),
            |l| async move {
                Ok(match l.query::<i64>(&cmd).await? {
                    -2 => None,
                    -1 => Some(None),
                    ms => Some(Some(Duration::from_millis(u64::try_from(ms).unwrap_or(0)))),
                })
            },
            |m| m.ttl(key),
        )
        .await
    }

    pub(crate) async fn incr_by(&self, key: &str, delta: i64) -> Result<i64, Error> {
        let mut cmd = redis::cmd("INCRBY");
        cmd.arg(&*self.rkey(key)).arg(delta);
        self.write(
            &[key],
            |l| {
                let cmd = &cmd;
                async move { l.query::<i64>(cmd).await.map(Ok) }
            },
            |m, log| {
                let (n, entry) = m.incr_by(key, delta)?;
                if let Some(log) = log {
                    log.record_incr(key, delta, pending_entry(&entry));
                }
                Ok(n)
            },
        )
        .await?
    }

    /// Keys (without the namespace) matching a glob pattern (itself without the namespace).
    /// The replay's own keys beside the cache's (tombstones, increment markers) are left
    /// out.
    pub(crate) async fn scan(&self, pattern: &str) -> Result<Vec<String>, Error> {
        let rpattern = self.rkey(pattern);
        let strip = self.inner.namespace.as_ref().map_or(0, |ns| ns.len() + 1);
        self.read(
            Touch::Pattern(pattern),
            |l| async move {
                let keys = l.scan(&rpattern).await?;
                Ok(keys
                    .into_iter()
                    .filter(|k| !is_beside_key(k))
                    .map(|k| k[strip.min(k.len())..].to_owned())
                    .collect())
            },
            |m| m.scan(pattern),
        )
        .await
    }
}

/// How a live delete is sent (see [`Remote::delete`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum DeleteMode {
    /// The script that leaves a tombstone while the replay window is open.
    Window = 0,
    /// The script that always leaves a tombstone (a cluster; or the window key refused).
    Always = 1,
    /// A plain `DEL` (the scripts refused).
    Plain = 2,
}

impl From<u8> for DeleteMode {
    fn from(b: u8) -> Self {
        match b {
            0 => DeleteMode::Window,
            1 => DeleteMode::Always,
            _ => DeleteMode::Plain,
        }
    }
}

/// The keys a call touches, for the replay rule (see the module documentation).
#[derive(Debug, Clone, Copy)]
enum Touch<'a> {
    Keys(&'a [&'a str]),
    /// The keys matching a glob pattern (`scan`).
    Pattern(&'a str),
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// When a `SET` applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SetIf {
    Always,
    /// `NX`
    Absent,
    /// `XX`
    Present,
}

fn set_cmd(rkey: &str, bytes: &[u8], ttl: Option<Duration>, cond: SetIf) -> redis::Cmd {
    let mut cmd = redis::cmd("SET");
    cmd.arg(rkey).arg(bytes);
    match cond {
        SetIf::Always => {}
        SetIf::Absent => {
            cmd.arg("NX");
        }
        SetIf::Present => {
            cmd.arg("XX");
        }
    }
    if let Some(ttl) = ttl {
        cmd.arg("PX").arg(millis(ttl));
    }
    cmd
}

fn pending_set(bytes: &Arc<[u8]>, ttl: Option<Duration>) -> Pending {
    Pending::Set {
        bytes: bytes.clone(),
        expires_at: ttl.map(|t| Instant::now() + t),
        written_at_ms: now_ms(),
    }
}

fn pending_entry(e: &MemEntry) -> Pending {
    Pending::Set {
        bytes: e.bytes.clone(),
        expires_at: e.expires_at,
        written_at_ms: now_ms(),
    }
}

impl Inner {
    /// Opens the breaker: `Up` or `Replaying` → `Down`, counted and logged once per outage.
    pub(crate) fn trip(&self, why: &dyn std::fmt::Display) {
        if self.state.replace(State::Up, State::Down)
            || self.state.replace(State::Replaying, State::Down)
        {
            self.counters.outages.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                store = "memory",
                error = %why,
                "redis unavailable: serving from the in-memory fallback until it answers again"
            );
            self.notify(StoreEvent::Lost);
            self.wake.notify_one();
        }
    }

    /// The replay scripts as last loaded.
    pub(crate) fn scripts(&self) -> Arc<Scripts> {
        lock(&self.scripts).clone()
    }

    pub(crate) fn set_scripts(&self, scripts: Scripts) {
        *lock(&self.scripts) = Arc::new(scripts);
    }

    pub(crate) fn notify(&self, event: StoreEvent) {
        let listeners: Vec<Listener> = lock(&self.listeners).clone();
        for l in listeners {
            l(event);
        }
    }

    /// The key as Redis knows it (with the namespace).
    pub(crate) fn rkey(&self, key: &str) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}:{key}"),
            None => key.to_owned(),
        }
    }
}
