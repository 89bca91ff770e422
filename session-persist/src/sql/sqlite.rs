//! The SQLite store.

use std::str::FromStr;
use std::time::Duration;

use larder_cache_api::{Error, ErrorKind, Result};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::{db_error, sql_store, SqlOptions};

/// Sessions in an SQLite file: the embedded default.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> larder_cache_api::Result<()> {
/// use larder_session_persist::{SessionStore, SqliteStore};
///
/// let dir = std::env::temp_dir().join(format!("larder-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let store = SqliteStore::open(&dir.join("sessions.db")).await?;
/// assert_eq!(store.count().await?, 0);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pub(crate) pool: SqlitePool,
    pub(crate) options: SqlOptions,
}

impl SqliteStore {
    /// Opens (creating it if needed) the database at `url` (`sqlite://path` or
    /// `sqlite::memory:`) and runs the migrations.
    pub async fn connect(url: &str) -> Result<Self> {
        let opts = SqliteConnectOptions::from_str(url)
            .map_err(|e| Error::new(ErrorKind::Config, "invalid SQLite URL").with_source(e))?;
        Self::connect_with(opts).await
    }

    /// Opens (creating it if needed) the database file at `path` and runs the migrations.
    pub async fn open(path: &std::path::Path) -> Result<Self> {
        Self::connect_with(SqliteConnectOptions::new().filename(path)).await
    }

    async fn connect_with(opts: SqliteConnectOptions) -> Result<Self> {
        // WAL lets readers run beside the one writer; the busy timeout makes writers queue
        // instead of failing with "database is locked".
        let opts = opts
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts)
            .await
            .map_err(|e| db_error("sqlite", "open", e))?;
        let store = Self::from_pool(pool);
        store.migrate().await?;
        Ok(store)
    }

    /// Uses an existing pool; run [`migrate`](Self::migrate) once before use.
    pub fn from_pool(pool: SqlitePool) -> Self {
        SqliteStore {
            pool,
            options: SqlOptions::default(),
        }
    }

    /// Replaces the options.
    pub fn with_options(mut self, options: SqlOptions) -> Self {
        self.options = options;
        self
    }

    /// Applies the embedded migrations (idempotent).
    pub async fn migrate(&self) -> Result<()> {
        sqlx::migrate!("./migrations/sqlite")
            .run(&self.pool)
            .await
            .map_err(|e| {
                Error::new(ErrorKind::Backend, "running session migrations failed")
                    .with_backend("sqlite")
                    .with_source(e)
            })
    }

    /// The pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

sql_store!(SqliteStore, sqlx::Sqlite, "sqlite");

/// The compare-and-swap key-value store in this database (table `larder_kv`): a larder
/// cache backend with database-enforced versions and the database clock, on which
/// coordination runs. Get one with [`SqliteStore::kv`].
#[derive(Debug, Clone)]
pub struct SqliteKv {
    pool: SqlitePool,
    caps: larder_cache_api::Capabilities,
}

impl SqliteStore {
    /// The compare-and-swap key-value store sharing this store's pool.
    pub fn kv(&self) -> SqliteKv {
        let mut caps = larder_cache_api::Capabilities::full("sqlite");
        caps.persistent = true;
        caps.shared = true;
        caps.max_value_size = 16 * 1024 * 1024;
        SqliteKv {
            pool: self.pool.clone(),
            caps,
        }
    }
}

// SQLite has no sequences and no writes inside expressions: a version is 63 random bits,
// drawn inside the one CAS statement (a repeat for one key has odds of 2^-63 per write; the
// counter table of the first migration is no longer used).
super::kv::sql_kv!(
    SqliteKv,
    sqlx::Sqlite,
    "sqlite",
    "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
    "(random() & 9223372036854775807)"
);

/// A fence for one resource in this database (table `larder_fences`): see
/// [`SqliteStore::fence`].
#[derive(Debug, Clone)]
pub struct SqliteFence {
    pool: SqlitePool,
    resource: String,
}

impl SqliteStore {
    /// The fence of `resource`: make a write conditional on a fencing token (from a
    /// lease of `larder-coord` or a task run) so that a holder paused past
    /// its lease cannot overwrite its successor's work.
    pub fn fence(&self, resource: &str) -> SqliteFence {
        SqliteFence {
            pool: self.pool.clone(),
            resource: resource.to_owned(),
        }
    }
}

super::fence::sql_fence!(SqliteFence, sqlx::Sqlite, "sqlite");
