//! The database-enforced compare-and-swap store (`larder_kv`) on PostgreSQL and SQLite runs
//! the whole cache conformance suite, like every other backend.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use larder::{CacheBackend, DynBackend, Key, PutMode, Ttl};

async fn postgres_kv() -> DynBackend {
    let (store, _schema) = larder_tests::db::pg_store().await;
    Arc::new(store.kv())
}

async fn sqlite_kv() -> DynBackend {
    // Each case gets its own file under cargo's scratch directory for integration tests.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
        .keep();
    let store = larder_session_persist::SqliteStore::open(&dir.join("kv.db"))
        .await
        .unwrap();
    Arc::new(store.kv())
}

mod postgres_kv {
    larder_coord::conformance_suite!(super::postgres_kv);
}

mod sqlite_kv {
    larder_coord::conformance_suite!(super::sqlite_kv);
}

#[tokio::test]
async fn expiry_follows_the_database_clock_and_purge_removes_rows() {
    let (store, _schema) = larder_tests::db::pg_store().await;
    let kv = store.kv();
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
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(n, 0);
}
