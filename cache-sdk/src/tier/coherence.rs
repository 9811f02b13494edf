//! Coherence: a write or delete made through any Redis client evicts the key from the L1 of
//! every app instance.
//!
//! Each [`Cache`](crate::Cache) with Redis and L1 keeps one extra connection, the
//! *invalidation link*, named `cache-sdk-coherence` in `CLIENT LIST`:
//!
//! - **tracking** (preferred): a RESP3 connection with `CLIENT TRACKING ON BCAST` on every
//!   key the SDK writes (`PREFIX <namespace>:`, or no prefix at all without a namespace; see
//!   [`CacheConfig::coherence_prefixes`]). Redis pushes the name of every key written there, by
//!   any client (this app, another language, `redis-cli`), and a null for
//!   `FLUSHDB`/`FLUSHALL`. The link makes no writes of its own, so the instance also hears
//!   about its own writes; that only costs it one refill read.
//! - **pubsub** (where tracking is refused, or on Redis Cluster): the link subscribes to a
//!   channel and every SDK write publishes the key there through the data connection. Only
//!   the SDK's own writes are seen.
//!
//! # The staleness bound
//!
//! While the link is up, a change reaches every instance's L1 in the time of one push
//! (tens of microseconds on loopback). When the link drops (the connection closes, the
//! server restarts, `CLIENT KILL`), L1 is *suspended* at once: nothing is served from it
//! or put into it, so reads go to Redis. When the link is back, L1 starts empty and
//! serves again. What can be stale is bounded by how fast the drop is noticed: at once
//! when the connection is closed (about 1 ms), and within [`CHECK_INTERVAL`] plus the
//! command timeout when it dies silently (a `PING` checks it).
//!
//! Through Redis Sentinel the link connects to the master the sentinels name, asks them
//! again at every reconnection, and closes itself on `+switch-master`: after a failover
//! it is on the new master as soon as the data link is (see [`sentinel`](super::sentinel)).
//!
//! # Raw-backed entries and outages
//!
//! When Redis itself is lost (not only the link), the raw-backed entries held in L1 (values
//! that keep the bytes they were decoded from, see [`RawBacked`](super::local::RawBacked))
//! are handed to the in-memory fallback, whatever their key, without being marked for
//! replay (Redis has them). Whoever cached them keeps working from the fallback, and the
//! changes made there are replayed to Redis when it returns. If the link was lost while
//! Redis still answered (it refused the link again), those entries are discarded instead:
//! they may have missed changes.
//!
//! This module owns the invalidation link and that hand-over. It may import the other
//! tiers (`local`, `memory`, `redis`, `remote`) and the configuration; it knows nothing of
//! what the values mean nor of key patterns beyond the prefixes it is told to track.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, Value,
};
use tokio::sync::Notify;

use super::local::{Backing, Held, Local};
use super::memory::MemoryStore;
use super::redis::{classify, Failure};
use super::remote::Remote;
use super::sentinel::Sentinels;
use crate::config::{CacheConfig, Coherence, RedisConfig};
use crate::stats::CoherenceState;
use crate::tls::TlsMaterial;

/// The name the invalidation link gives itself (`CLIENT SETNAME`).
pub(crate) const CONNECTION_NAME: &str = "cache-sdk-coherence";

/// How often the link is checked with a `PING` (catches a connection that died silently).
pub(crate) const CHECK_INTERVAL: Duration = Duration::from_secs(1);

const OFF: u8 = 0;
const TRACKING: u8 = 1;
const PUBSUB: u8 = 2;
const DOWN: u8 = 3;

/// What push handlers share; they run inside the connection's read task and must not
/// block.
struct Signals {
    local: Local,
    /// `<namespace>:` (or empty), stripped from the keys Redis names.
    strip: String,
    /// Marks this instance's own pub/sub messages.
    instance: String,
    state: AtomicU8,
    /// Generation of the live connection; pushes of older ones do not change the state.
    live: AtomicU64,
    invalidations: AtomicU64,
    resets: AtomicU64,
    /// Wakes the task: a flush is due on the channel.
    kick: Notify,
    /// Woken when the link comes up (or coherence turns off).
    settled: Notify,
    flush_due: AtomicBool,
    lost_at: Mutex<Option<Instant>>,
    /// The data tier has lost Redis (the fallback serves).
    data_down: AtomicBool,
}

