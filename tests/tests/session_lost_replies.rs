//! Session writes whose reply is lost after PostgreSQL committed them, then sent again by
//! the store, answer what happened: the store recognises its own committed write by the
//! write id stored with the row, instead of reporting a conflict with itself.
//!
//! The replies are lost by a TCP proxy in front of the server that follows the PostgreSQL
//! protocol (`FaultProxy::start_postgres`): it forwards the chosen execution, waits for the
//! server's answer (the statement has committed by then), drops it and closes the
//! connection.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use larder_session_persist::{
    PgStore, Record, SaveOutcome, SessionData, SessionManager, SessionStore, Timestamp,
};
use larder_tests::db::pg_pool_behind_proxy;
use larder_tests::proxy::FaultProxy;

/// The text of the versioned save (`save_or_current`) and the locked one (`save_locked`).
const SAVE: &[u8] = b"UPDATE larder_sessions SET principal = $1";

/// A store on a new schema whose connections go through a PostgreSQL-aware proxy.
async fn store_behind_proxy() -> (PgStore, FaultProxy) {
    let (pool, proxy) = pg_pool_behind_proxy(PgStore::pool_options()).await;
    let store = PgStore::from_pool(pool);
    store.migrate().await.unwrap();
    (store, proxy)
}

fn in_ten_minutes() -> Timestamp {
    Timestamp::now().plus(Duration::from_secs(600))
}

fn counter(n: u64) -> SessionData {
    let mut d = SessionData::new();
    d.insert("n", &n).unwrap();
    d
}

fn n_of(rec: &Record) -> u64 {
    rec.data.get::<u64>("n").unwrap().unwrap()
}

/// `update` increments through the session handle, 4 at a time, with every tenth save's
/// reply lost: the counter ends at exactly the number of acknowledged increments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_save_replies_apply_each_acknowledged_increment_once() {
    const N: usize = 1000;
    const AT_ONCE: usize = 4;
    let (store, proxy) = store_behind_proxy().await;
    let m = SessionManager::new(Arc::new(store));
    let mut s = m.create().await.unwrap();
    s.insert("n", &0u64).unwrap();
    s.save().await.unwrap();
    let id = s.id().to_string();

    proxy.lose_statement_replies(SAVE, 10, usize::MAX);
    let acknowledged = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..AT_ONCE {
        let (m, id) = (m.clone(), id.clone());
        let (acknowledged, failed, next) = (acknowledged.clone(), failed.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::SeqCst) < N {
                let mut s = m.load(&id).await.unwrap().expect("the session lives");
                s.update("n", |n: Option<u64>| n.unwrap_or(0) + 1).unwrap();
                match s.save().await {
                    Ok(()) => acknowledged.fetch_add(1, Ordering::SeqCst),
                    // Reported as failed (the reply to an uncommitted transaction's
                    // statement was lost, say): one that applied would show in the count.
                    Err(_) => failed.fetch_add(1, Ordering::SeqCst),
                };
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let lost = proxy.stop_losing_statement_replies();
    let s = m.load(&id).await.unwrap().unwrap();
    let n: u64 = s.get("n").unwrap().unwrap();
    let acknowledged = acknowledged.load(Ordering::SeqCst);
    let failed = failed.load(Ordering::SeqCst);
    eprintln!("{N} increments, {lost} save replies lost: counter {n}, acknowledged {acknowledged}, failed {failed}");
    assert!(
        lost >= N / 20,
        "the proxy lost too few replies to test anything: {lost}"
    );
    assert_eq!(
        n, acknowledged,
        "the counter must move by exactly the acknowledged increments ({failed} failed)"
    );
}

/// A store behind a proxy whose connections have run every write once (as a running
/// store's have), and a session holding `n = 1`.
async fn with_session() -> (PgStore, FaultProxy, Record) {
    let (store, proxy) = store_behind_proxy().await;
    let warm = store
        .create(counter(0), None, in_ten_minutes())
        .await
        .unwrap();
    assert!(store.delete(&warm.id).await.unwrap());
    let rec = store
        .create(counter(1), None, in_ten_minutes())
        .await
        .unwrap();
    (store, proxy, rec)
}

/// A create whose reply is lost: one session, not an orphan row beside another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_create_reply_makes_one_session() {
    let (store, proxy, _) = with_session().await;
    let before = store.count().await.unwrap();
    proxy.lose_statement_replies(b"INSERT INTO larder_sessions", 1, 1);
    let rec = store
        .create(counter(1), None, in_ten_minutes())
        .await
        .unwrap();
    assert_eq!(proxy.stop_losing_statement_replies(), 1);
    assert_eq!(
        store.count().await.unwrap(),
        before + 1,
        "one row per create"
    );
    assert_eq!(store.load(&rec.id).await.unwrap().unwrap(), rec);
}

/// A versioned save whose reply is lost: saved, not stale against its own write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_save_reply_reports_saved() {
    let (store, proxy, rec) = with_session().await;
    let mut next = rec.clone();
    next.data = counter(2);
    proxy.lose_statement_replies(SAVE, 1, 1);
    let out = store.save_or_current(&next).await.unwrap();
    assert_eq!(proxy.stop_losing_statement_replies(), 1);
    let SaveOutcome::Saved(saved) = out else {
        panic!("a save whose reply was lost reported {out:?}");
    };
    assert_eq!(saved.version, rec.version + 1);
    let stored = store.load(&rec.id).await.unwrap().unwrap();
    assert_eq!((n_of(&stored), stored.version), (2, saved.version));
}

/// A locked save whose COMMIT reply is lost: the change applied once, and reported done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_commit_reply_of_a_locked_save_reports_it_done() {
    let (store, proxy, rec) = with_session().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let calls2 = calls.clone();
    let apply = move |r: &mut Record| {
        calls2.fetch_add(1, Ordering::SeqCst);
        let n = n_of(r);
        r.data.insert("n", &(n + 1))
    };
    proxy.lose_statement_replies(b"COMMIT", 1, 1);
    let locked = store
        .save_locked(&rec.id, &apply, in_ten_minutes())
        .await
        .unwrap();
    assert_eq!(proxy.stop_losing_statement_replies(), 1);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let stored = store.load(&rec.id).await.unwrap().unwrap();
    assert_eq!((n_of(&stored), stored.version), (2, locked.version));
}

/// A rotation whose COMMIT reply is lost: the new id is reported, the old one is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_commit_reply_of_a_rotation_reports_the_new_id() {
    let (store, proxy, rec) = with_session().await;
    let before = store.count().await.unwrap();
    proxy.lose_statement_replies(b"COMMIT", 1, 1);
    let rotated = store.rotate(&rec.id).await.unwrap().expect("rotated");
    assert_eq!(proxy.stop_losing_statement_replies(), 1);
    assert!(store.load(&rec.id).await.unwrap().is_none());
    assert_eq!(n_of(&store.load(&rotated.id).await.unwrap().unwrap()), 1);
    assert_eq!(store.count().await.unwrap(), before);
}

/// A delete whose reply is lost: it deleted, so it answers true.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_delete_reply_reports_deleted() {
    let (store, proxy, rec) = with_session().await;
    proxy.lose_statement_replies(b"SET deleted = TRUE", 1, 1);
    let deleted = store.delete(&rec.id).await.unwrap();
    assert_eq!(proxy.stop_losing_statement_replies(), 1);
    assert!(deleted, "a delete whose reply was lost answered false");
    assert!(store.load(&rec.id).await.unwrap().is_none());
}
