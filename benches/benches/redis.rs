//! Redis backend `get`, `put`, compare-and-swap and `get_many`, each beside the raw `redis`
//! client doing the same work in the same run, against one redis-server started by the
//! bench on a free port (no persistence).
//!
//! Groups (`<size>` is 200B or 4KiB, keys are 28 bytes):
//!
//! * `redis_get/<size>`: `larder_dyn` is `Arc<dyn CacheBackend>::get` (value and version as
//!   an `Entry`); `raw_get` is the raw client's `GET` of the same stored bytes on a
//!   `MultiplexedConnection`, turned into `Bytes`.
//! * `redis_put/<size>`: overwrite with a 60 s TTL through the trait (returns the new
//!   version) against the raw `SET key value PX 60000`.
//! * `redis_cas/200B`: `put(.., PutMode::Update(v))` chained on one key against a raw
//!   `EVALSHA` of the same compare-version-then-`SET` script, also chained.
//! * `redis_get_many/16x200B`: `get_many` of 16 keys against a raw `MGET` of 16.
//!
//! Both sides use `TCP_NODELAY` and a current-thread runtime. After the criterion groups,
//! `larder / raw` ratios are measured again by alternating the two every 200 operations for
//! 40 rounds (median per-op time of each), because on a shared VM drift between two
//! sequential criterion benches is larger than the difference being measured; those
//! `ratio ...` lines go to stderr.
//!
//! Recorded on the project's 2-core shared VM (loopback, redis 7.0.15, three runs of the
//! alternated ratios, larder / raw): get 200 B 0.99–1.08, get 4 KiB 1.06–1.12, put 200 B
//! 1.00–1.06, put 4 KiB 1.10–1.12, CAS 200 B 1.02–1.04, get_many 16 × 200 B 1.05–1.08;
//! about 12 µs per single-key operation on both sides.

use std::hint::black_box;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::Criterion;
use larder_backend_redis::RedisBackend;
use larder_benches::{keys, value};
use larder_cache_api::{DynBackend, Key, PutMode, Ttl, Version};
use redis::aio::MultiplexedConnection;
use redis::{IntoConnectionInfo, Value};
use tokio::runtime::Runtime;

const KEYS: usize = 1000;

