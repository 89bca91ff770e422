//! Coordination on PostgreSQL, SQLite and Redis: lease acquire and renew
//! (`larder_coord::Lease`) beside the raw compare-and-swap doing the same write on
//! the same backend, and the latency of claiming a period (`Scheduler::claim`).
//!
//! Backends: the `larder_kv` table (`larder-backend-sql`) of a fresh PostgreSQL schema
//! (`larder_tests::db::pg_kv()`), of a fresh SQLite file (`sqlite_kv`),
//! and a redis-server started by the bench (`ServerProcess::redis`). Groups, per `<db>`:
//!
//! * `coord_lease/<db>/larder_try_acquire`: `Lease::try_acquire` of a lease just released
//!   (the release is untimed): one versioned read and one CAS write of the encoded record.
//! * `coord_lease/<db>/raw_read_then_cas`: the same work by hand: the raw read of a record
//!   of the same size, then the raw CAS. SQL: `SELECT value, version FROM larder_kv WHERE
//!   key = $1`, then `UPDATE larder_kv SET value = $1, version = $2 WHERE key = $3 AND
//!   version = $4` through sqlx on the store's pool; Redis: `GET`, then `EVALSHA` of the
//!   backend's compare-version-then-`SET` script.
//! * `coord_lease/<db>/larder_renew`: `Lease::renew` (one CAS write, chained).
//! * `coord_lease/<db>/raw_cas`: the raw CAS statement or script alone, chained.
//! * `coord_claim/<db>/larder_scheduler_claim`: `Scheduler::claim` of a task on
//!   `Schedule::Every(60 s)` with a `ManualClock` advanced by one period before each call,
//!   so every call claims a fresh period (versioned read + CAS write).
//!
//! After the criterion groups, `ratio coord ...` lines (stderr) give the same pairs measured
//! alternately (larder and raw every 50 operations for 20 rounds, median per-op time of
//! each): acquire / raw read+CAS, renew / raw CAS, claim / raw read+CAS.
//!
//! Then `load coord ...` lines: the store operations (counted, not timed) per task and period
//! of N = 10, 100 and 1,000 schedulers with 10 tasks each on the memory backend, simulated on
//! one `ManualClock` (`larder_tests::coord_sim`, as in `tests/coord_scale.rs`): spawned
//! (each task sleeps until it is due) beside the poll-driven loop of earlier versions
//! (`tick` by every scheduler at every poll: 10 and 2 polls per period, i.e. a 1 s period
//! with a poll of 100 ms and of the default 500 ms). `LARDER_COORD_BENCH=load` runs only
//! this part.
//! Last, the cost of the `larder_kv_notify` trigger (migration `kv_notify`, the near cache's
//! invalidation channel on PostgreSQL) on a write, in a fresh schema where nobody listens:
//! the backend's overwrite upsert on `larder_kv` (trigger fires) against the same statement
//! on `larder_kv_plain` (`LIKE larder_kv INCLUDING ALL`, no trigger), same pool and runtime.
//! `ratio coord postgres kv put trigger/none` is one writer alternated per op, and
//! `throughput coord postgres kv put trigger/none` 8 concurrent writers in 5 alternated
//! rounds of 1 s (`harness::throughput_rounds`); in both lines "larder" is the table with the
//! trigger and "raw" the one without.
//! `LARDER_COORD_BENCH=kv_notify` runs only this part.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::Criterion;
use larder_backend_redis::RedisBackend;
use larder_benches::harness::{self, alternate, report};
use larder_benches::raw_redis::{raw_connection, script_load, UPDATE};
use larder_cache_api::{Bytes, DynBackend, Key, PutMode};
use larder_coord::{
    Durability, Held, HolderId, Lease, LeaseConfig, ManualClock, Schedule, Scheduler,
    SchedulerConfig, TaskSpec,
};
use larder_tests::server::ServerProcess;
use redis::aio::MultiplexedConnection;
use redis::Value;
use tokio::runtime::Runtime;

const PERIOD_MS: i64 = 60_000;

