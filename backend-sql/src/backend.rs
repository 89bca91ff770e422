//! The [`CacheBackend`] implementation.

use larder_cache_api::{
    async_trait, Bytes, CacheBackend, Capabilities, DeleteMode, Entry, Key, PutMode, Result, Ttl,
    Version,
};
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, Pool, Type};

use crate::core::Core;
use crate::fence::Fence;
use crate::Dialect;

/// Largest value the store accepts: 16 MiB.
pub const MAX_VALUE_SIZE: usize = 16 * 1024 * 1024;

/// The compare-and-swap key-value store in an SQL database (table `larder_kv`): a larder
/// cache backend whose versions are enforced by the database and whose expiry follows the
/// database clock. Coordination (leases, periodic tasks) runs on it, and it hands out
/// [fences](SqlKv::fence) for writes that must not outlive a lease. See the
/// [crate docs](crate).
///
/// Use it as [`PgKv`] (PostgreSQL) or [`SqliteKv`] (SQLite). Cheap to clone: clones share
/// one connection pool.
pub struct SqlKv<DB: Database> {
    pub(crate) core: Core<DB>,
    caps: Capabilities,
}

/// The store in PostgreSQL (feature `postgres`).
#[cfg(feature = "postgres")]
pub type PgKv = SqlKv<sqlx::Postgres>;

/// The store in an SQLite file (feature `sqlite`).
#[cfg(feature = "sqlite")]
pub type SqliteKv = SqlKv<sqlx::Sqlite>;

impl<DB: Database> Clone for SqlKv<DB> {
    fn clone(&self) -> Self {
        SqlKv {
            core: self.core.clone(),
            caps: self.caps.clone(),
        }
    }
}

impl<DB: Database> std::fmt::Debug for SqlKv<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlKv")
            .field("database", &DB::NAME)
            .field("pool", &self.core.pool)
            .finish_non_exhaustive()
    }
}

// What sqlx needs to run the store's SQL on `DB`; PostgreSQL and SQLite provide all of it.
impl<DB> SqlKv<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> &'q [u8]: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<i64>: Encode<'q, DB>,
    for<'r> Vec<u8>: Decode<'r, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
{
    /// Uses an existing pool (for instance the one the application's sessions use); run
    /// [`migrate`](Self::migrate) once before use.
    ///
    /// The store runs at most half as many statements at once as the pool has connections
    /// (the others wait their turn) and keeps the connection of a successful statement for
    /// the next one; a kept connection unused for a second goes back to the pool, as do all
    /// of them when the pool closes; a pool of one connection is never kept from its other
    /// users.
    pub fn from_pool(pool: Pool<DB>) -> Self {
        let mut caps = Capabilities::full(DB::BACKEND);
        // The database keeps every row until it expires or is deleted, for every process.
        caps.persistent = true;
        caps.persistence_note = Some("rows in a database table".into());
        caps.shared = true;
        caps.invalidation_channel = DB::NOTIFIES; // `notify()`
        caps.max_value_size = MAX_VALUE_SIZE;
        SqlKv {
            core: Core::new(pool),
            caps,
        }
    }

    /// Creates `larder_kv` and `larder_fences` if they are missing, through this crate's own
    /// migrations (tracked in [`MIGRATIONS_TABLE`](crate::MIGRATIONS_TABLE), so they never
    /// clash with the session migrations or an application's). Idempotent; on PostgreSQL
    /// concurrent runs are serialised by sqlx's migration lock.
    pub async fn migrate(&self) -> Result<()> {
        self.core.migrate().await
    }

    /// The pool.
    pub fn pool(&self) -> &Pool<DB> {
        &self.core.pool
    }

    /// The fence of `resource`: make a write conditional on a fencing token (from a
    /// lease of `larder-coord` or a task run) so that a holder paused past
    /// its lease cannot overwrite its successor's work.
    pub fn fence(&self, resource: &str) -> Fence<DB> {
        Fence::new(self.core.clone(), resource)
    }

    /// Removes expired rows in batches of `batch`; returns how many. (Expired rows are
    /// already absent for every operation; this only reclaims their space.)
    pub async fn purge_expired(&self, batch: u32) -> Result<u64> {
        self.core.purge_expired(batch).await
    }

    /// Milliseconds since the Unix epoch by the database clock, the clock of every expiry
    /// (whole milliseconds, as expiry compares them: an entry expires once this is past its
    /// `expires_at`).
    pub async fn now_ms(&self) -> Result<i64> {
        self.core.now_ms().await
    }
}

