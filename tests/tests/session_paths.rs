//! Sessions on the paths users take, against real PostgreSQL and Redis: the tower-sessions
//! adapter on two "instances" (two stores over one database and one cache, no HTTP, so a
//! failure points at the adapter), the conflict policy of the handle, ghost sessions after
//! a logout whose cache write failed or whose process died, a fill racing a delete, and bad
//! input to the adapter.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use larder::{DynBackend, ErrorKind};
use larder_session_persist::{
    CachedStore, ConflictPolicy, IdHash, PgStore, Record, SaveOutcome, SessionConfig, SessionData,
    SessionId, SessionManager, SessionStore, Timestamp, TowerStore, RESERVED_KEY,
};
use larder_tests::fault::{Fault, Faulty, PutGate};
use larder_tests::server::ServerProcess;
use larder_tests::{eventually, Patience};
use serde_json::{json, Value};
use tower_sessions::session::{Id, Record as TowerRecord};
use tower_sessions::SessionStore as _;

const CLIENTS: usize = 20;
const REQUESTS: usize = 50;

fn tower_id(id: &SessionId) -> Id {
    Id(i128::from_le_bytes(*id.as_bytes()))
}

fn later() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() + time::Duration::hours(1)
}

async fn redis_cache(server: &ServerProcess) -> DynBackend {
    larder::connect(&format!("redis://{}", server.addr()))
        .await
        .unwrap()
}

/// One request as tower-sessions makes it: load, change the record, save.
async fn request(store: &TowerStore, id: Id, change: impl FnOnce(&mut HashMap<String, Value>)) {
    let mut rec = store.load(&id).await.unwrap().expect("session is live");
    change(&mut rec.data);
    rec.expiry_date = later();
    store.save(&rec).await.unwrap();
}

async fn stored(store: &TowerStore, id: Id) -> HashMap<String, Value> {
    let mut data = store.load(&id).await.unwrap().unwrap().data;
    data.remove(RESERVED_KEY);
    data
}

