//! The session change log against real PostgreSQL and SQLite: two `CachedStore`s, each with
//! its own in-memory cache (two processes, each with a per-process cache) over one
//! database. A save through one is seen by the other, and a delete, rotation or revocation
//! is refused by the other, within the documented bound (`drain_interval` 500 ms); a reader
//! away longer than the log's retention starts again at its head; a PostgreSQL change whose
//! position is lower than one already read (its transaction committed later) is not skipped;
//! a fill racing a logged save never puts the older version back; a sled cache keeps its
//! cursor across a restart.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use larder::DynBackend;
use larder_backend_memory::MemoryBackend;
use larder_session_persist::{
    CachedStore, Outbox, PgStore, Record, SessionData, SessionStore, SqlOptions, SqliteStore,
    Timestamp,
};
use larder_tests::{eventually, Patience};

/// The bound the cached store documents for a change made elsewhere: `drain_interval`
/// (500 ms) plus the breaker's cool-down (1 s), with no cache failure here.
const BOUND: Duration = Duration::from_secs(2);

fn patience() -> Patience {
    Patience::new(BOUND).every(Duration::from_millis(10))
}

fn memory() -> DynBackend {
    Arc::new(MemoryBackend::default())
}

fn later() -> Timestamp {
    Timestamp::now().plus(Duration::from_secs(600))
}

fn counter(r: &Record) -> u64 {
    r.data.get::<u64>("n").unwrap().unwrap_or(0)
}

/// Loads through both stores, as two serving processes do (each also reads the log on its
/// loads), and returns what `b` answered.
async fn both_load<S: Outbox>(
    a: &CachedStore<S>,
    b: &CachedStore<S>,
    r: &Record,
) -> Option<Record> {
    a.load(&r.id).await.unwrap();
    b.load(&r.id).await.unwrap()
}

