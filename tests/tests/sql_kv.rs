//! The SQL compare-and-swap store (`larder-backend-sql`, table `larder_kv`) on PostgreSQL and
//! SQLite, opened through `larder::connect` by URL, runs the whole cache conformance suite
//! and the lease suite, like every other backend; and it shares a database with the
//! sessions, whichever migrations ran first.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use larder::{CacheBackend, DynBackend, Key, PutMode, Ttl};
use larder_backend_sql::{PgKv, SqliteKv, MIGRATIONS_TABLE};
use larder_session_persist::{PgStore, SessionData, SessionStore, SqliteStore, Timestamp};
use larder_tests::db;
use larder_tests::outage::Outage;
use larder_tests::proxy::FaultProxy;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// A fresh, empty schema: the store's own schema step creates everything it needs.
async fn postgres_kv() -> DynBackend {
    let schema = db::pg_schema().await;
    larder::connect(&db::schema_url(&schema)).await.unwrap()
}

async fn sqlite_kv() -> DynBackend {
    // Each case gets its own file under cargo's scratch directory for integration tests.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
        .keep();
    let url = larder_backend_sql::sqlite_url(&dir.join("kv.db"));
    larder::connect(&url).await.unwrap()
}

mod postgres_kv {
    larder_coord::conformance_suite!(super::postgres_kv);
}

mod sqlite_kv {
    larder_coord::conformance_suite!(super::sqlite_kv);
}

/// `larder_kv` in a fresh schema, reached through a fault proxy to PostgreSQL: the server
/// is shared, so "stopped" is every connection cut and new ones refused. A short wait for a
/// connection bounds each operation while it lasts; the rows stay.
async fn postgres_kv_proxied() -> Outage {
    let schema = db::pg_schema().await;
    let opts: PgConnectOptions = db::postgres_url().parse().unwrap();
    let upstream = format!("{}:{}", opts.get_host(), opts.get_port());
    let proxy = FaultProxy::start(&upstream).await;
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_millis(500))
        .connect_with(
            opts.host("127.0.0.1")
                .port(proxy.port())
                .options([("search_path", schema.as_str())]),
        )
        .await
        .unwrap();
    let kv = PgKv::from_pool(pool);
    kv.migrate().await.unwrap();
    Outage::proxied(Arc::new(kv), proxy, None, "postgres")
        .keeps_data()
        .recovers_within(Duration::from_secs(5))
}

mod postgres_kv_outages {
    larder_tests::outage_cases!(stopped: super::postgres_kv_proxied);
}

#[tokio::test]
async fn expiry_follows_the_database_clock_and_purge_removes_rows() {
    let (kv, _schema) = db::pg_kv().await;
    let before = kv.now_ms().await.unwrap();
    let local = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!((before - local).abs() < 60_000, "database clock is sane");
    for i in 0..30 {
        kv.put(
            &Key::new(format!("k{i}")).unwrap(),
            larder::Bytes::from_static(b"v"),
            Some(Ttl::from_millis(10).unwrap()),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(kv.purge_expired(7).await.unwrap(), 30);
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM larder_kv")
        .fetch_one(kv.pool())
        .await
        .unwrap();
    assert_eq!(n, 0);
}

async fn put(kv: &dyn CacheBackend, key: &str, value: &'static [u8]) {
    kv.put(
        &Key::new(key).unwrap(),
        larder::Bytes::from_static(value),
        None,
        PutMode::Overwrite,
    )
    .await
    .unwrap();
}

async fn get(kv: &dyn CacheBackend, key: &str) -> Option<Vec<u8>> {
    kv.get(&Key::new(key).unwrap())
        .await
        .unwrap()
        .map(|e| e.value.to_vec())
}

/// The session migrations as larder-session-persist 0.1.0 and earlier ran them: they also
/// created `larder_kv` and `larder_fences`, migrated since by larder-backend-sql alone (the
/// retired files are the ones those versions embedded, so the checksums are theirs).
macro_rules! previous_session_migrations {
    ($current:literal, $retired:literal) => {
        sqlx::migrate::Migrator::with_migrations(
            sqlx::migrate!($current)
                .iter()
                .chain(sqlx::migrate!($retired).iter())
                .cloned()
                .collect(),
        )
    };
}

/// Files in a directory of the workspace.
fn files_in(dir: &str) -> usize {
    std::fs::read_dir(format!("{}/../{dir}", env!("CARGO_MANIFEST_DIR")))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_type().unwrap().is_file())
        .count()
}

/// Applied versions in a migrations table.
async fn applied(pool: &sqlx::PgPool, table: &str) -> Vec<i64> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT version FROM {table} ORDER BY version"
    )))
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn postgres_sessions_and_kv_share_a_database_in_either_order() {
    // Sessions first, in a database as earlier versions left it (their session migrations
    // created larder_kv and larder_fences), with a row written before the store's own
    // migrations ever ran.
    let schema = db::pg_schema().await;
    let store = PgStore::from_pool(db::pg_session_pool_in(&schema).await);
    previous_session_migrations!(
        "../session-persist/migrations/postgres",
        "../session-persist/migrations/retired/postgres"
    )
    .run(store.pool())
    .await
    .unwrap();
    // As an earlier version wrote it (before the write ids of the store's own migrations).
    sqlx::query(
        "INSERT INTO larder_kv (key, value, version, expires_at) \
         VALUES ('written-before', 'kept'::bytea, nextval('larder_kv_version'), NULL)",
    )
    .execute(store.pool())
    .await
    .unwrap();
    let kv = db::pg_kv_beside(&store).await;
    kv.migrate().await.unwrap();
    store.migrate().await.unwrap();
    assert_eq!(
        get(&kv, "written-before").await.as_deref(),
        Some(&b"kept"[..])
    );
    let sessions = applied(store.pool(), "_sqlx_migrations").await;
    let own = applied(store.pool(), MIGRATIONS_TABLE).await;
    // Every session migration ran, and the retired ones stay recorded.
    let files = files_in("session-persist/migrations/postgres")
        + files_in("session-persist/migrations/retired/postgres");
    assert_eq!(
        sessions.len(),
        files,
        "every session migration ran: {sessions:?}"
    );
    let own_files = std::fs::read_dir(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../backend-sql/migrations/postgres"
    ))
    .unwrap()
    .count();
    assert_eq!(own.len(), own_files, "{own:?}");

    // The store first, in an empty schema; then the sessions; then both again.
    let (kv, schema) = db::pg_kv().await;
    put(&kv, "k", b"v").await;
    let store = PgStore::from_pool(kv.pool().clone());
    store.migrate().await.unwrap();
    kv.migrate().await.unwrap();
    store.migrate().await.unwrap();
    assert_eq!(get(&kv, "k").await.as_deref(), Some(&b"v"[..]));
    let s = store
        .create(
            SessionData::new(),
            None,
            Timestamp::now().plus(std::time::Duration::from_secs(60)),
        )
        .await
        .unwrap();
    assert!(store.load(&s.id).await.unwrap().is_some());
    // And through the facade's URL, on the same schema.
    let by_url = larder::connect(&db::schema_url(&schema)).await.unwrap();
    assert_eq!(get(&*by_url, "k").await.as_deref(), Some(&b"v"[..]));
}

