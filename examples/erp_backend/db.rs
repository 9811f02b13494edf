//! The product database: a SQLite file, shared by every instance given the same file, with
//! the latency of a real query and, for demos, a control over this instance's access to it.
//!
//! It stands for whatever an application keeps its data in (Postgres, an ERP's API); the
//! point of the example is the cache in front of it (`products.rs`). What it owns:
//!
//! - **Where the data is**: [`DbConfig`], from `DATABASE_URL=sqlite:<file path>` (default
//!   `erp.db` in the working directory). Every instance given the same file reads and
//!   writes the same rows: a `PUT` on one is seen by the others once their cache entry for
//!   that product is gone (evicted, or expired after `CACHE_TTL_API`).
//! - **Creating and seeding it**: on first start, the `products` table and the 100 demo
//!   products, in one `BEGIN IMMEDIATE` transaction guarded by `PRAGMA user_version`, so
//!   two instances starting at once on a new file seed it exactly once, and a restart never
//!   brings deleted products back. The file is in WAL mode (readers do not wait for a
//!   writer) and every connection waits up to [`BUSY_TIMEOUT`] for a lock instead of
//!   failing with `SQLITE_BUSY`.
//! - **Not blocking the async runtime**: SQLite calls are synchronous, so each query runs
//!   on tokio's blocking pool (`spawn_blocking`) with a connection taken from a small pool
//!   of idle connections (at most [`MAX_IDLE_CONNECTIONS`] kept; a new one is opened when
//!   all are busy, which is cheap for a local file). The simulated latency is an async
//!   sleep before the query, so a slow origin occupies no thread.
//! - **The origin control** ([`OriginState`]): the simulated latency of each call (from
//!   `ERP_DB_LATENCY_MS`, 20 ms by default), a switch that makes every call fail after that
//!   latency, and the count of calls this instance made (`loads`: one per call, a batch
//!   read included, failed calls included). These belong to this instance only.
//!
//! It may import nothing from the rest of the server: the catalog and the handlers build on
//! it, not the other way round.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{params, params_from_iter, Connection, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};

/// What one query costs by default (`ERP_DB_LATENCY_MS`).
pub const DEFAULT_LATENCY: Duration = Duration::from_millis(20);
/// The database file when `DATABASE_URL` is not set, relative to the working directory.
pub const DEFAULT_PATH: &str = "erp.db";
/// The seeded product ids are `1..=SEEDED`.
pub const SEEDED: u64 = 100;
/// How long a connection waits for another connection's lock before giving up.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle connections kept for the next queries.
pub const MAX_IDLE_CONNECTIONS: usize = 4;
/// The longest simulated latency accepted, from `ERP_DB_LATENCY_MS` or the origin control.
pub const MAX_LATENCY: Duration = Duration::from_secs(60);
/// `PRAGMA user_version` of a created and seeded file.
const SCHEMA_VERSION: i32 = 1;
/// Ids per `IN (…)` list in a batch read (well under SQLite's limit on parameters).
const BATCH_CHUNK: usize = 500;

/// A product, as stored and as answered: `{"id":1,"name":"...","priceCents":1999,"stock":5}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Product {
    /// The id.
    pub id: u64,
    /// The display name.
    pub name: String,
    /// The price in cents (integers: no floating-point money). At most `i64::MAX`, what
    /// SQLite stores.
    pub price_cents: u64,
    /// Units in stock.
    pub stock: u32,
}

/// What a query can fail with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbError {
    /// No product has this id.
    NotFound(u64),
    /// The database did not answer: the origin control makes calls fail, or the file could
    /// not be read or written (the cause is in the log). Says why, for the answer's detail.
    Unavailable(&'static str),
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DbError::NotFound(id) => write!(f, "Product {id} not found"),
            DbError::Unavailable(why) => write!(f, "Product database unavailable: {why}"),
        }
    }
}

impl std::error::Error for DbError {}

/// Why a call fails while the origin control says `failing`.
const FAILING: &str = "the origin control makes every call fail (POST /api/admin/origin {\"failing\": false} restores it)";
/// Why a call fails when SQLite returned an error.
const STORAGE: &str = "the database file could not be read or written (see the server log)";

