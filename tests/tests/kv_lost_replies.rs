//! Writes to the SQL compare-and-swap table (`PgKv`) whose reply is lost after PostgreSQL
//! committed them answer what happened: the store recognises its own committed write by the
//! write id stored with the row (or, for a delete, beside it) before sending it again, instead
//! of reporting a conflict with itself or writing twice.
//!
//! The replies are lost by a TCP proxy in front of the server that follows the PostgreSQL
//! protocol (`FaultProxy::start_postgres`): it forwards the chosen execution, waits for the
//! server's answer (the statement has committed by then), drops it and closes the connection.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use larder::{Bytes, CacheBackend, DeleteMode, DynBackend, ErrorKind, Key, PutMode};
use larder_backend_sql::PgKv;
use larder_tests::cas_counter;
use larder_tests::db::pg_pool_behind_proxy;
use larder_tests::proxy::FaultProxy;

/// The text of a compare-and-swap, of a create or overwrite, of a delete.
const CAS: &[u8] = b"UPDATE larder_kv SET value";
const INSERT: &[u8] = b"INSERT INTO larder_kv (";
const DELETE: &[u8] = b"DELETE FROM larder_kv WHERE key";

/// A store on a new schema whose connections go through a PostgreSQL-aware proxy, with
/// every kind of write run once (so that connections have them prepared, as a running
/// store's have).
async fn kv_behind_proxy() -> (PgKv, FaultProxy) {
    let (pool, proxy) = pg_pool_behind_proxy(PgKv::pool_options()).await;
    let kv = PgKv::from_pool(pool);
    kv.migrate().await.unwrap();
    let warm = Key::new("warm").unwrap();
    let v = kv.put(&warm, b("0"), None, PutMode::Create).await.unwrap();
    let v = kv
        .put(&warm, b("1"), None, PutMode::Update(v))
        .await
        .unwrap();
    assert!(kv.delete(&warm, DeleteMode::IfVersion(v)).await.unwrap());
    (kv, proxy)
}

fn b(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

/// 1000 compare-and-swap increments, 4 at a time, with every tenth reply lost: the counter
/// ends at exactly the number of acknowledged increments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_cas_replies_keep_a_counter_exact() {
    const N: usize = 1000;
    let (kv, proxy) = kv_behind_proxy().await;
    let key = Key::new("counter").unwrap();
    proxy.lose_statement_replies(CAS, 10, usize::MAX);
    let counted = cas_counter::run(Arc::new(kv) as DynBackend, &key, N, 4).await;
    let lost = proxy.stop_losing_statement_replies();
    eprintln!("{N} increments, {lost} CAS replies lost: {counted:?}");
    assert!(lost >= N / 20, "the proxy lost too few replies: {lost}");
    assert_eq!(
        counted.stored, counted.acknowledged,
        "the counter must move by exactly the acknowledged increments"
    );
    assert_eq!(counted.acknowledged + counted.failed, N as u64);
}

/// A create whose reply is lost answers created, with the version it stored; so does an
/// overwrite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_create_reply_answers_created() {
    let (kv, proxy) = kv_behind_proxy().await;
    let k = Key::new("made").unwrap();
    proxy.lose_statement_replies(INSERT, 1, 1);
    let v = kv.put(&k, b("first"), None, PutMode::Create).await.unwrap();
    assert_eq!(
        proxy.stop_losing_statement_replies(),
        1,
        "the reply was lost"
    );
    let e = kv.get(&k).await.unwrap().unwrap();
    assert_eq!((&e.value[..], e.version), (&b"first"[..], v));

    proxy.lose_statement_replies(INSERT, 1, 1);
    let v2 = kv
        .put(&k, b("second"), None, PutMode::Overwrite)
        .await
        .unwrap();
    assert_eq!(proxy.stop_losing_statement_replies(), 1);
    let e = kv.get(&k).await.unwrap().unwrap();
    assert_eq!((&e.value[..], e.version), (&b"second"[..], v2));

    // Another caller's create still conflicts with the stored entry.
    let e = kv.put(&k, b("x"), None, PutMode::Create).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict);
    assert_eq!(e.current().unwrap().version, v2);
}

/// A compare-and-swap whose reply is lost answers the version it wrote, not a conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_cas_reply_answers_its_version() {
    let (kv, proxy) = kv_behind_proxy().await;
    let k = Key::new("swapped").unwrap();
    let v1 = kv.put(&k, b("1"), None, PutMode::Create).await.unwrap();
    proxy.lose_statement_replies(CAS, 1, 1);
    let v2 = kv.put(&k, b("2"), None, PutMode::Update(v1)).await.unwrap();
    assert_eq!(proxy.stop_losing_statement_replies(), 1);
    let e = kv.get(&k).await.unwrap().unwrap();
    assert_eq!((&e.value[..], e.version), (&b"2"[..], v2));
    // A stale caller still conflicts.
    let e = kv
        .put(&k, b("3"), None, PutMode::Update(v1))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict);
    assert_eq!(e.current().unwrap().version, v2);
}

/// A delete-if-version (and a plain delete) whose reply is lost answers deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_delete_reply_answers_deleted() {
    let (kv, proxy) = kv_behind_proxy().await;
    let k = Key::new("gone").unwrap();
    let v = kv.put(&k, b("1"), None, PutMode::Create).await.unwrap();
    proxy.lose_statement_replies(DELETE, 1, 1);
    assert!(kv.delete(&k, DeleteMode::IfVersion(v)).await.unwrap());
    assert_eq!(proxy.stop_losing_statement_replies(), 1);
    assert!(kv.get(&k).await.unwrap().is_none());
    // Another delete of that version is told the key is absent.
    let e = kv.delete(&k, DeleteMode::IfVersion(v)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict);
    assert!(e.current().is_none());

    kv.put(&k, b("2"), None, PutMode::Create).await.unwrap();
    proxy.lose_statement_replies(DELETE, 1, 1);
    assert!(kv.delete(&k, DeleteMode::Any).await.unwrap());
    assert_eq!(proxy.stop_losing_statement_replies(), 1);
    assert!(!kv.delete(&k, DeleteMode::Any).await.unwrap());
}