impl Signals {
    fn on_push(&self, generation: u64, closed: &Notify, push: PushInfo) {
        match push.kind {
            PushKind::Invalidate => self.invalidate(push.data.first()),
            PushKind::Message => {
                if let Some(Value::BulkString(payload)) = push.data.get(1) {
                    self.on_message(payload);
                }
            }
            PushKind::Disconnection if self.live.load(Ordering::SeqCst) == generation => {
                self.suspend("the invalidation connection closed");
                closed.notify_one();
            }
            _ => {}
        }
    }

    fn invalidate(&self, keys: Option<&Value>) {
        match keys {
            Some(Value::Array(keys) | Value::Set(keys)) => {
                let mut n = 0;
                for k in keys {
                    if let Value::BulkString(b) = k {
                        if let Some(key) = std::str::from_utf8(b)
                            .ok()
                            .and_then(|s| s.strip_prefix(self.strip.as_str()))
                        {
                            self.evict(key);
                            n += 1;
                        }
                    }
                }
                self.invalidations.fetch_add(n, Ordering::Relaxed);
                // For latency measurements (see docs/coherence.md); free when disabled.
                tracing::trace!(keys = n, "cache coherence: L1 entries evicted");
            }
            // FLUSHDB / FLUSHALL.
            Some(Value::Nil) | None => self.flush(),
            Some(_) => {}
        }
    }

    /// `<instance>` alone: flush; `<instance>\n<key>\n<key>…`: those keys.
    fn on_message(&self, payload: &[u8]) {
        let Ok(text) = std::str::from_utf8(payload) else {
            return;
        };
        let mut lines = text.split('\n');
        if lines.next() == Some(self.instance.as_str()) {
            // Our own write: L1 was updated when it was made.
            return;
        }
        let mut n = 0;
        let mut any = false;
        for key in lines {
            any = true;
            if !key.is_empty() {
                self.evict(key);
                n += 1;
            }
        }
        if any {
            self.invalidations.fetch_add(n, Ordering::Relaxed);
            tracing::trace!(keys = n, "cache coherence: L1 entries evicted");
        } else {
            self.flush();
        }
    }

    /// One key written elsewhere: dropped from L1; the cache's clear stamp empties L1.
    fn evict(&self, key: &str) {
        if key == crate::key::CLEAR_KEY {
            self.local.clear();
        } else {
            self.local.invalidate(key);
        }
    }

    fn flush(&self) {
        self.local.clear();
        self.invalidations.fetch_add(1, Ordering::Relaxed);
    }

    /// The runtime that ran the link has shut down and dropped it: no invalidation can
    /// arrive any more, so L1 stops serving until the link is up again on the runtime of
    /// the next call. Runs inside the shutdown: only atomics and the L1 epoch.
    fn runtime_lost(&self) {
        self.state.store(DOWN, Ordering::SeqCst);
        if self.local.suspend() {
            *lock(&self.lost_at) = Some(Instant::now());
        }
    }

