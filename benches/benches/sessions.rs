//! Session loads and saves on PostgreSQL and SQLite, each beside the raw work done by hand
//! in the same run:
//!
//! * `session_load_hit/<db>/<size>`: `CachedStore::load` answered by the cache, against the
//!   raw cache `get` + envelope check + postcard decode of the same record.
//! * `session_load_miss/<db>/<size>`: `CachedStore::load` with the cache entry removed before
//!   each call (untimed), against a raw sqlx `SELECT` by primary key + a raw cache `put`.
//! * `session_save/<db>/<size>`: a versioned save through `CachedStore` (SQL update with the
//!   version check, then the forward-only cache write), against a raw sqlx `UPDATE` + a raw
//!   cache `put`.
//! * `session_load_cached_vs_sql/<db>/<size>`: a cache hit against the SQL store alone.
//!
//! The cache is the in-process memory backend, so the figures isolate larder's own cost
//! over SQL; PostgreSQL is the local server (`LARDER_TEST_POSTGRES` to change it).
//!
//! After the Criterion groups, four `ratio sessions ...` lines (stderr), each side measured
//! alternately (`harness::alternate`, 20 rounds of 25 operations), on a fresh schema:
//!
//! * `tower_save/postgres/300B`: a tower-sessions save of a 300 B session through larder's
//!   `TowerStore` over `PgStore`, against tower-sessions-sqlx-store's `PostgresStore::save`
//!   (an upsert) on the same PostgreSQL. Each save gets its own session, created and loaded
//!   beforehand (the adapter keeps what it loaded in the record it hands out), with one key
//!   changed; the changed record is cloned in the timed part on both sides.
//! * `delete/postgres`: `PgStore::delete` against the same `UPDATE ... SET deleted = TRUE`
//!   statement sent raw on the store's pool, each on sessions created beforehand. The
//!   outbox trigger fires for both (it is on the table), so the ratio is larder's own cost.
//!
//! * `logged_save/<db>/300B`: a versioned `save` (the one statement) on a database with the
//!   change log's save trigger, against the same save on a database where that trigger is
//!   dropped (one schema / file each): what logging every save costs, so that caches in
//!   other processes learn of it. Each side saves its own session over and over.
//!
//! A filter no Criterion id matches (`-- peer_ratios`) runs only these.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::Criterion;
use larder_backend_memory::MemoryBackend;
use larder_benches::harness::{alternate, report};
use larder_cache_api::codec::Postcard;
use larder_cache_api::{envelope, DynBackend, PutMode, Ttl};
use larder_session_persist::{
    CachedStore, Outbox, Record, SessionData, SessionStore, Timestamp, TowerStore,
    DEFAULT_TOMBSTONE_TTL,
};
use tokio::runtime::Runtime;
use tower_sessions::SessionStore as _;
use tower_sessions_core_014::SessionStore as _;

/// Session payloads: about 300 B (ten small keys) and about 4 KiB.
fn payload(size: usize) -> SessionData {
    let mut d = SessionData::new();
    if size <= 512 {
        for (i, k) in [
            "user", "name", "email", "csrf", "theme", "lang", "cart", "tz", "role", "last",
        ]
        .iter()
        .enumerate()
        {
            d.insert(k, &format!("{k}-value-{i:02}-xxxxxxxx"))
                .expect("encode");
        }
    } else {
        d.insert("blob", &vec![7u8; size]).expect("encode");
    }
    d
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime")
}

/// The raw anchor: the same statements written by hand on the store's own pool.
enum RawPool {
    Pg(sqlx::PgPool),
    Lite(sqlx::SqlitePool),
}

impl RawPool {
    async fn select(&self, hash: &[u8]) -> Vec<u8> {
        const Q: &str = "SELECT data FROM larder_sessions WHERE id_hash = $1";
        let row: (Vec<u8>,) = match self {
            RawPool::Pg(p) => sqlx::query_as(Q).bind(hash).fetch_one(p).await,
            RawPool::Lite(p) => sqlx::query_as(Q).bind(hash).fetch_one(p).await,
        }
        .expect("select");
        row.0
    }

