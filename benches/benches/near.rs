//! The near cache (`layer::Near`) against what it saves and what it is built on, each pair
//! measured alternately in one run (`harness::alternate`: blocks of operations of one side,
//! then the other, median per-op time of each), on one redis-server started by the bench on
//! a free port and the local PostgreSQL (fresh schema). Prints to stderr:
//!
//! * `ratio near hit/128B`: a local hit of `Near(Redis)` read as callers read it
//!   (`DynBackend::lookup`, which `Cache` and the session store use) against
//!   `quick_cache::sync::Cache::<Key, Bytes>::get` (lookup + `Bytes` clone) of the same keys.
//!   Goal ≤ 1.5. `hit_trait_get/128B` is the boxed `async-trait` `get` instead, for
//!   comparison.
//! * `ratio near hit_vs_redis/128B`: the same local hit against the raw redis-rs `GET` on a
//!   `MultiplexedConnection` (`TCP_NODELAY`). Goal: raw / near ≥ 50.
//! * `ratio near session_load/300B`: `CachedStore::load` over `PgStore` with `Near(Redis)` as
//!   its cache, answered by the local tier, against a raw sqlx `SELECT data FROM
//!   larder_sessions WHERE id_hash = $1` on the store's own pool + decoding the data. Goal:
//!   raw / near ≥ 100.
//! * `ratio near part_...`: where a local hit's time goes, each part alternated with the
//!   same quick_cache anchor: a lookup in a quick_cache of the local tier's entry shape, one
//!   clock read (`Instant::elapsed`), and `Near::get_now` called directly, over Redis and
//!   over the memory backend without a channel.
//! * `near local tier ...`: how many of the reads above the local tier answered (the rest
//!   were bypassed because the channel's last sync was older than the bound, or missed).
//! * `zipf ...`: hit ratio and mean time per request of a Zipf(0.99) trace of 1,000,000
//!   requests over 100,000 keys, each cache holding 1,000 entries (1 %), filled on a miss:
//!   Near's local tier (over the memory backend, staleness accepted, so only the tier's
//!   policy decides), raw quick_cache (what that tier is built on) and moka. The trace is
//!   generated before timing; one thread.
//!
//! Run with `cargo bench -p larder-benches --bench near [-- hits|breakdown|session_load|zipf]`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use larder_backend_memory::{MemoryBackend, MemoryConfig};
use larder_backend_redis::RedisBackend;
use larder_benches::harness::{self, alternate, report, report_ns};
use larder_benches::raw_redis::{raw_connection, raw_get};
use larder_benches::{keys, value};
use larder_cache_api::{CacheBackend, DynBackend, Entry, Key, PutMode};
use larder_near::{ChannelState, Near, NearStats};
use larder_session_persist::{CachedStore, SessionData, SessionStore, Timestamp};
use larder_tests::server::ServerProcess;
use larder_tests::{eventually, Patience};
use redis::aio::MultiplexedConnection;

/// Keys read in the latency ratios, all held by the local tier.
const KEYS: usize = 1000;

/// `Near(Redis)` with its channel up, the raw client, and quick_cache, holding the same keys.
struct Fixture {
    near: DynBackend,
    concrete: Arc<Near>,
    stats: Arc<NearStats>,
    raw: MultiplexedConnection,
    quick: quick_cache::sync::Cache<Key, Bytes>,
    keys: Vec<Key>,
}

async fn fixture(port: u16) -> Fixture {
    let url = format!("redis://127.0.0.1:{port}");
    let redis = RedisBackend::connect(&url).await.expect("connect");
    let tracking = redis.tracking();
    let near = Near::builder(Arc::new(redis))
        .channel(tracking)
        .build()
        .expect("near");
    let patience = Patience::new(Duration::from_secs(10)).every(Duration::from_millis(10));
    eventually(patience, "tracking is up", async || {
        near.channel_state() == ChannelState::Up
    })
    .await;
    let stats = near.stats();
    let concrete = Arc::new(near);
    let near: DynBackend = concrete.clone();
    let raw = raw_connection(port).await;
    let keys = keys(KEYS);
    let quick = quick_cache::sync::Cache::new(KEYS * 2);
    for (i, k) in keys.iter().enumerate() {
        let v = value(128, i);
        near.put(k, v.clone(), None, PutMode::Overwrite)
            .await
            .expect("put");
        quick.insert(k.clone(), v);
    }
    // The first read fills the local tier, the second must be a local hit.
    for k in &keys {
        near.lookup(k).await.expect("get").expect("stored");
    }
    let before = stats.local_hits();
    for k in &keys {
        near.lookup(k).await.expect("get").expect("stored");
    }
    assert_eq!(
        stats.local_hits() - before,
        KEYS as u64,
        "the local tier does not hold the keys"
    );
    Fixture {
        near,
        concrete,
        stats,
        raw,
        quick,
        keys,
    }
}