/// Where the database is and how slow it is: `DATABASE_URL` and `ERP_DB_LATENCY_MS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbConfig {
    /// The SQLite file (created when missing; its directory must exist).
    pub path: PathBuf,
    /// The simulated latency of each call.
    pub latency: Duration,
}

impl Default for DbConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from(DEFAULT_PATH),
            latency: DEFAULT_LATENCY,
        }
    }
}

impl DbConfig {
    /// Reads `DATABASE_URL` (`sqlite:<file path>`, also written `sqlite://<file path>`;
    /// default `erp.db`) and `ERP_DB_LATENCY_MS` (milliseconds, default 20, at most 60 000).
    ///
    /// # Errors
    /// A message starting with the variable's name when a value is not acceptable.
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Self, String> {
        let set = |name: &str| vars.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
        let mut config = Self::default();
        if let Some(url) = set("DATABASE_URL") {
            config.path = sqlite_path(url)
                .map_err(|why| format!("DATABASE_URL={url:?} is invalid: {why}"))?;
        }
        if let Some(ms) = set("ERP_DB_LATENCY_MS") {
            config.latency = ms
                .parse::<u64>()
                .ok()
                .map(Duration::from_millis)
                .filter(|d| *d <= MAX_LATENCY)
                .ok_or_else(|| {
                    format!(
                        "ERP_DB_LATENCY_MS={ms:?} is invalid: expected milliseconds from 0 to {}",
                        MAX_LATENCY.as_millis()
                    )
                })?;
        }
        Ok(config)
    }
}

/// The file path of a `sqlite:` URL, or why it is not one this server can share.
fn sqlite_path(url: &str) -> Result<PathBuf, String> {
    let Some(rest) = url.strip_prefix("sqlite:") else {
        let scheme = url.split_once(':').map_or("", |(s, _)| s);
        return Err(if scheme.is_empty() {
            "expected sqlite:<file path>, as in sqlite:erp.db or sqlite:/var/lib/erp/erp.db".into()
        } else {
            format!("the {scheme:?} scheme is not supported: expected sqlite:<file path>")
        });
    };
    // `sqlite://x.db` and `sqlite:///abs/x.db` are common spellings of the same thing.
    let path = rest.strip_prefix("//").unwrap_or(rest);
    if path.is_empty() {
        return Err("no file path after sqlite: (as in sqlite:erp.db)".into());
    }
    if path == ":memory:" || path.contains("mode=memory") {
        return Err(
            "an in-memory database is not shared between connections or instances: give a file path"
                .into(),
        );
    }
    if path.contains('?') {
        return Err("URL parameters are not supported: give a plain file path".into());
    }
    Ok(PathBuf::from(path))
}

/// What the origin control shows: `{"latencyMs":20,"failing":false,"loads":3}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OriginState {
    /// The simulated latency of each call, in milliseconds.
    pub latency_ms: u64,
    /// Every call fails (after the latency).
    pub failing: bool,
    /// Calls this instance made since it started, failed ones included (a batch read
    /// counts once).
    pub loads: u64,
}

/// This instance's access to the database: latency, failure switch, call counter.
#[derive(Debug)]
struct Origin {
    latency_ms: AtomicU64,
    failing: AtomicBool,
    loads: AtomicU64,
}

/// Connections to one file, reused by the blocking calls.
#[derive(Debug)]
struct Pool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl Pool {
    /// Runs `f` with an idle connection (or a new one), then keeps the connection for the
    /// next call. Blocking: call it from `spawn_blocking`.
    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let mut conn = match idle {
            Some(conn) => conn,
            None => connect(&self.path)?,
        };
        let result = f(&mut conn);
        // A failed statement leaves the connection usable (an open transaction is rolled
        // back when its `Transaction` is dropped), so it is kept either way.
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE_CONNECTIONS {
            idle.push(conn);
        }
        result
    }
}

/// A connection that waits for locks instead of failing at once.
fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // Durable at each checkpoint rather than each commit: the usual WAL setting.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(conn)
}

