//! Redis backend against the raw `redis` client doing the same work in the same run, on one
//! redis-server started by the bench on a free port (`larder_tests::server::ServerProcess`,
//! no persistence; never the system Redis).
//!
//! Criterion groups (`<size>` is 128B, 4KiB or 64KiB; keys are 28 bytes):
//!
//! * `redis_get/<size>`: `larder_dyn` is `Arc<dyn CacheBackend>::get` (value and version as
//!   an `Entry`); `raw_get` is the raw client's `GET` of the same stored bytes on a
//!   `MultiplexedConnection`, turned into `Bytes`. `redis_get/128B/tcp_echo_floor` is a
//!   64-byte write + read on a plain tokio TCP connection to an echo server in this process
//!   (its own thread and runtime): the loopback round-trip floor.
//! * `redis_put/<size>`: overwrite with a 60 s TTL through the trait (returns the new
//!   version) against the raw `SET key value PX 60000`.
//! * `redis_cas/128B`: `put(.., PutMode::Update(v))` chained on one key against a raw
//!   `EVALSHA` of the same compare-version-then-`SET` script, also chained.
//! * `redis_get_many/100x128B`: `get_many` of 100 keys against a raw `MGET` of 100.
//!
//! Both sides use `TCP_NODELAY` and a current-thread runtime. After the criterion groups:
//!
//! * `ratio redis ...` lines (stderr): the same operations measured again alternately,
//!   larder and raw every 200 operations for 40 rounds (median per-op time of each),
//!   because on a shared VM drift between two sequential criterion benches is larger than
//!   the difference being measured. These are the ratios `RESULTS.md` reports.
//! * `throughput redis ...` (stderr): 64 tasks on a 2-worker runtime, each looping `get` of
//!   a 128 B value, larder and raw (fresh clients on that runtime), in 20 alternated rounds
//!   of 0.5 s per side (`harness::throughput_rounds`): the median ops/s of each and the
//!   median of the per-round ratios. Then the raw get inside `tokio::time::timeout` against
//!   the raw get alone (10 rounds): the cost of one more timer per command.
//!
//! A filter no Criterion id matches (`-- throughput`) skips the Criterion groups and runs
//! only the `ratio` and `throughput` measurements.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::Criterion;
use larder_backend_redis::RedisBackend;
use larder_benches::harness::{self, alternate, report};
use larder_benches::raw_redis::{raw_connection, raw_get, raw_mget, raw_set, script_load, UPDATE};
use larder_benches::{keys, value, BACKEND_SIZES, MANY, TASKS};
use larder_cache_api::{DynBackend, Key, PutMode, Ttl, Version};
use larder_tests::server::ServerProcess;
use redis::aio::MultiplexedConnection;
use redis::Value;
use tokio::runtime::Runtime;

const KEYS: usize = 1000;

#[derive(Clone)]
struct Clients {
    backend: DynBackend,
    raw: MultiplexedConnection,
    update_sha: String,
}

/// Both clients, connected from inside the runtime that will drive them.
async fn connect(port: u16) -> Clients {
    let mut raw = raw_connection(port).await;
    let update_sha = script_load(&mut raw, UPDATE).await;
    Clients {
        backend: Arc::new(
            RedisBackend::connect(&format!("redis://127.0.0.1:{port}"))
                .await
                .expect("backend"),
        ),
        raw,
        update_sha,
    }
}

/// One raw CAS step: `EVALSHA` of [`UPDATE`] from version `cur` to `cur + 1`.
async fn raw_cas(cl: &Clients, k: &Key, v: &[u8], cur: &AtomicU64) {
    let now = cur.load(Ordering::Relaxed);
    let next = now.wrapping_add(1);
    let mut stored = Vec::with_capacity(8 + v.len());
    stored.extend_from_slice(&next.to_be_bytes());
    stored.extend_from_slice(v);
    let mut c = cl.raw.clone();
    let r: Value = redis::cmd("EVALSHA")
        .arg(&cl.update_sha)
        .arg(1)
        .arg(k.as_bytes())
        .arg(&now.to_be_bytes()[..])
        .arg(stored)
        .arg(0)
        .query_async(&mut c)
        .await
        .expect("EVALSHA");
    assert_eq!(r, Value::Int(1));
    cur.store(next, Ordering::Relaxed);
}

