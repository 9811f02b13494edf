//! The link to Redis: a multiplexed connection to one server (given, or the master found
//! through Redis Sentinel at every connection), or a Redis Cluster client; every call
//! bounded by a timeout, and errors sorted into "Redis is unavailable" (fall
//! back) and "Redis said no" (report to the caller).
//!
//! On a cluster, single-key commands are routed by redis-rs to the master of the key's slot,
//! and `MGET` is split by slot by redis-rs itself. Batches of independent commands
//! ([`RedisLink::batch`]) are grouped by hash slot, one pipeline per slot, sent concurrently.
//! `SCAN` runs on every master ([`RedisLink::scan`]). The cluster parts are compiled with the
//! `cluster` feature only (without it, validation refuses a cluster configuration).

#[cfg(feature = "cluster")]
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
#[cfg(feature = "cluster")]
use futures::future::{join_all, try_join_all, BoxFuture, FutureExt};
use redis::aio::{ConnectionLike, MultiplexedConnection};
#[cfg(feature = "cluster")]
use redis::cluster::{ClusterClient, ClusterClientBuilder};
#[cfg(feature = "cluster")]
use redis::cluster_async::ClusterConnection;
#[cfg(feature = "cluster")]
use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo, SingleNodeRoutingInfo, Slot};
use redis::{
    AsyncConnectionConfig, Cmd, ErrorKind, FromRedisValue, Pipeline, ProtocolVersion, RedisError,
    RedisFuture, RedisResult, ServerErrorKind, Value,
};

use super::sentinel::Sentinels;
use crate::config::RedisConfig;
use crate::error::{BackendError, BackendErrorKind, ConfigError};
use crate::tls::TlsMaterial;

/// Why a Redis call did not give an answer, sorted by what the caller does about it; the
/// [`BackendError`] keeps the details (its kind, Redis's code, the Redis error itself).
#[derive(Debug, Clone)]
pub(crate) enum Failure {
    /// Redis is unreachable, too slow, restarting, or refuses us: use the fallback.
    Unavailable(BackendError),
    /// Redis answered with an error about this command (WRONGTYPE, OOM, NOPERM, ...).
    Rejected(BackendError),
}

impl Failure {
    /// No answer within `what`'s own time limit (ours, not redis-rs's).
    pub(crate) fn timed_out(what: &str) -> Self {
        Failure::Unavailable(BackendError::new(BackendErrorKind::Timeout, None, what))
    }

    /// The details, whichever the class.
    pub(crate) fn error(&self) -> &BackendError {
        match self {
            Failure::Unavailable(e) | Failure::Rejected(e) => e,
        }
    }

    pub(crate) fn into_error(self) -> BackendError {
        match self {
            Failure::Unavailable(e) | Failure::Rejected(e) => e,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self.error(), f)
    }
}

/// How to reach Redis: one server, a cluster, or the master the sentinels name.
// One per cache, made once: the size of the variants does not matter.
#[allow(clippy::large_enum_variant)]
pub(crate) enum LinkClient {
    Single(redis::Client),
    #[cfg(feature = "cluster")]
    Cluster(ClusterClient),
    /// Asked at every connection, so a failover is followed by the next reconnect.
    Sentinel(Sentinels),
}

/// A live connection; both kinds speak [`ConnectionLike`], so commands and pipelines run on
/// either. Cheap to clone.
#[derive(Clone)]
pub(crate) enum Conn {
    Single(MultiplexedConnection),
    #[cfg(feature = "cluster")]
    Cluster(ClusterConnection),
}