/// The raw anchor on one backend.
enum Raw {
    Redis {
        conn: MultiplexedConnection,
        sha: String,
    },
    Pg(sqlx::PgPool),
    Lite(sqlx::SqlitePool),
}

impl Raw {
    /// The raw read of a record: value and version.
    async fn read(&self, key: &Key) -> (Vec<u8>, u64) {
        const Q: &str = "SELECT value, version FROM larder_kv WHERE key = $1";
        match self {
            Raw::Redis { conn, .. } => {
                let mut c = conn.clone();
                match redis::cmd("GET")
                    .arg(key.as_bytes())
                    .query_async::<Value>(&mut c)
                    .await
                    .expect("GET")
                {
                    Value::BulkString(mut b) => {
                        let v = b.split_off(8);
                        let ver = u64::from_be_bytes(b[..8].try_into().expect("8 bytes"));
                        (v, ver)
                    }
                    other => panic!("GET: {other:?}"),
                }
            }
            Raw::Pg(p) => {
                let (v, ver): (Vec<u8>, i64) = sqlx::query_as(Q)
                    .bind(key.as_str())
                    .fetch_one(p)
                    .await
                    .expect("select");
                (v, ver as u64)
            }
            Raw::Lite(p) => {
                let (v, ver): (Vec<u8>, i64) = sqlx::query_as(Q)
                    .bind(key.as_str())
                    .fetch_one(p)
                    .await
                    .expect("select");
                (v, ver as u64)
            }
        }
    }

    /// The raw CAS from `expected` to `next`; panics if it loses.
    async fn cas(&self, key: &Key, value: &[u8], expected: u64, next: u64) {
        const Q: &str =
            "UPDATE larder_kv SET value = $1, version = $2 WHERE key = $3 AND version = $4";
        match self {
            Raw::Redis { conn, sha } => {
                let mut stored = Vec::with_capacity(8 + value.len());
                stored.extend_from_slice(&next.to_be_bytes());
                stored.extend_from_slice(value);
                let mut c = conn.clone();
                let r: Value = redis::cmd("EVALSHA")
                    .arg(sha)
                    .arg(1)
                    .arg(key.as_bytes())
                    .arg(&expected.to_be_bytes()[..])
                    .arg(stored)
                    .arg(0)
                    .query_async(&mut c)
                    .await
                    .expect("EVALSHA");
                assert_eq!(r, Value::Int(1), "raw CAS lost");
            }
            Raw::Pg(p) => {
                let n = sqlx::query(Q)
                    .bind(value)
                    .bind(next as i64)
                    .bind(key.as_str())
                    .bind(expected as i64)
                    .execute(p)
                    .await
                    .expect("update")
                    .rows_affected();
                assert_eq!(n, 1, "raw CAS lost");
            }
            Raw::Lite(p) => {
                let n = sqlx::query(Q)
                    .bind(value)
                    .bind(next as i64)
                    .bind(key.as_str())
                    .bind(expected as i64)
                    .execute(p)
                    .await
                    .expect("update")
                    .rows_affected();
                assert_eq!(n, 1, "raw CAS lost");
            }
        }
    }
}

/// One backend with its lease, scheduler and raw anchor.
struct Fixture {
    name: &'static str,
    lease: Lease,
    held: Mutex<Option<Held>>,
    scheduler: Scheduler,
    clock: Arc<ManualClock>,
    task: TaskSpec,
    raw: Raw,
    raw_key: Key,
    raw_value: Vec<u8>,
    raw_ver: AtomicU64,
    _guard: Box<dyn std::any::Any + Send + Sync>,
}