#[cfg(feature = "postgres")]
impl SqlKv<sqlx::Postgres> {
    /// Connects to the PostgreSQL database at `url` (see [`SqlConfig`](crate::SqlConfig))
    /// and runs the [migrations](Self::migrate).
    ///
    /// ```no_run
    /// # async fn demo() -> larder_cache_api::Result<()> {
    /// let kv = larder_backend_sql::PgKv::connect("postgres://postgres@127.0.0.1/app").await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(url: &str) -> Result<Self> {
        Self::new(crate::SqlConfig::from_url(url)?).await
    }

    /// The pool settings [`new`](Self::new) starts from; use them for a pool of your own
    /// given to [`from_pool`](Self::from_pool).
    ///
    /// A connection idle for less than a second is handed out without a liveness check
    /// (sqlx's default checks before every use, a round trip). The store keeps the connection
    /// of a successful statement for the next one (sparing sqlx's check of every connection
    /// it gets back, another round trip), so a compare-and-swap is one round trip. A
    /// connection that the server ended in between costs a write one look at its write id
    /// and one resend on a checked connection, not an error; for a few seconds after that
    /// every connection is checked.
    pub fn pool_options() -> sqlx::postgres::PgPoolOptions {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(crate::DEFAULT_MAX_CONNECTIONS)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= std::time::Duration::from_secs(1)
                        || larder_sql_common::lost::recently()
                    {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
    }

    /// Connects with `config` (a PostgreSQL one) and runs the migrations.
    pub async fn new(config: crate::SqlConfig) -> Result<Self> {
        if config.database != crate::SqlDatabase::Postgres {
            return Err(crate::error::config(format!(
                "{:?} is not a PostgreSQL URL",
                config.redacted_url()
            )));
        }
        let pool = Self::pool_options()
            .max_connections(config.max_connections)
            .acquire_timeout(config.acquire_timeout)
            .connect_with(config.pg_options()?)
            .await
            .map_err(|e| crate::error::db_error("postgres", "connect", e))?;
        let kv = Self::from_pool(pool);
        kv.migrate().await?;
        Ok(kv)
    }

    /// This database's invalidation channel, for a
    /// `larder_near::Near` cache in front of this store: `LISTEN
    /// larder_kv` on a connection of its own (see [`PgNotify`](crate::PgNotify)).
    pub fn notify(&self) -> crate::PgNotify {
        crate::PgNotify::new(self.core.pool.clone())
    }
}

#[cfg(feature = "sqlite")]
impl SqlKv<sqlx::Sqlite> {
    /// Opens (creating it if needed) the SQLite database at `url` (`sqlite://path`; see
    /// [`SqlConfig`](crate::SqlConfig)) and runs the [migrations](Self::migrate).
    pub async fn connect(url: &str) -> Result<Self> {
        Self::new(crate::SqlConfig::from_url(url)?).await
    }

    /// Opens (creating it if needed) the database file at `path` and runs the migrations.
    pub async fn open(path: &std::path::Path) -> Result<Self> {
        let options = sqlx::sqlite::SqliteConnectOptions::new().filename(path);
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(crate::DEFAULT_MAX_CONNECTIONS)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect_with(crate::config::sqlite_defaults(options))
            .await
            .map_err(|e| crate::error::db_error("sqlite", "open", e))?;
        let kv = Self::from_pool(pool);
        kv.migrate().await?;
        Ok(kv)
    }

    /// Opens with `config` (an SQLite one) and runs the migrations.
    pub async fn new(config: crate::SqlConfig) -> Result<Self> {
        if config.database != crate::SqlDatabase::Sqlite {
            return Err(crate::error::config(format!(
                "{:?} is not an SQLite URL",
                config.redacted_url()
            )));
        }
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(config.acquire_timeout)
            .connect_with(config.sqlite_options()?)
            .await
            .map_err(|e| crate::error::db_error("sqlite", "open", e))?;
        let kv = Self::from_pool(pool);
        kv.migrate().await?;
        Ok(kv)
    }
}

// What sqlx needs to run the store's SQL on `DB`; PostgreSQL and SQLite provide all of it.
#[async_trait]
impl<DB> CacheBackend for SqlKv<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> &'q [u8]: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<i64>: Encode<'q, DB>,
    for<'r> Vec<u8>: Decode<'r, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
{
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    async fn get(&self, key: &Key) -> Result<Option<Entry>> {
        self.core.get(key).await
    }

    async fn put(
        &self,
        key: &Key,
        value: Bytes,
        ttl: Option<Ttl>,
        mode: PutMode,
    ) -> Result<Version> {
        self.caps.check_value_size(value.len())?;
        self.core.put(key, &value, ttl, mode).await
    }

    async fn delete(&self, key: &Key, mode: DeleteMode) -> Result<bool> {
        match mode {
            DeleteMode::Any => self.core.delete(key).await,
            DeleteMode::IfVersion(v) => self.core.delete_if(key, v).await,
        }
    }

    async fn touch(&self, key: &Key, ttl: Option<Ttl>) -> Result<bool> {
        self.core.touch(key, ttl).await
    }
}