    fn suspend(&self, why: &str) {
        self.state.store(DOWN, Ordering::SeqCst);
        if self.local.suspend() {
            if self.data_down.load(Ordering::SeqCst) {
                self.local.serve_reserve(true);
            }
            self.resets.fetch_add(1, Ordering::Relaxed);
            *lock(&self.lost_at) = Some(Instant::now());
            tracing::warn!(
                reason = why,
                "L1 suspended: the invalidation link is down, reads go to L2 until it is back"
            );
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What to do after Redis refused the link.
enum Refused {
    Retry,
    Wait,
    GiveUp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Tracking,
    PubSub,
}

/// Where the link connects.
// One per cache, made once: the size of the variants does not matter.
#[allow(clippy::large_enum_variant)]
enum LinkTarget {
    /// One server (or the first node of a cluster).
    Fixed(redis::Client),
    /// The master the sentinels name at each (re)connection, so the link follows a
    /// failover as the data link does.
    Sentinel(Sentinels),
}

impl LinkTarget {
    /// Opens a connection with `config` (RESP3) to the server, or to the current master.
    async fn open(
        &self,
        config: &AsyncConnectionConfig,
    ) -> redis::RedisResult<MultiplexedConnection> {
        match self {
            LinkTarget::Fixed(client) => {
                client
                    .get_multiplexed_async_connection_with_config(config)
                    .await
            }
            LinkTarget::Sentinel(sentinels) => {
                let open = |client: redis::Client| {
                    let config = config.clone();
                    async move {
                        client
                            .get_multiplexed_async_connection_with_config(&config)
                            .await
                    }
                };
                sentinels.connect(ProtocolVersion::RESP3, open).await
            }
        }
    }
}

struct Shared {
    signals: Arc<Signals>,
    target: LinkTarget,
    /// `Auto`: may move from tracking to pub/sub, and from there to off.
    auto: bool,
    mode: Mutex<Mode>,
    /// Redis-level prefixes tracked; empty tracks every key.
    prefixes: Vec<String>,
    channel: String,
    /// Whether SDK writes are published on the channel.
    publishing: AtomicBool,
    remote: Remote,
    timeout: Duration,
    connect_timeout: Duration,
    max_delay: Duration,
    /// Through Sentinel: the `+switch-master` subscription of the live connection.
    watch: Mutex<Option<MultiplexedConnection>>,
}

/// The invalidation link of one cache. Cheap to clone.
#[derive(Clone)]
pub(crate) struct CoherenceLink {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for CoherenceLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoherenceLink")
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

/// The address the link connects to: the server, or the first cluster node.
fn link_address(r: &RedisConfig) -> String {
    match r.cluster_nodes.first() {
        Some(node) => r.node_url(node),
        None => r.connection_url(),
    }
}

/// Where the link connects, speaking RESP3, with the TLS material the data connection uses
/// (read once, when the configuration was validated): the server, or, through Sentinel,
/// the master of the moment.
fn link_client(
    cfg: &CacheConfig,
    r: &RedisConfig,
    tls: &TlsMaterial,
) -> redis::RedisResult<LinkTarget> {
    if let Some(sentinel) = &r.sentinel {
        return Ok(LinkTarget::Sentinel(Sentinels::new(
            r,
            sentinel,
            tls,
            cfg.timeout,
            cfg.connect_timeout,
            "invalidation",
        )?));
    }
    let info = link_address(r).as_str().into_connection_info()?;
    let resp3 = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    Ok(LinkTarget::Fixed(
        tls.client(info.set_redis_settings(resp3))?,
    ))
}

impl CoherenceLink {
    /// Starts the link when coherence applies (Redis configured, L1 enabled, not `Off`);
    /// L1 stays suspended until the link is up. `tls` is the material the configuration's
    /// validation loaded. Must run inside a Tokio runtime.
    pub(crate) fn start(
        cfg: &CacheConfig,
        tls: &TlsMaterial,
        local: &Local,
        remote: &Remote,
    ) -> Option<Self> {
        let redis = cfg.redis.as_ref()?;
        if cfg.coherence == Coherence::Off || !local.enabled() {
            return None;
        }
        let cluster = !redis.cluster_nodes.is_empty();
        let mode = match cfg.coherence {
            Coherence::Tracking if cluster => {
                tracing::warn!(
                    "cache coherence: tracking is not available on Redis Cluster yet; using pub/sub"
                );
                Mode::PubSub
            }
            Coherence::PubSub => Mode::PubSub,
            _ if cluster => Mode::PubSub,
            _ => Mode::Tracking,
        };
        let target = match link_client(cfg, redis, tls) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e.category(), "cache coherence: no usable address; L1 is not coherent");
                return None;
            }
        };
        let ns = cfg.namespace.as_ref().map(|ns| format!("{ns}:"));
        // Empty: every key (`BCAST` without `PREFIX`).
        let mut prefixes = cfg.tracked_prefixes();
        if !cfg.coherence_prefixes.is_empty() {
            // Narrowed to some prefixes: the stamps of tags and clear are tracked too.
            prefixes.push(format!(
                "{}{}",
                ns.as_deref().unwrap_or_default(),
                crate::key::RESERVED_PREFIX
            ));
        }
        local.suspend();
        let signals = Arc::new(Signals {
            local: local.clone(),
            strip: ns.clone().unwrap_or_default(),
            instance: format!("{:016x}", rand::random::<u64>()),
            state: AtomicU8::new(DOWN),
            live: AtomicU64::new(0),
            invalidations: AtomicU64::new(0),
            resets: AtomicU64::new(0),
            kick: Notify::new(),
            settled: Notify::new(),
            flush_due: AtomicBool::new(false),
            lost_at: Mutex::new(Some(Instant::now())),
            data_down: AtomicBool::new(!remote.is_up()),
        });
        let shared = Arc::new(Shared {
            signals,
            target,
            auto: cfg.coherence == Coherence::Auto,
            mode: Mutex::new(mode),
            prefixes,
            channel: format!("__cache-sdk__:invalidate:{}", ns.unwrap_or_default()),
            publishing: AtomicBool::new(mode == Mode::PubSub),
            remote: remote.clone(),
            timeout: cfg.timeout,
            connect_timeout: cfg.connect_timeout,
            max_delay: cfg.probe_interval.max(Duration::from_millis(10)),
            watch: Mutex::new(None),
        });
        let weak = Arc::downgrade(&shared);
        let signals = shared.signals.clone();
        remote.keep_running(move || run(weak.clone()), move || signals.runtime_lost());
        Some(Self { shared })
    }

    /// Waits, at most `within`, for the link to come up the first time, so that a cache
    /// that has just been built serves L1 at once.
    pub(crate) async fn settle(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let settled = self.shared.signals.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            if self.shared.signals.state.load(Ordering::SeqCst) != DOWN {
                return;
            }
            if tokio::time::timeout_at(deadline, settled).await.is_err() {
                return;
            }
        }
    }

