//! The authoritative store on sqlx: one implementation for PostgreSQL and SQLite
//! ([`SqlStore`], used as [`PgStore`] or [`SqliteStore`]). The session SQL is portable
//! (parameters are `$n` in both databases); what differs is in [`Dialect`].

use std::sync::Arc;
use std::time::Duration;

use larder_cache_api::{Error, ErrorKind, Result};
use sqlx::{Database, Pool};

use crate::id::{IdSource, OsRandom};
use crate::store::DEFAULT_TOMBSTONE_TTL;

mod held;
mod lost;
mod migrations;
mod outbox;
#[cfg(feature = "postgres")]
mod postgres;
mod queries;
#[cfg(feature = "sqlite")]
mod sqlite;
mod write_id;

/// How many fresh ids `create` and `rotate` try before giving up.
const MAX_ID_ATTEMPTS: u32 = 8;

/// Settings shared by the SQL stores.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SqlOptions {
    /// How long a deleted session's tombstone is kept, and how long the change log keeps
    /// its entries ([`Outbox::log_retention`](crate::Outbox::log_retention)): a
    /// [`CachedStore`](crate::CachedStore) in front caps its entries at it.
    pub tombstone_ttl: Duration,
    /// Where new ids come from.
    pub ids: Arc<dyn IdSource>,
}

impl Default for SqlOptions {
    fn default() -> Self {
        SqlOptions {
            tombstone_ttl: DEFAULT_TOMBSTONE_TTL,
            ids: Arc::new(OsRandom),
        }
    }
}

impl SqlOptions {
    /// Sets the tombstone lifetime.
    pub fn tombstone_ttl(mut self, d: Duration) -> Self {
        self.tombstone_ttl = d;
        self
    }

    /// Sets the id source (tests inject colliding ones).
    pub fn ids(mut self, ids: Arc<dyn IdSource>) -> Self {
        self.ids = ids;
        self
    }
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn no_session_tables(backend: &'static str) -> Error {
    Error::new(
        ErrorKind::Config,
        "no larder_sessions table in this database (wrong database or schema, or the \
         application has not run its migrations yet)",
    )
    .with_backend(backend)
}

/// Which database a URL names, by its scheme; anything else is [`ErrorKind::Config`].
fn database_of(url: &str) -> Result<&'static str> {
    let parsed = larder_cache_api::url::BackendUrl::parse(url)?;
    match parsed.scheme() {
        "postgres" | "postgresql" => Ok("postgres"),
        "sqlite" => Ok("sqlite"),
        _ => Err(Error::new(
            ErrorKind::Config,
            format!(
                "{parsed} is not a session database URL (postgres://..., postgresql://... or \
                 sqlite://path)"
            ),
        )),
    }
}

fn not_built(feature: &str) -> Error {
    Error::new(
        ErrorKind::Unsupported,
        format!("this build has no `{feature}` feature of larder-session-persist"),
    )
}

/// The session store a database URL names (`postgres://`, `postgresql://` or
/// `sqlite://path`), its migrations run.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> larder_cache_api::Result<()> {
/// # let dir = std::env::temp_dir().join(format!("larder-doc-connect-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir).unwrap();
/// let url = format!("sqlite://{}", dir.join("s.db").display());
/// let store = larder_session_persist::connect(&url).await?;
/// assert_eq!(store.count().await?, 0);
/// // A tool opens it without migrating, and refuses a database without the tables.
/// let again = larder_session_persist::open_existing(&url).await?;
/// assert_eq!(again.count().await?, 0);
/// let other = format!("sqlite://{}", dir.join("other.db").display());
/// assert!(larder_session_persist::open_existing(&other).await.is_err());
/// # Ok(()) }
/// ```
pub async fn connect(url: &str) -> Result<Arc<dyn crate::Outbox>> {
    match database_of(url)? {
        #[cfg(feature = "postgres")]
        "postgres" => Ok(Arc::new(PgStore::connect(url).await?)),
        #[cfg(feature = "sqlite")]
        "sqlite" => Ok(Arc::new(SqliteStore::connect(url).await?)),
        other => Err(not_built(other)),
    }
}