/// Saves through `a` are seen by `b`; each kind of deletion through `a` is refused by `b`.
async fn per_process_caches_are_coherent<S: Outbox>(a: CachedStore<S>, b: CachedStore<S>) {
    // Saves: B holds each version in its own cache before A moves it on.
    let mut r = a
        .create(SessionData::new(), Some("ada".into()), later())
        .await
        .unwrap();
    for n in 1..=5u64 {
        assert_eq!(
            b.load(&r.id).await.unwrap().map(|c| counter(&c)),
            Some(n - 1)
        );
        let hits = b.stats().snapshot().hits;
        assert_eq!(
            b.load(&r.id).await.unwrap().map(|c| counter(&c)),
            Some(n - 1)
        );
        assert_eq!(
            b.stats().snapshot().hits,
            hits + 1,
            "B answers from its cache"
        );
        r.data.insert("n", &n).unwrap();
        r = a.save(&r).await.unwrap();
        eventually(patience(), format!("B sees save {n}"), async || {
            both_load(&a, &b, &r)
                .await
                .is_some_and(|c| counter(&c) == n)
        })
        .await;
    }
    assert!(b.stats().snapshot().log_evictions >= 5);

    // Deletions: a logout, a revocation by principal, a rotation.
    for round in 0..3 {
        let r = a
            .create(SessionData::new(), Some(format!("u{round}")), later())
            .await
            .unwrap();
        assert!(b.load(&r.id).await.unwrap().is_some());
        assert!(b.load(&r.id).await.unwrap().is_some(), "cached in B");
        let gone = match round {
            0 => a.delete(&r.id).await.unwrap(),
            1 => !a
                .delete_principal(&format!("u{round}"))
                .await
                .unwrap()
                .is_empty(),
            _ => a.rotate(&r.id).await.unwrap().is_some(),
        };
        assert!(gone, "round {round}: the database changed");
        eventually(
            patience(),
            format!("round {round}: B refuses the old id"),
            async || both_load(&a, &b, &r).await.is_none(),
        )
        .await;
    }
    assert!(b.stats().snapshot().outbox_drained >= 3, "B buried them");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_process_caches_over_postgres_see_each_others_changes() {
    let (pg_a, schema) = larder_tests::db::pg_store().await;
    let pg_b = larder_tests::db::pg_store_in(&schema).await;
    per_process_caches_are_coherent(
        CachedStore::new(pg_a, memory()),
        CachedStore::new(pg_b, memory()),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_process_caches_over_sqlite_see_each_others_changes() {
    let (a, dir) = larder_tests::db::sqlite_store().await;
    // A second pool on the same file: another process.
    let b = SqliteStore::open(&dir.path().join("sessions.db"))
        .await
        .unwrap();
    per_process_caches_are_coherent(CachedStore::new(a, memory()), CachedStore::new(b, memory()))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_away_longer_than_the_retention_starts_again_at_the_head() {
    let (a, dir) = larder_tests::db::sqlite_store().await;
    let retention = Duration::from_millis(1500);
    let opts = || SqlOptions::default().tombstone_ttl(retention);
    let a = CachedStore::new(a.with_options(opts()), memory());
    let b_store = SqliteStore::open(&dir.path().join("sessions.db"))
        .await
        .unwrap()
        .with_options(opts());
    let b = CachedStore::new(b_store, memory()).max_cache_ttl(Duration::from_secs(600));
    let mut r = a.create(SessionData::new(), None, later()).await.unwrap();
    assert!(
        b.load(&r.id).await.unwrap().is_some(),
        "B read the log once"
    );
    // A long-lived session changes while B is away; the sweep ages the log entry out.
    r.data.insert("n", &7u64).unwrap();
    let r = a.save(&r).await.unwrap();
    tokio::time::sleep(retention + Duration::from_millis(100)).await;
    a.sweep(100).await.unwrap();
    assert!(a.log_after(0, 10).await.unwrap().is_empty(), "aged out");
    // B comes back: it cannot have applied the save, so it starts at the head, and what
    // its cache held then is gone (entries never outlive the log).
    let back = b.load(&r.id).await.unwrap().unwrap();
    assert_eq!(counter(&back), 7);
    assert_eq!(b.stats().snapshot().log_flushes, 1);
    // And it follows the log from there.
    let mut r = back;
    r.data.insert("n", &8u64).unwrap();
    let r = a.save(&r).await.unwrap();
    eventually(patience(), "B sees the next save", async || {
        b.load(&r.id)
            .await
            .unwrap()
            .is_some_and(|c| counter(&c) == 8)
    })
    .await;
    assert_eq!(b.stats().snapshot().log_flushes, 1);
}

/// A PostgreSQL transaction takes its log position when its statement runs; one that
/// commits after a later position was read must still be applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_change_committed_after_a_later_position_is_not_skipped() {
    let (pg_a, schema) = larder_tests::db::pg_store().await;
    let pg_b = larder_tests::db::pg_store_in(&schema).await;
    let raw = larder_tests::db::pg_pool_in(&schema).await;
    let a = CachedStore::new(pg_a, memory());
    let b = CachedStore::new(pg_b, memory()).drain_interval(Duration::ZERO);
    let early = a.create(SessionData::new(), None, later()).await.unwrap();
    let mut other = a.create(SessionData::new(), None, later()).await.unwrap();
    assert!(b.load(&early.id).await.unwrap().is_some(), "cached in B");
    assert!(b.load(&other.id).await.unwrap().is_some(), "cached in B");

    // A logout whose transaction takes its position now and stays open.
    let mut tx = raw.begin().await.unwrap();
    sqlx::query(
        "UPDATE larder_sessions SET deleted = TRUE, version = version + 1, updated_at = $1 \
         WHERE id_hash = $2",
    )
    .bind(Timestamp::now().0)
    .bind(&early.id.hash().as_bytes()[..])
    .execute(&mut *tx)
    .await
    .unwrap();
    let (open_seq,): (i64,) = sqlx::query_as("SELECT MAX(seq) FROM larder_session_outbox")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    // A save commits with the next position, and B reads past it.
    other.data.insert("n", &1u64).unwrap();
    let other = a.save(&other).await.unwrap();
    let committed = a.log_after(open_seq, 10).await.unwrap();
    assert!(
        committed.iter().all(|e| e.seq > open_seq) && !committed.is_empty(),
        "the save's position is after the open one: {committed:?}"
    );
    eventually(patience(), "B sees the later save", async || {
        b.load(&other.id)
            .await
            .unwrap()
            .is_some_and(|c| counter(&c) == 1)
    })
    .await;
    assert!(
        b.load(&early.id).await.unwrap().is_some(),
        "not deleted yet: the transaction is open"
    );

    tx.commit().await.unwrap();
    eventually(
        patience(),
        "B refuses the session logged out last",
        async || b.load(&early.id).await.unwrap().is_none(),
    )
    .await;
}

/// Deleting through a store whose sessions another per-process cache holds, without any
/// load on the deleting side: the other cache still learns of it (the log is not consumed
/// by the first reader).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reader_sees_every_entry() {
    let (pg, schema) = larder_tests::db::pg_store().await;
    let readers: Vec<CachedStore<PgStore>> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(CachedStore::new(
                larder_tests::db::pg_store_in(&schema).await,
                memory(),
            ));
        }
        v
    };
    let r = pg.create(SessionData::new(), None, later()).await.unwrap();
    for c in &readers {
        assert!(c.load(&r.id).await.unwrap().is_some());
    }
    assert!(pg.delete(&r.id).await.unwrap());
    for (i, c) in readers.iter().enumerate() {
        eventually(patience(), format!("reader {i} refuses it"), async || {
            c.load(&r.id).await.unwrap().is_none()
        })
        .await;
    }
}

