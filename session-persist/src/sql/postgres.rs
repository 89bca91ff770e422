//! The PostgreSQL store: its constructors.

use std::str::FromStr;
use std::time::Duration;

use larder_cache_api::{Error, ErrorKind, Result};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::Postgres;

use super::{db_error, SqlStore};

/// A pooled connection idle for less than this is handed out without a liveness check: sqlx
/// checks every connection when it comes back to the pool, so it was alive a moment ago.
const CHECK_AFTER_IDLE: Duration = Duration::from_secs(1);

impl SqlStore<Postgres> {
    /// The pool settings [`connect`](Self::connect) uses; start from them to build a pool of
    /// your own for [`from_pool`](Self::from_pool) (with an `application_name` or a
    /// `search_path`, say).
    ///
    /// 16 connections, a 5 s acquire timeout, and a liveness check (one round trip) only for
    /// a connection idle for a second or more. sqlx's default checks before every use, on top
    /// of the check it always makes when a connection is returned: three round trips for one
    /// statement (the store spares most statements the second check too, see
    /// [`from_pool`](Self::from_pool)). A connection that the server ended in between (a restart, an
    /// administrator's `pg_terminate_backend`) costs the statement one retry on a checked
    /// connection, not an error; for a few seconds after that every connection is checked.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use larder_session_persist::PgStore;
    /// use sqlx::postgres::PgConnectOptions;
    ///
    /// let opts: PgConnectOptions = "postgres://app@db/app".parse()?;
    /// let pool = PgStore::pool_options()
    ///     .max_connections(32)
    ///     .connect_with(opts.application_name("sessions"))
    ///     .await?;
    /// let store = PgStore::from_pool(pool);
    /// store.migrate().await?;
    /// # Ok(()) }
    /// ```
    pub fn pool_options() -> PgPoolOptions {
        PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(5))
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= CHECK_AFTER_IDLE || super::lost::recently() {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
    }

    /// Connects to `url` and runs the migrations.
    pub async fn connect(url: &str) -> Result<Self> {
        let opts = PgConnectOptions::from_str(url)
            // sqlx's parse error quotes pieces of the URL, which may be the password: it is
            // not kept.
            .map_err(|_| {
                Error::new(
                    ErrorKind::Config,
                    format!(
                        "invalid PostgreSQL URL {}",
                        larder_cache_api::url::redact(url)
                    ),
                )
            })?;
        let pool = Self::pool_options()
            .connect_with(opts)
            .await
            .map_err(|e| db_error("postgres", "connect", e))?;
        let store = Self::from_pool(pool);
        store.migrate().await?;
        Ok(store)
    }
}

impl SqlStore<Postgres> {
    /// Opens an existing database at `url` without running migrations: a database (or
    /// schema) without the session table is [`ErrorKind::Config`], so a tool pointed at the
    /// wrong one creates nothing in it.
    pub async fn open_existing(url: &str) -> Result<Self> {
        use sqlx::Connection as _;
        let opts = PgConnectOptions::from_str(url).map_err(|_| {
            Error::new(
                ErrorKind::Config,
                format!(
                    "invalid PostgreSQL URL {}",
                    larder_cache_api::url::redact(url)
                ),
            )
        })?;
        // One direct connection first: its error says why (a pool's only says it timed out).
        let mut probe = sqlx::postgres::PgConnection::connect_with(&opts)
            .await
            .map_err(|e| {
                Error::new(ErrorKind::Unavailable, "cannot connect to the database")
                    .with_backend("postgres")
                    .with_source(e)
            })?;
        let found: Option<String> =
            sqlx::query_scalar("SELECT to_regclass('larder_sessions')::text")
                .fetch_one(&mut probe)
                .await
                .map_err(|e| db_error("postgres", "open", e))?;
        let _ = probe.close().await;
        if found.is_none() {
            return Err(super::no_session_tables("postgres"));
        }
        let pool = Self::pool_options()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy_with(opts);
        Ok(Self::from_pool(pool))
    }
}
