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

    const BEGIN_WRITE: &'static str = "BEGIN";
    const LOCK_ROW: &'static str = " FOR UPDATE";

    fn rows_affected(result: &PgQueryResult) -> u64 {
        result.rows_affected()
    }
}

impl SqlStore<Postgres> {
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