impl Fixture {
    async fn new(
        name: &'static str,
        backend: DynBackend,
        raw: Raw,
        guard: Box<dyn std::any::Any + Send + Sync>,
    ) -> Fixture {
        // The bench's redis-server keeps nothing (no append-only file), as in the runs in
        // RESULTS.md: the bench measures the cost of the CAS, not durability, so it accepts
        // the loss of records rather than change the server it compares against.
        let config = LeaseConfig::default().with_durability(Durability::AcceptLoss);
        let lease =
            Lease::new(backend.clone(), "bench", HolderId::named("bench"), config).expect("lease");
        let held = lease.try_acquire().await.expect("acquire").expect("free");
        // The raw record: the same bytes as the lease record, under a key of its own.
        let raw_value = backend
            .get(&Key::new("larder:lease:bench").expect("key"))
            .await
            .expect("get")
            .expect("lease record")
            .value
            .to_vec();
        let raw_key = Key::new("bench:raw").expect("key");
        let start = match &raw {
            Raw::Redis { conn, .. } => {
                let mut stored = 0u64.to_be_bytes().to_vec();
                stored.extend_from_slice(&raw_value);
                let mut c = conn.clone();
                let _: Value = redis::cmd("SET")
                    .arg(raw_key.as_bytes())
                    .arg(stored)
                    .query_async(&mut c)
                    .await
                    .expect("seed raw");
                0
            }
            Raw::Pg(_) | Raw::Lite(_) => backend
                .put(
                    &raw_key,
                    Bytes::from(raw_value.clone()),
                    None,
                    PutMode::Overwrite,
                )
                .await
                .expect("seed raw")
                .into_raw(),
        };
        let clock = Arc::new(ManualClock::new(1_767_225_600_000));
        let scheduler = Scheduler::new(
            backend,
            HolderId::named("bench"),
            SchedulerConfig::default().lease(config),
        )
        .expect("scheduler")
        .with_clock(clock.clone());
        let task = TaskSpec::new(
            "bench",
            Schedule::Every(Duration::from_millis(PERIOD_MS as u64)),
            |_| async { Ok(()) },
        )
        .allow_overlap(true);
        Fixture {
            name,
            lease,
            held: Mutex::new(Some(held)),
            scheduler,
            clock,
            task,
            raw,
            raw_key,
            raw_value,
            raw_ver: AtomicU64::new(start),
            _guard: guard,
        }
    }

    /// One acquisition of the lease after an (untimed) release; returns the time it took.
    async fn acquire_once(&self) -> Duration {
        let h = self.held.lock().expect("lock").take().expect("held");
        self.lease.release(h).await.expect("release");
        let t = Instant::now();
        let h = self
            .lease
            .try_acquire()
            .await
            .expect("acquire")
            .expect("released lease is free");
        let took = t.elapsed();
        *self.held.lock().expect("lock") = Some(h);
        took
    }

    async fn renew_once(&self) {
        let mut h = self.held.lock().expect("lock").take().expect("held");
        self.lease.renew(&mut h).await.expect("renew");
        *self.held.lock().expect("lock") = Some(h);
    }

    async fn claim_once(&self) {
        self.clock.advance(PERIOD_MS);
        let c = self.scheduler.claim(&self.task).await.expect("claim");
        assert!(c.is_some(), "a fresh period is claimed");
    }

    async fn raw_cas_once(&self) {
        let cur = self.raw_ver.load(Ordering::Relaxed);
        let next = cur + 1;
        self.raw
            .cas(&self.raw_key, &self.raw_value, cur, next)
            .await;
        self.raw_ver.store(next, Ordering::Relaxed);
    }

    async fn raw_read_then_cas_once(&self) {
        let (v, cur) = self.raw.read(&self.raw_key).await;
        black_box(&v);
        let next = cur + 1;
        self.raw
            .cas(&self.raw_key, &self.raw_value, cur, next)
            .await;
        self.raw_ver.store(next, Ordering::Relaxed);
    }
}

async fn redis_fixture(server: &ServerProcess) -> Fixture {
    let port = server.port();
    let mut conn = raw_connection(port).await;
    let sha = script_load(&mut conn, UPDATE).await;
    let backend: DynBackend = Arc::new(
        RedisBackend::connect(&format!("redis://127.0.0.1:{port}"))
            .await
            .expect("backend"),
    );
    Fixture::new("redis", backend, Raw::Redis { conn, sha }, Box::new(())).await
}

