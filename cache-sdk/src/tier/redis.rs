//! The link to Redis: a multiplexed connection, every call bounded by a timeout, and errors
//! sorted into "Redis is unavailable" (fall back) and "Redis said no"
//! (report to the caller).

use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;
use redis::{ErrorKind, FromRedisValue, RedisError, ServerErrorKind};

use crate::config::RedisConfig;
use crate::error::ConfigError;

/// Why a Redis call did not give an answer.
#[derive(Debug, Clone)]
pub(crate) enum Failure {
    /// Redis is unreachable, too slow, restarting, or refuses us: use the fallback.
    Unavailable(String),
    /// Redis answered with an error about this command (WRONGTYPE, OOM, NOPERM, ...).
    Rejected(String),
}

pub(crate) struct RedisLink {
    client: redis::Client,
    /// The current connection. It is not reconnected in place: a failed call opens the
    /// breaker, and the probe in `remote.rs` opens a fresh connection.
    conn: ArcSwapOption<MultiplexedConnection>,
    timeout: Duration,
    connect_timeout: Duration,
    pub(crate) address: String,
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
    pub(crate) fn new(
        cfg: &RedisConfig,
        timeout: Duration,
        connect_timeout: Duration,
    ) -> Result<Self, ConfigError> {
        if !cfg.cluster_nodes.is_empty() {
            return Err(ConfigError::Unsupported {
                name: "REDIS_CLUSTER_NODES",
                reason: "Redis Cluster is not supported by this version yet; \
                         point REDIS_URL or REDIS_HOST at a single server"
                    .into(),
            });
        }
        let client =
            redis::Client::open(cfg.connection_url()).map_err(|e| ConfigError::Invalid {
                name: if cfg.url.is_some() {
                    "REDIS_URL"
                } else {
                    "REDIS_HOST"
                },
                value: cfg.display_address(),
                reason: format!("not a usable Redis address ({})", e.category()),
            })?;
        Ok(Self {
            client,
            conn: ArcSwapOption::empty(),
            timeout,
            connect_timeout,
            address: cfg.display_address(),
        })
    }

    /// Opens a fresh connection and checks it with `PING`; on success it replaces the
    /// current one.
    pub(crate) async fn connect(&self) -> Result<(), Failure> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.timeout));
        let attempt = async {
            let mut conn = self
                .client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            redis::cmd("PING").query_async::<()>(&mut conn).await?;
            Ok::<_, RedisError>(conn)
        };
        match tokio::time::timeout(self.connect_timeout, attempt).await {
            Ok(Ok(conn)) => {
                self.conn.store(Some(std::sync::Arc::new(conn)));
                Ok(())
            }
            Ok(Err(e)) => Err(Failure::Unavailable(describe(&e))),
            Err(_) => Err(Failure::Unavailable("connecting timed out".into())),
        }
    }

    fn conn(&self) -> Result<MultiplexedConnection, Failure> {
        self.conn
            .load()
            .as_deref()
            .cloned()
            .ok_or_else(|| Failure::Unavailable("not connected".into()))
    }

    /// Runs one command.
    pub(crate) async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, Failure> {
        let mut conn = self.conn()?;
        self.bounded(async move { cmd.query_async::<T>(&mut conn).await })
            .await
    }

    /// Runs a pipeline (one round trip).
    pub(crate) async fn pipe<T: FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, Failure> {
        let mut conn = self.conn()?;
        self.bounded(async move { pipe.query_async::<T>(&mut conn).await })
            .await
    }

    /// Iterates `SCAN cursor MATCH pattern COUNT n` to the end. Each round trip has its
    /// own timeout.
    pub(crate) async fn scan(&self, pattern: &str) -> Result<Vec<String>, Failure> {
        let mut keys = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let mut cmd = redis::cmd("SCAN");
            cmd.arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1000);
            let (next, batch): (u64, Vec<String>) = self.query(&cmd).await?;
            keys.extend(batch);
            if next == 0 {
                return Ok(keys);
            }
            cursor = next;
        }
    }

    /// Maps the outcome of a call. The connection's response timeout bounds every call
    /// (redis-rs answers a timeout error when it runs out), so no second timer is needed.
    async fn bounded<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, RedisError>>,
    ) -> Result<T, Failure> {
        fut.await.map_err(|e| classify(&e))
    }
}

fn describe(e: &RedisError) -> String {
    // The error's text never holds the password: redis-rs does not echo credentials, and
    // servers answer WRONGPASS/NOAUTH without them.
    e.to_string()
}

/// Sorts a Redis error.
pub(crate) fn classify(e: &RedisError) -> Failure {
    let unavailable = e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.kind(),
            ErrorKind::AuthenticationFailed
                | ErrorKind::ClusterConnectionNotFound
                | ErrorKind::Parse
                | ErrorKind::Server(
                    ServerErrorKind::BusyLoading
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::ReadOnly
                        | ServerErrorKind::TryAgain
                        | ServerErrorKind::ClusterDown
                )
        )
        || matches!(
            e.code(),
            Some("NOAUTH" | "WRONGPASS" | "LOADING" | "MASTERDOWN" | "READONLY")
        );
    if unavailable {
        Failure::Unavailable(describe(e))
    } else {
        Failure::Rejected(describe(e))
    }
}