impl LinkClient {
    /// A cluster client for `cfg`'s seed nodes, with the credentials and TLS material of the
    /// configuration.
    #[cfg(feature = "cluster")]
    fn cluster(
        cfg: &RedisConfig,
        tls: &TlsMaterial,
        timeout: Duration,
        connect_timeout: Duration,
    ) -> RedisResult<Self> {
        let nodes: Vec<String> = cfg.cluster_nodes.iter().map(|n| cfg.node_url(n)).collect();
        let builder = ClusterClientBuilder::new(nodes)
            .connection_timeout(connect_timeout)
            .response_timeout(timeout)
            // Redirections (MOVED/ASK) and reconnections are retried quickly; the call as a
            // whole, retries included, is bounded by `timeout`, after which the fallback
            // serves.
            .overall_response_timeout(Some(timeout))
            .retries(3)
            .min_retry_wait(5)
            .max_retry_wait(50);
        tls.cluster(builder).build().map(LinkClient::Cluster)
    }

    /// Without the `cluster` feature there is no cluster client (validation refuses a
    /// cluster configuration before a link is made).
    #[cfg(not(feature = "cluster"))]
    fn cluster(
        _cfg: &RedisConfig,
        _tls: &TlsMaterial,
        _timeout: Duration,
        _connect_timeout: Duration,
    ) -> RedisResult<Self> {
        Err(RedisError::from((
            ErrorKind::InvalidClientConfig,
            "Redis Cluster needs the `cluster` feature of cache-sdk",
        )))
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            #[cfg(feature = "cluster")]
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            #[cfg(feature = "cluster")]
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            #[cfg(feature = "cluster")]
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

pub(crate) struct RedisLink {
    client: LinkClient,
    /// The current connection. It is not reconnected in place: a failed call opens the
    /// breaker, and the probe in `remote.rs` opens a fresh connection. Shared with the
    /// Sentinel watch, which empties it when the master moves.
    conn: Arc<ArcSwapOption<Conn>>,
    /// Through Sentinel: the `+switch-master` subscription of the current connection.
    watch: std::sync::Mutex<Option<MultiplexedConnection>>,
    timeout: Duration,
    connect_timeout: Duration,
    pub(crate) address: String,
    /// Round-trip latency and errors by kind (feature `metrics`).
    metrics: crate::metrics::LinkMetrics,
}

impl std::fmt::Debug for RedisLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLink")
            .field("address", &self.address)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisLink {
    /// A link to the server(s) `cfg` names, with the TLS material the configuration's
    /// validation loaded (the configuration is checked before this is called).
    pub(crate) fn new(
        cfg: &RedisConfig,
        tls: &TlsMaterial,
        timeout: Duration,
        connect_timeout: Duration,
    ) -> Result<Self, ConfigError> {
        if cfg.uses_tls() {
            crate::tls::install_crypto_provider();
        }
        let address_error = |name: &'static str, e: RedisError| ConfigError::Invalid {
            name,
            value: cfg.display_address(),
            reason: format!("not a usable Redis address ({})", e.category()),
        };
        let client = if let Some(sentinel) = &cfg.sentinel {
            LinkClient::Sentinel(
                Sentinels::new(cfg, sentinel, tls, timeout, connect_timeout, "data")
                    .map_err(|e| address_error("REDIS_SENTINELS", e))?,
            )
        } else if cfg.is_cluster() {
            LinkClient::cluster(cfg, tls, timeout, connect_timeout)
                .map_err(|e| address_error("REDIS_CLUSTER_NODES", e))?
        } else {
            let name = if cfg.url.is_some() {
                "REDIS_URL"
            } else {
                "REDIS_HOST"
            };
            let client = tls.client(cfg.connection_url());
            LinkClient::Single(client.map_err(|e| address_error(name, e))?)
        };
        Ok(Self {
            client,
            conn: Arc::new(ArcSwapOption::empty()),
            watch: std::sync::Mutex::new(None),
            timeout,
            connect_timeout,
            address: cfg.display_address(),
            metrics: crate::metrics::LinkMetrics::new(),
        })
    }

    /// Through Sentinel: notified when the sentinels announce a new master (see
    /// [`Sentinels::switched`]).
    pub(crate) fn switched(&self) -> Option<Arc<tokio::sync::Notify>> {
        match &self.client {
            LinkClient::Sentinel(sentinels) => Some(sentinels.switched()),
            _ => None,
        }
    }

    /// Whether this link talks to a Redis Cluster.
    pub(crate) fn is_cluster(&self) -> bool {
        #[cfg(feature = "cluster")]
        return matches!(self.client, LinkClient::Cluster(_));
        #[cfg(not(feature = "cluster"))]
        false
    }

    /// Opens a fresh connection and checks it with `PING` (on a cluster, every master must
    /// answer; through Sentinel, the sentinels are asked where the master is now and the
    /// node must say it is a master); on success it replaces the current one.
    pub(crate) async fn connect(&self) -> Result<(), Failure> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.timeout));
        let attempt = async {
            let mut conn = match &self.client {
                LinkClient::Single(client) => Conn::Single(
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?,
                ),
                LinkClient::Sentinel(sentinels) => {
                    let open = |client: redis::Client| {
                        let config = config.clone();
                        async move {
                            client
                                .get_multiplexed_async_connection_with_config(&config)
                                .await
                        }
                    };
                    Conn::Single(sentinels.connect(ProtocolVersion::RESP2, open).await?)
                }
                #[cfg(feature = "cluster")]
                LinkClient::Cluster(client) => {
                    let mut conn = client.get_async_connection().await?;
                    // redis-rs skips the masters it holds no connection to when it sends to
                    // all of them: count the answers.
                    let ping = redis::cmd("PING");
                    let answers = on_all_masters(&mut conn, ping).await?;
                    for (addr, answer) in answers {
                        if let Value::ServerError(e) = answer {
                            let e = RedisError::from(e);
                            return Err(RedisError::from((
                                e.kind(),
                                "a cluster master refused PING",
                                format!("{addr}: {e}"),
                            )));
                        }
                    }
                    Conn::Cluster(conn)
                }
            };
            #[cfg_attr(not(feature = "cluster"), allow(irrefutable_let_patterns))]
            if let Conn::Single(_) = conn {
                redis::cmd("PING").query_async::<()>(&mut conn).await?;
            }
            Ok::<_, RedisError>(conn)
        };
        match tokio::time::timeout(self.connect_timeout, attempt).await {
            Ok(Ok(conn)) => {
                self.conn.store(Some(Arc::new(conn)));
                if let LinkClient::Sentinel(sentinels) = &self.client {
                    // The master moved while this connection still works (a planned
                    // failover): drop it, so the next call trips and the probe reconnects.
                    let slot = Arc::downgrade(&self.conn);
                    let watch = sentinels
                        .watch(move || {
                            if let Some(slot) = slot.upgrade() {
                                slot.store(None);
                            }
                        })
                        .await;
                    *self
                        .watch
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = watch;
                }
                Ok(())
            }
            // Whatever answered, it was not a working connection: unavailable.
            Ok(Err(e)) => Err(Failure::Unavailable(classify(&e).into_error())),
            Err(_) => Err(Failure::timed_out("connecting timed out")),
        }
    }

    fn conn(&self) -> Result<Conn, Failure> {
        self.conn.load().as_deref().cloned().ok_or_else(|| {
            Failure::Unavailable(BackendError::new(
                BackendErrorKind::Unreachable,
                None,
                "not connected",
            ))
        })
    }

    /// Runs one command.
    pub(crate) async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, Failure> {
        let mut conn = self.conn()?;
        self.bounded(async move { cmd.query_async::<T>(&mut conn).await })
            .await
    }

    /// Runs independent commands, each on the key given beside it, and returns each one's
    /// answer (a server error for one command does not fail the others).
    ///
    /// One pipeline on a single server. On a cluster, one pipeline per hash slot, all sent
    /// at once (so keys sharing a hash tag travel together); the whole batch is bounded by
    /// the response timeout. `Err` means Redis was unavailable: some commands may have been
    /// applied.
    pub(crate) async fn batch<T: FromRedisValue>(
        &self,
        cmds: Vec<(String, Cmd)>,
    ) -> Result<Vec<RedisResult<T>>, Failure> {
        let conn = self.conn()?;
        let single = |cmds: Vec<Cmd>| {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for cmd in cmds {
                pipe.add_command(cmd);
            }
            pipe
        };
        match conn {
            Conn::Single(_) => {
                let pipe = single(cmds.into_iter().map(|(_, c)| c).collect());
                let mut conn = conn;
                self.bounded(async move { pipe.query_async(&mut conn).await })
                    .await
            }
            #[cfg(feature = "cluster")]
            Conn::Cluster(cluster) => {
                let total = cmds.len();
                let mut by_slot: HashMap<Slot, (Vec<usize>, Vec<Cmd>)> = HashMap::new();
                for (i, (key, cmd)) in cmds.into_iter().enumerate() {
                    let group = by_slot.entry(Slot::for_key(key.as_bytes())).or_default();
                    group.0.push(i);
                    group.1.push(cmd);
                }
                let sends = by_slot.into_values().map(|(indices, cmds)| {
                    let pipe = single(cmds);
                    let mut conn = cluster.clone();
                    async move {
                        let answers: Vec<RedisResult<T>> = pipe.query_async(&mut conn).await?;
                        Ok::<_, RedisError>(indices.into_iter().zip(answers))
                    }
                });
                let groups = self.bounded(try_join_all(sends)).await?;
                let mut out: Vec<Option<RedisResult<T>>> = (0..total).map(|_| None).collect();
                for (i, answer) in groups.into_iter().flatten() {
                    if let Some(slot) = out.get_mut(i) {
                        *slot = Some(answer);
                    }
                }
                Ok(out
                    .into_iter()
                    .map(|a| {
                        a.unwrap_or_else(|| {
                            Err(RedisError::from((
                                ErrorKind::Client,
                                "no answer for a command of the batch",
                            )))
                        })
                    })
                    .collect())
            }
        }
    }

    /// Iterates `SCAN cursor MATCH pattern COUNT n` to the end; on a cluster, on every master
    /// at once. Each round trip has its own timeout. Keys may repeat (as with `SCAN` itself).
    pub(crate) async fn scan(&self, pattern: &str) -> Result<Vec<String>, Failure> {
        match self.conn()? {
            Conn::Single(_) => self.scan_from(pattern, None, 0, Vec::new()).await,
            #[cfg(feature = "cluster")]
            Conn::Cluster(mut conn) => {
                let cmd = scan_cmd(0, pattern);
                let per_node = self
                    .bounded(async move { on_all_masters(&mut conn, cmd).await })
                    .await?;
                let mut walks: Vec<BoxFuture<'_, Result<Vec<String>, Failure>>> = Vec::new();
                for (addr, value) in per_node {
                    let (cursor, keys) = scan_page(value).map_err(|e| classify(&e))?;
                    let node = addr
                        .rsplit_once(':')
                        .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
                        .ok_or_else(|| {
                            Failure::Unavailable(BackendError::new(
                                BackendErrorKind::Unreachable,
                                None,
                                format!("unreadable cluster node address {addr}"),
                            ))
                        })?;
                    if cursor == 0 {
                        walks.push(futures::future::ready(Ok(keys)).boxed());
                    } else {
                        walks.push(self.scan_from(pattern, Some(node), cursor, keys).boxed());
                    }
                }
                let mut keys = Vec::new();
                for walk in join_all(walks).await {
                    keys.extend(walk?);
                }
                Ok(keys)
            }
        }
    }

    /// Continues a `SCAN` from `cursor` (0: from the start) on the server, or on the
    /// cluster node `node`, adding to `keys`.
    async fn scan_from(
        &self,
        pattern: &str,
        node: Option<(String, u16)>,
        mut cursor: u64,
        mut keys: Vec<String>,
    ) -> Result<Vec<String>, Failure> {
        loop {
            let cmd = scan_cmd(cursor, pattern);
            let (next, batch) = match &node {
                None => self.query::<(u64, Vec<String>)>(&cmd).await?,
                // Only a cluster walks its nodes one by one.
                #[cfg(not(feature = "cluster"))]
                Some(_) => {
                    return Err(Failure::Unavailable(BackendError::new(
                        BackendErrorKind::Unreachable,
                        None,
                        "not connected to a cluster",
                    )))
                }
                #[cfg(feature = "cluster")]
                Some((host, port)) => {
                    let Conn::Cluster(mut conn) = self.conn()? else {
                        return Err(Failure::Unavailable(BackendError::new(
                            BackendErrorKind::Unreachable,
                            None,
                            "not connected to the cluster",
                        )));
                    };
                    let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                        host: host.clone(),
                        port: *port,
                    });
                    let value = self
                        .bounded(async move { conn.route_command(cmd, route).await })
                        .await?;
                    scan_page(value).map_err(|e| classify(&e))?
                }
            };
            keys.extend(batch);
            if next == 0 {
                return Ok(keys);
            }
            cursor = next;
        }
    }

    /// Maps the outcome of a call. The connection's response timeout bounds every call
    /// (redis-rs answers a timeout error when it runs out; on a cluster the overall
    /// response timeout covers retries and redirections too), so no second timer is needed.
    async fn bounded<T>(
        &self,
        fut: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, Failure> {
        self.metrics
            .observe(async move { fut.await.map_err(|e| classify(&e)) })
            .await
    }
}