    async fn update(&self, hash: &[u8], data: &[u8]) {
        const Q: &str = "UPDATE larder_sessions SET data = $1 WHERE id_hash = $2";
        match self {
            RawPool::Pg(p) => sqlx::query(Q)
                .bind(data)
                .bind(hash)
                .execute(p)
                .await
                .map(|_| ()),
            RawPool::Lite(p) => sqlx::query(Q)
                .bind(data)
                .bind(hash)
                .execute(p)
                .await
                .map(|_| ()),
        }
        .expect("update");
    }
}

struct Fixture {
    name: &'static str,
    sql: Arc<dyn Outbox>,
    cached: Arc<CachedStore<Arc<dyn Outbox>>>,
    cache: DynBackend,
    raw: RawPool,
    _guard: Box<dyn std::any::Any>,
}

fn fixture(
    name: &'static str,
    sql: Arc<dyn Outbox>,
    raw: RawPool,
    guard: Box<dyn std::any::Any>,
) -> Fixture {
    let cache: DynBackend = Arc::new(MemoryBackend::default());
    Fixture {
        name,
        cached: Arc::new(CachedStore::new(sql.clone(), cache.clone())),
        sql,
        cache,
        raw,
        _guard: guard,
    }
}

fn fixtures(rt: &Runtime) -> Vec<Fixture> {
    let (pg, schema) = rt.block_on(larder_tests::db::pg_store());
    let pg_raw = RawPool::Pg(pg.pool().clone());
    let (lite, dir) = rt.block_on(larder_tests::db::sqlite_store());
    let lite_raw = RawPool::Lite(lite.pool().clone());
    vec![
        fixture("postgres", Arc::new(pg), pg_raw, Box::new(schema)),
        fixture("sqlite", Arc::new(lite), lite_raw, Box::new(dir)),
    ]
}

fn bench(c: &mut Criterion) {
    let rt = runtime();
    let fixtures = fixtures(&rt);
    for f in &fixtures {
        for size in [300usize, 4096] {
            let data = payload(size);
            let rec: Record = rt
                .block_on(f.cached.create(
                    data.clone(),
                    None,
                    Timestamp::now().plus(Duration::from_secs(3600)),
                ))
                .expect("create");
            let id = rec.id.clone();
            let hash = id.hash().as_bytes().to_vec();
            let key = id.hash().cache_key();
            let raw_key = larder_cache_api::Key::new(format!("raw-{}", f.name)).expect("key");
            let sealed = envelope::seal(&Postcard, &data).expect("seal");
            let ttl = Some(Ttl::from_secs(600).expect("ttl"));
            rt.block_on(
                f.cache
                    .put(&raw_key, sealed.clone(), ttl, PutMode::Overwrite),
            )
            .expect("raw put");
            rt.block_on(f.cached.load(&id)).expect("warm");

            let mut g = c.benchmark_group(format!("session_load_hit/{}/{size}", f.name));
            g.bench_function("larder_cached_load", |b| {
                b.to_async(&rt)
                    .iter(|| async { f.cached.load(&id).await.expect("load") })
            });
            g.bench_function("raw_cache_get_decode", |b| {
                b.to_async(&rt).iter(|| async {
                    let e = f.cache.get(&raw_key).await.expect("get").expect("hit");
                    envelope::open::<_, SessionData>(&Postcard, &e.value).expect("decode")
                })
            });
            g.finish();

            let mut g = c.benchmark_group(format!("session_load_miss/{}/{size}", f.name));
            g.bench_function("larder_cached_load_miss", |b| {
                b.to_async(&rt).iter_custom(|iters| {
                    let (f, id, key) = (&*f, id.clone(), key.clone());
                    async move {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            f.cache
                                .delete(&key, larder_cache_api::DeleteMode::Any)
                                .await
                                .expect("del");
                            let t = Instant::now();
                            f.cached.load(&id).await.expect("load");
                            total += t.elapsed();
                        }
                        total
                    }
                })
            });
            g.bench_function("raw_select_then_cache_put", |b| {
                b.to_async(&rt).iter(|| async {
                    let d = f.raw.select(&hash).await;
                    f.cache
                        .put(&raw_key, bytes::Bytes::from(d), ttl, PutMode::Overwrite)
                        .await
                        .expect("put")
                })
            });
            g.finish();

            let mut g = c.benchmark_group(format!("session_save/{}/{size}", f.name));
            let current =
                std::sync::Mutex::new(rt.block_on(f.sql.load(&id)).expect("load").expect("live"));
            g.bench_function("larder_versioned_save", |b| {
                b.to_async(&rt).iter(|| async {
                    let rec = current.lock().expect("lock").clone();
                    let saved = f.cached.save(&rec).await.expect("save");
                    *current.lock().expect("lock") = saved;
                })
            });
            g.bench_function("raw_update_then_cache_put", |b| {
                b.to_async(&rt).iter(|| async {
                    f.raw.update(&hash, &sealed).await;
                    f.cache
                        .put(&raw_key, sealed.clone(), ttl, PutMode::Overwrite)
                        .await
                        .expect("put")
                })
            });
            g.finish();

            let mut g = c.benchmark_group(format!("session_load_cached_vs_sql/{}/{size}", f.name));
            rt.block_on(f.cached.load(&id)).expect("warm");
            g.bench_function("cached", |b| {
                b.to_async(&rt)
                    .iter(|| async { f.cached.load(&id).await.expect("load") })
            });
            g.bench_function("sql_only", |b| {
                b.to_async(&rt)
                    .iter(|| async { f.sql.load(&id).await.expect("load") })
            });
            g.finish();
        }
    }
}

