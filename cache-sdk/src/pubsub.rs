//! Typed publish/subscribe across app instances: [`Cache::publish`] and
//! [`Cache::subscribe`].
//!
//! A message is encoded like a cached value (the [`codec`] envelope, the cache's
//! codec and type tags, the `max_value_size` limit) behind a 10-byte frame that names the
//! instance that sent it. A subscriber receives a [`Subscription<T>`], a [`Stream`] of
//! `Result<T, Lagged>`.
//!
//! # Delivery
//!
//! - **In this instance** every message reaches every subscriber of its channel directly,
//!   through a bounded in-process bus (a Tokio `broadcast` channel per channel name), whether
//!   Redis is up, down or not configured. The copy that comes back from Redis is recognised
//!   by its instance id and ignored, so a local subscriber sees each message once.
//! - **Across instances** messages travel through Redis pub/sub: `PUBLISH`/`SUBSCRIBE` on a
//!   server, sharded `SPUBLISH`/`SSUBSCRIBE` on a Redis Cluster whose servers have it
//!   (Redis 7 or later; plain pub/sub on older clusters). Redis pub/sub keeps no history:
//!   **a message published while the link to Redis is down, or while another instance is
//!   disconnected, is lost for the other instances** (it still reaches this instance's
//!   subscribers). Use a cache key, a database or a Redis Stream where a change must not be
//!   missed; use pub/sub to *notify* (the receiver then reads the current state).
//! - **Redis restarts**: one connection per cache (named `cache-sdk-pubsub` in
//!   `CLIENT LIST`) carries the subscriptions. When it drops, it is reopened with backoff
//!   (10 ms up to the probe interval) and every channel with a live subscriber is
//!   subscribed again; [`PubSubStats::resubscribes`] counts those recoveries and
//!   [`PubSubStats::connected`] says whether the link is up now. Subscriptions themselves
//!   never end because of an outage.
//!
//! # Bounded memory
//!
//! Each channel's bus holds at most [`SUBSCRIBER_CAPACITY`] messages per channel. A
//! subscriber that falls further behind loses the oldest messages and receives one
//! `Err(Lagged(n))` saying how many; they are counted in [`PubSubStats::lagged`]. Pushes
//! from Redis are handed to the bus without waiting, so a slow subscriber never slows the
//! connection or other subscribers.
//!
//! # Foreign and corrupt messages
//!
//! A message on the channel that this SDK did not write (another program's `PUBLISH`), or
//! that does not decode as the subscriber's `T` (another type, another type tag version,
//! truncated, over the size limit), is skipped with a warning and counted in
//! [`PubSubStats::skipped`]; it never ends the stream and never panics.
//!
//! # Channel names
//!
//! Channel names follow the key rules (not empty, no control characters, at most 1024
//! bytes) and are prefixed with the cache's namespace like keys (`<namespace>:<channel>`
//! in Redis), so two apps sharing a Redis with different namespaces do not hear each
//! other. Names starting with `__cache-sdk__` are reserved for the SDK's own channels.
//!
//! This module owns the pub/sub link and the in-process bus. It imports the configuration,
//! the codec and the Redis link's error sorting; no tier knows it exists.

use std::collections::{HashMap, HashSet};
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::stream::{BoxStream, Stream, StreamExt};
#[cfg(feature = "cluster")]
use redis::cluster::ClusterClientBuilder;
#[cfg(feature = "cluster")]
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{
    AsyncConnectionConfig, IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, Value,
};
use tokio::sync::{broadcast, Notify};

use crate::cache::{Cache, CacheValue};
use crate::codec::{self, Codec, TypeTags};
use crate::config::{CacheConfig, RedisConfig};
use crate::error::{Error, Result};
use crate::key;
use crate::tier::redis::{classify, Conn, Failure};
use crate::tls::TlsMaterial;

/// How many messages each channel's in-process bus keeps for subscribers that have not read
/// them yet; a subscriber further behind is told it [`Lagged`].
pub const SUBSCRIBER_CAPACITY: usize = 1024;

/// The name the pub/sub connection gives itself (`CLIENT SETNAME`).
pub(crate) const CONNECTION_NAME: &str = "cache-sdk-pubsub";

/// How often the link is checked with a `PING`, and the subscriptions reconciled.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Channel names reserved for the SDK (the invalidation channel).
const RESERVED_PREFIX: &str = "__cache-sdk__";