/// Sends `cmd` to every master of the cluster and returns each one's answer by address.
/// Fails when a master holding slots has no connection (redis-rs would leave it out
/// silently), so that a partial answer is never taken for the whole.
#[cfg(feature = "cluster")]
async fn on_all_masters(
    conn: &mut ClusterConnection,
    cmd: Cmd,
) -> RedisResult<Vec<(String, Value)>> {
    let mut slots_cmd = redis::cmd("CLUSTER");
    slots_cmd.arg("SLOTS");
    let slots = conn
        .route_command(
            slots_cmd,
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
        )
        .await?;
    let masters = count_masters(slots).ok_or_else(|| {
        RedisError::from((ErrorKind::Parse, "unexpected answer to CLUSTER SLOTS"))
    })?;
    let all_masters = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
    let Value::Map(answers) = conn.route_command(cmd, all_masters).await? else {
        return Err(RedisError::from((
            ErrorKind::Parse,
            "unexpected answer from the cluster's masters",
        )));
    };
    if answers.len() < masters {
        return Err(RedisError::from((
            ErrorKind::ClusterConnectionNotFound,
            "a cluster master is unreachable",
            format!("{} of {masters} masters answered", answers.len()),
        )));
    }
    answers
        .into_iter()
        .map(|(addr, answer)| Ok((redis::from_redis_value::<String>(addr)?, answer)))
        .collect()
}