/// Puts the file in WAL mode, then creates and seeds the table unless a previous start
/// did. Returns whether this call seeded it.
fn initialise(conn: &mut Connection) -> rusqlite::Result<bool> {
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(
            journal_mode = mode,
            "the product database is not in WAL mode"
        );
    }
    // IMMEDIATE takes the write lock first: a second instance starting at the same moment
    // waits here (busy timeout), then sees the version this one set and seeds nothing.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i32 = tx.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if version >= SCHEMA_VERSION {
        return Ok(false);
    }
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS products (
             id INTEGER PRIMARY KEY,
             name TEXT NOT NULL,
             price_cents INTEGER NOT NULL,
             stock INTEGER NOT NULL
         )",
    )?;
    {
        let mut insert = tx.prepare(
            "INSERT OR IGNORE INTO products (id, name, price_cents, stock) VALUES (?1, ?2, ?3, ?4)",
        )?;
        for id in 1..=SEEDED {
            let p = seed(id);
            insert.execute(params![p.id, p.name, p.price_cents, p.stock])?;
        }
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(true)
}

const SELECT: &str = "SELECT id, name, price_cents, stock FROM products";

fn product(row: &rusqlite::Row<'_>) -> rusqlite::Result<Product> {
    Ok(Product {
        id: row.get(0)?,
        name: row.get(1)?,
        price_cents: row.get(2)?,
        stock: row.get(3)?,
    })
}

/// The product table. Cheap to share behind an `Arc`; every method is one call to the
/// database (one `loads`).
#[derive(Debug)]
pub struct Database {
    pool: Arc<Pool>,
    origin: Origin,
}

const KINDS: [&str; 10] = [
    "Standard",
    "Ergonomic",
    "Compact",
    "Deluxe",
    "Wireless",
    "Classic",
    "Premium",
    "Eco",
    "Heavy-duty",
    "Portable",
];
const ITEMS: [&str; 10] = [
    "Desk",
    "Chair",
    "Monitor",
    "Keyboard",
    "Mouse",
    "Lamp",
    "Notebook",
    "Pen",
    "Stapler",
    "Whiteboard",
];

/// The seeded product `id` (1 ..= 100).
fn seed(id: u64) -> Product {
    let i = usize::try_from(id - 1).unwrap_or(0);
    Product {
        id,
        name: format!("{} {}", KINDS[(i / 10) % 10], ITEMS[i % 10]),
        price_cents: 1999 + (id - 1) * 250 % 10_000,
        stock: u32::try_from(id * 5 % 47).unwrap_or(0),
    }
}

impl Database {
    /// Opens (or creates) the file, puts it in WAL mode and seeds it on first use.
    ///
    /// # Errors
    /// A message naming the file when it cannot be opened, is not a SQLite database, or
    /// stays locked by another process for longer than [`BUSY_TIMEOUT`].
    pub async fn open(config: DbConfig) -> Result<Self, String> {
        let DbConfig { path, latency } = config;
        let shown = path.display().to_string();
        let opened = tokio::task::spawn_blocking(move || {
            let mut conn = connect(&path)?;
            let seeded = initialise(&mut conn)?;
            Ok::<_, rusqlite::Error>((path, conn, seeded))
        })
        .await
        .map_err(|e| format!("cannot open the product database {shown}: {e}"))?;
        let (path, conn, seeded) = opened.map_err(|e| {
            format!(
                "cannot open the product database {shown} (DATABASE_URL=sqlite:<file path>): {e}"
            )
        })?;
        tracing::info!(
            path = shown,
            seeded,
            latency_ms = latency.as_millis(),
            "product database ready"
        );
        Ok(Self {
            pool: Arc::new(Pool {
                path,
                idle: Mutex::new(vec![conn]),
            }),
            origin: Origin {
                latency_ms: AtomicU64::new(u64::try_from(latency.as_millis()).unwrap_or(u64::MAX)),
                failing: AtomicBool::new(false),
                loads: AtomicU64::new(0),
            },
        })
    }

    /// How many calls this instance made (to see what the cache saves); the origin
    /// control's `loads`.
    pub fn queries(&self) -> u64 {
        self.origin.loads.load(Ordering::Relaxed)
    }