/// 20 clients × 50 requests on one session through two adapters, alternating: each client
/// sets its own key every request; client 0 removes `victim` in its 10th. Then 1000
/// atomic increments through larder's handle over the same stores.
async fn two_instances_lose_nothing(a: Arc<dyn SessionStore>, b: Arc<dyn SessionStore>) {
    let stores = [
        TowerStore::new(a).principal_key("user"),
        TowerStore::new(b).principal_key("user"),
    ];
    let mut first = TowerRecord {
        id: Id::default(),
        data: HashMap::from([
            ("user".to_owned(), json!("ada")),
            ("victim".to_owned(), json!("remove me")),
        ]),
        expiry_date: later(),
    };
    stores[0].create(&mut first).await.unwrap();
    let id = first.id;

    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let stores = stores.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..REQUESTS {
                let store = &stores[(c + i) % 2];
                request(store, id, |d| {
                    d.insert(format!("k{c}"), json!(i));
                    if c == 0 && i == 10 {
                        d.remove("victim");
                    }
                })
                .await;
            }
            // The client reads its own key back.
            let back = stored(&stores[c % 2], id).await;
            assert_eq!(back.get(&format!("k{c}")), Some(&json!(REQUESTS - 1)));
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let end = stored(&stores[1], id).await;
    let lost: Vec<usize> = (0..CLIENTS)
        .filter(|c| end.get(&format!("k{c}")) != Some(&json!(REQUESTS - 1)))
        .collect();
    assert!(
        lost.is_empty(),
        "clients whose last write was lost: {lost:?}"
    );
    assert!(!end.contains_key("victim"), "the removal stands: {end:?}");
    assert_eq!(end.get("user"), Some(&json!("ada")));

    // The atomic update: exactly one increment per request.
    let lid = SessionId::from_bytes(id.0.to_le_bytes());
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let stores = stores.clone();
        let lid = lid.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..REQUESTS {
                let m = stores[(c + i) % 2].manager();
                let mut s = m.load_id(&lid).await.unwrap().unwrap();
                s.update("counter", |n: Option<u64>| n.unwrap_or(0) + 1)
                    .unwrap();
                s.save().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let end = stored(&stores[0], id).await;
    assert_eq!(end.get("counter"), Some(&json!(CLIENTS * REQUESTS)));
    // The tower-sessions view and the handle agree on the JSON values.
    assert_eq!(end.get("k3"), Some(&json!(REQUESTS - 1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tower_adapter_on_two_instances_postgres_alone() {
    let (a, schema) = larder_tests::db::pg_store().await;
    let b = larder_tests::db::pg_store_in(&schema).await;
    two_instances_lose_nothing(Arc::new(a), Arc::new(b)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tower_adapter_on_two_instances_postgres_and_redis() {
    let (a, schema) = larder_tests::db::pg_store().await;
    let b = larder_tests::db::pg_store_in(&schema).await;
    let redis = ServerProcess::redis();
    let a = CachedStore::new(a, redis_cache(&redis).await);
    let b = CachedStore::new(b, redis_cache(&redis).await);
    let (sa, sb) = (a.stats(), b.stats());
    two_instances_lose_nothing(Arc::new(a), Arc::new(b)).await;
    let (sa, sb) = (sa.snapshot(), sb.snapshot());
    assert!(sa.hits + sb.hits > 0, "the cache served loads");
    assert_eq!(sa.cache_errors + sb.cache_errors, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tower_adapter_on_sqlite() {
    let (a, _dir) = larder_tests::db::sqlite_store().await;
    let b = a.clone();
    two_instances_lose_nothing(Arc::new(a), Arc::new(b)).await;
}

/// Makes every one of the first `left` saves lose a race: just before it, another
/// "request" changes an unrelated key.
#[derive(Debug)]
struct Interfering {
    inner: PgStore,
    left: AtomicUsize,
    key: &'static str,
}

#[async_trait::async_trait]
impl SessionStore for Interfering {
    async fn create(
        &self,
        data: SessionData,
        principal: Option<String>,
        expires_at: Timestamp,
    ) -> larder::Result<Record> {
        self.inner.create(data, principal, expires_at).await
    }
    async fn load(&self, id: &SessionId) -> larder::Result<Option<Record>> {
        self.inner.load(id).await
    }
    async fn save_or_current(&self, record: &Record) -> larder::Result<SaveOutcome> {
        if self.left.load(Ordering::SeqCst) > 0 {
            let n = self.left.fetch_sub(1, Ordering::SeqCst);
            let mut other = self.inner.load(&record.id).await?.unwrap();
            other.data.insert(&format!("{}{n}", self.key), &n)?;
            self.inner.save(&other).await?;
        }
        self.inner.save_or_current(record).await
    }
    async fn touch(&self, id: &SessionId, at: Timestamp) -> larder::Result<Option<Record>> {
        self.inner.touch(id, at).await
    }
    async fn delete(&self, id: &SessionId) -> larder::Result<bool> {
        self.inner.delete(id).await
    }
    async fn rotate(&self, id: &SessionId) -> larder::Result<Option<Record>> {
        self.inner.rotate(id).await
    }
    async fn delete_principal(&self, p: &str) -> larder::Result<Vec<IdHash>> {
        self.inner.delete_principal(p).await
    }
    async fn sweep(&self, batch: u32) -> larder::Result<u64> {
        self.inner.sweep(batch).await
    }
    async fn count(&self) -> larder::Result<u64> {
        self.inner.count().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflict_policy_error_survives_conflicts_on_unrelated_keys() {
    let (pg, _schema) = larder_tests::db::pg_store().await;
    let store = Arc::new(Interfering {
        inner: pg,
        left: AtomicUsize::new(0),
        key: "other",
    });
    let m = SessionManager::with_config(
        store.clone(),
        SessionConfig::default().conflict_policy(ConflictPolicy::Error),
    );
    let mut s = m.create().await.unwrap();
    s.insert("mine", "before").unwrap();
    s.save().await.unwrap();

    // Two lost races in a row, each on a key this request did not touch: the save succeeds.
    store.left.store(2, Ordering::SeqCst);
    s.insert("mine", "after").unwrap();
    s.save().await.unwrap();
    assert_eq!(
        store.left.load(Ordering::SeqCst),
        0,
        "both conflicts happened"
    );
    let back = m.load(s.id().as_str()).await.unwrap().unwrap();
    assert_eq!(
        back.get::<String>("mine").unwrap().as_deref(),
        Some("after")
    );
    assert_eq!(back.get::<usize>("other1").unwrap(), Some(1));
    assert_eq!(back.get::<usize>("other2").unwrap(), Some(2));

    // A race on the same key is still the policy's error, and writes nothing.
    let store2 = Arc::new(Interfering {
        inner: store.inner.clone(),
        left: AtomicUsize::new(1),
        key: "mine",
    });
    let m2 = SessionManager::with_config(
        store2,
        SessionConfig::default().conflict_policy(ConflictPolicy::Error),
    );
    let mut s = m2.load(s.id().as_str()).await.unwrap().unwrap();
    s.insert("mine1", "mine too").unwrap();
    let err = s.save().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    let back = m.load(s.id().as_str()).await.unwrap().unwrap();
    assert_eq!(
        back.get::<usize>("mine1").unwrap(),
        Some(1),
        "the other request's value"
    );
}

/// Loads on `b` until the session is gone; the time from `since` until then.
async fn time_until_gone(b: &CachedStore<PgStore>, id: &SessionId, since: Instant) -> Duration {
    // Ten seconds from `since`, not from now.
    let limit = Duration::from_secs(10).saturating_sub(since.elapsed());
    let patience = Patience::new(limit).every(Duration::from_millis(10));
    eventually(
        patience,
        "B no longer serves the deleted session",
        async || b.load(id).await.unwrap().is_none().then(|| since.elapsed()),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_whose_cache_write_fails_is_dead_everywhere_within_two_seconds() {
    let (pg_a, schema) = larder_tests::db::pg_store().await;
    let pg_b = larder_tests::db::pg_store_in(&schema).await;
    let redis = ServerProcess::redis();
    let faulty = Faulty::new(redis_cache(&redis).await);
    let a = CachedStore::new(pg_a, faulty.clone());
    let b = CachedStore::new(pg_b, redis_cache(&redis).await);
    let stats_b = b.stats();

    for round in 0..3 {
        let r = a
            .create(
                SessionData::new(),
                Some("ada".into()),
                Timestamp::now().plus(Duration::from_secs(600)),
            )
            .await
            .unwrap();
        // B serves it from the shared cache.
        assert!(b.load(&r.id).await.unwrap().is_some());
        assert!(b.load(&r.id).await.unwrap().is_some());
        // The cache fails for A at the moment of logout (and a moment before, so A's breaker
        // is open too, as after any recent cache error).
        faulty.set(Fault::Fail(ErrorKind::Unavailable));
        let _ = a.load(&r.id).await.unwrap();
        let deleted = match round {
            0 => a.delete(&r.id).await.unwrap(),
            1 => a
                .delete_principal("ada")
                .await
                .unwrap()
                .contains(&r.id.hash()),
            _ => a.rotate(&r.id).await.unwrap().is_some(),
        };
        let returned = Instant::now();
        assert!(deleted, "round {round}: the database deleted it");
        let took = time_until_gone(&b, &r.id, returned).await;
        eprintln!("round {round}: B stopped serving the deleted session after {took:?}");
        assert!(took < Duration::from_secs(2), "round {round}: {took:?}");
        faulty.set(Fault::None);
    }
    assert!(
        stats_b.snapshot().outbox_drained >= 3,
        "B wrote the tombstones A could not"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_of_a_process_killed_before_its_cache_write_is_dead_everywhere() {
    let (pg_b, schema) = larder_tests::db::pg_store().await;
    let redis = ServerProcess::redis();
    let b = CachedStore::new(pg_b, redis_cache(&redis).await);
    let m = SessionManager::new(Arc::new(CachedStore::new(
        larder_tests::db::pg_store_in(&schema).await,
        redis_cache(&redis).await,
    )));
    let s = m.create().await.unwrap();
    let id = s.id().clone();
    assert!(b.load(&id).await.unwrap().is_some(), "cached and live");

    let mut peer = Command::new(env!("CARGO_BIN_EXE_session_peer"))
        .args([
            &larder_tests::db::postgres_url(),
            &schema,
            &format!("redis://{}", redis.addr()),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(peer.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    use std::io::Write as _;
    let mut stdin = peer.stdin.take().unwrap();
    writeln!(stdin, "delete-and-hang {}", id.as_str()).unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    // The SQL delete has committed and the process is stuck before its cache write: kill it.
    assert_eq!(line.trim(), "committed");
    let killed = Instant::now();
    peer.kill().unwrap();
    peer.wait().unwrap();
    let took = time_until_gone(&b, &id, killed).await;
    eprintln!("B stopped serving the session of the killed process after {took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_racing_a_delete_never_resurrects() {
    let (pg_a, schema) = larder_tests::db::pg_store().await;
    let pg_b = larder_tests::db::pg_store_in(&schema).await;
    let redis = ServerProcess::redis();
    let raw = redis_cache(&redis).await;
    let gate = PutGate::new(redis_cache(&redis).await);
    let a = Arc::new(CachedStore::new(pg_a, gate.clone()).cache_timeout(Duration::from_secs(10)));
    let b = CachedStore::new(pg_b, redis_cache(&redis).await);
    for round in 0..5 {
        let r = b
            .create(
                SessionData::new(),
                None,
                Timestamp::now().plus(Duration::from_secs(600)),
            )
            .await
            .unwrap();
        if round % 2 == 0 {
            // The entry was evicted: A's load misses and fills with a create.
            raw.delete(&r.id.hash().cache_key(), larder::DeleteMode::Any)
                .await
                .unwrap();
        }
        gate.arm();
        let a2 = a.clone();
        let id = r.id.clone();
        let slow = tokio::spawn(async move { a2.load_authoritative(&id).await });
        // A has read the live session from the database and is about to fill the cache.
        gate.reached().await;
        assert!(b.delete(&r.id).await.unwrap());
        gate.release();
        assert!(
            slow.await.unwrap().unwrap().is_some(),
            "A read before the delete"
        );
        assert!(
            a.load(&r.id).await.unwrap().is_none(),
            "round {round}: resurrected in A"
        );
        assert!(
            b.load(&r.id).await.unwrap().is_none(),
            "round {round}: resurrected in B"
        );
    }
}

/// A fill that read an older version before an invalidation and reaches the cache after it
/// is refused: B's save cannot write its new version to the cache (the put fails), so it
/// invalidates, while A's fill of the version before is held between its database read and
/// its cache write. Neither instance serves the older version afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_older_than_an_invalidation_is_refused() {
    let (pg_a, schema) = larder_tests::db::pg_store().await;
    let pg_b = larder_tests::db::pg_store_in(&schema).await;
    let redis = ServerProcess::redis();
    let raw = redis_cache(&redis).await;
    let gate = PutGate::new(redis_cache(&redis).await);
    let faulty = Faulty::new(redis_cache(&redis).await);
    let a = Arc::new(CachedStore::new(pg_a, gate.clone()).cache_timeout(Duration::from_secs(10)));
    // No breaker: B's invalidation goes out right after its failed put.
    let b = CachedStore::new(pg_b, faulty.clone()).breaker_cooldown(Duration::ZERO);
    for round in 0..6 {
        let old = b
            .create(
                data_of("step", "old"),
                None,
                Timestamp::now().plus(Duration::from_secs(600)),
            )
            .await
            .unwrap();
        if round % 2 == 0 {
            // The entry was evicted: A's fill is a create, and the invalidation finds nothing
            // to replace.
            raw.delete(&old.id.hash().cache_key(), larder::DeleteMode::Any)
                .await
                .unwrap();
        }
        gate.arm();
        let a2 = a.clone();
        let id = old.id.clone();
        let slow = tokio::spawn(async move { a2.load_authoritative(&id).await });
        // A has read the old version from the database and is about to fill the cache.
        gate.reached().await;
        let mut new = old.clone();
        new.data.insert("step", &"new").unwrap();
        faulty.fail_next_puts(1);
        let SaveOutcome::Saved(saved) = b.save_or_current(&new).await.unwrap() else {
            panic!("no concurrent save")
        };
        assert_eq!(faulty.injected(), round + 1, "B's cache write failed");
        gate.release();
        let read = slow.await.unwrap().unwrap().unwrap();
        assert_eq!(read.version, old.version, "A read before the save");
        for (who, store) in [("A", &*a), ("B", &b)] {
            let r = store.load(&old.id).await.unwrap().unwrap();
            assert_eq!(
                (r.version, r.data.get::<String>("step").unwrap().as_deref()),
                (saved.version, Some("new")),
                "round {round}: {who} served the version before the invalidation"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tower_adapter_refuses_forged_and_foreign_input_and_changes_nothing() {
    let (pg, _schema) = larder_tests::db::pg_store().await;
    let pg: Arc<dyn SessionStore> = Arc::new(pg);
    let store = TowerStore::new(pg.clone());

    // The app writes the reserved name into a new session: it is never stored.
    let mut rec = TowerRecord {
        id: Id::default(),
        data: HashMap::from([
            ("user".to_owned(), json!("ada")),
            (RESERVED_KEY.to_owned(), json!({"v": 1})),
        ]),
        expiry_date: later(),
    };
    store.create(&mut rec).await.unwrap();
    let id = rec.id;
    let lid = SessionId::from_bytes(id.0.to_le_bytes());
    let before = pg.load(&lid).await.unwrap().unwrap();
    assert_eq!(before.data.keys().collect::<Vec<_>>(), vec!["user"]);

    // A forged or clobbered reserved entry: a clear error, nothing stored changes.
    for forged in [
        json!("not an entry"),
        json!({"v": 999, "e": 0, "d": {}, "t": "00"}),
        {
            let mut r = store.load(&id).await.unwrap().unwrap();
            let mut e = r.data.remove(RESERVED_KEY).unwrap();
            e["d"] = json!({});
            e
        },
    ] {
        let mut r = store.load(&id).await.unwrap().unwrap();
        r.data.insert(RESERVED_KEY.to_owned(), forged);
        r.data.insert("user".to_owned(), json!("mallory"));
        let err = store.save(&r).await.unwrap_err();
        assert!(err.to_string().contains("reserved entry"), "{err}");
        assert_eq!(
            pg.load(&lid).await.unwrap().unwrap(),
            before,
            "nothing changed"
        );
    }
    // An entry loaded for another session is refused too.
    let mut other = TowerRecord {
        id: Id::default(),
        data: HashMap::from([("user".to_owned(), json!("bob"))]),
        expiry_date: later(),
    };
    store.create(&mut other).await.unwrap();
    let other_entry = store.load(&other.id).await.unwrap().unwrap().data[RESERVED_KEY].clone();
    let mut r = store.load(&id).await.unwrap().unwrap();
    r.data.insert(RESERVED_KEY.to_owned(), other_entry);
    assert!(store.save(&r).await.is_err());
    assert_eq!(pg.load(&lid).await.unwrap().unwrap(), before);

    // A value that is not JSON (written by larder's handle in postcard): a clear error.
    let m = SessionManager::new(pg.clone());
    let mut s = m.create().await.unwrap();
    s.insert("x", &7u32).unwrap();
    s.save().await.unwrap();
    let postcard_id = tower_id(s.id());
    let err = store.load(&postcard_id).await.unwrap_err();
    assert!(err.to_string().contains("session key \"x\""), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tower_save_without_changes_only_touches_when_due() {
    let (pg, _schema) = larder_tests::db::pg_store().await;
    let pg: Arc<dyn SessionStore> = Arc::new(pg);
    let store = TowerStore::new(pg.clone());
    let mut rec = TowerRecord {
        id: Id::default(),
        data: HashMap::from([("user".to_owned(), json!("ada"))]),
        expiry_date: time::OffsetDateTime::now_utc() + time::Duration::seconds(100),
    };
    store.create(&mut rec).await.unwrap();
    let lid = SessionId::from_bytes(rec.id.0.to_le_bytes());
    let v0 = pg.load(&lid).await.unwrap().unwrap();

    // Unchanged, and the expiry would move by 1 % of its life: nothing is written.
    let mut r = store.load(&rec.id).await.unwrap().unwrap();
    r.expiry_date = time::OffsetDateTime::now_utc() + time::Duration::seconds(101);
    store.save(&r).await.unwrap();
    assert_eq!(pg.load(&lid).await.unwrap().unwrap(), v0);

    // Unchanged, and the expiry moves by far more than a quarter: the expiry alone moves.
    let mut r = store.load(&rec.id).await.unwrap().unwrap();
    r.expiry_date = time::OffsetDateTime::now_utc() + time::Duration::seconds(1000);
    store.save(&r).await.unwrap();
    let v1 = pg.load(&lid).await.unwrap().unwrap();
    assert!(v1.expires_at.0 > v0.expires_at.0 + 800_000);
    assert_eq!(
        (v1.version, &v1.data),
        (v0.version, &v0.data),
        "no data rewrite"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_entry_failing_its_integrity_tag_is_a_counted_miss() {
    let (pg, _schema) = larder_tests::db::pg_store().await;
    let cache: DynBackend = Arc::new(larder_backend_memory::MemoryBackend::default());
    let tagged = CachedStore::new(pg.clone(), cache.clone())
        .integrity_key(b"sixteen+ bytes of shared key")
        .unwrap();
    let stats = tagged.stats();
    let r = tagged
        .create(
            data_of("user", "ada"),
            None,
            Timestamp::now().plus(Duration::from_secs(600)),
        )
        .await
        .unwrap();
    assert!(tagged.load(&r.id).await.unwrap().is_some());
    assert_eq!(stats.snapshot().hits, 1, "its own tagged entries are hits");

    // Someone without the key (another app, an attacker with cache access) puts a session
    // of their own under the same cache key: untagged, then tagged with another key. Each
    // time the entry is a miss, counted, and the database answers.
    #[derive(Debug)]
    struct Fixed(SessionId);
    impl larder_session_persist::IdSource for Fixed {
        fn generate(&self) -> larder::Result<SessionId> {
            Ok(self.0.clone())
        }
    }
    for (i, other_key) in [None, Some(&b"another key of sixteen+ bytes"[..])]
        .into_iter()
        .enumerate()
    {
        let (elsewhere, _dir) = larder_tests::db::sqlite_store().await;
        let elsewhere = elsewhere.with_options(
            larder_session_persist::SqlOptions::default().ids(Arc::new(Fixed(r.id.clone()))),
        );
        let forger = match other_key {
            None => CachedStore::new(elsewhere, cache.clone()),
            Some(k) => CachedStore::new(elsewhere, cache.clone())
                .integrity_key(k)
                .unwrap(),
        };
        cache
            .delete(&r.id.hash().cache_key(), larder::DeleteMode::Any)
            .await
            .unwrap();
        let forged = forger
            .create(
                data_of("user", "mallory"),
                None,
                Timestamp::now().plus(Duration::from_secs(600)),
            )
            .await
            .unwrap();
        assert_eq!(forged.id, r.id);
        assert!(
            cache.get(&r.id.hash().cache_key()).await.unwrap().is_some(),
            "forged entry in place"
        );
        let back = tagged.load(&r.id).await.unwrap().unwrap();
        assert_eq!(
            back.data,
            data_of("user", "ada"),
            "the database's data, not the forger's"
        );
        assert_eq!(stats.snapshot().integrity_failures, i as u64 + 1);
    }
}

fn data_of(k: &str, v: &str) -> SessionData {
    let mut d = SessionData::new();
    d.insert(k, v).unwrap();
    d
}