/// The frame before the envelope: magic, version, the sending instance (8 bytes).
const FRAME_MAGIC: u8 = 0xCB;
const FRAME_VERSION: u8 = 1;
const FRAME_LEN: usize = 10;

const IDLE: u8 = 0;
const DOWN: u8 = 1;
const UP: u8 = 2;

/// A subscriber fell behind by this many messages, which it will not receive (the bus of a
/// channel is bounded, see [`SUBSCRIBER_CAPACITY`]).
///
/// ```
/// let lag = cache_sdk::Lagged(3);
/// assert_eq!(lag.to_string(), "the subscriber fell behind: 3 messages were lost");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the subscriber fell behind: {0} messages were lost")]
pub struct Lagged(pub u64);

/// What [`Cache::pubsub_stats`] reports about publish/subscribe.
///
/// ```
/// let stats = cache_sdk::Cache::in_memory().pubsub_stats();
/// assert!(!stats.connected);
/// assert_eq!(stats.subscribers, 0);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PubSubStats {
    /// Whether Redis is configured for pub/sub (otherwise delivery is in-process only).
    pub redis_configured: bool,
    /// Whether the pub/sub link to Redis is up (messages cross instances).
    pub connected: bool,
    /// Whether the link uses sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`, Redis Cluster 7+).
    pub sharded: bool,
    /// Channels with at least one subscriber in this instance.
    pub channels: usize,
    /// Live subscriptions in this instance.
    pub subscribers: usize,
    /// Messages published by this instance.
    pub published: u64,
    /// Of those, messages that reached only this instance (Redis was not reachable).
    pub local_only: u64,
    /// Messages received from other instances through Redis.
    pub received: u64,
    /// Messages skipped: not written by this SDK, or not decodable as the subscriber's type.
    pub skipped: u64,
    /// Messages lost by subscribers that fell behind.
    pub lagged: u64,
    /// Times the link came back after it was lost and every channel was subscribed again.
    pub resubscribes: u64,
}

/// A message as it travels on the bus: the envelope, shared by every subscriber.
type Frame = Arc<[u8]>;

#[derive(Default)]
struct Counters {
    published: AtomicU64,
    local_only: AtomicU64,
    received: AtomicU64,
    skipped: AtomicU64,
    lagged: AtomicU64,
    resubscribes: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The in-process bus and what the push handler needs; holds nothing of the connection.
struct Router {
    instance: u64,
    /// By Redis channel name (namespaced).
    channels: Mutex<HashMap<String, broadcast::Sender<Frame>>>,
    counters: Counters,
    /// Generation of the live connection; a close of an older one is ignored.
    live: AtomicU64,
}

impl Router {
    fn deliver(&self, channel: &str, frame: Frame) {
        if let Some(tx) = lock(&self.channels).get(channel) {
            // No receiver left: nobody to tell.
            let _ = tx.send(frame);
        }
    }

    fn on_push(&self, generation: u64, closed: &Notify, push: PushInfo) {
        match push.kind {
            PushKind::Message | PushKind::SMessage => {
                if let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) =
                    (push.data.first(), push.data.get(1))
                {
                    if let Ok(channel) = std::str::from_utf8(channel) {
                        self.on_message(channel, payload);
                    }
                }
            }
            PushKind::Disconnection if self.live.load(Ordering::SeqCst) == generation => {
                closed.notify_one();
            }
            _ => {}
        }
    }

    fn on_message(&self, channel: &str, payload: &[u8]) {
        match read_frame(payload) {
            Some((instance, _)) if instance == self.instance => {}
            Some((_, envelope)) => {
                self.counters.received.fetch_add(1, Ordering::Relaxed);
                self.deliver(channel, Arc::from(envelope));
            }
            None => {
                self.counters.skipped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    channel,
                    bytes = payload.len(),
                    "pub/sub message not written by cache-sdk; skipped"
                );
            }
        }
    }
}

fn write_frame(instance: u64, envelope: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_LEN + envelope.len());
    out.push(FRAME_MAGIC);
    out.push(FRAME_VERSION);
    out.extend_from_slice(&instance.to_be_bytes());
    out.extend_from_slice(envelope);
    out
}

/// The sending instance and the envelope, or `None` for a message of another kind.
fn read_frame(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let (head, envelope) = bytes.split_at_checked(FRAME_LEN)?;
    if head[0] != FRAME_MAGIC || head[1] != FRAME_VERSION {
        return None;
    }
    let instance = u64::from_be_bytes(head[2..FRAME_LEN].try_into().ok()?);
    Some((instance, envelope))
}

