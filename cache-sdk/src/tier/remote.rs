//! L2: Redis when it answers, the in-memory fallback when it does not.
//!
//! States: `Disabled` (no Redis configured: memory only), `Up` (Redis), `Down` (the breaker
//! is open: every call goes straight to memory, no timeout is paid, and a background task
//! probes Redis with backoff), `Recovering` (Redis answers again; the writes made during the
//! outage are being replayed in pipelines, calls still go to memory), `Draining` (the last
//! replay passes: writes wait, at most the command timeout, for the switch instead of
//! adding to the log, so the replay cannot be outrun by a busy application). Once the
//! replay log is empty the state turns `Up` under the log's lock, so no write can slip
//! between the two stores; the fallback is then cleared and listeners (L1) are told to drop
//! what they hold.

use std::borrow::Cow;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::memory::{MemEntry, MemoryStore};
use super::redis::{classify, Failure, RedisLink};
use super::replay::{Pending, ReplayLog, DEL_SCRIPT, SET_SCRIPT};
use crate::codec::now_ms;
use crate::config::CacheConfig;
use crate::error::{BuildError, Error};
use crate::tls::TlsMaterial;

const DISABLED: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;
const RECOVERING: u8 = 3;
const DRAINING: u8 = 4;

/// Writes replayed per pipeline.
const REPLAY_BATCH: usize = 512;
/// Pipelines in flight at once during a replay.
const REPLAY_PARALLEL: usize = 4;
/// Replay passes made while writers still add to the log, before they are held back.
const CATCH_UP_ROUNDS: u32 = 4;

/// What listeners are told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StoreEvent {
    /// Redis became unavailable; the fallback serves.
    Lost,
    /// Redis is back and the outage writes were replayed.
    Recovered,
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

