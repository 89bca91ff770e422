//! Databases for session tests: a fresh PostgreSQL schema per test, a fresh SQLite file.

use larder_session_persist::{PgStore, SqliteStore};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// The PostgreSQL server the tests use (`LARDER_TEST_POSTGRES`, default the local one).
pub fn postgres_url() -> String {
    std::env::var("LARDER_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// A store on its own new schema, so tests never see each other's rows.
pub async fn pg_store() -> (PgStore, String) {
    let schema = format!("t_{:016x}", rand_u64());
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&postgres_url())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "PostgreSQL at {} is required for these tests: {e}",
                postgres_url()
            )
        });
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&admin)
        .await
        .expect("create schema");
    admin.close().await;
    let opts: PgConnectOptions = postgres_url().parse().expect("url");
    let pool = PgPoolOptions::new()
        .max_connections(10)
        .connect_with(opts.options([("search_path", schema.as_str())]))
        .await
        .expect("connect");
    let store = PgStore::from_pool(pool);
    store.migrate().await.expect("migrations");
    (store, schema)
}

/// A store on a new SQLite file in a temp dir (kept alive by the returned guard).
pub async fn sqlite_store() -> (SqliteStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(&dir.path().join("sessions.db"))
        .await
        .expect("sqlite store");
    (store, dir)
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// Another store on an existing schema (a second "instance" on the same database).
pub async fn pg_store_in(schema: &str) -> PgStore {
    let opts: PgConnectOptions = postgres_url().parse().expect("url");
    let pool = PgPoolOptions::new()
        .max_connections(10)
        .connect_with(opts.options([("search_path", schema)]))
        .await
        .expect("connect");
    PgStore::from_pool(pool)
}