/// Runs `f` and prints which share of the reads in it the local tier answered.
async fn with_tier_share<T>(
    f: &Fixture,
    what: &str,
    run: impl std::future::Future<Output = T>,
) -> T {
    let (h, s, b) = (
        f.stats.local_hits(),
        f.stats.shared_hits(),
        f.stats.bypassed(),
    );
    let out = run.await;
    let (h, s, b) = (
        f.stats.local_hits() - h,
        f.stats.shared_hits() - s,
        f.stats.bypassed() - b,
    );
    eprintln!(
        "near local tier {what:<20} local hits {h}, shared hits {s}, bypassed {b} ({:.2} % local)",
        100.0 * h as f64 / (h + s).max(1) as f64
    );
    out
}

async fn hits(f: &Fixture) {
    let key = |i: usize| &f.keys[(i * 7919) % KEYS];
    let quick = |i: usize| {
        let (q, k) = (&f.quick, key(i));
        async move {
            black_box(q.get(black_box(k)));
        }
    };
    let r = with_tier_share(
        f,
        "hit",
        alternate(
            40,
            20_000,
            |i| {
                let (n, k) = (&f.near, key(i));
                async move {
                    black_box(n.lookup(black_box(k)).await.expect("get"));
                }
            },
            quick,
        ),
    )
    .await;
    report_ns("near", "hit/128B", r);
    let r = with_tier_share(
        f,
        "hit_trait_get",
        alternate(
            40,
            20_000,
            |i| {
                let (n, k) = (&f.near, key(i));
                async move {
                    black_box(n.get(black_box(k)).await.expect("get"));
                }
            },
            quick,
        ),
    )
    .await;
    report_ns("near", "hit_trait_get/128B", r);
    let r = with_tier_share(
        f,
        "hit_vs_redis",
        alternate(
            40,
            200,
            |i| {
                let (n, k) = (&f.near, key(i));
                async move {
                    black_box(n.lookup(black_box(k)).await.expect("get"));
                }
            },
            |i| {
                let (raw, k) = (&f.raw, key(i));
                async move {
                    black_box(raw_get(raw, k).await);
                }
            },
        ),
    )
    .await;
    report("near", "hit_vs_redis/128B", r);
    eprintln!("near hit_vs_redis/128B raw / near {:.0}", r.1 / r.0);
}

