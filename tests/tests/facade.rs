//! `larder::connect` reaches every backend by URL.
#![allow(clippy::unwrap_used)]

use larder::{Cache, Key};
use larder_tests::server::ServerProcess;

async fn roundtrip(url: &str, name: &str) {
    let b = larder::connect(url)
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    assert_eq!(b.capabilities().name, name);
    let cache = Cache::new(b);
    let k = Key::new(format!("facade-{name}")).unwrap();
    cache.set(&k, &format!("via {url}"), None).await.unwrap();
    assert_eq!(
        cache.get::<String>(&k).await.unwrap(),
        Some(format!("via {url}"))
    );
}

#[tokio::test]
async fn every_backend_by_url() {
    roundtrip("memory://?capacity=100", "memory").await;
    let redis = ServerProcess::redis();
    roundtrip(&format!("redis://{}/2", redis.addr()), "redis").await;
    let mc = ServerProcess::memcached();
    roundtrip(&format!("memcache://{}", mc.addr()), "memcached").await;
    let dir = tempfile::tempdir().unwrap();
    roundtrip(
        &format!("sled://{}", dir.path().join("db").display()),
        "sled",
    )
    .await;
}

#[tokio::test]
async fn sql_stores_by_url() {
    let schema = larder_tests::db::pg_schema().await;
    let url = larder_tests::db::schema_url(&schema);
    roundtrip(&url, "postgres").await;
    let alias = url.replacen("postgres://", "postgresql://", 1);
    assert_ne!(alias, url);
    roundtrip(&alias, "postgres").await;
    let dir = tempfile::tempdir().unwrap();
    let file = larder::backends::sql::sqlite_url(&dir.path().join("kv.db"));
    roundtrip(&file, "sqlite").await;
    // The same file again: the schema step is idempotent and the rows are kept.
    let again = Cache::new(larder::connect(&file).await.unwrap());
    assert_eq!(
        again
            .get::<String>(&Key::new("facade-sqlite").unwrap())
            .await
            .unwrap(),
        Some(format!("via {file}"))
    );
    let caps = again.backend().capabilities();
    assert!(caps.linearizable_cas && caps.persistent && !caps.may_evict);
}

#[tokio::test]
async fn bad_urls_are_typed_errors() {
    for (url, kind) in [
        ("redis://127.0.0.1:notaport", larder::ErrorKind::Config),
        ("memcache://", larder::ErrorKind::Config),
        ("gopher://x", larder::ErrorKind::Config),
        ("memory://?capacity=-1", larder::ErrorKind::Config),
        ("sqlite://x.db?mode=sideways", larder::ErrorKind::Config),
        ("postgres://u@h:notaport/db", larder::ErrorKind::Config),
    ] {
        let e = larder::connect(url)
            .await
            .err()
            .unwrap_or_else(|| panic!("{url} accepted"));
        assert_eq!(e.kind(), kind, "{url}: {e}");
    }
}