#[tokio::test]
async fn sqlite_sessions_and_kv_share_a_file_in_either_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    // A file as earlier versions left it (their session migrations created larder_kv).
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true);
    let pool = sqlx::SqlitePool::connect_with(opts).await.unwrap();
    previous_session_migrations!(
        "../session-persist/migrations/sqlite",
        "../session-persist/migrations/retired/sqlite"
    )
    .run(&pool)
    .await
    .unwrap();
    pool.close().await;
    let store = SqliteStore::open(&path).await.unwrap();
    let old = SqliteKv::from_pool(store.pool().clone());
    put(&old, "written-before", b"kept").await;
    let kv = SqliteKv::open(&path).await.unwrap();
    assert_eq!(
        get(&kv, "written-before").await.as_deref(),
        Some(&b"kept"[..])
    );
    SqliteStore::open(&path).await.unwrap();

    let path = dir.path().join("kv-first.db");
    let kv = SqliteKv::open(&path).await.unwrap();
    put(&kv, "k", b"v").await;
    let store = SqliteStore::open(&path).await.unwrap();
    SqliteKv::open(&path).await.unwrap();
    assert_eq!(store.count().await.unwrap(), 0);
    assert_eq!(get(&kv, "k").await.as_deref(), Some(&b"v"[..]));
    let (n,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM {MIGRATIONS_TABLE}"
    )))
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(n, 1);
}

#[tokio::test]
async fn urls_are_checked() {
    let e = PgKv::connect("sqlite://x.db").await.unwrap_err();
    assert_eq!(e.kind(), larder::ErrorKind::Config, "{e}");
    let e = SqliteKv::connect("sqlite://no-such-dir/x.db?mode=frobnicate")
        .await
        .unwrap_err();
    assert_eq!(e.kind(), larder::ErrorKind::Config, "{e}");
    let e = larder::connect("postgres://postgres@127.0.0.1:1/none")
        .await
        .unwrap_err();
    assert!(e.is_retryable(), "{e}");
}

/// A TTL never ends early on PostgreSQL: an entry with a 1 ms TTL read 0.2 ms after it was
/// written is always there (10,000 times). The database clock has microseconds; a write
/// rounds it up, a read expires the row only once the clock is past `expires_at`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_kv_a_one_millisecond_ttl_is_never_early() {
    let (kv, _schema) = db::pg_kv().await;
    let b: DynBackend = std::sync::Arc::new(kv);
    let (early, in_time) = larder_tests::early_ttl_probe(&b, 10_000).await;
    println!("PgKv 1 ms TTL probe: {early} early of 10000 reads, {in_time} read within 1 ms");
    assert_eq!(early, 0);
}

/// The same on SQLite, whose clock is the time truncated to the millisecond.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_kv_a_one_millisecond_ttl_is_never_early() {
    let (kv, _dir) = db::sqlite_kv().await;
    let b: DynBackend = std::sync::Arc::new(kv);
    let (early, in_time) = larder_tests::early_ttl_probe(&b, 10_000).await;
    println!("SqliteKv 1 ms TTL probe: {early} early of 10000 reads, {in_time} read within 1 ms");
    assert_eq!(early, 0);
}