    /// Tracking, pub/sub, down (L1 suspended) or off.
    pub(crate) fn state(&self) -> CoherenceState {
        match self.shared.signals.state.load(Ordering::Acquire) {
            TRACKING => CoherenceState::Tracking,
            PUBSUB => CoherenceState::PubSub,
            OFF => CoherenceState::Off,
            _ => CoherenceState::Down,
        }
    }

    /// Whether coherence is in force (it is not after Redis refused every mechanism).
    #[cfg_attr(not(feature = "sessions"), allow(dead_code))]
    pub(crate) fn active(&self) -> bool {
        self.shared.signals.state.load(Ordering::Acquire) != OFF
    }

    /// Keys evicted on word from Redis (a flush counts once).
    pub(crate) fn invalidations(&self) -> u64 {
        self.shared.signals.invalidations.load(Ordering::Relaxed)
    }

    /// Times L1 was suspended because the link was lost.
    pub(crate) fn resets(&self) -> u64 {
        self.shared.signals.resets.load(Ordering::Relaxed)
    }

    /// Tells the other instances, in pub/sub mode, that these keys were written through
    /// the SDK. Nothing to do with tracking: Redis tells them itself.
    pub(crate) async fn written<'k>(&self, keys: impl IntoIterator<Item = &'k str>) {
        if !self.shared.publishing.load(Ordering::Relaxed) {
            return;
        }
        let mut payload = self.shared.signals.instance.clone();
        for k in keys {
            payload.push('\n');
            payload.push_str(k);
        }
        self.shared
            .remote
            .publish(&self.shared.channel, payload.as_bytes())
            .await;
    }

    /// A listener for the remote tier's events (holds no reference to the tier itself).
    pub(crate) fn data_events(&self, memory: MemoryStore) -> impl Fn(bool) + Send + Sync + use<> {
        let signals = self.shared.signals.clone();
        move |lost: bool| {
            signals.data_down.store(lost, Ordering::SeqCst);
            if lost {
                // Redis is gone: what L1 held when the link went down is as fresh as
                // anything this instance can know.
                if signals.local.is_suspended() {
                    signals.local.serve_reserve(true);
                }
                seed_fallback(&signals.local, &memory);
            } else {
                signals.local.serve_reserve(false);
                // Writes replayed after an outage were not published: in pub/sub mode the
                // other instances are told to start afresh (tracking tells them itself).
                signals.flush_due.store(true, Ordering::SeqCst);
                signals.kick.notify_one();
            }
        }
    }

    /// While L1 is suspended and Redis is unavailable: the raw-backed entry L1 held under
    /// `key` when it was last active, as `T` or as its stored bytes. It is put into the
    /// fallback, so later changes go there and are replayed.
    #[cfg_attr(not(feature = "sessions"), allow(dead_code))]
    pub(crate) fn reserve<T: Send + Sync + 'static>(&self, key: &str) -> Option<Held<T>> {
        let s = &self.shared;
        if s.remote.is_up() {
            return None;
        }
        let (held, backing) = s.signals.local.reserve_backed::<T>(key)?;
        seed_one(&s.remote.fallback_store(), key, &backing);
        Some(held)
    }
}