/// Where a local hit's time goes: each piece alternated with the quick_cache anchor.
async fn breakdown(f: &Fixture) {
    let key = |i: usize| &f.keys[(i * 7919) % KEYS];
    let quick = |i: usize| {
        let (q, k) = (&f.quick, key(i));
        async move {
            black_box(q.get(black_box(k)));
        }
    };
    // A tier of the local tier's shape: an entry, its epoch, sequence, stripe and deadline.
    let tier = quick_cache::sync::Cache::<Key, (Entry, u64, u64, u32, u64)>::new(KEYS * 2);
    for k in &f.keys {
        let e = f.near.lookup(k).await.expect("get").expect("stored");
        tier.insert(k.clone(), (e, 1, 1, 1, u64::MAX));
    }
    let base = Instant::now();
    let r = alternate(
        40,
        20_000,
        |i| {
            let (t, k) = (&tier, key(i));
            async move {
                black_box(t.get(black_box(k)));
            }
        },
        quick,
    )
    .await;
    report_ns("near", "part_tier_lookup", r);
    let r = alternate(
        40,
        20_000,
        |_| async move {
            black_box(base.elapsed());
        },
        quick,
    )
    .await;
    report_ns("near", "part_clock_read", r);
    let r = alternate(
        40,
        20_000,
        |i| {
            let (n, k) = (&f.concrete, key(i));
            async move {
                black_box(n.get_now(black_box(k)));
            }
        },
        quick,
    )
    .await;
    report_ns("near", "part_get_now_direct", r);
    // The same over the memory backend with no channel (staleness accepted): no pings.
    let memory: DynBackend = Arc::new(MemoryBackend::default());
    for k in &f.keys {
        let e = f.near.lookup(k).await.expect("get").expect("stored");
        memory
            .put(k, e.value, None, PutMode::Overwrite)
            .await
            .expect("put");
    }
    let local = Near::builder(memory)
        .capacity(KEYS * 2)
        .accept_staleness(Duration::from_secs(600))
        .build()
        .expect("near");
    for k in &f.keys {
        local.get_now(k).expect("answered").expect("get");
    }
    let r = alternate(
        40,
        20_000,
        |i| {
            let (n, k) = (&local, key(i));
            async move {
                black_box(n.get_now(black_box(k)));
            }
        },
        quick,
    )
    .await;
    report_ns("near", "part_get_now_no_channel", r);
}

/// The 300 B session of the sessions bench: ten small keys.
fn session_data() -> SessionData {
    let mut d = SessionData::new();
    for (i, k) in [
        "user", "name", "email", "csrf", "theme", "lang", "cart", "tz", "role", "last",
    ]
    .iter()
    .enumerate()
    {
        d.insert(k, &format!("{k}-value-{i:02}-xxxxxxxx"))
            .expect("encode");
    }
    d
}

async fn session_load(f: &Fixture) {
    let (pg, _schema) = larder_tests::db::pg_store().await;
    let pool = pg.pool().clone();
    let cached = CachedStore::new(pg, f.near.clone());
    let rec = cached
        .create(
            session_data(),
            None,
            Timestamp::now().plus(Duration::from_secs(3600)),
        )
        .await
        .expect("create");
    let id = rec.id.clone();
    let hash = id.hash().as_bytes().to_vec();
    for _ in 0..2 {
        cached.load(&id).await.expect("load").expect("live");
    }
    let r = with_tier_share(
        f,
        "session_load",
        alternate(
            40,
            50,
            |_| {
                let (c, id) = (&cached, &id);
                async move {
                    black_box(c.load(id).await.expect("load").expect("live"));
                }
            },
            |_| {
                let (p, h) = (&pool, &hash);
                async move {
                    let row: (Vec<u8>,) =
                        sqlx::query_as("SELECT data FROM larder_sessions WHERE id_hash = $1")
                            .bind(h)
                            .fetch_one(p)
                            .await
                            .expect("select");
                    black_box(SessionData::from_bytes(&row.0).expect("decode"));
                }
            },
        ),
    )
    .await;
    report("near", "session_load/300B", r);
    eprintln!("near session_load/300B raw / near {:.0}", r.1 / r.0);
}

/// Keys in the Zipf trace, requests in it, and entries each cache holds (1 % of the keys).
const ZIPF_KEYS: usize = 100_000;
const ZIPF_REQUESTS: usize = 1_000_000;
const ZIPF_CAPACITY: usize = ZIPF_KEYS / 100;
const ZIPF_S: f64 = 0.99;

/// `len` key indices drawn from Zipf(`s`) over `n` keys (rank 0 the most frequent), by
/// inverting the cumulative weights with a fixed-seed xorshift generator.
fn zipf_trace(n: usize, len: usize, s: f64) -> Vec<u32> {
    let mut cdf = Vec::with_capacity(n);
    let mut total = 0.0;
    for i in 0..n {
        total += 1.0 / ((i + 1) as f64).powf(s);
        cdf.push(total);
    }
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let u = (x >> 11) as f64 / (1u64 << 53) as f64 * total;
            cdf.partition_point(|&c| c < u).min(n - 1) as u32
        })
        .collect()
}

