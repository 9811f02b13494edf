//! Finding the master through Redis Sentinel.
//!
//! [`Sentinels::connect`] asks every sentinel at once where the master is
//! (`SENTINEL get-master-addr-by-name <name>`), connects to the first address given, and
//! checks with `ROLE` that the node is a master (a sentinel that has not yet heard of a
//! failover names the old master, which may be back as a replica); on a wrong or dead
//! node it tries the address the next sentinel gives. Both links call it each time they
//! (re)connect: the data link from its probe, the invalidation link from its reconnect
//! loop, so a failover is followed with no state of its own to keep in step.
//!
//! [`Sentinels::watch`] also subscribes to `+switch-master` on one sentinel: when the
//! sentinels move the master while the link is still connected to the old one (a planned
//! `SENTINEL FAILOVER` leaves the old master up, and taking writes, until the sentinels
//! turn it into a replica, up to ten seconds later), the link drops its connection at
//! once, and the next connection goes first to the address announced. The announcement
//! also wakes the link's owner ([`Sentinels::switched`]): after the old master died, the
//! data link's probe reconnects at once instead of at its next probe (up to the probe
//! interval later).
//!
//! This is the client protocol Redis documents for Sentinel clients. It is written here
//! rather than taken from redis-rs's `sentinel` module so that every step is bounded by
//! the cache's own timeouts, the sentinels are asked at once rather than in turn (a dead
//! one costs nothing), and the same TLS material serves sentinels and master.
//!
//! May import: the configuration, the TLS material. Must not: know about the state machine;
//! errors go back to the caller, which sorts them.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{
    AsyncConnectionConfig, ErrorKind, IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind,
    RedisError, RedisResult, Role, Value,
};
use tokio::sync::Notify;

use crate::config::{RedisConfig, SentinelConfig};
use crate::tls::TlsMaterial;

/// What a `+switch-master` subscription calls when the master moves.
type OnSwitch = Arc<dyn Fn() + Send + Sync>;

/// The sentinels of one master, and how to reach the master they name.
pub(crate) struct Sentinels {
    /// Each sentinel's `host:port` and a client for it (the sentinels' credentials, the
    /// cache's TLS material).
    nodes: Vec<(String, redis::Client)>,
    master_name: String,
    /// The data nodes' settings (credentials, database, TLS), for the master's URL.
    redis: RedisConfig,
    tls: TlsMaterial,
    timeout: Duration,
    connect_timeout: Duration,
    /// The master last connected to (`host:port`): a change is logged once, and a
    /// `+switch-master` to it is not news.
    current: Arc<Mutex<Option<String>>>,
    /// The address the last `+switch-master` named, tried first at the next connection.
    announced: Arc<Mutex<Option<(String, u16)>>>,
    /// The `+switch-master` subscription, kept across reconnections of the link while the
    /// sentinel connection lives (it does not depend on the master): a reconnection after
    /// a failover does not wait for a new subscription. The flag is cleared when the
    /// connection closes.
    watching: Mutex<Option<(MultiplexedConnection, Arc<AtomicBool>)>>,
    /// What the subscription calls on a switch: the callback of the latest [`watch`](Self::watch).
    on_switch: Arc<Mutex<Option<OnSwitch>>>,
    /// Notified on each `+switch-master` to a new address, so that the owner of the link
    /// reconnects at once rather than at its next probe.
    switched: Arc<Notify>,
    /// Which link this is, for logs.
    link: &'static str,
}

impl std::fmt::Debug for Sentinels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let nodes: Vec<&str> = self.nodes.iter().map(|(a, _)| a.as_str()).collect();
        f.debug_struct("Sentinels")
            .field("nodes", &nodes)
            .field("master_name", &self.master_name)
            .finish_non_exhaustive()
    }
}

impl Sentinels {
    /// The sentinels of `sentinel`, for the data nodes of `redis` (checked beforehand);
    /// `link` names the link in logs.
    pub(crate) fn new(
        redis: &RedisConfig,
        sentinel: &SentinelConfig,
        tls: &TlsMaterial,
        timeout: Duration,
        connect_timeout: Duration,
        link: &'static str,
    ) -> RedisResult<Self> {
        let nodes = sentinel
            .nodes
            .iter()
            .map(|node| Ok((node.clone(), tls.client(redis.sentinel_url(node))?)))
            .collect::<RedisResult<Vec<_>>>()?;
        Ok(Self {
            nodes,
            master_name: sentinel.master_name.clone(),
            redis: redis.clone(),
            tls: tls.clone(),
            timeout,
            connect_timeout,
            current: Arc::default(),
            announced: Arc::default(),
            switched: Arc::new(Notify::new()),
            watching: Mutex::new(None),
            on_switch: Arc::default(),
            link,
        })
    }

