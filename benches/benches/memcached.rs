//! memcached backend against the raw async meta client (`memcache::exp::AsyncMetaClient`,
//! the client the backend is built on) doing the same work in the same run, on one
//! memcached started by the bench on a free port (`larder_tests::server::ServerProcess`,
//! 256 MiB so that the 64 KiB values are never evicted).
//!
//! Criterion groups (`<size>` is 128B, 4KiB or 64KiB; keys are 28 bytes):
//!
//! * `memcached_get/<size>`: `larder_dyn` is `Arc<dyn CacheBackend>::get` (value + version
//!   as an `Entry`); `raw_exp` is the meta client's `mg <key> v c` with the value turned
//!   into `Bytes`. `memcached_get/128B/tcp_echo_floor` is a 64-byte write + read on a plain
//!   tokio TCP connection to an echo server in this process: the loopback floor.
//! * `memcached_put/<size>`: overwrite through the trait (returns the new version) against
//!   `ms <key> c` (returns the new CAS).
//! * `memcached_cas/128B`: `put(.., PutMode::Update(v))` chained on one key against a raw
//!   `ms` with `C<cas>` (compare) and `c` (return the new CAS), also chained.
//! * `memcached_get_many/100x128B`: `get_many` of 100 keys against the client's pipelined
//!   `run_many` of 100 `mg`.
//!
//! Latency benches run on a current-thread runtime (`to_async`). After the criterion groups
//! come the alternated `ratio memcached ...` lines (larder and raw every 200 operations for
//! 40 rounds, median per-op time of each; the figures `RESULTS.md` reports) and the
//! `throughput memcached ...` line (64 tasks looping `get` of 128 B values for 2 s on a
//! 2-worker runtime, fresh clients, L R L R, best run of each kept), on stderr.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::Criterion;
use larder_backend_memcached::MemcachedBackend;
use larder_benches::harness::{self, alternate, report};
use larder_benches::{keys, value, BACKEND_SIZES, MANY, TASKS};
use larder_cache_api::{DynBackend, Key, PutMode, Version};
use larder_tests::server::ServerProcess;
use memcache::exp::{AsyncMetaClient, Get, Meta, Set};
use tokio::runtime::Runtime;

const KEYS: usize = 1000;

#[derive(Clone)]
struct Clients {
    backend: DynBackend,
    exp: AsyncMetaClient,
}

/// Both clients, connected from inside the runtime that will drive them.
async fn connect(addr: &str) -> Clients {
    Clients {
        backend: Arc::new(
            MemcachedBackend::connect(&format!("memcache://{addr}"))
                .await
                .expect("backend"),
        ),
        exp: AsyncMetaClient::builder()
            .io_timeout(Some(Duration::from_secs(1)))
            .max_idle(16)
            .connect_async(addr.to_owned())
            .await
            .expect("exp client"),
    }
}

fn get_op(k: &Key) -> Get {
    Get::new(k.as_bytes()).meta(Meta::NONE.cas())
}

async fn raw_get(exp: &AsyncMetaClient, k: &Key) -> (Bytes, Option<u64>) {
    let r = exp.run(get_op(k)).await.expect("get");
    (Bytes::from(r.value.expect("hit")), r.item.cas)
}

async fn raw_set(exp: &AsyncMetaClient, k: &Key, v: &[u8]) -> Option<u64> {
    exp.run(Set::new(k.as_bytes(), v).return_cas())
        .await
        .expect("set")
        .cas
}

async fn raw_get_many(exp: &AsyncMetaClient, batch: &[Key]) -> Vec<(Option<Bytes>, Option<u64>)> {
    let rs = exp
        .run_many(batch.iter().map(get_op).collect::<Vec<_>>())
        .await
        .expect("run_many");
    rs.into_iter()
        .map(|r| {
            let r = r.expect("get");
            (r.value.map(Bytes::from), r.item.cas)
        })
        .collect()
}