/// Hit ratio and mean ns per request of `get_or_fill` over the trace.
fn run_trace(trace: &[u32], keys: &[Key], mut get_or_fill: impl FnMut(&Key) -> bool) -> (f64, f64) {
    let t = Instant::now();
    let mut hits = 0usize;
    for &i in trace {
        hits += usize::from(get_or_fill(&keys[i as usize]));
    }
    let ns = t.elapsed().as_secs_f64() * 1e9 / trace.len() as f64;
    (hits as f64 / trace.len() as f64, ns)
}

fn zipf() {
    let trace = zipf_trace(ZIPF_KEYS, ZIPF_REQUESTS, ZIPF_S);
    let keys = keys(ZIPF_KEYS);
    let val = value(128, 1);

    let memory = MemoryBackend::new(
        MemoryConfig::default()
            .with_max_entries(ZIPF_KEYS * 2)
            .with_max_bytes(ZIPF_KEYS * 2 * 1024),
    )
    .expect("memory");
    let rt = harness::current_thread();
    rt.block_on(async {
        for k in &keys {
            memory
                .put(k, val.clone(), None, PutMode::Overwrite)
                .await
                .expect("fill");
        }
    });
    let near = Near::builder(Arc::new(memory))
        .capacity(ZIPF_CAPACITY)
        .max_age(Duration::from_secs(600))
        .accept_staleness(Duration::from_secs(600))
        .build()
        .expect("near");
    let stats = near.stats();
    // A local miss is answered by the memory backend at once and kept by the tier.
    let (_, near_ns) = run_trace(&trace, &keys, |k| {
        black_box(near.get_now(k).expect("answered").expect("get"));
        false
    });
    let near_ratio = stats.local_hits() as f64 / trace.len() as f64;
    assert_eq!(stats.local_hits() + stats.shared_hits(), trace.len() as u64);

    let quick = quick_cache::sync::Cache::<Key, Bytes>::new(ZIPF_CAPACITY);
    let (quick_ratio, quick_ns) = run_trace(&trace, &keys, |k| match quick.get(k) {
        Some(v) => {
            black_box(v);
            true
        }
        None => {
            quick.insert(k.clone(), val.clone());
            false
        }
    });

    let moka = moka::sync::Cache::<Key, Bytes>::new(ZIPF_CAPACITY as u64);
    let (moka_ratio, moka_ns) = run_trace(&trace, &keys, |k| match moka.get(k) {
        Some(v) => {
            black_box(v);
            true
        }
        None => {
            moka.insert(k.clone(), val.clone());
            false
        }
    });

    let distinct = {
        let mut seen = vec![false; ZIPF_KEYS];
        trace.iter().for_each(|&i| seen[i as usize] = true);
        seen.iter().filter(|&&s| s).count()
    };
    eprintln!(
        "zipf s={ZIPF_S} {ZIPF_REQUESTS} requests over {ZIPF_KEYS} keys ({distinct} requested), \
         capacity {ZIPF_CAPACITY}"
    );
    for (name, ratio, ns) in [
        ("near local tier", near_ratio, near_ns),
        ("quick_cache", quick_ratio, quick_ns),
        ("moka", moka_ratio, moka_ns),
    ] {
        eprintln!(
            "zipf {name:<16} hit ratio {:.4}  {ns:>7.1} ns/request",
            ratio
        );
    }
}

fn main() {
    // `--list`/`--test` runs (cargo test --benches) measure nothing.
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    // `cargo bench --bench near -- zipf` runs only the parts whose name contains `zipf`.
    let only = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let run = |part: &str| only.as_deref().is_none_or(|o| part.contains(o));
    let started = Instant::now();
    let server = ServerProcess::redis();
    // Two workers: the channel's pings keep the local tier in use while the bench loops on
    // the main thread.
    let rt = harness::multi_thread();
    let f = rt.block_on(fixture(server.port()));
    if run("hits") {
        rt.block_on(hits(&f));
    }
    if run("breakdown") {
        rt.block_on(breakdown(&f));
    }
    if run("session_load") {
        rt.block_on(session_load(&f));
    }
    if run("zipf") {
        zipf();
    }
    eprintln!(
        "near bench done in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    drop(rt);
    drop(server);
}