/// How to open the link.
struct LinkConfig {
    redis: RedisConfig,
    tls: TlsMaterial,
    timeout: Duration,
    connect_timeout: Duration,
    max_delay: Duration,
}

struct Shared {
    router: Arc<Router>,
    namespace: Option<String>,
    codec: Codec,
    types: TypeTags,
    max_value_size: usize,
    link: Option<LinkConfig>,
    conn: Mutex<Option<Conn>>,
    state: AtomicU8,
    sharded: std::sync::atomic::AtomicBool,
    /// The channels subscribed on the live connection.
    subscribed: Mutex<HashSet<String>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Wakes the task: subscriptions changed, or a publish found Redis unavailable.
    kick: Arc<Notify>,
    /// Woken when the link's state or its subscriptions change.
    changed: Notify,
}

/// Publish/subscribe for one cache. Cheap to clone.
#[derive(Clone)]
pub(crate) struct PubSub {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for PubSub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PubSub")
            .field("redis", &self.shared.link.is_some())
            .field("state", &self.shared.state.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl PubSub {
    /// Pub/sub for a cache built from `cfg` (`tls`: the material its validation loaded).
    /// Opens nothing: the link starts with the first publish or subscribe.
    pub(crate) fn new(cfg: &CacheConfig, tls: &TlsMaterial, types: &TypeTags) -> Self {
        let link = cfg.redis.as_ref().map(|redis| LinkConfig {
            redis: redis.clone(),
            tls: tls.clone(),
            timeout: cfg.timeout,
            connect_timeout: cfg.connect_timeout,
            max_delay: cfg.probe_interval.max(Duration::from_millis(10)),
        });
        Self {
            shared: Arc::new(Shared {
                router: Arc::new(Router {
                    instance: rand::random(),
                    channels: Mutex::new(HashMap::new()),
                    counters: Counters::default(),
                    live: AtomicU64::new(0),
                }),
                namespace: cfg.namespace.clone(),
                codec: cfg.codec,
                types: types.clone(),
                max_value_size: cfg.max_value_size,
                link,
                conn: Mutex::new(None),
                state: AtomicU8::new(IDLE),
                sharded: std::sync::atomic::AtomicBool::new(false),
                subscribed: Mutex::new(HashSet::new()),
                task: Mutex::new(None),
                kick: Arc::new(Notify::new()),
                changed: Notify::new(),
            }),
        }
    }

    pub(crate) fn stats(&self) -> PubSubStats {
        let s = &self.shared;
        let c = &s.router.counters;
        let (channels, subscribers) = {
            let map = lock(&s.router.channels);
            let live = map.values().map(broadcast::Sender::receiver_count);
            live.fold((0, 0), |(ch, subs), n| (ch + usize::from(n > 0), subs + n))
        };
        PubSubStats {
            redis_configured: s.link.is_some(),
            connected: s.state.load(Ordering::Acquire) == UP,
            sharded: s.sharded.load(Ordering::Relaxed),
            channels,
            subscribers,
            published: c.published.load(Ordering::Relaxed),
            local_only: c.local_only.load(Ordering::Relaxed),
            received: c.received.load(Ordering::Relaxed),
            skipped: c.skipped.load(Ordering::Relaxed),
            lagged: c.lagged.load(Ordering::Relaxed),
            resubscribes: c.resubscribes.load(Ordering::Relaxed),
        }
    }

    /// The channel's name in Redis, after checking it.
    fn channel_name(&self, channel: &str) -> Result<String> {
        key::validate(channel)?;
        if channel.starts_with(RESERVED_PREFIX) {
            return Err(Error::invalid_key(
                channel,
                "channel names starting with __cache-sdk__ are reserved",
            ));
        }
        Ok(match &self.shared.namespace {
            Some(ns) => format!("{ns}:{channel}"),
            None => channel.to_owned(),
        })
    }

    /// Starts the link task when Redis is configured and no task runs (first use, or the
    /// runtime that ran it has shut down), then waits at most the connect timeout for its
    /// first attempt.
    async fn ensure_link(&self) {
        let s = &self.shared;
        if s.link.is_none() {
            return;
        }
        {
            let mut task = lock(&s.task);
            if task
                .as_ref()
                .is_none_or(tokio::task::JoinHandle::is_finished)
            {
                s.state.store(IDLE, Ordering::SeqCst);
                *task = Some(tokio::spawn(run(Arc::downgrade(s))));
            }
        }
        self.wait_until(|s| s.state.load(Ordering::SeqCst) != IDLE)
            .await;
    }

    /// Waits, at most the connect timeout, until `done` holds.
    async fn wait_until(&self, done: impl Fn(&Shared) -> bool) {
        let s = &self.shared;
        let Some(link) = &s.link else { return };
        let deadline = tokio::time::Instant::now() + link.connect_timeout;
        loop {
            let changed = s.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if done(s) {
                return;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return;
            }
        }
    }

    async fn publish<T: CacheValue>(&self, channel: &str, message: &T) -> Result<()> {
        let name = self.channel_name(channel)?;
        let s = &self.shared;
        let envelope =
            codec::encode(message, s.codec, s.types.of::<T>(), None).map_err(|message| {
                Error::Encode {
                    key: channel.to_owned(),
                    message,
                }
            })?;
        if envelope.len() > s.max_value_size {
            return Err(Error::ValueTooLarge {
                key: channel.to_owned(),
                size: envelope.len(),
                limit: s.max_value_size,
            });
        }
        let c = &s.router.counters;
        c.published.fetch_add(1, Ordering::Relaxed);
        let payload = write_frame(s.router.instance, &envelope);
        s.router.deliver(&name, Arc::from(envelope));
        if s.link.is_none() {
            c.local_only.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        self.ensure_link().await;
        let conn = lock(&s.conn).clone();
        let (Some(mut conn), true) = (conn, s.state.load(Ordering::SeqCst) == UP) else {
            c.local_only.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        };
        let command = if s.sharded.load(Ordering::Relaxed) {
            "SPUBLISH"
        } else {
            "PUBLISH"
        };
        let mut cmd = redis::cmd(command);
        cmd.arg(&name).arg(payload);
        match s.bounded(cmd.query_async::<i64>(&mut conn)).await {
            Ok(_) => Ok(()),
            Err(Failure::Unavailable(e)) => {
                c.local_only.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "pub/sub message reached this instance only");
                s.kick.notify_one();
                Ok(())
            }
            Err(Failure::Rejected(e)) => Err(Error::Backend(e)),
        }
    }

    async fn subscribe<T: CacheValue>(&self, channel: &str) -> Result<Subscription<T>> {
        let name = self.channel_name(channel)?;
        let s = &self.shared;
        let rx = lock(&s.router.channels)
            .entry(name.clone())
            .or_insert_with(|| broadcast::channel(SUBSCRIBER_CAPACITY).0)
            .subscribe();
        if s.link.is_some() {
            self.ensure_link().await;
            s.kick.notify_one();
            self.wait_until(|s| {
                s.state.load(Ordering::SeqCst) != UP || lock(&s.subscribed).contains(&name)
            })
            .await;
        }
        Ok(Subscription::new(self.shared.clone(), channel, rx))
    }
}

impl Shared {
    async fn bounded<T>(
        &self,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> std::result::Result<T, Failure> {
        let timeout = self
            .link
            .as_ref()
            .map_or(Duration::from_millis(100), |l| l.timeout);
        match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(classify(&e)),
            Err(_) => Err(Failure::timed_out("no answer in time")),
        }
    }

    /// Opens the connection (RESP3, pushes routed to the bus) and subscribes every wanted
    /// channel.
    async fn establish(&self, link: &LinkConfig) -> std::result::Result<Arc<Notify>, Failure> {
        let generation = self.router.live.fetch_add(1, Ordering::SeqCst) + 1;
        let closed = Arc::new(Notify::new());
        let sender = {
            let router = self.router.clone();
            let closed = closed.clone();
            move |push: PushInfo| {
                router.on_push(generation, &closed, push);
                Ok::<(), std::convert::Infallible>(())
            }
        };
        let r = &link.redis;
        let connect = async {
            #[cfg(feature = "cluster")]
            if r.is_cluster() {
                let nodes: Vec<String> = r.cluster_nodes.iter().map(|n| r.node_url(n)).collect();
                let builder = ClusterClientBuilder::new(nodes)
                    .connection_timeout(link.connect_timeout)
                    .response_timeout(link.timeout)
                    .use_protocol(ProtocolVersion::RESP3)
                    .push_sender(sender);
                let client = link.tls.cluster(builder).build()?;
                let mut conn = client.get_async_connection().await?;
                // One node is enough: the nodes of a cluster run one version.
                let mut cmd = redis::cmd("INFO");
                cmd.arg("server");
                let random = RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random);
                let info: String = redis::from_redis_value(conn.route_command(cmd, random).await?)?;
                return Ok::<_, redis::RedisError>((Conn::Cluster(conn), server_major(&info) >= 7));
            }
            {
                let info = r.connection_url().as_str().into_connection_info()?;
                let resp3 = info
                    .redis_settings()
                    .clone()
                    .set_protocol(ProtocolVersion::RESP3);
                let client = link.tls.client(info.set_redis_settings(resp3))?;
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(link.connect_timeout))
                    .set_response_timeout(Some(link.timeout))
                    .set_push_sender(sender);
                let mut conn = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                let mut name = redis::cmd("CLIENT");
                name.arg("SETNAME").arg(CONNECTION_NAME);
                // Only a label for operators: refusing it is no reason to give up.
                let _ = name.query_async::<()>(&mut conn).await;
                Ok::<_, redis::RedisError>((Conn::Single(conn), false))
            }
        };
        let (conn, sharded) = match tokio::time::timeout(link.connect_timeout, connect).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(Failure::Unavailable(classify(&e).into_error())),
            Err(_) => return Err(Failure::timed_out("connecting timed out")),
        };
        self.sharded.store(sharded, Ordering::Relaxed);
        lock(&self.subscribed).clear();
        *lock(&self.conn) = Some(conn);
        self.reconcile().await?;
        Ok(closed)
    }

    /// Subscribes the channels that have subscribers and are not subscribed yet, and
    /// unsubscribes those that lost their last one.
    async fn reconcile(&self) -> std::result::Result<(), Failure> {
        let (wanted, to_add, to_drop) = {
            let mut map = lock(&self.router.channels);
            map.retain(|_, tx| tx.receiver_count() > 0);
            let wanted: HashSet<String> = map.keys().cloned().collect();
            let subscribed = lock(&self.subscribed);
            let to_add: Vec<String> = wanted.difference(&subscribed).cloned().collect();
            let to_drop: Vec<String> = subscribed.difference(&wanted).cloned().collect();
            (wanted, to_add, to_drop)
        };
        let _ = wanted;
        let Some(conn) = lock(&self.conn).clone() else {
            return Err(Failure::timed_out("not connected"));
        };
        let sharded = self.sharded.load(Ordering::Relaxed);
        for channel in to_add {
            match self
                .subscribe_on(conn.clone(), &channel, sharded, true)
                .await
            {
                Ok(()) => {
                    lock(&self.subscribed).insert(channel);
                    self.changed.notify_waiters();
                }
                Err(Failure::Rejected(e)) => {
                    tracing::error!(channel, error = %e, "Redis refused the subscription; this channel reaches this instance only");
                }
                Err(failure) => return Err(failure),
            }
        }
        for channel in to_drop {
            self.subscribe_on(conn.clone(), &channel, sharded, false)
                .await?;
            lock(&self.subscribed).remove(&channel);
        }
        Ok(())
    }

    #[cfg_attr(not(feature = "cluster"), allow(unused_variables))]
    async fn subscribe_on(
        &self,
        conn: Conn,
        channel: &str,
        sharded: bool,
        on: bool,
    ) -> std::result::Result<(), Failure> {
        let channel = channel.to_owned();
        match conn {
            Conn::Single(mut c) if on => self.bounded(c.subscribe(channel)).await,
            Conn::Single(mut c) => self.bounded(c.unsubscribe(channel)).await,
            #[cfg(feature = "cluster")]
            Conn::Cluster(mut c) => match (sharded, on) {
                (true, true) => self.bounded(c.ssubscribe(channel)).await,
                (true, false) => self.bounded(c.sunsubscribe(channel)).await,
                (false, true) => self.bounded(c.subscribe(channel)).await,
                (false, false) => self.bounded(c.unsubscribe(channel)).await,
            },
        }
    }

    async fn healthy(&self) -> bool {
        let Some(mut conn) = lock(&self.conn).clone() else {
            return false;
        };
        self.bounded(redis::cmd("PING").query_async::<()>(&mut conn))
            .await
            .is_ok()
    }

    fn set_state(&self, state: u8) {
        self.state.store(state, Ordering::SeqCst);
        self.changed.notify_waiters();
    }
}

