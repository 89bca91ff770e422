//! session-persist against real PostgreSQL and SQLite, with and without a write-through
//! cache; every operation, bad input, concurrency, cache outages and restarts.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use larder::{DynBackend, ErrorKind};
use larder_backend_memory::MemoryBackend;
use larder_session_persist::{
    CachedStore, ConflictPolicy, IdSource, Outbox, PgStore, Record, SessionConfig, SessionData,
    SessionId, SessionManager, SessionStore, SqlOptions, SqliteStore, Timestamp,
};
use larder_tests::fault::{Fault, Faulty};

#[derive(Debug)]
struct Colliding {
    fixed: SessionId,
    repeats: AtomicUsize,
}

impl IdSource for Colliding {
    fn generate(&self) -> larder::Result<SessionId> {
        // The fixed id for the first `repeats` calls, then random ones.
        if self.repeats.load(Ordering::SeqCst) > 0 {
            self.repeats.fetch_sub(1, Ordering::SeqCst);
            return Ok(self.fixed.clone());
        }
        SessionId::random()
    }
}

fn soon(ms: u64) -> Timestamp {
    Timestamp::now().plus(Duration::from_millis(ms))
}

fn data(pairs: &[(&str, &str)]) -> SessionData {
    let mut d = SessionData::new();
    for (k, v) in pairs {
        d.insert(k, v).unwrap();
    }
    d
}

/// The database a case runs on.
#[derive(Debug, Clone, Copy)]
enum Db {
    Postgres,
    Sqlite,
}

/// Keeps a case's database alive (its schema, or its temp dir) and reaches it behind the
/// store's back.
#[allow(dead_code)]
enum Guard {
    Postgres(PgStore, String),
    Sqlite(SqliteStore, tempfile::TempDir),
}

/// A new store on a fresh database of kind `db`.
async fn open(db: Db, opts: SqlOptions) -> (Arc<dyn Outbox>, Guard) {
    match db {
        Db::Postgres => {
            let (s, schema) = larder_tests::db::pg_store().await;
            let s = s.with_options(opts);
            (Arc::new(s.clone()), Guard::Postgres(s, schema))
        }
        Db::Sqlite => {
            let (s, dir) = larder_tests::db::sqlite_store().await;
            let s = s.with_options(opts);
            (Arc::new(s.clone()), Guard::Sqlite(s, dir))
        }
    }
}

impl Guard {
    /// Overwrites the stored data of `r` with bytes that are no larder envelope.
    async fn corrupt(&self, r: &Record) {
        const SQL: &str = "UPDATE larder_sessions SET data = $1 WHERE id_hash = $2";
        let hash = r.id.hash();
        let (bytes, hash) = (&b"\x00not an envelope"[..], &hash.as_bytes()[..]);
        match self {
            Guard::Postgres(s, _) => sqlx::query(SQL)
                .bind(bytes)
                .bind(hash)
                .execute(s.pool())
                .await
                .map(drop),
            Guard::Sqlite(s, _) => sqlx::query(SQL)
                .bind(bytes)
                .bind(hash)
                .execute(s.pool())
                .await
                .map(drop),
        }
        .unwrap();
    }
}

/// Runs each case on PostgreSQL and on SQLite, as `postgres::<case>` and `sqlite::<case>`.
macro_rules! on_both_databases {
    ($($case:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Db::Postgres).await
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Db::Sqlite).await
                }
            )*
        }
    };
}

on_both_databases!(
    create_then_load_roundtrips,
    unknown_and_expired_sessions_are_absent,
    save_checks_the_version,
    save_after_delete_is_gone_never_resurrected,
    touch_extends_expiry_without_rewriting_data,
    rotate_keeps_data_and_kills_the_old_id,
    delete_principal_logs_out_everywhere,
    sweep_removes_expired_rows_in_batches,
    colliding_ids_are_regenerated,
    undecodable_data_is_a_clear_error_and_kept,
    malformed_ids_are_rejected_before_any_query,
    twenty_tasks_fifty_updates_lose_nothing,
    concurrent_requests_merge_by_key,
    same_key_conflict_can_be_an_error,
    handle_saves_only_when_modified_and_touches_when_due,
    handle_rotation_and_logout,
    cache_answers_loads_and_survives_an_outage,
    restart_keeps_every_session,
);