    /// Notified (one permit) each time the sentinels announce that the master moved to an
    /// address other than the one last connected to: the link should reconnect now.
    pub(crate) fn switched(&self) -> Arc<Notify> {
        self.switched.clone()
    }

    /// Connects to the current master: `open` makes the connection from a client for the
    /// master's address (speaking `protocol`), then `ROLE` checks that it is a master.
    /// Not bounded here: the caller bounds the whole by its connect timeout.
    ///
    /// # Errors
    /// The last error met when no sentinel named a master that could be reached.
    pub(crate) async fn connect<C, F, Fut>(
        &self,
        protocol: ProtocolVersion,
        open: F,
    ) -> RedisResult<C>
    where
        C: ConnectionLike + Send,
        F: Fn(redis::Client) -> Fut,
        Fut: Future<Output = RedisResult<C>>,
    {
        let mut answers: FuturesUnordered<_> = self
            .nodes
            .iter()
            .map(|(addr, client)| async move { (addr.as_str(), self.ask(client).await) })
            .collect();
        let mut tried: Vec<(String, u16)> = Vec::new();
        let mut last_error = None;
        let announced = lock(&self.announced).take();
        if let Some((host, port)) = announced {
            match self.open_master(&host, port, protocol, &open).await {
                Ok(conn) => {
                    self.note(&host, port, "+switch-master");
                    return Ok(conn);
                }
                Err(e) => {
                    tried.push((host, port));
                    last_error = Some(e);
                }
            }
        }
        while let Some((sentinel, answer)) = answers.next().await {
            let (host, port) = match answer {
                Ok(Some(addr)) => addr,
                Ok(None) => {
                    last_error = Some(RedisError::from((
                        ErrorKind::MasterNameNotFoundBySentinel,
                        "a sentinel does not know the master",
                        format!("{sentinel} has no master named {}", self.master_name),
                    )));
                    continue;
                }
                Err(e) => {
                    tracing::debug!(sentinel, error = %e, link = self.link, "redis sentinel: no answer");
                    last_error = Some(e);
                    continue;
                }
            };
            if tried.iter().any(|(h, p)| *h == host && *p == port) {
                continue;
            }
            tried.push((host.clone(), port));
            match self.open_master(&host, port, protocol, &open).await {
                Ok(conn) => {
                    self.note(&host, port, sentinel);
                    return Ok(conn);
                }
                Err(e) => {
                    tracing::debug!(sentinel, master = %format!("{host}:{port}"), error = %e, link = self.link, "redis sentinel: the master named is not usable");
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| {
            RedisError::from((
                ErrorKind::MasterNameNotFoundBySentinel,
                "no sentinel answered",
            ))
        }))
    }

    /// Asks one sentinel for the master's address (`None`: it knows no such master).
    async fn ask(&self, client: &redis::Client) -> RedisResult<Option<(String, u16)>> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.timeout));
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let mut cmd = redis::cmd("SENTINEL");
        cmd.arg("get-master-addr-by-name").arg(&self.master_name);
        cmd.query_async(&mut conn).await
    }

    /// Connects to `host:port` and checks that it is a master.
    async fn open_master<C, F, Fut>(
        &self,
        host: &str,
        port: u16,
        protocol: ProtocolVersion,
        open: &F,
    ) -> RedisResult<C>
    where
        C: ConnectionLike + Send,
        F: Fn(redis::Client) -> Fut,
        Fut: Future<Output = RedisResult<C>>,
    {
        let info = self
            .redis
            .master_url(host, port)
            .as_str()
            .into_connection_info()?;
        let settings = info.redis_settings().clone().set_protocol(protocol);
        let client = self.tls.client(info.set_redis_settings(settings))?;
        let mut conn = open(client).await?;
        match redis::cmd("ROLE").query_async::<Role>(&mut conn).await {
            Ok(Role::Primary { .. }) => Ok(conn),
            Ok(_) => Err(RedisError::from((
                ErrorKind::Server(redis::ServerErrorKind::ReadOnly),
                "the node a sentinel named is not a master (yet)",
                format!("{host}:{port}"),
            ))),
            // An ACL user without ROLE: trust the sentinels; a demoted node is still caught
            // by its READONLY answers.
            Err(e) if e.code() == Some("NOPERM") => Ok(conn),
            Err(e) => Err(e),
        }
    }

    /// Subscribes to `+switch-master` on the first sentinel that accepts (or keeps the
    /// subscription made for an earlier connection while it lives), and calls `on_switch`
    /// (from the connection's read task: it must not block) when the sentinels move this
    /// master to an address other than the one last connected to; that address is then
    /// tried first by the next [`connect`](Self::connect). `on_switch` replaces the
    /// callback of the previous call. The subscription lasts as long as the returned
    /// connection (or a later call's); `None` when no sentinel accepted (the link still
    /// follows a failover when the old master fails or answers `READONLY`).
    pub(crate) async fn watch(
        &self,
        on_switch: impl Fn() + Send + Sync + 'static,
    ) -> Option<MultiplexedConnection> {
        *lock(&self.on_switch) = Some(Arc::new(on_switch));
        if let Some((conn, alive)) = lock(&self.watching).as_ref() {
            if alive.load(Ordering::Acquire) {
                return Some(conn.clone());
            }
        }
        let name = self.master_name.clone();
        let (current, announced) = (self.current.clone(), self.announced.clone());
        let (switched, callback) = (self.switched.clone(), self.on_switch.clone());
        let alive = Arc::new(AtomicBool::new(true));
        let link = self.link;
        let sender = {
            // Dropped with the connection's read task, however it ends (closed, or dropped
            // with its runtime): the subscription is then made again.
            let alive = Alive(alive.clone());
            move |push: PushInfo| {
                match push.kind {
                    PushKind::Message => {
                        if let Some(Value::BulkString(payload)) = push.data.get(1) {
                            if let Some((host, port)) = switched_to(payload, &name) {
                                let addr = format!("{host}:{port}");
                                if lock(&current).as_deref() != Some(addr.as_str()) {
                                    tracing::info!(master_name = %name, to = %addr, link, "redis sentinel: +switch-master; reconnecting to the new master");
                                    *lock(&announced) = Some((host, port));
                                    let on_switch = lock(&callback).clone();
                                    if let Some(f) = on_switch {
                                        f();
                                    }
                                    switched.notify_one();
                                }
                            }
                        }
                    }
                    PushKind::Disconnection => alive.0.store(false, Ordering::Release),
                    _ => {}
                }
                Ok::<(), std::convert::Infallible>(())
            }
        };
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.timeout))
            .set_push_sender(sender);
        for (addr, _) in &self.nodes {
            let subscribe = async {
                let info = self
                    .redis
                    .sentinel_url(addr)
                    .as_str()
                    .into_connection_info()?;
                let settings = info
                    .redis_settings()
                    .clone()
                    .set_protocol(ProtocolVersion::RESP3);
                let client = self.tls.client(info.set_redis_settings(settings))?;
                let mut conn = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                conn.subscribe("+switch-master").await?;
                Ok::<_, RedisError>(conn)
            };
            match tokio::time::timeout(self.connect_timeout, subscribe).await {
                Ok(Ok(conn)) => {
                    *lock(&self.watching) = Some((conn.clone(), alive));
                    return Some(conn);
                }
                Ok(Err(e)) => {
                    tracing::debug!(sentinel = %addr, error = %e, link, "redis sentinel: cannot subscribe to +switch-master");
                }
                Err(_) => {
                    tracing::debug!(sentinel = %addr, link, "redis sentinel: subscribing to +switch-master timed out");
                }
            }
        }
        None
    }

    /// Logs the master in use when it changes.
    fn note(&self, host: &str, port: u16, sentinel: &str) {
        let addr = format!("{host}:{port}");
        let mut current = lock(&self.current);
        match current.as_deref() {
            Some(old) if old == addr => {}
            Some(old) => {
                tracing::warn!(
                    master_name = %self.master_name,
                    from = old,
                    to = %addr,
                    sentinel,
                    link = self.link,
                    "redis sentinel: the master moved (failover); following it"
                );
                *current = Some(addr);
            }
            None => {
                tracing::info!(
                    master_name = %self.master_name,
                    master = %addr,
                    sentinel,
                    link = self.link,
                    "redis sentinel: master found"
                );
                *current = Some(addr);
            }
        }
    }
}

/// Whether a subscription's connection lives; cleared when the read task drops it.
struct Alive(Arc<AtomicBool>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The new address in a `+switch-master` message (`<name> <old-ip> <old-port> <new-ip>
/// <new-port>`) about the master `name`.
fn switched_to(payload: &[u8], name: &str) -> Option<(String, u16)> {
    let text = std::str::from_utf8(payload).ok()?;
    let parts: Vec<&str> = text.split_whitespace().collect();
    match parts.as_slice() {
        [n, _, _, host, port] if *n == name => Some(((*host).to_owned(), port.parse().ok()?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switch_master_messages_are_read_for_our_master_only() {
        let msg = b"cache 10.0.0.1 6379 10.0.0.2 6380";
        assert_eq!(switched_to(msg, "cache"), Some(("10.0.0.2".into(), 6380)));
        assert_eq!(switched_to(msg, "other"), None);
        assert_eq!(switched_to(b"cache 10.0.0.1 6379", "cache"), None);
        assert_eq!(switched_to(b"cache a 1 b port", "cache"), None);
    }
}
