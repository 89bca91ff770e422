//! Databases for session and SQL-store tests: a fresh PostgreSQL schema per test, a fresh
//! SQLite file.

use larder_backend_sql::{PgKv, SqliteKv};
use larder_session_persist::{PgStore, SqliteStore};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

/// The PostgreSQL server the tests use (`LARDER_TEST_POSTGRES`, default the local one).
pub fn postgres_url() -> String {
    std::env::var("LARDER_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// A new, empty schema (named `t_<16 hex digits>`, so `scripts/test` drops it later).
pub async fn pg_schema() -> String {
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
    schema
}

/// The test server's URL, pointed at `schema` through the connection's `search_path`.
pub fn schema_url(schema: &str) -> String {
    let base = postgres_url();
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}options=-c%20search_path%3D{schema}")
}

/// A pool whose connections work in `schema`.
pub async fn pg_pool_in(schema: &str) -> PgPool {
    let opts: PgConnectOptions = postgres_url().parse().expect("url");
    PgPoolOptions::new()
        .max_connections(10)
        .connect_with(opts.options([("search_path", schema)]))
        .await
        .expect("connect")
}

/// A pool with the session store's own settings (as `PgStore::connect` makes it) whose
/// connections work in `schema`.
pub async fn pg_session_pool_in(schema: &str) -> PgPool {
    let opts: PgConnectOptions = postgres_url().parse().expect("url");
    PgStore::pool_options()
        .max_connections(10)
        .connect_with(opts.options([("search_path", schema)]))
        .await
        .expect("connect")
}

/// A session store on its own new schema, so tests never see each other's rows.
pub async fn pg_store() -> (PgStore, String) {
    let schema = pg_schema().await;
    let store = PgStore::from_pool(pg_session_pool_in(&schema).await);
    store.migrate().await.expect("migrations");
    (store, schema)
}

/// The SQL compare-and-swap store on its own new schema (its own migrations only).
pub async fn pg_kv() -> (PgKv, String) {
    let schema = pg_schema().await;
    let kv = PgKv::from_pool(pg_pool_in(&schema).await);
    kv.migrate().await.expect("kv migrations");
    (kv, schema)
}

/// The SQL compare-and-swap store beside the sessions of `store` (same pool).
pub async fn pg_kv_beside(store: &PgStore) -> PgKv {
    let kv = PgKv::from_pool(store.pool().clone());
    kv.migrate().await.expect("kv migrations");
    kv
}

/// A store on a new SQLite file in a temp dir (kept alive by the returned guard).
pub async fn sqlite_store() -> (SqliteStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(&dir.path().join("sessions.db"))
        .await
        .expect("sqlite store");
    (store, dir)
}

/// The SQL compare-and-swap store on a new SQLite file in a temp dir.
pub async fn sqlite_kv() -> (SqliteKv, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let kv = SqliteKv::open(&dir.path().join("kv.db"))
        .await
        .expect("sqlite kv");
    (kv, dir)
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
    PgStore::from_pool(pg_session_pool_in(schema).await)
}

/// A pool (made from `options`, at most 10 connections) on a new schema, whose connections
/// go through a PostgreSQL-aware [`FaultProxy`](crate::proxy::FaultProxy) that can lose the
/// replies of chosen statements.
pub async fn pg_pool_behind_proxy(options: PgPoolOptions) -> (PgPool, crate::proxy::FaultProxy) {
    let opts: PgConnectOptions = postgres_url().parse().expect("a PostgreSQL URL");
    let upstream = format!("{}:{}", opts.get_host(), opts.get_port());
    let proxy = crate::proxy::FaultProxy::start_postgres(&upstream).await;
    let schema = pg_schema().await;
    let pool = options
        .max_connections(10)
        .connect_with(
            opts.host("127.0.0.1")
                .port(proxy.port())
                .ssl_mode(sqlx::postgres::PgSslMode::Disable)
                .options([("search_path", schema.as_str())]),
        )
        .await
        .expect("connect through the proxy");
    (pool, proxy)
}