async fn larder_cas(cl: &Clients, k: &Key, v: &Bytes, cur: &AtomicU64) {
    let next = cl
        .backend
        .put(
            k,
            v.clone(),
            None,
            PutMode::Update(Version::from_raw(cur.load(Ordering::Relaxed))),
        )
        .await
        .expect("cas");
    cur.store(next.into_raw(), Ordering::Relaxed);
}

fn fill(rt: &Runtime, cl: &Clients, keys: &[Key], size: usize) {
    rt.block_on(async {
        let items: Vec<(Key, Bytes)> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.clone(), value(size, i)))
            .collect();
        for chunk in items.chunks(100) {
            cl.backend.put_many(chunk, None).await.expect("fill");
        }
    });
}

/// The echo floor: a connection to the in-process echo server and a 64-byte request.
struct Echo {
    conn: tokio::sync::Mutex<tokio::net::TcpStream>,
    msg: Vec<u8>,
}

fn bench_size(
    c: &mut Criterion,
    rt: &Runtime,
    cl: &Clients,
    keys: &[Key],
    (size, label): (usize, &str),
    echo: &Echo,
) {
    fill(rt, cl, keys, size);
    let ttl = Some(Ttl::from_secs(60).expect("ttl"));
    let mut g = c.benchmark_group(format!("redis_get/{label}"));
    let mut i = 0usize;
    g.bench_function("larder_dyn", |b| {
        b.to_async(rt).iter(|| {
            i = (i + 1) % keys.len();
            let (k, backend) = (&keys[i], &cl.backend);
            async move { black_box(backend.get(k).await.expect("get").expect("hit")) }
        })
    });
    g.bench_function("raw_get", |b| {
        b.to_async(rt).iter(|| {
            i = (i + 1) % keys.len();
            let (k, raw) = (&keys[i], &cl.raw);
            async move { black_box(raw_get(raw, k).await) }
        })
    });
    if size == 128 {
        g.bench_function("tcp_echo_floor", |b| {
            b.to_async(rt)
                .iter_custom(|iters| harness::echo_iters(&echo.conn, &echo.msg, iters))
        });
    }
    g.finish();

    let v = value(size, 7);
    let mut g = c.benchmark_group(format!("redis_put/{label}"));
    g.bench_function("larder_dyn", |b| {
        b.to_async(rt).iter(|| {
            i = (i + 1) % keys.len();
            let (k, v, backend) = (&keys[i], v.clone(), &cl.backend);
            async move {
                black_box(
                    backend
                        .put(k, v, ttl, PutMode::Overwrite)
                        .await
                        .expect("put"),
                )
            }
        })
    });
    g.bench_function("raw_set_px", |b| {
        b.to_async(rt).iter(|| {
            i = (i + 1) % keys.len();
            let (k, v, raw) = (&keys[i], &v, &cl.raw);
            async move { raw_set(raw, k, v).await }
        })
    });
    g.finish();
}

/// The keys and starting versions of the CAS chains (larder's and the raw one).
struct CasState {
    larder_key: Key,
    larder_ver: AtomicU64,
    raw_key: Key,
    raw_ver: AtomicU64,
    value: Bytes,
}

fn cas_state(rt: &Runtime, cl: &Clients) -> CasState {
    let value = value(128, 9);
    let larder_key = Key::new("bench:cas:larder").expect("key");
    let raw_key = Key::new("bench:cas:raw").expect("key");
    rt.block_on(async {
        let v = cl
            .backend
            .put(&larder_key, value.clone(), None, PutMode::Overwrite)
            .await
            .expect("seed");
        let mut stored = 0u64.to_be_bytes().to_vec();
        stored.extend_from_slice(&value);
        let mut c = cl.raw.clone();
        let _: Value = redis::cmd("SET")
            .arg(raw_key.as_bytes())
            .arg(stored)
            .query_async(&mut c)
            .await
            .expect("seed raw");
        CasState {
            larder_key,
            larder_ver: AtomicU64::new(v.into_raw()),
            raw_key,
            raw_ver: AtomicU64::new(0),
            value,
        }
    })
}