/// The major version in an `INFO server` answer (`redis_version:7.2.4`), 0 when unknown.
#[cfg_attr(not(feature = "cluster"), allow(dead_code))]
fn server_major(info: &str) -> u32 {
    info.lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.trim().parse().ok())
        .unwrap_or(0)
}

/// The link's task: connect, subscribe, watch, and reconnect with backoff; ends with the
/// cache (and its subscriptions).
async fn run(weak: Weak<Shared>) {
    let mut delay = Duration::from_millis(10);
    let mut lost = false;
    loop {
        let Some(shared) = weak.upgrade() else { return };
        let Some(link) = shared.link.as_ref() else {
            return;
        };
        let closed = match shared.establish(link).await {
            Ok(closed) => closed,
            Err(failure) => {
                *lock(&shared.conn) = None;
                if shared.state.swap(DOWN, Ordering::SeqCst) != DOWN {
                    shared.changed.notify_waiters();
                }
                if !lost {
                    lost = true;
                    tracing::warn!(error = %failure, "pub/sub link to Redis is down; messages reach this instance only until it is back");
                }
                let max = link.max_delay;
                drop(shared);
                tokio::time::sleep(delay.mul_f64(rand::random_range(0.5..=1.0))).await;
                delay = (delay * 2).min(max);
                continue;
            }
        };
        delay = Duration::from_millis(10);
        // From here on, a failure to connect is a loss to recover from.
        let recovered = std::mem::replace(&mut lost, true);
        let channels = lock(&shared.subscribed).len();
        if recovered {
            shared
                .router
                .counters
                .resubscribes
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(channels, "pub/sub link back; channels subscribed again");
        }
        shared.set_state(UP);
        drop(shared);
        loop {
            let Some(shared) = weak.upgrade() else { return };
            let kick = shared.kick.clone();
            drop(shared);
            tokio::select! {
                () = closed.notified() => break,
                () = kick.notified() => {}
                () = tokio::time::sleep(CHECK_INTERVAL) => {}
            }
            let Some(shared) = weak.upgrade() else { return };
            if shared.reconcile().await.is_err() || !shared.healthy().await {
                break;
            }
        }
        if let Some(shared) = weak.upgrade() {
            *lock(&shared.conn) = None;
            lock(&shared.subscribed).clear();
            shared.set_state(DOWN);
        }
        tracing::warn!(
            "pub/sub link to Redis lost; messages reach this instance only until it is back"
        );
    }
}