/// Rounds and operations per round of the alternated ratio runs.
const RATIO_ROUNDS: usize = 20;
const RATIO_PER_ROUND: usize = 25;

/// The 300 B session of `payload` as tower-sessions data (JSON values).
fn tower_payload() -> HashMap<String, serde_json::Value> {
    [
        "user", "name", "email", "csrf", "theme", "lang", "cart", "tz", "role", "last",
    ]
    .iter()
    .enumerate()
    .map(|(i, k)| (k.to_string(), format!("{k}-value-{i:02}-xxxxxxxx").into()))
    .collect()
}

/// larder's tower-sessions save against tower-sessions-sqlx-store's, and `PgStore::delete`
/// against its raw statement (see the top of the file).
fn peer_ratios(rt: &Runtime) {
    let n = RATIO_ROUNDS * RATIO_PER_ROUND;
    rt.block_on(async {
        let (pg, schema) = larder_tests::db::pg_store().await;
        let pg = Arc::new(pg);
        let tower = TowerStore::new(pg.clone());
        let pool = tower_sessions_sqlx_store::sqlx::postgres::PgPoolOptions::new()
            .max_connections(10)
            .connect(&larder_tests::db::postgres_url())
            .await
            .expect("sqlx 0.8 pool");
        let peer = tower_sessions_sqlx_store::PostgresStore::new(pool)
            .with_schema_name(&schema)
            .expect("schema name");
        peer.migrate().await.expect("peer migration");
        let expiry =
            tower_sessions::cookie::time::OffsetDateTime::now_utc() + Duration::from_secs(3600);

        // One session per save, so every larder save starts from a fresh `load`.
        let mut mine = Vec::with_capacity(n);
        let mut theirs = Vec::with_capacity(n);
        for _ in 0..n {
            let mut r = tower_sessions::session::Record {
                id: tower_sessions::session::Id::default(),
                data: tower_payload(),
                expiry_date: expiry,
            };
            tower.create(&mut r).await.expect("larder create");
            mine.push(tower.load(&r.id).await.expect("load").expect("live"));
            let mut r = tower_sessions_core_014::session::Record {
                id: tower_sessions_core_014::session::Id::default(),
                data: tower_payload(),
                expiry_date: expiry,
            };
            peer.create(&mut r).await.expect("peer create");
            theirs.push(r);
        }
        let (tower, peer) = (&tower, &peer);
        let save = alternate(
            RATIO_ROUNDS,
            RATIO_PER_ROUND,
            |i| {
                let mut r = mine[i].clone();
                async move {
                    r.data.insert("last".into(), format!("changed-{i}").into());
                    tower.save(&r).await.expect("larder save");
                }
            },
            |i| {
                let mut r = theirs[i].clone();
                async move {
                    r.data.insert("last".into(), format!("changed-{i}").into());
                    peer.save(&r).await.expect("peer save");
                }
            },
        )
        .await;
        report("sessions", "tower_save/postgres/300B", save);

        let live = Timestamp::now().plus(Duration::from_secs(3600));
        let (mut ids, mut hashes) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for _ in 0..n {
            ids.push(
                pg.create(payload(300), None, live)
                    .await
                    .expect("create")
                    .id,
            );
            let r = pg.create(payload(300), None, live).await.expect("create");
            hashes.push(r.id.hash().as_bytes().to_vec());
        }
        let (pg, raw, ids, hashes) = (&pg, pg.pool(), &ids, &hashes);
        let delete = alternate(
            RATIO_ROUNDS,
            RATIO_PER_ROUND,
            |i| async move {
                let deleted = pg.delete(&ids[i]).await.expect("delete");
                assert!(deleted, "the session was live");
            },
            |i| async move {
                let now = Timestamp::now();
                let done = sqlx::query(
                    "UPDATE larder_sessions SET deleted = TRUE, data = $1, principal = NULL, \
                     version = version + 1, expires_at = $2, updated_at = $3 \
                     WHERE id_hash = $4 AND deleted = FALSE AND expires_at > $3",
                )
                .bind(&[][..] as &[u8])
                .bind(now.plus(DEFAULT_TOMBSTONE_TTL).0)
                .bind(now.0)
                .bind(&hashes[i][..])
                .execute(raw)
                .await
                .expect("raw delete");
                assert_eq!(done.rows_affected(), 1, "the session was live");
            },
        )
        .await;
        report("sessions", "delete/postgres", delete);

        let (logged, _) = larder_tests::db::pg_store().await;
        let (unlogged, _) = larder_tests::db::pg_store().await;
        sqlx::query("DROP TRIGGER larder_sessions_saved ON larder_sessions")
            .execute(unlogged.pool())
            .await
            .expect("drop trigger");
        logged_save_ratio("logged_save/postgres/300B", &logged, &unlogged).await;
        let (logged, _dir) = larder_tests::db::sqlite_store().await;
        let (unlogged, _dir2) = larder_tests::db::sqlite_store().await;
        sqlx::query("DROP TRIGGER larder_sessions_saved")
            .execute(unlogged.pool())
            .await
            .expect("drop trigger");
        logged_save_ratio("logged_save/sqlite/300B", &logged, &unlogged).await;
    });
}