async fn create_then_load_roundtrips(db: Db) {
    let (store, _g) = open(db, SqlOptions::default()).await;
    let r = store
        .create(data(&[("user", "ada")]), Some("ada".into()), soon(60_000))
        .await
        .unwrap();
    assert_eq!(r.version, 1);
    let back = store.load(&r.id).await.unwrap().unwrap();
    assert_eq!(back, r);
    assert_eq!(store.count().await.unwrap(), 1);
}

async fn unknown_and_expired_sessions_are_absent(db: Db) {
    let (store, _g) = open(db, SqlOptions::default()).await;
    assert!(store
        .load(&SessionId::random().unwrap())
        .await
        .unwrap()
        .is_none());
    let r = store.create(data(&[]), None, soon(300)).await.unwrap();
    assert!(store.load(&r.id).await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        store.load(&r.id).await.unwrap().is_none(),
        "expired is absent"
    );
    let mut stale = r.clone();
    stale.expires_at = soon(60_000);
    assert_eq!(
        store.save(&stale).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert!(store.touch(&r.id, soon(60_000)).await.unwrap().is_none());
    assert!(!store.delete(&r.id).await.unwrap());
    assert!(store.rotate(&r.id).await.unwrap().is_none());
    assert_eq!(store.count().await.unwrap(), 0);
}

async fn save_checks_the_version(db: Db) {
    let (store, _g) = open(db, SqlOptions::default()).await;
    let r = store.create(data(&[]), None, soon(60_000)).await.unwrap();
    let mut a = r.clone();
    a.data.insert("k", "a").unwrap();
    let saved = store.save(&a).await.unwrap();
    assert_eq!(saved.version, 2);
    let mut b = r.clone();
    b.data.insert("k", "b").unwrap();
    let err = store.save(&b).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    let now = store.load(&r.id).await.unwrap().unwrap();
    assert_eq!(now.data.get::<String>("k").unwrap().as_deref(), Some("a"));
}

async fn save_after_delete_is_gone_never_resurrected(db: Db) {
    let (store, _g) = open(db, SqlOptions::default()).await;
    let r = store
        .create(data(&[("x", "1")]), None, soon(60_000))
        .await
        .unwrap();
    assert!(store.delete(&r.id).await.unwrap());
    assert!(!store.delete(&r.id).await.unwrap(), "already deleted");
    let err = store.save(&r).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(store.load(&r.id).await.unwrap().is_none());
    assert_eq!(store.count().await.unwrap(), 0, "no resurrected row");
}

async fn touch_extends_expiry_without_rewriting_data(db: Db) {
    let (store, _g) = open(db, SqlOptions::default()).await;
    let r = store
        .create(data(&[("k", "v")]), None, soon(500))
        .await
        .unwrap();
    let t = store.touch(&r.id, soon(60_000)).await.unwrap().unwrap();
    assert_eq!(t.data, r.data);
    assert_eq!(t.version, r.version, "a touch keeps the version");
    assert!(t.expires_at > r.expires_at);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        store.load(&r.id).await.unwrap().is_some(),
        "touch kept it alive"
    );
}