/// A subscription to one channel: a [`Stream`] of `Ok(message)`, with an `Err(Lagged(n))`
/// when the subscriber fell behind and lost `n` messages. Made by [`Cache::subscribe`];
/// dropping it unsubscribes (Redis is told when the channel's last subscriber goes).
///
/// The stream does not end while the cache lives, Redis outages included.
///
/// ```
/// use futures::StreamExt;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> cache_sdk::Result<()> {
/// let cache = cache_sdk::Cache::in_memory();
/// let mut sub = cache.subscribe::<u32>("orders").await?;
/// cache.publish("orders", &7u32).await?;
/// assert_eq!(sub.next().await, Some(Ok(7)));
/// # Ok(()) }
/// ```
pub struct Subscription<T> {
    channel: String,
    shared: Arc<Shared>,
    stream: BoxStream<'static, std::result::Result<T, Lagged>>,
    _type: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for Subscription<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("channel", &self.channel)
            .field("type", &std::any::type_name::<T>())
            .finish_non_exhaustive()
    }
}

impl<T: CacheValue> Subscription<T> {
    fn new(shared: Arc<Shared>, channel: &str, rx: broadcast::Receiver<Frame>) -> Self {
        let tag = shared.types.of::<T>();
        let limit = shared.max_value_size;
        let router = shared.router.clone();
        let log_channel = channel.to_owned();
        let stream = futures::stream::unfold(rx, move |mut rx| {
            let router = router.clone();
            let channel = log_channel.clone();
            async move {
                loop {
                    match rx.recv().await {
                        Ok(frame) => match codec::decode::<T>(&frame, tag, limit) {
                            Ok(v) => return Some((Ok(v), rx)),
                            Err(e) => {
                                router.counters.skipped.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(
                                    channel,
                                    error = %e,
                                    expected = std::any::type_name::<T>(),
                                    "pub/sub message does not decode; skipped"
                                );
                            }
                        },
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            router.counters.lagged.fetch_add(n, Ordering::Relaxed);
                            return Some((Err(Lagged(n)), rx));
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            }
        })
        .boxed();
        Self {
            channel: channel.to_owned(),
            shared,
            stream,
            _type: PhantomData,
        }
    }

    /// The next message (or how many were lost); `None` only once the cache is gone.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> cache_sdk::Result<()> {
    /// let cache = cache_sdk::Cache::in_memory();
    /// let mut sub = cache.subscribe::<String>("news").await?;
    /// cache.publish("news", &"hello".to_string()).await?;
    /// assert_eq!(sub.recv().await, Some(Ok("hello".to_string())));
    /// # Ok(()) }
    /// ```
    pub async fn recv(&mut self) -> Option<std::result::Result<T, Lagged>> {
        self.stream.next().await
    }

    /// The channel, as given to [`Cache::subscribe`] (without the namespace).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> cache_sdk::Result<()> {
    /// let sub = cache_sdk::Cache::in_memory().subscribe::<u8>("alerts").await?;
    /// assert_eq!(sub.channel(), "alerts");
    /// # Ok(()) }
    /// ```
    pub fn channel(&self) -> &str {
        &self.channel
    }
}

impl<T> Stream for Subscription<T> {
    type Item = std::result::Result<T, Lagged>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.stream.as_mut().poll_next(cx)
    }
}

impl<T> Drop for Subscription<T> {
    fn drop(&mut self) {
        // The task unsubscribes the channel from Redis once its last receiver is gone.
        self.shared.kick.notify_one();
    }
}

impl Cache {
    /// Publishes `message` on `channel`: to every subscriber of this instance at once, and
    /// through Redis to the other instances (sharded pub/sub on a Redis Cluster 7+). The
    /// message is encoded like a cached value (the cache's codec and type tags).
    ///
    /// While Redis is unreachable the message reaches this instance's subscribers only and
    /// is counted in [`PubSubStats::local_only`]: pub/sub keeps no history, so other
    /// instances never see it (see [the module docs](crate::pubsub)).
    ///
    /// # Errors
    /// [`Error::InvalidKey`] for a bad channel name, [`Error::Encode`],
    /// [`Error::ValueTooLarge`] (over `max_value_size`), or [`Error::Backend`] when Redis
    /// refuses the command (an ACL without the channel). Redis being unreachable is not an
    /// error.
    ///
    /// ```
    /// #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    /// struct PriceChanged { id: u64, cents: u64 }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> cache_sdk::Result<()> {
    /// let cache = cache_sdk::Cache::in_memory();
    /// let mut prices = cache.subscribe::<PriceChanged>("prices").await?;
    /// cache.publish("prices", &PriceChanged { id: 3, cents: 1999 }).await?;
    /// assert_eq!(prices.recv().await, Some(Ok(PriceChanged { id: 3, cents: 1999 })));
    /// # Ok(()) }
    /// ```
    pub async fn publish<T: CacheValue>(&self, channel: &str, message: &T) -> Result<()> {
        self.pubsub().publish(channel, message).await
    }