fn seed_one(memory: &MemoryStore, key: &str, b: &Backing) {
    if let Some(left) = b.stored_until.checked_duration_since(Instant::now()) {
        if !left.is_zero() {
            memory.set_nx(key, b.raw.clone(), Some(left));
        }
    }
}

/// Hands the raw-backed entries L1 holds (or held while active, when suspended) to the
/// fallback, without marking them for replay: Redis has them.
fn seed_fallback(local: &Local, memory: &MemoryStore) {
    let entries = local.backed_entries();
    for (key, backing) in &entries {
        seed_one(memory, key, backing);
    }
    if !entries.is_empty() {
        tracing::info!(
            entries = entries.len(),
            "redis lost: raw-backed L1 entries handed to the in-memory fallback"
        );
    }
}

impl Shared {
    fn mode(&self) -> Mode {
        *lock(&self.mode)
    }

    async fn bounded<T>(
        &self,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, Failure> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(classify(&e)),
            Err(_) => Err(Failure::timed_out("no answer in time")),
        }
    }

    /// Opens the link and turns on tracking (or subscribes); then L1 serves again, empty.
    async fn establish(&self) -> Result<(MultiplexedConnection, Arc<Notify>), Failure> {
        let generation = self.signals.live.fetch_add(1, Ordering::SeqCst) + 1;
        let closed = Arc::new(Notify::new());
        let sender = {
            let signals = self.signals.clone();
            let closed = closed.clone();
            move |push: PushInfo| {
                signals.on_push(generation, &closed, push);
                Ok::<(), std::convert::Infallible>(())
            }
        };
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.timeout))
            .set_push_sender(sender);
        let connect = self.target.open(&config);
        let mut conn = match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(connect_failure(&e)),
            Err(_) => return Err(Failure::timed_out("connecting timed out")),
        };
        if let LinkTarget::Sentinel(sentinels) = &self.target {
            // The master moved while this connection still works (a planned failover):
            // close the link, so that it reconnects to the new master.
            let closed = closed.clone();
            *lock(&self.watch) = sentinels.watch(move || closed.notify_one()).await;
        }
        let mut name = redis::cmd("CLIENT");
        name.arg("SETNAME").arg(CONNECTION_NAME);
        // Only a label for operators: refusing it is not a reason to give up.
        let _ = self.bounded(name.query_async::<()>(&mut conn)).await;
        let mode = self.mode();
        match mode {
            Mode::Tracking => {
                let mut cmd = redis::cmd("CLIENT");
                cmd.arg("TRACKING").arg("ON").arg("BCAST");
                for p in &self.prefixes {
                    cmd.arg("PREFIX").arg(p);
                }
                self.bounded(cmd.query_async::<()>(&mut conn)).await?;
            }
            Mode::PubSub => {
                let channel = self.channel.clone();
                self.bounded(conn.subscribe(channel)).await?;
            }
        }
        // Pushes flow from here on; what changed before is unknown, so L1 starts empty.
        let was_down = self.signals.local.resume();
        self.signals.state.store(
            if mode == Mode::Tracking {
                TRACKING
            } else {
                PUBSUB
            },
            Ordering::SeqCst,
        );
        self.signals.settled.notify_waiters();
        let down_ms = lock(&self.signals.lost_at)
            .take()
            .map(|t| t.elapsed().as_millis() as u64);
        tracing::info!(
            coherence = if mode == Mode::Tracking {
                "tracking"
            } else {
                "pubsub"
            },
            resumed = was_down,
            down_ms,
            "cache coherence: invalidation link up, L1 serving"
        );
        Ok((conn, closed))
    }

    /// A setup that Redis refused: `Auto` moves on to the next mechanism. Returns whether
    /// to retry at once.
    fn refused(&self, why: &str, warned: &mut bool) -> Refused {
        if self.auto {
            let mut mode = lock(&self.mode);
            if *mode == Mode::Tracking {
                *mode = Mode::PubSub;
                self.publishing.store(true, Ordering::SeqCst);
                tracing::warn!(error = why, "cache coherence: Redis refused CLIENT TRACKING; using pub/sub (only writes made through the SDK evict L1)");
                return Refused::Retry;
            }
            // Neither (a server older than Redis 6, or a proxy): as without coherence.
            self.publishing.store(false, Ordering::SeqCst);
            self.signals.state.store(OFF, Ordering::SeqCst);
            self.signals.local.resume();
            self.signals.settled.notify_waiters();
            tracing::warn!(error = why, "cache coherence: Redis refused the invalidation link; coherence is off, L1 entries live at most the L1 TTL");
            return Refused::GiveUp;
        }
        if !*warned {
            *warned = true;
            tracing::error!(error = why, "cache coherence: Redis refused the invalidation link; L1 stays suspended until it accepts");
        }
        // Redis answers, so it may be changing keys we would not hear about: the records
        // kept for an outage are not safe any more.
        if self.signals.local.is_suspended() {
            self.signals.local.clear();
        }
        Refused::Wait
    }

    async fn healthy(&self, conn: &mut MultiplexedConnection) -> bool {
        if self.signals.state.load(Ordering::SeqCst) == DOWN {
            return false;
        }
        self.bounded(redis::cmd("PING").query_async::<()>(conn))
            .await
            .is_ok()
    }

    async fn publish_flush(&self) {
        if self.signals.flush_due.swap(false, Ordering::SeqCst)
            && self.publishing.load(Ordering::Relaxed)
        {
            let payload = self.signals.instance.clone();
            self.remote.publish(&self.channel, payload.as_bytes()).await;
        }
    }
}

