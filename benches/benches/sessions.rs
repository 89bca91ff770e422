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

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::Criterion;
use larder_backend_memory::MemoryBackend;
use larder_cache_api::codec::Postcard;
use larder_cache_api::{envelope, DynBackend, PutMode, Ttl};
use larder_session_persist::{CachedStore, Record, SessionData, SessionStore, Timestamp};
use tokio::runtime::Runtime;

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
    sql: Arc<dyn SessionStore>,
    cached: Arc<CachedStore<Arc<dyn SessionStore>>>,
    cache: DynBackend,
    raw: RawPool,
    _guard: Box<dyn std::any::Any>,
}

fn fixture(
    name: &'static str,
    sql: Arc<dyn SessionStore>,
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

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
        .configure_from_args();
    bench(&mut c);
    c.final_summary();
}