/// The number of distinct masters that hold slots, from a `CLUSTER SLOTS` answer
/// (`[[start, end, [host, port, id, …], replicas…], …]`).
#[cfg(feature = "cluster")]
fn count_masters(slots: Value) -> Option<usize> {
    let Value::Array(ranges) = slots else {
        return None;
    };
    let mut masters = std::collections::HashSet::new();
    for range in ranges {
        let Value::Array(mut parts) = range else {
            return None;
        };
        if parts.len() < 3 {
            return None;
        }
        let Value::Array(master) = parts.swap_remove(2) else {
            return None;
        };
        // Host, port and (Redis 4+) node id.
        let id: Vec<String> = master
            .into_iter()
            .take(3)
            .filter_map(|v| redis::from_redis_value::<String>(v).ok())
            .collect();
        masters.insert(id.join(":"));
    }
    Some(masters.len())
}

fn scan_cmd(cursor: u64, pattern: &str) -> Cmd {
    let mut cmd = redis::cmd("SCAN");
    cmd.arg(cursor)
        .arg("MATCH")
        .arg(pattern)
        .arg("COUNT")
        .arg(1000);
    cmd
}

/// One `SCAN` answer: the next cursor and the keys.
#[cfg(feature = "cluster")]
fn scan_page(value: Value) -> RedisResult<(u64, Vec<String>)> {
    if let Value::ServerError(e) = value {
        return Err(e.into());
    }
    Ok(redis::from_redis_value(value)?)
}