/// Like [`connect`], without running migrations: a database without the session tables is
/// [`ErrorKind::Config`] (for operator tools, which must create nothing).
pub async fn open_existing(url: &str) -> Result<Arc<dyn crate::Outbox>> {
    match database_of(url)? {
        #[cfg(feature = "postgres")]
        "postgres" => Ok(Arc::new(PgStore::open_existing(url).await?)),
        #[cfg(feature = "sqlite")]
        "sqlite" => Ok(Arc::new(SqliteStore::open_existing(url).await?)),
        other => Err(not_built(other)),
    }
}

/// What differs between PostgreSQL and SQLite (shared with larder-backend-sql).
pub use larder_sql_common::Dialect;

/// Sessions in an SQL database: the authority. Use it as [`PgStore`] or [`SqliteStore`].
///
/// Tables: `larder_sessions` (the id stored only as its SHA-256, deleted sessions kept a
/// while as tombstones) and `larder_session_outbox` (the change log: saves and deletions
/// recorded by triggers in the changing transaction, read by every cache from its own cursor). Cheap to clone: clones share one connection pool.
pub struct SqlStore<DB: Database> {
    pub(crate) pool: Pool<DB>,
    pub(crate) options: SqlOptions,
    /// Connections kept between statements (shared by clones).
    pub(crate) held: Arc<held::Held<DB>>,
}

/// Sessions in PostgreSQL (feature `postgres`).
///
/// ```no_run
/// # async fn demo() -> larder_cache_api::Result<()> {
/// use larder_session_persist::PgStore;
///
/// // Connects and runs the embedded migrations.
/// let store = PgStore::connect("postgres://postgres@127.0.0.1/app").await?;
/// # Ok(()) }
/// ```
#[cfg(feature = "postgres")]
pub type PgStore = SqlStore<sqlx::Postgres>;

/// Sessions in an SQLite file, the embedded default (feature `sqlite`).
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
#[cfg(feature = "sqlite")]
pub type SqliteStore = SqlStore<sqlx::Sqlite>;

impl<DB: Database> Clone for SqlStore<DB> {
    fn clone(&self) -> Self {
        SqlStore {
            pool: self.pool.clone(),
            options: self.options.clone(),
            held: Arc::clone(&self.held),
        }
    }
}

impl<DB: Database> std::fmt::Debug for SqlStore<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlStore")
            .field("database", &DB::NAME)
            .field("pool", &self.pool)
            .field("options", &self.options)
            .finish()
    }
}

impl<DB: Dialect> SqlStore<DB> {
    /// Uses an existing pool; run [`migrate`](Self::migrate) once before use.
    ///
    /// The store runs at most half as many statements at once as the pool has connections
    /// (the others wait their turn) and keeps the connection of a successful statement for
    /// the next one, which spares sqlx's check of every connection it gets back (a round
    /// trip). A kept connection unused for a second goes back to the pool, as do all of them
    /// when the pool closes; a pool of one connection is never kept from its other users.
    pub fn from_pool(pool: Pool<DB>) -> Self {
        SqlStore {
            held: held::Held::new(&pool),
            pool,
            options: SqlOptions::default(),
        }
    }

    /// Replaces the options.
    pub fn with_options(mut self, options: SqlOptions) -> Self {
        self.options = options;
        self
    }

    /// Applies the embedded session migrations (idempotent; on PostgreSQL concurrent runs are
    /// serialised by sqlx's migration lock). The tables of the SQL cache backend
    /// (`larder_kv`, `larder_fences`) are not among them: `larder-backend-sql` migrates its
    /// own. A database migrated by an earlier version, whose session migrations created
    /// those tables too, keeps working.
    pub async fn migrate(&self) -> Result<()> {
        migrations::run(&self.pool).await.map_err(|e| {
            Error::new(ErrorKind::Backend, "running session migrations failed")
                .with_backend(DB::BACKEND)
                .with_source(e)
        })
    }

    /// The pool.
    pub fn pool(&self) -> &Pool<DB> {
        &self.pool
    }
}

/// Maps a database error of session operation `op` (the mapping shared with the SQL cache
/// backend: connection trouble is `Unavailable` (retryable), the rest `Backend`; the sqlx
/// error is kept as the source).
pub(crate) fn db_error(backend: &'static str, op: &'static str, e: sqlx::Error) -> Error {
    larder_sql_common::db_error(backend, format!("session {op} failed"), e)
}