struct Inner {
    link: Option<RedisLink>,
    memory: MemoryStore,
    state: AtomicU8,
    log: Mutex<ReplayLog>,
    namespace: Option<String>,
    wake: Arc<Notify>,
    /// Woken when a `Draining` state ends.
    drained: Notify,
    /// How long a write waits for a drain to end before it goes to the fallback.
    drain_wait: Duration,
    listeners: Mutex<Vec<Listener>>,
    counters: Counters,
    probe_interval: Duration,
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
            .field("state", &self.inner.state.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
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
            state: AtomicU8::new(if link.is_some() { DOWN } else { DISABLED }),
            link,
            memory: MemoryStore::new(cfg.fallback_max_bytes),
            log: Mutex::new(ReplayLog::new(cfg.replay_capacity)),
            namespace: cfg.namespace.clone(),
            wake: Arc::new(Notify::new()),
            drained: Notify::new(),
            drain_wait: cfg.timeout,
            listeners: Mutex::new(Vec::new()),
            counters: Counters::default(),
            probe_interval: cfg.probe_interval,
        });
        Remote { inner }
    }

    /// Makes one attempt to reach Redis, logs which store is in use, and starts the task
    /// that watches Redis.
    pub(crate) async fn start(&self, cfg: &CacheConfig) -> Result<(), BuildError> {
        let Some(link) = &self.inner.link else {
            tracing::info!(
                store = "memory",
                "cache store: in-memory (Redis is not configured: set REDIS_ENABLED=true or REDIS_URL to use it)"
            );
            return Ok(());
        };
        match link.connect().await {
            Ok(()) => {
                self.inner.state.store(UP, Ordering::Release);
                tracing::info!(
                    store = "redis",
                    address = %link.address,
                    cluster = link.is_cluster(),
                    "cache store: redis"
                );
            }
            Err(Failure::Unavailable(why) | Failure::Rejected(why)) => {
                if cfg.require_redis {
                    return Err(BuildError::RedisRequired(why));
                }
                self.inner.counters.outages.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    store = "memory",
                    address = %link.address,
                    error = %why,
                    "cache store: in-memory fallback (Redis unreachable at start); will switch to Redis when it answers"
                );
            }
        }
        tokio::spawn(supervise(
            Arc::downgrade(&self.inner),
            self.inner.wake.clone(),
        ));
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
            connected: self.state() == UP,
            in_memory_keys: self.inner.memory.len(),
            replay_pending: log.len(),
            replay_dropped: log.dropped,
        }
    }

    /// Whether operations go to Redis now.
    pub(crate) fn is_up(&self) -> bool {
        self.state() == UP
    }

    /// A handle on the in-memory fallback store.
    pub(crate) fn fallback_store(&self) -> MemoryStore {
        self.inner.memory.clone()
    }

    /// `PUBLISH` through the data connection when Redis is up; a failure is only logged
    /// (the message is a hint to other instances, not data).
    pub(crate) async fn publish(&self, channel: &str, payload: &[u8]) {
        let Some(link) = self.up_link() else { return };
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(channel).arg(payload);
        if let Err(Failure::Unavailable(why) | Failure::Rejected(why)) =
            link.query::<i64>(&cmd).await
        {
            tracing::debug!(error = %why, "invalidation message not published");
        }
    }

    pub(crate) fn counters(&self) -> &Counters {
        &self.inner.counters
    }

    fn state(&self) -> u8 {
        self.inner.state.load(Ordering::Acquire)
    }

    fn rkey<'a>(&self, key: &'a str) -> Cow<'a, str> {
        match &self.inner.namespace {
            Some(ns) => Cow::Owned(format!("{ns}:{key}")),
            None => Cow::Borrowed(key),
        }
    }

    fn up_link(&self) -> Option<&RedisLink> {
        if self.state() == UP {
            self.inner.link.as_ref()
        } else {
            None
        }
    }

    fn trip(&self, why: &str) {
        if self
            .inner
            .state
            .compare_exchange(UP, DOWN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.inner.counters.outages.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                store = "memory",
                error = %why,
                "redis unavailable: serving from the in-memory fallback until it answers again"
            );
            self.inner.notify(StoreEvent::Lost);
            self.inner.wake.notify_one();
        }
    }

    fn rejected(&self, why: String) -> Error {
        self.inner
            .counters
            .backend_errors
            .fetch_add(1, Ordering::Relaxed);
        Error::Backend(why)
    }

    /// Waits (at most `drain_wait`) for the end of the replay's last pass.
    async fn wait_for_drain(&self) {
        let drained = self.inner.drained.notified();
        tokio::pin!(drained);
        drained.as_mut().enable();
        if self.state() == DRAINING {
            let _ = tokio::time::timeout(self.inner.drain_wait, drained).await;
        }
    }

    /// A read: Redis when up, else the fallback.
    async fn read<'s, R, Fut>(
        &'s self,
        on_redis: impl FnOnce(&'s RedisLink) -> Fut,
        on_memory: impl FnOnce(&MemoryStore) -> R,
    ) -> Result<R, Error>
    where
        Fut: Future<Output = Result<R, Failure>>,
    {
        if let Some(link) = self.up_link() {
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

    /// A write: Redis when up; else the fallback plus the replay log, atomically with the
    /// state check so a write never lands in memory after the switch back to Redis.
    async fn write<'s, R, Fut>(
        &'s self,
        on_redis: impl Fn(&'s RedisLink) -> Fut,
        on_memory: impl FnOnce(&MemoryStore, Option<&mut ReplayLog>) -> R,
    ) -> Result<R, Error>
    where
        Fut: Future<Output = Result<R, Failure>>,
    {
        let mut attempts = 0;
        let mut waited = false;
        loop {
            attempts += 1;
            if !waited && self.state() == DRAINING {
                waited = true;
                self.wait_for_drain().await;
            }
            if let Some(link) = self.up_link() {
                match on_redis(link).await {
                    Ok(v) => return Ok(v),
                    Err(Failure::Unavailable(why)) => self.trip(&why),
                    Err(Failure::Rejected(why)) => return Err(self.rejected(why)),
                }
            }
            tokio::task::consume_budget().await;
            self.inner
                .counters
                .fallback_ops
                .fetch_add(1, Ordering::Relaxed);
            if self.state() == DISABLED {
                return Ok(on_memory(&self.inner.memory, None));
            }
            let mut log = lock(&self.inner.log);
            if self.state() == UP {
                if attempts < 3 {
                    continue;
                }
                // Flapping: open the breaker ourselves so the probe replays this write.
                self.trip("redis keeps failing");
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
        let cmds: Vec<(String, redis::Cmd)> = items
            .iter()
            .map(|(k, v)| {
                let rkey = self.rkey(k).into_owned();
                let cmd = set_cmd(&rkey, v, ttl, SetIf::Always);
                (rkey, cmd)
            })
            .collect();
        self.write(
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
                for (k, v) in items {
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

    pub(crate) async fn delete(&self, key: &str) -> Result<bool, Error> {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(&*self.rkey(key));
        self.write(
            |l| {
                let cmd = &cmd;
                async move { Ok(l.query::<i64>(cmd).await? > 0) }
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
    pub(crate) async fn scan(&self, pattern: &str) -> Result<Vec<String>, Error> {
        let rpattern = self.rkey(pattern);
        let strip = self.inner.namespace.as_ref().map_or(0, |ns| ns.len() + 1);
        self.read(
            |l| async move {
                let keys = l.scan(&rpattern).await?;
                Ok(keys
                    .into_iter()
                    .map(|k| k[strip.min(k.len())..].to_owned())
                    .collect())
            },
            |m| m.scan(pattern),
        )
        .await
    }
}

fn millis(d: Duration) -> u64 {
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
    fn notify(&self, event: StoreEvent) {
        let listeners: Vec<Listener> = lock(&self.listeners).clone();
        for l in listeners {
            l(event);
        }
    }

    fn rkey(&self, key: &str) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}:{key}"),
            None => key.to_owned(),
        }
    }

    /// Reconnects and replays the outage writes. Returns `true` once back `Up`.
    ///
    /// Writers keep writing to the fallback (and the log) while the replay runs, so the
    /// replay could chase them for ever under load. After [`CATCH_UP_ROUNDS`] passes the
    /// state turns `Draining`: new writes then wait (at most the command timeout) for the
    /// switch instead of growing the log, and the replay finishes what is left.
    async fn recover(&self) -> bool {
        let Some(link) = &self.link else { return true };
        if let Err(Failure::Unavailable(why) | Failure::Rejected(why)) = link.connect().await {
            tracing::debug!(error = %why, "redis still unavailable");
            return false;
        }
        self.state.store(RECOVERING, Ordering::Release);
        let started = Instant::now();
        let mut replayed = 0u64;
        let mut rounds = 0u32;
        let mut scripts = Scripts::default();
        loop {
            if !scripts.loaded {
                if let Err(why) = scripts.load(link).await {
                    return self.replay_failed(replayed, &why);
                }
            }
            let batches: Vec<Vec<(String, Pending)>> = {
                let mut log = lock(&self.log);
                (0..REPLAY_PARALLEL)
                    .map(|_| log.take(REPLAY_BATCH))
                    .filter(|b| !b.is_empty())
                    .collect()
            };
            if batches.is_empty() {
                let log = lock(&self.log);
                if !log.is_empty() {
                    continue;
                }
                self.state.store(UP, Ordering::Release);
                self.memory.clear();
                drop(log);
                self.drained.notify_waiters();
                self.counters
                    .replayed
                    .fetch_add(replayed, Ordering::Relaxed);
                tracing::info!(
                    store = "redis",
                    address = %link.address,
                    replayed,
                    replay_ms = started.elapsed().as_millis() as u64,
                    "redis is back: outage writes replayed, cache store is redis again"
                );
                self.notify(StoreEvent::Recovered);
                return true;
            }
            rounds += 1;
            if rounds == CATCH_UP_ROUNDS {
                self.state.store(DRAINING, Ordering::Release);
            }
            // The batches go out at once on the multiplexed connection, so Redis never
            // waits for the next one.
            let results = futures::future::join_all(
                batches
                    .iter()
                    .map(|batch| self.replay_batch(link, &scripts, batch)),
            )
            .await;
            let mut failure = None;
            for (batch, result) in batches.into_iter().zip(results) {
                match result {
                    Ok(outcome) => {
                        replayed += outcome.applied;
                        if !outcome.retry.is_empty() {
                            // The server lost the scripts (restarted or flushed): load
                            // them again and retry these writes.
                            scripts.loaded = false;
                            let mut log = lock(&self.log);
                            for (k, o) in outcome.retry {
                                log.restore(k, o);
                            }
                        }
                    }
                    Err(why) => {
                        let mut log = lock(&self.log);
                        for (k, o) in batch {
                            log.restore(k, o);
                        }
                        failure = Some(why);
                    }
                }
            }
            if let Some(why) = failure {
                return self.replay_failed(replayed, &why);
            }
        }
    }

    fn replay_failed(&self, replayed: u64, why: &str) -> bool {
        self.state.store(DOWN, Ordering::Release);
        self.drained.notify_waiters();
        self.counters
            .replayed
            .fetch_add(replayed, Ordering::Relaxed);
        tracing::warn!(error = %why, "redis failed again during replay");
        false
    }

    /// Replays a batch in one pipeline (on a cluster, one per hash slot, sent at once).
    /// Skipped writes (expired, or Redis holds a newer value) and refused ones are counted;
    /// writes that met a server without the scripts come back in `retry`. An error means
    /// Redis is unavailable again; the batch goes back to the log (part of it may have been
    /// applied: replaying a `SET` or `DEL` twice is harmless, an increment may count twice).
    async fn replay_batch(
        &self,
        link: &RedisLink,
        scripts: &Scripts,
        batch: &[(String, Pending)],
    ) -> Result<BatchOutcome, String> {
        // One EVALSHA or INCRBY per key: slot-safe on a cluster, where the batch is split
        // by slot.
        let mut cmds: Vec<(String, redis::Cmd)> = Vec::with_capacity(batch.len());
        // Per command sent: its index in the batch, and whether an answer of 0 means
        // "skipped" (the conditional SET).
        let mut sent: Vec<(usize, bool)> = Vec::with_capacity(batch.len());
        let now = Instant::now();
        for (index, (key, op)) in batch.iter().enumerate() {
            let rkey = self.rkey(key);
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
                                self.counters.replay_skipped.fetch_add(1, Ordering::Relaxed);
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
        let results: Vec<redis::RedisResult<i64>> = match link.batch(cmds).await {
            Ok(r) => r,
            Err(Failure::Unavailable(why) | Failure::Rejected(why)) => return Err(why),
        };
        for (result, (index, conditional)) in results.into_iter().zip(sent) {
            match result {
                Ok(0) if conditional => {
                    self.counters.replay_skipped.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => outcome.applied += 1,
                Err(e)
                    if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    if let Some(entry) = batch.get(index) {
                        outcome.retry.push(entry.clone());
                    }
                }
                Err(e) => {
                    self.counters.replay_skipped.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "redis refused a replayed write; it stays only in memory");
                }
            }
        }
        Ok(outcome)
    }
}

#[derive(Default)]
struct BatchOutcome {
    applied: u64,
    retry: Vec<(String, Pending)>,
}

/// The replay scripts, loaded into the server once per recovery and run with `EVALSHA`.
#[derive(Default)]
struct Scripts {
    loaded: bool,
    set_sha: String,
    del_sha: String,
}

impl Scripts {
    async fn load(&mut self, link: &RedisLink) -> Result<(), String> {
        // One command each, not a pipeline: on a cluster redis-rs sends `SCRIPT LOAD` to
        // every node, so `EVALSHA` finds the scripts on whichever master holds a key.
        let load = |script: &str| {
            let mut cmd = redis::cmd("SCRIPT");
            cmd.arg("LOAD").arg(script);
            cmd
        };
        let why = |(Failure::Unavailable(why) | Failure::Rejected(why))| why;
        let set_sha: String = link.query(&load(SET_SCRIPT)).await.map_err(why)?;
        let del_sha: String = link.query(&load(DEL_SCRIPT)).await.map_err(why)?;
        *self = Scripts {
            loaded: true,
            set_sha,
            del_sha,
        };
        Ok(())
    }
}

/// The background task: while Redis is down, probes it with backoff (and jitter) up to
/// `probe_interval`, then replays and switches back.
async fn supervise(weak: Weak<Inner>, wake: Arc<Notify>) {
    loop {
        {
            let Some(inner) = weak.upgrade() else { return };
            if inner.state.load(Ordering::Acquire) != DOWN {
                drop(inner);
                wake.notified().await;
                continue;
            }
        }
        let mut delay = Duration::from_millis(10);
        loop {
            let Some(inner) = weak.upgrade() else { return };
            if inner.state.load(Ordering::Acquire) != DOWN || inner.recover().await {
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