/// A fill that read the database before a save made elsewhere, and writes the cache after
/// this process applied the save's log entry, must not put the older version back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_racing_a_logged_save_never_puts_the_older_version_back() {
    let (pg_a, schema) = larder_tests::db::pg_store().await;
    let pg_b = larder_tests::db::pg_store_in(&schema).await;
    let a = CachedStore::new(pg_a, memory());
    let gate = larder_tests::fault::PutGate::new(memory());
    let b = Arc::new(
        CachedStore::new(pg_b, gate.clone())
            .cache_timeout(Duration::from_secs(10))
            .drain_interval(Duration::from_secs(3600)),
    );
    for round in 0..4u64 {
        let mut r = a.create(SessionData::new(), None, later()).await.unwrap();
        b.drain_outbox().await.unwrap();
        gate.arm();
        let (b2, id) = (b.clone(), r.id.clone());
        let slow = tokio::spawn(async move { b2.load_authoritative(&id).await });
        // B has read version 1 and is about to fill its cache.
        tokio::time::timeout(Duration::from_secs(10), gate.reached())
            .await
            .expect("B's fill reached the cache");
        r.data.insert("n", &1u64).unwrap();
        let r = a.save(&r).await.unwrap();
        b.drain_outbox().await.unwrap();
        gate.release();
        assert_eq!(slow.await.unwrap().unwrap().map(|c| counter(&c)), Some(0));
        assert_eq!(
            b.load(&r.id).await.unwrap().map(|c| counter(&c)),
            Some(1),
            "round {round}: B serves the version saved through A"
        );
    }
}

/// A persistent per-process cache (sled) keeps its cursor across a restart: a save made
/// while the process was down, older than the look-back of a fresh start, still evicts the
/// version the cache kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_cache_keeps_its_cursor_across_a_restart() {
    use larder_backend_sled::{SledBackend, SledConfig};
    let (a, dir) = larder_tests::db::sqlite_store().await;
    let a = CachedStore::new(a, memory());
    let cache_dir = tempfile::tempdir().unwrap();
    let start_b = async || {
        let sled = SledBackend::new(SledConfig::new(cache_dir.path()).with_sweep_interval(None))
            .await
            .unwrap();
        let store = SqliteStore::open(&dir.path().join("sessions.db"))
            .await
            .unwrap();
        CachedStore::new(store, Arc::new(sled))
    };
    let mut r = a.create(SessionData::new(), None, later()).await.unwrap();
    {
        let b = start_b().await;
        assert!(b.load(&r.id).await.unwrap().is_some());
        assert!(b.load(&r.id).await.unwrap().is_some());
        assert_eq!(b.stats().snapshot().hits, 1, "cached in sled");
    }
    // While B is down: a save, recorded (as if) a minute ago, before the look-back of a
    // reader starting afresh.
    r.data.insert("n", &1u64).unwrap();
    let r = a.save(&r).await.unwrap();
    sqlx::query("UPDATE larder_session_outbox SET created_at = created_at - 60000")
        .execute(a.store().pool())
        .await
        .unwrap();
    let b = start_b().await;
    assert_eq!(b.load(&r.id).await.unwrap().map(|c| counter(&c)), Some(1));
    let st = b.stats().snapshot();
    assert_eq!((st.log_evictions, st.log_flushes), (1, 0));
}
