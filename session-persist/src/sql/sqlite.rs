//! The SQLite store: its constructors.

use std::str::FromStr;
use std::time::Duration;

use larder_cache_api::{Error, ErrorKind, Result};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::Sqlite;

use super::{db_error, SqlStore};

impl SqlStore<Sqlite> {
    /// Opens (creating it if needed) the database at `url` (`sqlite://path` or
    /// `sqlite::memory:`) and runs the migrations.
    pub async fn connect(url: &str) -> Result<Self> {
        let opts = SqliteConnectOptions::from_str(url)
            // sqlx's parse error quotes pieces of the URL, which may be the password: it is
            // not kept.
            .map_err(|_| {
                Error::new(
                    ErrorKind::Config,
                    format!("invalid SQLite URL {}", larder_cache_api::url::redact(url)),
                )
            })?;
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
}

impl SqlStore<Sqlite> {
    /// Opens an existing database at `url` without running migrations: a database without
    /// the session table is [`ErrorKind::Config`], so a tool pointed at the wrong file creates
    /// nothing in it.
    pub async fn open_existing(url: &str) -> Result<Self> {
        let opts = SqliteConnectOptions::from_str(url)
            .map_err(|_| {
                Error::new(
                    ErrorKind::Config,
                    format!("invalid SQLite URL {}", larder_cache_api::url::redact(url)),
                )
            })?
            .create_if_missing(false)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(opts)
            .await
            .map_err(|e| {
                Error::new(ErrorKind::Unavailable, "cannot open the database")
                    .with_backend("sqlite")
                    .with_source(e)
            })?;
        let found: Option<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'larder_sessions'",
        )
        .fetch_optional(&pool)
        .await
        .map_err(|e| db_error("sqlite", "open", e))?;
        if found.is_none() {
            return Err(super::no_session_tables("sqlite"));
        }
        Ok(Self::from_pool(pool))
    }
}