/// The same compare-version-then-SET script the backend runs for `PutMode::Update`.
const UPDATE: &str = r"
local cur = redis.call('GET', KEYS[1])
if not cur then return 0 end
if string.sub(cur, 1, 8) ~= ARGV[1] then return cur end
if ARGV[3] == '0' then
  redis.call('SET', KEYS[1], ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return 1
";

/// A redis-server on a free port, killed on drop.
struct Server {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let dir = tempfile::tempdir().expect("temp dir");
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (apt-get install -y redis-server)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        Server {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Clients {
    backend: DynBackend,
    raw: MultiplexedConnection,
    update_sha: String,
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("current-thread runtime")
}

async fn raw_get(raw: &MultiplexedConnection, k: &Key) -> Bytes {
    let mut c = raw.clone();
    match redis::cmd("GET")
        .arg(k.as_bytes())
        .query_async::<Value>(&mut c)
        .await
        .expect("GET")
    {
        Value::BulkString(b) => Bytes::from(b),
        other => panic!("GET: {other:?}"),
    }
}

async fn raw_set(raw: &MultiplexedConnection, k: &Key, v: &[u8]) {
    let mut c = raw.clone();
    let r: Value = redis::cmd("SET")
        .arg(k.as_bytes())
        .arg(v)
        .arg("PX")
        .arg(60_000)
        .query_async(&mut c)
        .await
        .expect("SET");
    assert_eq!(r, Value::Okay);
}

async fn raw_mget(raw: &MultiplexedConnection, batch: &[Key]) -> Vec<Option<Bytes>> {
    let mut c = raw.clone();
    let mut cmd = redis::cmd("MGET");
    for k in batch {
        cmd.arg(k.as_bytes());
    }
    match cmd.query_async::<Value>(&mut c).await.expect("MGET") {
        Value::Array(items) => items
            .into_iter()
            .map(|v| match v {
                Value::BulkString(b) => Some(Bytes::from(b)),
                _ => None,
            })
            .collect(),
        other => panic!("MGET: {other:?}"),
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
        cl.backend.put_many(&items, None).await.expect("fill");
    });
}

fn bench_size(
    c: &mut Criterion,
    rt: &Runtime,
    cl: &Clients,
    keys: &[Key],
    size: usize,
    label: &str,
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
    let value = value(200, 9);
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
    let mut g = c.benchmark_group("redis_cas/200B");
    g.bench_function("larder_dyn", |b| {
        b.to_async(rt)
            .iter(|| larder_cas(cl, &st.larder_key, &st.value, &st.larder_ver))
    });
    g.bench_function("raw_evalsha", |b| {
        b.to_async(rt)
            .iter(|| raw_cas(cl, &st.raw_key, &st.value, &st.raw_ver))
    });
    g.finish();
}

fn bench_get_many(c: &mut Criterion, rt: &Runtime, cl: &Clients, keys: &[Key]) {
    let batches: Vec<Vec<Key>> = keys.chunks(16).map(<[Key]>::to_vec).collect();
    let mut g = c.benchmark_group("redis_get_many");
    let mut i = 0usize;
    g.bench_function("16x200B/larder_dyn", |b| {
        b.to_async(rt).iter(|| {
            i = (i + 1) % batches.len();
            let (batch, backend) = (&batches[i], &cl.backend);
            async move { black_box(backend.get_many(batch).await.expect("get_many")) }
        })
    });
    g.bench_function("16x200B/raw_mget", |b| {
        b.to_async(rt).iter(|| {
            i = (i + 1) % batches.len();
            let (batch, raw) = (&batches[i], &cl.raw);
            async move { black_box(raw_mget(raw, batch).await) }
        })
    });
    g.finish();
}

/// Per-op median over `ROUNDS` rounds, alternating larder and the raw client every
/// `PER_ROUND` operations so that machine drift hits both alike; returns (larder, raw) in µs.
async fn alternate<L, R, LF, RF>(mut larder: L, mut raw: R) -> (f64, f64)
where
    L: FnMut(usize) -> LF,
    R: FnMut(usize) -> RF,
    LF: std::future::Future<Output = ()>,
    RF: std::future::Future<Output = ()>,
{
    const ROUNDS: usize = 40;
    const PER_ROUND: usize = 200;
    let (mut l, mut r) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let t = Instant::now();
        for i in 0..PER_ROUND {
            larder(round * PER_ROUND + i).await;
        }
        l.push(t.elapsed().as_secs_f64() * 1e6 / PER_ROUND as f64);
        let t = Instant::now();
        for i in 0..PER_ROUND {
            raw(round * PER_ROUND + i).await;
        }
        r.push(t.elapsed().as_secs_f64() * 1e6 / PER_ROUND as f64);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    (median(&mut l), median(&mut r))
}

/// The ratios larder / raw client, measured alternately, printed to stderr.
fn ratios(rt: &Runtime, cl: &Clients, keys: &[Key], st: &CasState) {
    let n = keys.len();
    let report = |what: &str, (l, r): (f64, f64)| {
        eprintln!(
            "ratio {what:<22} larder {l:>7.2} µs  raw {r:>7.2} µs  larder/raw {:.3}",
            l / r
        );
    };
    let ttl = Some(Ttl::from_secs(60).expect("ttl"));
    for (size, label) in [(200, "200B"), (4096, "4KiB")] {
        fill(rt, cl, keys, size);
        rt.block_on(async {
            let got = alternate(
                |i| async move {
                    black_box(cl.backend.get(&keys[i % n]).await.expect("get"));
                },
                |i| async move {
                    black_box(raw_get(&cl.raw, &keys[i % n]).await);
                },
            )
            .await;
            report(&format!("get {label}"), got);
            let v = value(size, 3);
            let v = &v;
            let put = alternate(
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
            report(&format!("put {label}"), put);
        });
    }
    rt.block_on(async {
        let cas = alternate(
            |_| larder_cas(cl, &st.larder_key, &st.value, &st.larder_ver),
            |_| raw_cas(cl, &st.raw_key, &st.value, &st.raw_ver),
        )
        .await;
        report("cas 200B", cas);
    });
    fill(rt, cl, keys, 200);
    let batches: Vec<Vec<Key>> = keys.chunks(16).map(<[Key]>::to_vec).collect();
    let batches = &batches;
    let m = batches.len();
    rt.block_on(async {
        let many = alternate(
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
        report("get_many 16x200B", many);
    });
}

fn main() {
    let server = Server::start();
    let addr = format!("127.0.0.1:{}", server.port);
    let rt = runtime();
    let clients = rt.block_on(async {
        let info = redis::ConnectionAddr::Tcp("127.0.0.1".into(), server.port)
            .into_connection_info()
            .expect("connection info")
            .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        let mut raw = redis::Client::open(info)
            .expect("client")
            .get_multiplexed_async_connection()
            .await
            .expect("raw connection");
        let update_sha: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(UPDATE)
            .query_async(&mut raw)
            .await
            .expect("SCRIPT LOAD");
        Clients {
            backend: Arc::new(
                RedisBackend::connect(&format!("redis://{addr}"))
                    .await
                    .expect("backend"),
            ),
            raw,
            update_sha,
        }
    });
    let keys = keys(KEYS);
    let mut c = Criterion::default().configure_from_args();
    bench_size(&mut c, &rt, &clients, &keys, 200, "200B");
    bench_size(&mut c, &rt, &clients, &keys, 4096, "4KiB");
    let st = cas_state(&rt, &clients);
    bench_cas(&mut c, &rt, &clients, &st);
    fill(&rt, &clients, &keys, 200);
    bench_get_many(&mut c, &rt, &clients, &keys);
    c.final_summary();
    ratios(&rt, &clients, &keys, &st);
    drop(server);
}