/// Sorts a Redis error: unavailable (use the fallback) or rejected (tell the caller), and
/// why.
///
/// The error's text never holds the password: redis-rs does not echo credentials, and
/// servers answer WRONGPASS/NOAUTH without them.
pub(crate) fn classify(e: &RedisError) -> Failure {
    match unavailable_kind(e) {
        Some(kind) => Failure::Unavailable(BackendError::redis(kind, e)),
        None => Failure::Rejected(BackendError::redis(BackendErrorKind::Rejected, e)),
    }
}

/// Why Redis cannot serve, or `None` when it answered an error about the command.
fn unavailable_kind(e: &RedisError) -> Option<BackendErrorKind> {
    if e.is_timeout() {
        return Some(BackendErrorKind::Timeout);
    }
    if e.kind() == ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("NOAUTH" | "WRONGPASS"))
    {
        return Some(BackendErrorKind::Authentication);
    }
    if e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.kind(),
            ErrorKind::ClusterConnectionNotFound
                | ErrorKind::MasterNameNotFoundBySentinel
                | ErrorKind::Parse
        )
    {
        return Some(BackendErrorKind::Unreachable);
    }
    let not_ready = matches!(
        e.kind(),
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ReadOnly
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::Moved
                | ServerErrorKind::Ask
        )
    ) || matches!(
        e.code(),
        Some("LOADING" | "MASTERDOWN" | "READONLY" | "CLUSTERDOWN" | "TRYAGAIN" | "MOVED" | "ASK")
    );
    not_ready.then_some(BackendErrorKind::NotReady)
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    fn server(code: &str) -> RedisError {
        redis::make_extension_error(code.into(), Some("something about the command".into()))
    }

    #[test]
    fn answers_about_the_command_are_rejected_and_keep_their_cause() {
        for code in ["WRONGTYPE", "OOM", "NOPERM"] {
            let Failure::Rejected(e) = classify(&server(code)) else {
                panic!("{code} should be rejected");
            };
            assert_eq!(e.kind(), BackendErrorKind::Rejected);
            assert_eq!(e.code(), Some(code));
            assert!(e.to_string().contains(code), "{e}");
            let cause = e
                .source()
                .and_then(|s| s.downcast_ref::<RedisError>())
                .expect("the redis error is the source");
            assert_eq!(cause.code(), Some(code));
        }
    }

    #[test]
    fn unavailable_redis_is_sorted_by_why() {
        let cases = [
            (server("LOADING"), BackendErrorKind::NotReady),
            (server("READONLY"), BackendErrorKind::NotReady),
            (server("WRONGPASS"), BackendErrorKind::Authentication),
            (
                RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
                BackendErrorKind::Unreachable,
            ),
            (
                RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut)),
                BackendErrorKind::Timeout,
            ),
        ];
        for (error, kind) in cases {
            match classify(&error) {
                Failure::Unavailable(e) => assert_eq!(e.kind(), kind, "{error}"),
                Failure::Rejected(e) => panic!("{e} should be unavailable"),
            }
        }
        assert_eq!(
            Failure::timed_out("connecting timed out").error().kind(),
            BackendErrorKind::Timeout
        );
    }
}