async fn rotate_keeps_data_and_kills_the_old_id(db: Db) {
    let (store, _g) = open(db, SqlOptions::default()).await;
    let r = store
        .create(
            data(&[("cart", "3 items")]),
            Some("ada".into()),
            soon(60_000),
        )
        .await
        .unwrap();
    let n = store.rotate(&r.id).await.unwrap().unwrap();
    assert_ne!(n.id, r.id);
    assert_eq!(n.data, r.data);
    assert_eq!(n.principal.as_deref(), Some("ada"));
    assert!(store.load(&r.id).await.unwrap().is_none(), "old id is dead");
    assert_eq!(store.load(&n.id).await.unwrap().unwrap().data, r.data);
    assert_eq!(
        store.save(&r).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(store.count().await.unwrap(), 1);
}

async fn delete_principal_logs_out_everywhere(db: Db) {
    let (store, _g) = open(db, SqlOptions::default()).await;
    let mut ada = Vec::new();
    for _ in 0..3 {
        ada.push(
            store
                .create(data(&[]), Some("ada".into()), soon(60_000))
                .await
                .unwrap(),
        );
    }
    let bob = store
        .create(data(&[]), Some("bob".into()), soon(60_000))
        .await
        .unwrap();
    assert_eq!(store.delete_principal("ada").await.unwrap().len(), 3);
    for r in &ada {
        assert!(store.load(&r.id).await.unwrap().is_none());
        assert_eq!(store.save(r).await.unwrap_err().kind(), ErrorKind::NotFound);
    }
    assert!(store.load(&bob.id).await.unwrap().is_some());
    assert_eq!(store.delete_principal("ada").await.unwrap().len(), 0);
}

async fn sweep_removes_expired_rows_in_batches(db: Db) {
    let opts = SqlOptions::default().tombstone_ttl(Duration::from_millis(1));
    let (store, _g) = open(db, opts).await;
    for _ in 0..23 {
        store.create(data(&[]), None, soon(1)).await.unwrap();
    }
    let keep = store.create(data(&[]), None, soon(60_000)).await.unwrap();
    let gone = store.create(data(&[]), None, soon(60_000)).await.unwrap();
    store.delete(&gone.id).await.unwrap();
    // Long expired, beside the recently expired ones.
    let hours_ago = Timestamp(Timestamp::now().0 - 3 * 3_600_000 - 1);
    store.create(data(&[]), None, hours_ago).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        store.sweep(5).await.unwrap(),
        25,
        "23 expired + 1 expired hours ago + 1 tombstone"
    );
    assert_eq!(store.sweep(5).await.unwrap(), 0);
    assert!(store.load(&keep.id).await.unwrap().is_some());
    assert_eq!(store.count().await.unwrap(), 1);
}

async fn colliding_ids_are_regenerated(db: Db) {
    let fixed = SessionId::random().unwrap();
    let ids = Arc::new(Colliding {
        fixed: fixed.clone(),
        repeats: AtomicUsize::new(1),
    });
    let (store, _g) = open(db, SqlOptions::default().ids(ids.clone())).await;
    let first = store
        .create(data(&[("who", "first")]), None, soon(60_000))
        .await
        .unwrap();
    assert_eq!(first.id, fixed);
    ids.repeats.store(3, Ordering::SeqCst);
    let second = store
        .create(data(&[("who", "second")]), None, soon(60_000))
        .await
        .unwrap();
    assert_ne!(second.id, fixed, "collision regenerated");
    let f = store.load(&fixed).await.unwrap().unwrap();
    assert_eq!(
        f.data.get::<String>("who").unwrap().as_deref(),
        Some("first"),
        "first untouched"
    );
    ids.repeats.store(100, Ordering::SeqCst);
    let err = store
        .create(data(&[]), None, soon(60_000))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Backend);
    assert!(err.message().contains("free session id"), "{err}");
}

async fn undecodable_data_is_a_clear_error_and_kept(db: Db) {
    let (store, g) = open(db, SqlOptions::default()).await;
    let r = store
        .create(data(&[("k", "v")]), None, soon(60_000))
        .await
        .unwrap();
    g.corrupt(&r).await;
    let err = store.load(&r.id).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Decode, "{err}");
    // Not silently replaced: still there, still an error, count unchanged.
    assert_eq!(
        store.load(&r.id).await.unwrap_err().kind(),
        ErrorKind::Decode
    );
    assert_eq!(store.count().await.unwrap(), 1);
}

async fn malformed_ids_are_rejected_before_any_query(db: Db) {
    let (store, _g) = open(db, SqlOptions::default()).await;
    let m = SessionManager::new(Arc::new(store));
    let huge = "x".repeat(100_000);
    for bad in [
        "",
        "short",
        "!!!!!!!!!!!!!!!!!!!!!!",
        huge.as_str(),
        "' OR 1=1 --aaaaaaaaaaa",
    ] {
        let err = m.load(bad).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{bad:.20}");
    }
    assert!(m
        .load(SessionId::random().unwrap().as_str())
        .await
        .unwrap()
        .is_none());
}

async fn managers(db: Db, cache: Option<DynBackend>) -> (SessionManager, Guard) {
    let (store, g) = open(db, SqlOptions::default()).await;
    let store: Arc<dyn SessionStore> = match cache {
        Some(c) => Arc::new(CachedStore::new(store, c)),
        None => Arc::new(store),
    };
    (SessionManager::new(store), g)
}