/// One raw CAS step: `ms <key> C<cur> c`, keeping the returned CAS.
async fn raw_cas(cl: &Clients, k: &Key, v: &[u8], cur: &AtomicU64) {
    let op = Set::new(k.as_bytes(), v)
        .compare_cas(cur.load(Ordering::Relaxed))
        .return_cas();
    let r = cl.exp.run(op).await.expect("cas");
    cur.store(r.cas.expect("new cas"), Ordering::Relaxed);
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
    let mut g = c.benchmark_group(format!("memcached_get/{label}"));
    let mut i = 0usize;
    g.bench_function("larder_dyn", |b| {
        b.to_async(rt).iter(|| {
            i = (i + 1) % keys.len();
            let (k, backend) = (&keys[i], &cl.backend);
            async move { black_box(backend.get(k).await.expect("get").expect("hit")) }
        })
    });
    g.bench_function("raw_exp", |b| {
        b.to_async(rt).iter(|| {
            i = (i + 1) % keys.len();
            let (k, exp) = (&keys[i], &cl.exp);
            async move { black_box(raw_get(exp, k).await) }
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
    let mut g = c.benchmark_group(format!("memcached_put/{label}"));
    g.bench_function("larder_dyn", |b| {
        b.to_async(rt).iter(|| {
            i = (i + 1) % keys.len();
            let (k, v, backend) = (&keys[i], v.clone(), &cl.backend);
            async move {
                black_box(
                    backend
                        .put(k, v, None, PutMode::Overwrite)
                        .await
                        .expect("put"),
                )
            }
        })
    });
    g.bench_function("raw_exp", |b| {
        b.to_async(rt).iter(|| {
            i = (i + 1) % keys.len();
            let (k, v, exp) = (&keys[i], &v, &cl.exp);
            async move { black_box(raw_set(exp, k, v).await) }
        })
    });
    g.finish();
}

/// The keys and current versions of the CAS chains (larder's and the raw one).
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
        let raw_cas = raw_set(&cl.exp, &raw_key, &value).await.expect("cas");
        CasState {
            larder_key,
            larder_ver: AtomicU64::new(v.into_raw()),
            raw_key,
            raw_ver: AtomicU64::new(raw_cas),
            value,
        }
    })
}

fn bench_cas(c: &mut Criterion, rt: &Runtime, cl: &Clients, st: &CasState) {
    let mut g = c.benchmark_group("memcached_cas/128B");
    g.bench_function("larder_dyn_update", |b| {
        b.to_async(rt)
            .iter(|| larder_cas(cl, &st.larder_key, &st.value, &st.larder_ver))
    });
    g.bench_function("raw_ms_compare_cas", |b| {
        b.to_async(rt)
            .iter(|| raw_cas(cl, &st.raw_key, &st.value, &st.raw_ver))
    });
    g.finish();
}

fn bench_get_many(c: &mut Criterion, rt: &Runtime, cl: &Clients, batches: &[Vec<Key>]) {
    let mut g = c.benchmark_group(format!("memcached_get_many/{MANY}x128B"));
    let mut i = 0usize;
    g.bench_function("larder_dyn", |b| {
        b.to_async(rt).iter(|| {
            i = (i + 1) % batches.len();
            let (batch, backend) = (&batches[i], &cl.backend);
            async move { black_box(backend.get_many(batch).await.expect("get_many")) }
        })
    });
    g.bench_function("raw_exp_run_many", |b| {
        b.to_async(rt).iter(|| {
            i = (i + 1) % batches.len();
            let (batch, exp) = (&batches[i], &cl.exp);
            async move { black_box(raw_get_many(exp, batch).await) }
        })
    });
    g.finish();
}

const ROUNDS: usize = 40;
const PER_ROUND: usize = 200;

/// The ratios larder / raw client, measured alternately, printed to stderr.
fn ratios(rt: &Runtime, cl: &Clients, keys: &[Key], st: &CasState, echo: &Echo) {
    let n = keys.len();
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
                    black_box(raw_get(&cl.exp, &keys[i % n]).await);
                },
            )
            .await;
            report("memcached", &format!("get {label}"), got);
            if size == 128 {
                // Raw get against the echo floor: what the server and client add to a bare
                // loopback round trip.
                let floor = alternate(
                    ROUNDS,
                    PER_ROUND,
                    |i| async move {
                        black_box(raw_get(&cl.exp, &keys[i % n]).await);
                    },
                    |_| async {
                        let mut conn = echo.conn.lock().await;
                        let mut buf = [0u8; 64];
                        harness::echo_round_trip(&mut conn, &echo.msg, &mut buf).await;
                    },
                )
                .await;
                eprintln!(
                    "floor memcached get 128B  raw get {:>7.2} µs  tcp echo {:>7.2} µs  raw/echo {:.3}",
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
                            .put(&keys[i % n], v.clone(), None, PutMode::Overwrite)
                            .await
                            .expect("put"),
                    );
                },
                |i| async move {
                    black_box(raw_set(&cl.exp, &keys[i % n], v).await);
                },
            )
            .await;
            report("memcached", &format!("put {label}"), put);
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
        report("memcached", "cas 128B", cas);
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
                black_box(raw_get_many(&cl.exp, &batches[i % m]).await);
            },
        )
        .await;
        report("memcached", &format!("get_many {MANY}x128B"), many);
    });
}

/// 64 tasks looping `get` of 128 B values for 2 s, larder against raw.
fn concurrent(addr: &str, keys: &[Key]) {
    let mrt = harness::multi_thread();
    let cl = mrt.block_on(connect(addr));
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
    let (exp, k) = (cl.exp.clone(), keys);
    let raw = move |i: usize| {
        let (exp, k) = (exp.clone(), k.clone());
        async move {
            black_box(raw_get(&exp, &k[i % n]).await);
        }
    };
    harness::throughput_pair(
        "memcached",
        "get 128B",
        &mrt,
        TASKS,
        Duration::from_secs(2),
        larder,
        raw,
    );
}

fn main() {
    let server = ServerProcess::memcached_with(&["-m", "256"]);
    let addr = server.addr();
    let rt = harness::current_thread();
    let clients = rt.block_on(connect(&addr));
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
    // `--test`/`--list` runs skip the extra measurements.
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    ratios(&rt, &clients, &keys, &st, &echo);
    concurrent(&addr, &keys);
    eprintln!(
        "memcached bench done in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    drop(server);
}