    /// The origin control's state.
    pub fn origin(&self) -> OriginState {
        OriginState {
            latency_ms: self.origin.latency_ms.load(Ordering::Relaxed),
            failing: self.origin.failing.load(Ordering::Relaxed),
            loads: self.queries(),
        }
    }

    /// Sets the simulated latency of the next calls (capped at [`MAX_LATENCY`]).
    pub fn set_latency(&self, latency: Duration) {
        let ms = latency.min(MAX_LATENCY).as_millis();
        self.origin
            .latency_ms
            .store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Makes every next call fail (after the latency), or work again.
    pub fn set_failing(&self, failing: bool) {
        self.origin.failing.store(failing, Ordering::Relaxed);
    }

    /// One call: counted, delayed by the latency, failed when the control says so, else
    /// `f` on the blocking pool.
    async fn call<T, F>(&self, what: &'static str, f: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.origin.loads.fetch_add(1, Ordering::Relaxed);
        let latency = Duration::from_millis(self.origin.latency_ms.load(Ordering::Relaxed));
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        if self.origin.failing.load(Ordering::Relaxed) {
            return Err(DbError::Unavailable(FAILING));
        }
        let pool = Arc::clone(&self.pool);
        match tokio::task::spawn_blocking(move || pool.with(f)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                tracing::error!(query = what, error = %e, "product database error");
                Err(DbError::Unavailable(STORAGE))
            }
            Err(e) => {
                tracing::error!(query = what, error = %e, "product database call did not finish");
                Err(DbError::Unavailable(STORAGE))
            }
        }
    }

    /// `SELECT … WHERE id = ?`
    ///
    /// # Errors
    /// [`DbError::NotFound`], [`DbError::Unavailable`].
    pub async fn find(&self, id: u64) -> Result<Product, DbError> {
        let key = i64::try_from(id).ok();
        let row = self
            .call("find", move |conn| match key {
                Some(key) => conn
                    .query_row(&format!("{SELECT} WHERE id = ?1"), [key], product)
                    .optional(),
                None => Ok(None),
            })
            .await?;
        row.ok_or(DbError::NotFound(id))
    }

    /// `SELECT … WHERE id IN (…)`: the products among `ids` that exist, in one call (one
    /// `loads`, however many ids). Missing ids are absent from the map.
    ///
    /// # Errors
    /// [`DbError::Unavailable`].
    pub async fn get_many(&self, ids: &[u64]) -> Result<HashMap<u64, Product>, DbError> {
        let mut keys: Vec<i64> = ids
            .iter()
            .filter_map(|id| i64::try_from(*id).ok())
            .collect();
        keys.sort_unstable();
        keys.dedup();
        self.call("get_many", move |conn| {
            let mut found = HashMap::with_capacity(keys.len());
            for chunk in keys.chunks(BATCH_CHUNK) {
                let marks = vec!["?"; chunk.len()].join(",");
                let mut stmt = conn.prepare_cached(&format!("{SELECT} WHERE id IN ({marks})"))?;
                for p in stmt.query_map(params_from_iter(chunk), product)? {
                    let p = p?;
                    found.insert(p.id, p);
                }
            }
            Ok(found)
        })
        .await
    }

    /// `UPDATE … WHERE id = ?`: replaces an existing product.
    ///
    /// # Errors
    /// [`DbError::NotFound`], [`DbError::Unavailable`] (also for a price over `i64::MAX`,
    /// which callers check first).
    pub async fn update(&self, product: Product) -> Result<Product, DbError> {
        let id = product.id;
        let Ok(key) = i64::try_from(id) else {
            return Err(DbError::NotFound(id));
        };
        self.call("update", move |conn| {
            let changed = conn.execute(
                "UPDATE products SET name = ?2, price_cents = ?3, stock = ?4 WHERE id = ?1",
                params![key, product.name, product.price_cents, product.stock],
            )?;
            Ok((changed > 0).then_some(product))
        })
        .await?
        .ok_or(DbError::NotFound(id))
    }