fn bench(c: &mut Criterion, rt: &Runtime, f: &Fixture) {
    let mut g = c.benchmark_group(format!("coord_lease/{}", f.name));
    g.bench_function("larder_try_acquire", |b| {
        b.to_async(rt).iter_custom(|iters| async move {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                total += f.acquire_once().await;
            }
            total
        })
    });
    g.bench_function("raw_read_then_cas", |b| {
        b.to_async(rt).iter(|| f.raw_read_then_cas_once())
    });
    g.bench_function("larder_renew", |b| b.to_async(rt).iter(|| f.renew_once()));
    g.bench_function("raw_cas", |b| b.to_async(rt).iter(|| f.raw_cas_once()));
    g.finish();

    let mut g = c.benchmark_group(format!("coord_claim/{}", f.name));
    g.bench_function("larder_scheduler_claim", |b| {
        b.to_async(rt).iter(|| f.claim_once())
    });
    g.finish();
}

const ROUNDS: usize = 20;
const PER_ROUND: usize = 50;

fn ratios(rt: &Runtime, f: &Fixture) {
    rt.block_on(async {
        // `acquire_once` times itself (the release is not counted), so alternate by hand.
        let (mut l, mut r) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let mut took = Duration::ZERO;
            for _ in 0..PER_ROUND {
                took += f.acquire_once().await;
            }
            l.push(took.as_secs_f64() * 1e6 / PER_ROUND as f64);
            let t = Instant::now();
            for _ in 0..PER_ROUND {
                f.raw_read_then_cas_once().await;
            }
            r.push(t.elapsed().as_secs_f64() * 1e6 / PER_ROUND as f64);
        }
        l.sort_by(f64::total_cmp);
        r.sort_by(f64::total_cmp);
        report(
            "coord",
            &format!("{} acquire/read+cas", f.name),
            (l[l.len() / 2], r[r.len() / 2]),
        );
        let renew = alternate(ROUNDS, PER_ROUND, |_| f.renew_once(), |_| f.raw_cas_once()).await;
        report("coord", &format!("{} renew/cas", f.name), renew);
        let claim = alternate(
            ROUNDS,
            PER_ROUND,
            |_| f.claim_once(),
            |_| f.raw_read_then_cas_once(),
        )
        .await;
        report("coord", &format!("{} claim/read+cas", f.name), claim);
    });
}

/// Store operations per task and period, spawned schedulers beside the poll-driven loop.
fn store_load(rt: &Runtime) {
    use larder_tests::coord_sim::{simulate, Drive};
    const TASKS: usize = 10;
    const PERIODS: i64 = 6;
    for n in [10, 100, 1_000] {
        let run = |drive| {
            let memory: DynBackend = Arc::new(larder_backend_memory::MemoryBackend::default());
            let o = rt.block_on(simulate(memory, n, TASKS, PERIODS, drive));
            assert!(o.duplicates().is_empty() && o.missing().is_empty(), "{o:?}");
            eprintln!("{}", o.summary(&format!("load coord {drive:?}")));
            o
        };
        let spawned = run(Drive::Spawned);
        let polled10 = run(Drive::Polled { polls: 10 });
        let polled2 = run(Drive::Polled { polls: 2 });
        let per = |o: &larder_tests::coord_sim::Outcome| o.steady_per_task_period();
        eprintln!(
            "load coord N={n}: operations per task and period after the first: spawned {:.1} \
             ({:.3} per scheduler), polled 10/period {:.1}, polled 2/period {:.1}; ratio \
             polled/spawned {:.2} and {:.2}",
            per(&spawned),
            per(&spawned) / n as f64,
            per(&polled10),
            per(&polled2),
            per(&polled10) / per(&spawned),
            per(&polled2) / per(&spawned),
        );
    }
}

/// The `larder_kv` upsert of `PutMode::Overwrite` (`backend-sql/src/core.rs`) without a TTL,
/// on table `{table}`.
fn kv_upsert(table: &str) -> String {
    format!(
        "INSERT INTO {table} (key, value, version, expires_at) \
         VALUES ($1, $2, nextval('larder_kv_version'), NULL) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value, \
         version = excluded.version, expires_at = excluded.expires_at RETURNING version"
    )
}

/// Keys the notify-cost runs write (each writer task its own share of them).
const NOTIFY_KEYS: usize = 256;

/// Writer tasks of the concurrent notify-cost run.
const NOTIFY_WRITERS: usize = 8;