fn bench_cas(c: &mut Criterion, rt: &Runtime, cl: &Clients, st: &CasState) {
    let mut g = c.benchmark_group("redis_cas/128B");
    g.bench_function("larder_dyn_update", |b| {
        b.to_async(rt)
            .iter(|| larder_cas(cl, &st.larder_key, &st.value, &st.larder_ver))
    });
    g.bench_function("raw_evalsha", |b| {
        b.to_async(rt)
            .iter(|| raw_cas(cl, &st.raw_key, &st.value, &st.raw_ver))
    });
    g.finish();
}

fn bench_get_many(c: &mut Criterion, rt: &Runtime, cl: &Clients, batches: &[Vec<Key>]) {
    let mut g = c.benchmark_group(format!("redis_get_many/{MANY}x128B"));
    let mut i = 0usize;
    g.bench_function("larder_dyn", |b| {
        b.to_async(rt).iter(|| {
            i = (i + 1) % batches.len();
            let (batch, backend) = (&batches[i], &cl.backend);
            async move { black_box(backend.get_many(batch).await.expect("get_many")) }
        })
    });
    g.bench_function("raw_mget", |b| {
        b.to_async(rt).iter(|| {
            i = (i + 1) % batches.len();
            let (batch, raw) = (&batches[i], &cl.raw);
            async move { black_box(raw_mget(raw, batch).await) }
        })
    });
    g.finish();
}

const ROUNDS: usize = 40;
const PER_ROUND: usize = 200;

/// The ratios larder / raw client, measured alternately, printed to stderr.
fn ratios(rt: &Runtime, cl: &Clients, keys: &[Key], st: &CasState, echo: &Echo) {
    let n = keys.len();
    let ttl = Some(Ttl::from_secs(60).expect("ttl"));
    for (size, label) in BACKEND_SIZES {
        fill(rt, cl, keys, size);
        rt.block_on(async {
            let got = alternate(
                ROUNDS,
                PER_ROUND,
                |i| async move {
                    black_box(cl.backend.get(&keys[i % n]).await.expect("get"));
                },
                |i| async move {
                    black_box(raw_get(&cl.raw, &keys[i % n]).await);
                },
            )
            .await;
            report("redis", &format!("get {label}"), got);
            if size == 128 {
                // Raw GET against the echo floor: what the server and client add to a bare
                // loopback round trip.
                let floor = alternate(
                    ROUNDS,
                    PER_ROUND,
                    |i| async move {
                        black_box(raw_get(&cl.raw, &keys[i % n]).await);
                    },
                    |_| async {
                        let mut conn = echo.conn.lock().await;
                        let mut buf = [0u8; 64];
                        harness::echo_round_trip(&mut conn, &echo.msg, &mut buf).await;
                    },
                )
                .await;
                eprintln!(
                    "floor redis get 128B      raw get {:>7.2} µs  tcp echo {:>7.2} µs  raw/echo {:.3}",
                    floor.0,
                    floor.1,
                    floor.0 / floor.1
                );
            }
            let v = value(size, 3);
            let v = &v;
            let put = alternate(
                ROUNDS,
                PER_ROUND,
                |i| async move {
                    black_box(
                        cl.backend
                            .put(&keys[i % n], v.clone(), ttl, PutMode::Overwrite)
                            .await
                            .expect("put"),
                    );
                },
                |i| async move {
                    raw_set(&cl.raw, &keys[i % n], v).await;
                },
            )
            .await;
            report("redis", &format!("put {label}"), put);
        });
    }
    rt.block_on(async {
        let cas = alternate(
            ROUNDS,
            PER_ROUND,
            |_| larder_cas(cl, &st.larder_key, &st.value, &st.larder_ver),
            |_| raw_cas(cl, &st.raw_key, &st.value, &st.raw_ver),
        )
        .await;
        report("redis", "cas 128B", cas);
    });
    fill(rt, cl, keys, 128);
    let batches: Vec<Vec<Key>> = keys.chunks(MANY).map(<[Key]>::to_vec).collect();
    let batches = &batches;
    let m = batches.len();
    rt.block_on(async {
        let many = alternate(
            ROUNDS / 2,
            PER_ROUND / 4,
            |i| async move {
                black_box(
                    cl.backend
                        .get_many(&batches[i % m])
                        .await
                        .expect("get_many"),
                );
            },
            |i| async move {
                black_box(raw_mget(&cl.raw, &batches[i % m]).await);
            },
        )
        .await;
        report("redis", &format!("get_many {MANY}x128B"), many);
    });
}