/// Saves of one 300 B session on each store, alternated: `logged` against `unlogged`.
async fn logged_save_ratio(what: &str, logged: &dyn SessionStore, unlogged: &dyn SessionStore) {
    let live = Timestamp::now().plus(Duration::from_secs(3600));
    let mine = logged
        .create(payload(300), None, live)
        .await
        .expect("create");
    let theirs = unlogged
        .create(payload(300), None, live)
        .await
        .expect("create");
    let (mine, theirs) = (std::sync::Mutex::new(mine), std::sync::Mutex::new(theirs));
    let ratio = alternate(
        RATIO_ROUNDS,
        RATIO_PER_ROUND,
        |_| save_next(logged, &mine),
        |_| save_next(unlogged, &theirs),
    )
    .await;
    report("sessions", what, ratio);
}

/// Saves the record in `cur` on `on` and keeps the saved version.
async fn save_next(on: &dyn SessionStore, cur: &std::sync::Mutex<Record>) {
    let rec = cur.lock().expect("lock").clone();
    let saved = on.save(&rec).await.expect("save");
    *cur.lock().expect("lock") = saved;
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
        .configure_from_args();
    bench(&mut c);
    c.final_summary();
    // `--list`/`--test` runs skip the extra measurements.
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    peer_ratios(&runtime());
}