/// The cost of the `larder_kv_notify` trigger (migration `kv_notify`: `pg_notify` for every
/// written row) on a write: the backend's overwrite upsert on `larder_kv` against the same
/// statement on `larder_kv_plain`, a copy of the table without the trigger, in one fresh
/// schema on one pool. Nobody listens. One writer alternated per op (`ratio`), then
/// [`NOTIFY_WRITERS`] concurrent writers in rounds of 1 s, alternated (`throughput`).
fn kv_notify_cost() {
    let mrt = harness::multi_thread();
    let (pool, _kv) = mrt.block_on(async {
        let (kv, _schema) = larder_tests::db::pg_kv().await;
        let pool = kv.pool().clone();
        sqlx::raw_sql("CREATE TABLE larder_kv_plain (LIKE larder_kv INCLUDING ALL)")
            .execute(&pool)
            .await
            .expect("plain table");
        // The trigger a near cache's first `PgNotify` installs (none until one listens).
        sqlx::raw_sql(
            "CREATE TRIGGER larder_kv_notify AFTER INSERT OR UPDATE OR DELETE ON larder_kv \
             FOR EACH ROW EXECUTE FUNCTION larder_kv_notify()",
        )
        .execute(&pool)
        .await
        .expect("notify trigger");
        (pool, kv)
    });
    let keys: Arc<Vec<String>> = Arc::new(
        (0..NOTIFY_KEYS)
            .map(|i| format!("session:user:{i:08}:state"))
            .collect(),
    );
    let value: Arc<Vec<u8>> = Arc::new(vec![7u8; 300]);
    let put = |table: &'static str| {
        let (pool, keys, value) = (pool.clone(), keys.clone(), value.clone());
        let q: Arc<str> = kv_upsert(table).into();
        move |i: usize| {
            let (pool, keys, value, q) = (pool.clone(), keys.clone(), value.clone(), q.clone());
            async move {
                let v: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(q))
                    .bind(&keys[i % keys.len()])
                    .bind(&value[..])
                    .fetch_one(&pool)
                    .await
                    .expect("upsert");
                black_box(v);
            }
        }
    };
    let (notify, plain) = (put("larder_kv"), put("larder_kv_plain"));
    mrt.block_on(async {
        for i in 0..NOTIFY_KEYS {
            notify(i).await;
            plain(i).await;
        }
        let one = alternate(ROUNDS, PER_ROUND, &notify, &plain).await;
        report("coord", "postgres kv put trigger/none", one);
    });
    harness::throughput_rounds(
        "coord",
        "postgres kv put trigger/none",
        &mrt,
        NOTIFY_WRITERS,
        Duration::from_secs(1),
        5,
        notify,
        plain,
    );
}

fn main() {
    if std::env::var("LARDER_COORD_BENCH").is_ok_and(|v| v == "kv_notify") {
        kv_notify_cost();
        return;
    }
    let rt = harness::current_thread();
    if std::env::var("LARDER_COORD_BENCH").is_ok_and(|v| v == "load") {
        store_load(&rt);
        return;
    }
    let server = ServerProcess::redis();
    let fixtures = rt.block_on(async {
        let (pg, schema) = larder_tests::db::pg_kv().await;
        let pg_raw = Raw::Pg(pg.pool().clone());
        let pg_fx = Fixture::new("postgres", Arc::new(pg), pg_raw, Box::new(schema)).await;
        let (lite, dir) = larder_tests::db::sqlite_kv().await;
        let lite_raw = Raw::Lite(lite.pool().clone());
        let lite_fx = Fixture::new("sqlite", Arc::new(lite), lite_raw, Box::new(dir)).await;
        vec![pg_fx, lite_fx, redis_fixture(&server).await]
    });
    let mut c = Criterion::default().sample_size(30).configure_from_args();
    for f in &fixtures {
        bench(&mut c, &rt, f);
    }
    c.final_summary();
    // `--test`/`--list` runs skip the extra measurements.
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    for f in &fixtures {
        ratios(&rt, f);
    }
    drop(server);
    store_load(&rt);
    kv_notify_cost();
}