/// 64 tasks looping `get` of 128 B values for 2 s, larder against raw.
fn concurrent(port: u16, keys: &[Key]) {
    let mrt = harness::multi_thread();
    let cl = mrt.block_on(connect(port));
    fill(&mrt, &cl, keys, 128);
    let keys: Arc<Vec<Key>> = Arc::new(keys.to_vec());
    let n = keys.len();
    let (b, k) = (cl.backend.clone(), keys.clone());
    let larder = move |i: usize| {
        let (b, k) = (b.clone(), k.clone());
        async move {
            black_box(b.get(&k[i % n]).await.expect("get"));
        }
    };
    let (raw, k) = (cl.raw.clone(), keys);
    let raw = move |i: usize| {
        let (raw, k) = (raw.clone(), k.clone());
        async move {
            black_box(raw_get(&raw, &k[i % n]).await);
        }
    };
    let raw_timeout = {
        let raw = raw.clone();
        move |i: usize| {
            let fut = raw(i);
            async move {
                tokio::time::timeout(Duration::from_secs(5), fut)
                    .await
                    .expect("in time");
            }
        }
    };
    harness::throughput_rounds(
        "redis",
        "get 128B",
        &mrt,
        TASKS,
        Duration::from_millis(500),
        THROUGHPUT_ROUNDS,
        larder,
        raw.clone(),
    );
    // The raw get inside a `tokio::time::timeout` against the raw get alone: what one more
    // timer per command costs (the single-server backend sets none of its own, see
    // `backend-redis/src/core.rs`, `Core::run`).
    harness::throughput_rounds(
        "redis",
        "raw+timeout/raw get 128B",
        &mrt,
        TASKS,
        Duration::from_millis(500),
        THROUGHPUT_ROUNDS / 2,
        raw_timeout,
        raw,
    );
}

/// Alternated rounds of 0.5 s per side in the throughput comparison.
const THROUGHPUT_ROUNDS: usize = 20;

fn main() {
    let server = ServerProcess::redis();
    let rt = harness::current_thread();
    let clients = rt.block_on(connect(server.port()));
    let echo_addr = harness::echo_server();
    let echo = Echo {
        conn: tokio::sync::Mutex::new(rt.block_on(harness::echo_client(echo_addr))),
        msg: vec![b'x'; 64],
    };
    let keys = keys(KEYS);
    let started = Instant::now();
    let mut c = Criterion::default().configure_from_args();
    for size in BACKEND_SIZES {
        bench_size(&mut c, &rt, &clients, &keys, size, &echo);
    }
    let st = cas_state(&rt, &clients);
    bench_cas(&mut c, &rt, &clients, &st);
    fill(&rt, &clients, &keys, 128);
    let batches: Vec<Vec<Key>> = keys.chunks(MANY).map(<[Key]>::to_vec).collect();
    bench_get_many(&mut c, &rt, &clients, &batches);
    c.final_summary();
    // `cargo bench -- <filter>` and `--list`/`--test` runs skip the extra measurements.
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    ratios(&rt, &clients, &keys, &st, &echo);
    concurrent(server.port(), &keys);
    eprintln!(
        "redis bench done in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    drop(server);
}