    /// Subscribes to `channel`: the returned [`Subscription`] yields every message published
    /// on it from now on, by this instance or any other one sharing the Redis (and
    /// namespace), decoded as `T`. A message that does not decode as `T` is skipped and
    /// counted in [`PubSubStats::skipped`]. Waits, at most the connect timeout, until Redis
    /// has confirmed the subscription; without Redis, subscribes in this instance only.
    ///
    /// The subscription survives Redis outages: it is renewed when Redis is back.
    ///
    /// # Errors
    /// [`Error::InvalidKey`] for a bad channel name.
    ///
    /// ```
    /// use futures::StreamExt;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> cache_sdk::Result<()> {
    /// let cache = cache_sdk::Cache::in_memory();
    /// let mut events = cache.subscribe::<String>("events").await?;
    /// cache.publish("events", &"saved".to_string()).await?;
    /// while let Some(event) = events.next().await {
    ///     match event {
    ///         Ok(text) => { assert_eq!(text, "saved"); break; }
    ///         Err(lagged) => eprintln!("{lagged}"),
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn subscribe<T: CacheValue>(&self, channel: &str) -> Result<Subscription<T>> {
        self.pubsub().subscribe(channel).await
    }

    /// Publish/subscribe counters and the state of the pub/sub link.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> cache_sdk::Result<()> {
    /// let cache = cache_sdk::Cache::in_memory();
    /// let _sub = cache.subscribe::<u8>("ticks").await?;
    /// cache.publish("ticks", &1u8).await?;
    /// let stats = cache.pubsub_stats();
    /// assert_eq!((stats.subscribers, stats.published, stats.local_only), (1, 1, 1));
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn pubsub_stats(&self) -> PubSubStats {
        self.pubsub().stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_foreign_bytes_are_refused() {
        let frame = write_frame(42, b"envelope");
        assert_eq!(read_frame(&frame), Some((42, &b"envelope"[..])));
        assert_eq!(read_frame(b"hello world, not ours"), None);
        assert_eq!(read_frame(b"short"), None);
        assert_eq!(read_frame(&[]), None);
    }

    #[test]
    fn server_versions_are_read_from_info() {
        assert_eq!(server_major("# Server\r\nredis_version:7.2.4\r\n"), 7);
        assert_eq!(server_major("redis_version:6.0.16"), 6);
        assert_eq!(server_major("nothing"), 0);
    }

    #[tokio::test]
    async fn foreign_and_corrupt_messages_are_skipped_and_counted() {
        let cache = Cache::in_memory();
        let ps = cache.pubsub().clone();
        let mut sub = cache.subscribe::<u32>("c").await.expect("subscribe");
        ps.shared.router.on_message("c", b"not a frame at all");
        // A frame from another instance whose envelope is garbage.
        ps.shared
            .router
            .on_message("c", &write_frame(1, b"\xCA\x01garbage"));
        // A frame from another instance with a string, not a u32... then a good one.
        let text = codec::encode(&"x".to_string(), Codec::Bincode, Default::default(), None)
            .expect("encode");
        ps.shared.router.on_message("c", &write_frame(1, &text));
        let good = codec::encode(&5u32, Codec::Bincode, Default::default(), None).expect("encode");
        ps.shared.router.on_message("c", &write_frame(1, &good));
        assert_eq!(sub.recv().await, Some(Ok(5)));
        let stats = cache.pubsub_stats();
        assert_eq!(stats.skipped, 3);
        assert_eq!(stats.received, 3);
    }

    #[tokio::test]
    async fn own_echoes_are_ignored() {
        let cache = Cache::in_memory();
        let ps = cache.pubsub().clone();
        let mut sub = cache.subscribe::<u32>("c").await.expect("subscribe");
        let env = codec::encode(&9u32, Codec::Bincode, Default::default(), None).expect("encode");
        ps.shared
            .router
            .on_message("c", &write_frame(ps.shared.router.instance, &env));
        cache.publish("c", &10u32).await.expect("publish");
        assert_eq!(sub.recv().await, Some(Ok(10)));
    }

    #[tokio::test]
    async fn a_slow_subscriber_is_told_how_many_it_lost() {
        let cache = Cache::in_memory();
        let mut sub = cache.subscribe::<u64>("fast").await.expect("subscribe");
        let total = SUBSCRIBER_CAPACITY as u64 + 100;
        for i in 0..total {
            cache.publish("fast", &i).await.expect("publish");
        }
        assert_eq!(sub.recv().await, Some(Err(Lagged(100))));
        assert_eq!(sub.recv().await, Some(Ok(100)));
        assert_eq!(cache.pubsub_stats().lagged, 100);
    }

    #[tokio::test]
    async fn channel_names_are_checked_and_reserved_names_refused() {
        let cache = Cache::in_memory();
        assert!(cache.subscribe::<u8>("").await.is_err());
        assert!(cache.publish("bad\nname", &1u8).await.is_err());
        assert!(cache.subscribe::<u8>("__cache-sdk__:x").await.is_err());
    }

    #[tokio::test]
    async fn dropping_the_last_subscriber_frees_the_channel() {
        let cache = Cache::in_memory();
        let a = cache.subscribe::<u8>("x").await.expect("subscribe");
        let b = cache.subscribe::<u8>("x").await.expect("subscribe");
        assert_eq!(cache.pubsub_stats().subscribers, 2);
        drop(a);
        drop(b);
        let stats = cache.pubsub_stats();
        assert_eq!((stats.channels, stats.subscribers), (0, 0));
    }
}
