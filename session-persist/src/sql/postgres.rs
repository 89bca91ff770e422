//! The PostgreSQL store: its dialect and its constructor.

use std::str::FromStr;

use larder_cache_api::{Error, ErrorKind, Result};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgQueryResult};
use sqlx::Postgres;

use super::{db_error, Dialect, SqlStore};

impl Dialect for Postgres {
    const BACKEND: &'static str = "postgres";

    fn migrator() -> Migrator {
        sqlx::migrate!("./migrations/postgres")
    }

    fn rows_affected(result: &PgQueryResult) -> u64 {
        result.rows_affected()
    }
}

impl SqlStore<Postgres> {
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
}