/// 20 tasks × 50 updates of one session through the handle: exactly 1000.
async fn twenty_tasks_fifty_updates_lose_nothing(db: Db) {
    let (m, _g) = managers(db, Some(Arc::new(MemoryBackend::default()))).await;
    let s = m.create().await.unwrap();
    let id = s.id().as_str().to_string();
    let mut tasks = Vec::new();
    for t in 0..20 {
        let (m, id) = (m.clone(), id.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..50 {
                let mut s = m.load(&id).await.unwrap().unwrap();
                s.update("n", |n: Option<u64>| n.unwrap_or(0) + 1).unwrap();
                s.insert(&format!("task{t}"), &true).unwrap();
                s.save().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let s = m.load(&id).await.unwrap().unwrap();
    assert_eq!(s.get::<u64>("n").unwrap(), Some(1000));
    assert_eq!(s.data().len(), 21, "every task's own key kept");
}

async fn concurrent_requests_merge_by_key(db: Db) {
    let (m, _g) = managers(db, None).await;
    let mut s = m.create().await.unwrap();
    s.insert("shared", "orig").unwrap();
    s.save().await.unwrap();
    let id = s.id().as_str().to_string();
    let mut a = m.load(&id).await.unwrap().unwrap();
    let mut b = m.load(&id).await.unwrap().unwrap();
    a.insert("theme", "dark").unwrap();
    a.insert("shared", "from-a").unwrap();
    b.insert("cart", "3").unwrap();
    b.insert("shared", "from-b").unwrap();
    a.save().await.unwrap();
    b.save().await.unwrap();
    let s = m.load(&id).await.unwrap().unwrap();
    assert_eq!(s.get::<String>("theme").unwrap().as_deref(), Some("dark"));
    assert_eq!(s.get::<String>("cart").unwrap().as_deref(), Some("3"));
    assert_eq!(
        s.get::<String>("shared").unwrap().as_deref(),
        Some("from-b"),
        "last writer wins"
    );
}

async fn same_key_conflict_can_be_an_error(db: Db) {
    let (store, _g) = open(db, SqlOptions::default()).await;
    let m = SessionManager::with_config(
        Arc::new(store),
        SessionConfig::default().conflict_policy(ConflictPolicy::Error),
    );
    let s = m.create().await.unwrap();
    let id = s.id().as_str().to_string();
    let mut a = m.load(&id).await.unwrap().unwrap();
    let mut b = m.load(&id).await.unwrap().unwrap();
    let mut c = m.load(&id).await.unwrap().unwrap();
    a.insert("k", "a").unwrap();
    b.insert("k", "b").unwrap();
    c.insert("other", "c").unwrap();
    a.save().await.unwrap();
    assert_eq!(b.save().await.unwrap_err().kind(), ErrorKind::Conflict);
    c.save().await.unwrap();
    let s = m.load(&id).await.unwrap().unwrap();
    assert_eq!(s.get::<String>("k").unwrap().as_deref(), Some("a"));
    assert_eq!(s.get::<String>("other").unwrap().as_deref(), Some("c"));
}

async fn handle_saves_only_when_modified_and_touches_when_due(db: Db) {
    let (store, _g) = open(db, SqlOptions::default()).await;
    let m = SessionManager::with_config(
        Arc::new(store),
        SessionConfig::default()
            .ttl(Duration::from_secs(2))
            .touch_after(0.5),
    );
    let mut s = m.create().await.unwrap();
    let (v, e0) = (s.version(), s.expires_at());
    s.save().await.unwrap();
    assert_eq!(s.expires_at(), e0, "unchanged, recent: no write");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    s.save().await.unwrap();
    let e1 = s.expires_at();
    assert!(e1 > e0, "half the TTL passed: one touch");
    assert_eq!(s.version(), v, "a touch keeps the version");
    s.save().await.unwrap();
    assert_eq!(s.expires_at(), e1, "and not again right away");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(
        m.load(s.id().as_str()).await.unwrap().is_some(),
        "touch kept it alive"
    );
}

async fn handle_rotation_and_logout(db: Db) {
    let (m, _g) = managers(db, Some(Arc::new(MemoryBackend::default()))).await;
    let mut s = m.create().await.unwrap();
    s.insert("user", "ada").unwrap();
    s.set_principal(Some("ada".into())).unwrap();
    let old = s.id().as_str().to_string();
    s.rotate().await.unwrap();
    assert_ne!(s.id().as_str(), old);
    assert!(
        m.load(&old).await.unwrap().is_none(),
        "old id dead, also in the cache"
    );
    let again = m.load(s.id().as_str()).await.unwrap().unwrap();
    assert_eq!(again.get::<String>("user").unwrap().as_deref(), Some("ada"));
    assert_eq!(again.principal(), Some("ada"));
    let mut late = m.load(s.id().as_str()).await.unwrap().unwrap();
    assert!(s.delete().await.unwrap());
    late.insert("x", "y").unwrap();
    assert_eq!(late.save().await.unwrap_err().kind(), ErrorKind::NotFound);
    assert!(
        m.load(late.id().as_str()).await.unwrap().is_none(),
        "cache tombstone"
    );
}

async fn cache_answers_loads_and_survives_an_outage(db: Db) {
    let (store, _g) = open(db, SqlOptions::default()).await;
    let faulty = Faulty::new(Arc::new(MemoryBackend::default()));
    let cached = Arc::new(CachedStore::new(store, faulty.clone()));
    let stats = cached.stats();
    let m = SessionManager::new(cached.clone());
    let mut s = m.create().await.unwrap();
    s.insert("n", &0u32).unwrap();
    s.save().await.unwrap();
    let id = s.id().as_str().to_string();
    for _ in 0..5 {
        m.load(&id).await.unwrap().unwrap();
    }
    assert_eq!(stats.snapshot().hits, 5, "loads answered by the cache");
    // Cache down: every request still succeeds from the database, no write lost.
    faulty.set(Fault::Fail(ErrorKind::Unavailable));
    for i in 1..=10u32 {
        let mut s = m.load(&id).await.unwrap().unwrap();
        assert_eq!(s.get::<u32>("n").unwrap(), Some(i - 1));
        s.insert("n", &i).unwrap();
        s.save().await.unwrap();
    }
    let during = stats.snapshot();
    assert!(during.cache_errors >= 1, "the outage was seen");
    assert!(
        during.cache_errors + during.skipped >= 10,
        "every load and save went around the dead cache"
    );
    // A hanging cache is bounded by the cache timeout.
    faulty.set(Fault::Stall(Duration::from_secs(60)));
    let t = std::time::Instant::now();
    assert_eq!(
        m.load(&id).await.unwrap().unwrap().get::<u32>("n").unwrap(),
        Some(10)
    );
    assert!(t.elapsed() < Duration::from_secs(5));
    // Back up: the stale v1 entry was invalidated, hits resume with fresh data.
    faulty.set(Fault::None);
    let before = stats.snapshot().hits;
    // Within the breaker's cool-down the cache is still skipped; then hits resume.
    let mut resumed = false;
    for _ in 0..40 {
        let s = m.load(&id).await.unwrap().unwrap();
        assert_eq!(s.get::<u32>("n").unwrap(), Some(10));
        if stats.snapshot().hits > before {
            resumed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(resumed, "hits resume");
    assert!(
        stats.snapshot().skipped > 0,
        "the breaker skipped the dead cache"
    );
    assert_eq!(cached.pending_invalidations(), 0);
}

async fn restart_keeps_every_session(db: Db) {
    let (store, guard) = open(db, SqlOptions::default()).await;
    let pool_clone = store.clone();
    let m = SessionManager::new(Arc::new(CachedStore::new(
        store,
        Arc::new(MemoryBackend::default()),
    )));
    let mut ids = Vec::new();
    for i in 0..10u32 {
        let mut s = m.create().await.unwrap();
        s.insert("i", &i).unwrap();
        s.save().await.unwrap();
        ids.push(s.id().as_str().to_string());
    }
    drop(m);
    // A new process would build everything again on the same database; the
    // cache starts empty.
    let m2 = SessionManager::new(Arc::new(CachedStore::new(
        pool_clone,
        Arc::new(MemoryBackend::default()),
    )));
    for (i, id) in ids.iter().enumerate() {
        let s = m2
            .load(id)
            .await
            .unwrap()
            .expect("session survived the restart");
        assert_eq!(s.get::<u32>("i").unwrap(), Some(i as u32));
    }
    drop(guard);
}

#[allow(dead_code)]
fn _record_is_send(r: Record) -> impl Send {
    r
}
