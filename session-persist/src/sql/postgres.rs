//! The PostgreSQL store.

use std::str::FromStr;

use larder_cache_api::{Error, ErrorKind, Result};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use super::{db_error, sql_store, SqlOptions};

/// Sessions in PostgreSQL.
///
/// ```no_run
/// # async fn demo() -> larder_cache_api::Result<()> {
/// use larder_session_persist::PgStore;
///
/// // Connects and runs the embedded migrations.
/// let store = PgStore::connect("postgres://postgres@127.0.0.1/app").await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct PgStore {
    pub(crate) pool: PgPool,
    pub(crate) options: SqlOptions,
}

impl PgStore {
    /// Connects to `url` and runs the migrations.
    pub async fn connect(url: &str) -> Result<Self> {
        let opts = PgConnectOptions::from_str(url)
            .map_err(|e| Error::new(ErrorKind::Config, "invalid PostgreSQL URL").with_source(e))?;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect_with(opts)
            .await
            .map_err(|e| db_error("postgres", "connect", e))?;
        let store = Self::from_pool(pool);
        store.migrate().await?;
        Ok(store)
    }

    /// Uses an existing pool; run [`migrate`](Self::migrate) once before use.
    pub fn from_pool(pool: PgPool) -> Self {
        PgStore {
            pool,
            options: SqlOptions::default(),
        }
    }

    /// Replaces the options.
    pub fn with_options(mut self, options: SqlOptions) -> Self {
        self.options = options;
        self
    }

    /// Applies the embedded migrations (idempotent; concurrent runs are serialised by
    /// sqlx's migration lock).
    pub async fn migrate(&self) -> Result<()> {
        sqlx::migrate!("./migrations/postgres")
            .run(&self.pool)
            .await
            .map_err(|e| {
                Error::new(ErrorKind::Backend, "running session migrations failed")
                    .with_backend("postgres")
                    .with_source(e)
            })
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

sql_store!(PgStore, sqlx::Postgres, "postgres");

/// The compare-and-swap key-value store in this database (table `larder_kv`): a larder
/// cache backend with database-enforced versions and the database clock, on which
/// coordination runs. Get one with [`PgStore::kv`].
#[derive(Debug, Clone)]
pub struct PgKv {
    pool: PgPool,
    caps: larder_cache_api::Capabilities,
}

impl PgStore {
    /// The compare-and-swap key-value store sharing this store's pool.
    pub fn kv(&self) -> PgKv {
        let mut caps = larder_cache_api::Capabilities::full("postgres");
        caps.persistent = true;
        caps.shared = true;
        caps.max_value_size = 16 * 1024 * 1024;
        PgKv {
            pool: self.pool.clone(),
            caps,
        }
    }
}

super::kv::sql_kv!(
    PgKv,
    sqlx::Postgres,
    "postgres",
    "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT",
    "nextval('larder_kv_version')"
);

/// A fence for one resource in this database (table `larder_fences`): see
/// [`PgStore::fence`].
#[derive(Debug, Clone)]
pub struct PgFence {
    pool: PgPool,
    resource: String,
}

impl PgStore {
    /// The fence of `resource`: make a write conditional on a fencing token (from a
    /// lease of `larder-coord` or a task run) so that a holder paused past
    /// its lease cannot overwrite its successor's work.
    pub fn fence(&self, resource: &str) -> PgFence {
        PgFence {
            pool: self.pool.clone(),
            resource: resource.to_owned(),
        }
    }
}

super::fence::sql_fence!(PgFence, sqlx::Postgres, "postgres");