/// Sorts a failure to open the link: only a server without RESP3 refuses it for good;
/// anything else (refused connection, too many clients, loading) is retried.
fn connect_failure(e: &redis::RedisError) -> Failure {
    let text = e.to_string();
    let no_resp3 = e.code() == Some("NOPROTO")
        || (text.contains("HELLO") && text.to_ascii_lowercase().contains("unknown"));
    match classify(e) {
        Failure::Rejected(why) if no_resp3 => Failure::Rejected(why),
        Failure::Rejected(why) | Failure::Unavailable(why) => Failure::Unavailable(why),
    }
}

/// The link's task: connect, watch, and reconnect with backoff; ends with the cache.
async fn run(weak: Weak<Shared>) {
    let mut delay = Duration::from_millis(10);
    let mut warned = false;
    loop {
        let Some(shared) = weak.upgrade() else { return };
        let (mut conn, closed) = match shared.establish().await {
            Ok(link) => {
                delay = Duration::from_millis(10);
                warned = false;
                link
            }
            Err(Failure::Rejected(why)) => {
                match shared.refused(&why.to_string(), &mut warned) {
                    Refused::Retry => continue,
                    Refused::GiveUp => return,
                    Refused::Wait => {}
                }
                let max = shared.max_delay.max(Duration::from_secs(1));
                drop(shared);
                tokio::time::sleep(max).await;
                continue;
            }
            Err(Failure::Unavailable(why)) => {
                tracing::debug!(error = %why, "cache coherence: invalidation link not up yet");
                let max = shared.max_delay;
                drop(shared);
                tokio::time::sleep(delay.mul_f64(rand::random_range(0.5..=1.0))).await;
                delay = (delay * 2).min(max);
                continue;
            }
        };
        let signals = shared.signals.clone();
        shared.publish_flush().await;
        drop(shared);
        loop {
            tokio::select! {
                () = closed.notified() => break,
                () = signals.kick.notified() => {}
                () = tokio::time::sleep(CHECK_INTERVAL) => {}
            }
            let Some(shared) = weak.upgrade() else { return };
            shared.publish_flush().await;
            if !shared.healthy(&mut conn).await {
                break;
            }
        }
        signals.suspend("the invalidation link stopped answering");
        drop(conn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signals() -> Signals {
        let local = Local::new(100, Duration::from_secs(60));
        Signals {
            local,
            strip: "ns:".into(),
            instance: "me".into(),
            state: AtomicU8::new(TRACKING),
            live: AtomicU64::new(1),
            invalidations: AtomicU64::new(0),
            resets: AtomicU64::new(0),
            kick: Notify::new(),
            settled: Notify::new(),
            flush_due: AtomicBool::new(false),
            lost_at: Mutex::new(None),
            data_down: AtomicBool::new(false),
        }
    }

    fn put(s: &Signals, key: &str) {
        let t = s.local.ticket(key);
        s.local.insert(key, Arc::new(1u8), None, t);
    }

    #[test]
    fn invalidation_pushes_strip_the_namespace_and_nil_flushes() {
        let s = signals();
        put(&s, "cache:a");
        put(&s, "cache:b");
        let closed = Notify::new();
        s.on_push(
            1,
            &closed,
            PushInfo {
                kind: PushKind::Invalidate,
                data: vec![Value::Array(vec![
                    Value::BulkString(b"ns:cache:a".to_vec()),
                    Value::BulkString(b"other:cache:b".to_vec()),
                ])],
            },
        );
        assert!(s.local.get::<u8>("cache:a").is_none());
        assert!(s.local.get::<u8>("cache:b").is_some());
        s.on_push(
            1,
            &closed,
            PushInfo {
                kind: PushKind::Invalidate,
                data: vec![Value::Nil],
            },
        );
        assert!(s.local.get::<u8>("cache:b").is_none());
        assert_eq!(s.invalidations.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn messages_skip_our_own_and_an_empty_one_flushes() {
        let s = signals();
        put(&s, "k1");
        put(&s, "k2");
        s.on_message(b"me\nk1");
        assert!(s.local.get::<u8>("k1").is_some());
        s.on_message(b"other\nk1");
        assert!(s.local.get::<u8>("k1").is_none());
        s.on_message(b"other");
        assert!(s.local.get::<u8>("k2").is_none());
    }

    #[test]
    fn only_the_live_connection_suspends() {
        let s = signals();
        let closed = Notify::new();
        s.on_push(
            7,
            &closed,
            PushInfo {
                kind: PushKind::Disconnection,
                data: vec![],
            },
        );
        assert!(!s.local.is_suspended());
        s.on_push(
            1,
            &closed,
            PushInfo {
                kind: PushKind::Disconnection,
                data: vec![],
            },
        );
        assert!(s.local.is_suspended());
        assert_eq!(s.state.load(Ordering::SeqCst), DOWN);
        assert_eq!(s.resets.load(Ordering::Relaxed), 1);
    }
}