    /// `DELETE … WHERE id = ?`
    ///
    /// # Errors
    /// [`DbError::NotFound`], [`DbError::Unavailable`].
    pub async fn delete(&self, id: u64) -> Result<(), DbError> {
        let key = i64::try_from(id).ok();
        let changed = self
            .call("delete", move |conn| match key {
                Some(key) => conn.execute("DELETE FROM products WHERE id = ?1", [key]),
                None => Ok(0),
            })
            .await?;
        if changed == 0 {
            return Err(DbError::NotFound(id));
        }
        Ok(())
    }

    /// `SELECT … ORDER BY id`: every product, or the `limit` products after the first
    /// `offset`, in one call.
    ///
    /// # Errors
    /// [`DbError::Unavailable`].
    pub async fn list(&self, offset: u64, limit: Option<u64>) -> Result<Vec<Product>, DbError> {
        let offset = i64::try_from(offset).unwrap_or(i64::MAX);
        // SQLite: a negative LIMIT means no limit.
        let limit = limit.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX));
        self.call("list", move |conn| {
            let mut stmt =
                conn.prepare_cached(&format!("{SELECT} ORDER BY id LIMIT ?1 OFFSET ?2"))?;
            let rows = stmt.query_map(params![limit, offset], product)?;
            rows.collect()
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::vars;

    /// A database file of its own in the temp dir, removed (with its WAL files) on drop.
    struct TempDb(PathBuf);

    impl TempDb {
        fn new(name: &str) -> Self {
            let path = std::env::temp_dir()
                .join(format!("cache-sdk-erp-db-{}-{name}.db", std::process::id()));
            let db = Self(path);
            db.remove();
            db
        }

        fn config(&self) -> DbConfig {
            DbConfig {
                path: self.0.clone(),
                latency: Duration::ZERO,
            }
        }

        fn remove(&self) {
            for suffix in ["", "-wal", "-shm", "-journal"] {
                let mut p = self.0.clone().into_os_string();
                p.push(suffix);
                let _ = std::fs::remove_file(p);
            }
        }
    }

    impl Drop for TempDb {
        fn drop(&mut self) {
            self.remove();
        }
    }

    #[test]
    fn seeds_are_plausible() {
        assert_eq!(
            seed(1),
            Product {
                id: 1,
                name: "Standard Desk".into(),
                price_cents: 1999,
                stock: 5
            }
        );
        assert_eq!(seed(100).name, "Portable Whiteboard");
    }

    #[test]
    fn configuration_from_the_environment() {
        assert_eq!(
            DbConfig::from_vars(&vars(&[])).unwrap(),
            DbConfig::default()
        );
        let c = DbConfig::from_vars(&vars(&[
            ("DATABASE_URL", "sqlite:/tmp/x/erp.db"),
            ("ERP_DB_LATENCY_MS", "0"),
        ]))
        .unwrap();
        assert_eq!(c.path, PathBuf::from("/tmp/x/erp.db"));
        assert_eq!(c.latency, Duration::ZERO);
        for (url, path) in [
            ("sqlite:data/erp.db", "data/erp.db"),
            ("sqlite://data/erp.db", "data/erp.db"),
            ("sqlite:///var/lib/erp.db", "/var/lib/erp.db"),
        ] {
            let c = DbConfig::from_vars(&vars(&[("DATABASE_URL", url)])).unwrap();
            assert_eq!(c.path, PathBuf::from(path), "{url}");
        }
        for (k, v) in [
            ("DATABASE_URL", "postgres://db/erp"),
            ("DATABASE_URL", "erp.db"),
            ("DATABASE_URL", "sqlite:"),
            ("DATABASE_URL", "sqlite::memory:"),
            ("DATABASE_URL", "sqlite:erp.db?mode=ro"),
            ("ERP_DB_LATENCY_MS", "fast"),
            ("ERP_DB_LATENCY_MS", "-1"),
            ("ERP_DB_LATENCY_MS", "60001"),
        ] {
            let err = DbConfig::from_vars(&vars(&[(k, v)])).unwrap_err();
            assert!(err.starts_with(k), "{err}");
        }
    }

    #[tokio::test]
    async fn update_and_delete_existing_rows_only() {
        let file = TempDb::new("rows");
        let db = Database::open(file.config()).await.unwrap();
        let mut p = db.find(7).await.unwrap();
        assert_eq!(p, seed(7));
        p.stock = 0;
        assert_eq!(db.update(p.clone()).await.unwrap(), p);
        assert_eq!(db.find(7).await.unwrap().stock, 0);
        db.delete(7).await.unwrap();
        assert_eq!(db.find(7).await, Err(DbError::NotFound(7)));
        assert_eq!(db.update(p).await, Err(DbError::NotFound(7)));
        assert_eq!(db.delete(7).await, Err(DbError::NotFound(7)));
        assert_eq!(db.find(u64::MAX).await, Err(DbError::NotFound(u64::MAX)));
        assert_eq!(db.queries(), 8);
    }

    #[tokio::test]
    async fn a_batch_read_is_one_call() {
        let file = TempDb::new("batch");
        let db = Database::open(file.config()).await.unwrap();
        let ids: Vec<u64> = (0..=1200).chain([3, 3, u64::MAX]).collect();
        let found = db.get_many(&ids).await.unwrap();
        assert_eq!(found.len(), 100);
        assert_eq!(found[&3], seed(3));
        assert!(!found.contains_key(&0) && !found.contains_key(&101));
        assert!(db.get_many(&[]).await.unwrap().is_empty());
        assert_eq!(db.queries(), 2);
    }

    #[tokio::test]
    async fn instances_on_one_file_share_rows_and_seed_once() {
        let file = TempDb::new("shared");
        // Two instances starting at the same moment on a new file.
        let (a, b) = tokio::join!(Database::open(file.config()), Database::open(file.config()));
        let (a, b) = (a.unwrap(), b.unwrap());
        let mut p = a.find(5).await.unwrap();
        p.name = "Shared Mouse".into();
        a.update(p.clone()).await.unwrap();
        assert_eq!(b.find(5).await.unwrap(), p);
        b.delete(6).await.unwrap();
        assert_eq!(a.find(6).await, Err(DbError::NotFound(6)));
        drop((a, b));

        // A restart neither re-seeds nor loses anything.
        let c = Database::open(file.config()).await.unwrap();
        assert_eq!(c.find(5).await.unwrap().name, "Shared Mouse");
        assert_eq!(c.find(6).await, Err(DbError::NotFound(6)));
        assert_eq!(
            c.get_many(&(1..=200).collect::<Vec<_>>())
                .await
                .unwrap()
                .len(),
            99
        );
    }

    #[tokio::test]
    async fn the_origin_control_adds_latency_and_failures_and_counts_every_call() {
        let file = TempDb::new("origin");
        let db = Database::open(file.config()).await.unwrap();
        assert_eq!(
            db.origin(),
            OriginState {
                latency_ms: 0,
                failing: false,
                loads: 0
            }
        );
        db.set_latency(Duration::from_millis(30));
        db.set_failing(true);
        let start = std::time::Instant::now();
        assert_eq!(db.find(1).await, Err(DbError::Unavailable(FAILING)));
        assert!(start.elapsed() >= Duration::from_millis(30));
        assert!(matches!(
            db.get_many(&[1, 2]).await,
            Err(DbError::Unavailable(_))
        ));
        assert_eq!(
            db.origin(),
            OriginState {
                latency_ms: 30,
                failing: true,
                loads: 2
            }
        );
        db.set_failing(false);
        db.set_latency(Duration::ZERO);
        assert_eq!(db.find(1).await.unwrap(), seed(1));
        assert_eq!(db.origin().loads, 3);
        db.set_latency(Duration::from_secs(3600));
        assert_eq!(db.origin().latency_ms, 60_000);
    }

    #[tokio::test]
    async fn a_file_that_is_not_a_database_is_a_clear_error() {
        let file = TempDb::new("garbage");
        std::fs::write(&file.0, vec![b'x'; 4096]).unwrap();
        let err = Database::open(file.config()).await.unwrap_err();
        assert!(err.contains("cannot open the product database"), "{err}");
        assert!(err.contains(&file.0.display().to_string()), "{err}");

        let missing_dir = DbConfig {
            path: std::env::temp_dir().join("cache-sdk-no-such-dir/erp.db"),
            latency: Duration::ZERO,
        };
        assert!(Database::open(missing_dir).await.is_err());
    }
}
