//! Memory backend `get` and `put`, each beside raw anchors measured in the same run.
//!
//! Every store holds [`ENTRIES`] entries of one value size under 28-byte keys, and every
//! bench visits the keys in the same pseudo-random order, so the stores see the same
//! access pattern. Groups:
//!
//! * `memory_get/<size>`: `DynBackend::lookup` awaited (larder's read path, the one `Cache`
//!   and the session store take: the synchronous `get_now` answers, no boxed future),
//!   `Arc<dyn CacheBackend>::get` awaited (the `async-trait` method: one boxed future per
//!   call), the same through `&dyn CacheBackend`, the backend's `get_now` called directly
//!   (the raw store: lookup + `Entry` clone), and `quick_cache::sync::Cache::<Key,
//!   Bytes>::get` (lookup + `Bytes` clone).
//! * `memory_put/<size>`: overwrite through `Arc<dyn CacheBackend>::put` against
//!   `quick_cache::sync::Cache::insert`.
//! * `memory_typed_get`: the typed `Cache::get` (backend get + envelope check + postcard
//!   decode), for information.
//!
//! After the groups, `ratio memory ...` lines (stderr): `lookup` and the trait `get` each
//! measured alternately with quick_cache's get + clone (blocks of 20,000 operations, 40
//! rounds, median per-op time of each), the ratios `RESULTS.md` reports.
//!
//! # How the async calls are measured
//!
//! The trait benches use `Bencher::to_async(&rt)` on a current-thread tokio runtime.
//! Criterion then enters the runtime once per sample (`block_on`) and, inside that one
//! future, runs `for _ in 0..iters { black_box(routine().await) }`. That is what a caller
//! already running in a task pays for `backend.get(&k).await`: building the boxed
//! `async-trait` future, polling it to completion (it never suspends: the memory backend
//! is synchronous underneath) and freeing it. A `block_on` per call (`iter_custom`) would
//! add the runtime's enter/park bookkeeping to every call, which no caller inside a task
//! pays, so it would overstate the trait's cost.

use std::hint::black_box;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion};
use larder_backend_memory::MemoryBackend;
use larder_benches::harness::{alternate, report_ns};
use larder_benches::{keys, value, visit_order, Session, ENTRIES, VALUE_SIZES};
use larder_cache_api::{Cache, CacheBackend, DynBackend, Key, PutMode};
use tokio::runtime::Runtime;

/// Capacity of the quick_cache anchor: the memory backend's default `max_entries`, far
/// above [`ENTRIES`], so neither store evicts during the benches.
const QUICK_CACHE_CAPACITY: usize = 100_000;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("current-thread runtime")
}

/// Walks `order` round and round.
struct Cursor {
    order: Vec<usize>,
    at: usize,
}

impl Cursor {
    fn new() -> Self {
        Cursor {
            order: visit_order(ENTRIES),
            at: 0,
        }
    }

    fn next_index(&mut self) -> usize {
        let i = self.order[self.at];
        self.at += 1;
        if self.at == self.order.len() {
            self.at = 0;
        }
        i
    }
}

/// The three stores filled with the same keys and values of `size` bytes.
struct Stores {
    keys: Vec<Key>,
    concrete: Arc<MemoryBackend>,
    backend: DynBackend,
    quick: quick_cache::sync::Cache<Key, Bytes>,
}

impl Stores {
    fn new(rt: &Runtime, size: usize) -> Self {
        let keys = keys(ENTRIES);
        let concrete = Arc::new(MemoryBackend::default());
        let backend: DynBackend = concrete.clone();
        let quick = quick_cache::sync::Cache::new(QUICK_CACHE_CAPACITY);
        rt.block_on(async {
            for (i, k) in keys.iter().enumerate() {
                let v = value(size, i);
                backend
                    .put(k, v.clone(), None, PutMode::Overwrite)
                    .await
                    .expect("prefill put");
                quick.insert(k.clone(), v);
            }
        });
        // Every bench below must measure hits only.
        for k in &keys {
            assert!(
                matches!(concrete.get_now(k), Some(Ok(Some(_)))),
                "memory backend lost {k}"
            );
            assert!(quick.get(k).is_some(), "quick_cache lost {k}");
        }
        assert_eq!(concrete.evictions(), 0);
        Stores {
            keys,
            concrete,
            backend,
            quick,
        }
    }
}

fn memory_get(c: &mut Criterion) {
    let rt = runtime();
    for (size, label) in VALUE_SIZES {
        let s = Stores::new(&rt, size);
        let mut g = c.benchmark_group(format!("memory_get/{label}"));

        // larder's read path: the synchronous answer, awaited as callers do.
        let mut cur = Cursor::new();
        g.bench_function("larder_lookup", |b| {
            b.to_async(&rt).iter(|| {
                let k = &s.keys[cur.next_index()];
                let backend = &s.backend;
                async move { backend.lookup(k).await.expect("get") }
            })
        });

        // The trait method on `DynBackend` = `Arc<dyn CacheBackend>`.
        let mut cur = Cursor::new();
        g.bench_function("larder_arc_dyn_trait", |b| {
            b.to_async(&rt).iter(|| {
                let k = &s.keys[cur.next_index()];
                let backend = &s.backend;
                async move { backend.get(k).await.expect("get") }
            })
        });

        // Same, called on `&dyn CacheBackend`: one boxed future instead of two (see
        // RESULTS.md: `Arc<B>`'s forwarding impl is picked for `Arc<dyn _>` receivers).
        let mut cur = Cursor::new();
        g.bench_function("larder_ref_dyn_trait", |b| {
            b.to_async(&rt).iter(|| {
                let k = &s.keys[cur.next_index()];
                let backend: &dyn CacheBackend = &*s.backend;
                async move { backend.get(k).await.expect("get") }
            })
        });

        // The store under the trait: lookup + `Entry` clone, no async.
        let mut cur = Cursor::new();
        g.bench_function("raw_get_now", |b| {
            b.iter(|| s.concrete.get_now(black_box(&s.keys[cur.next_index()])))
        });

        // A raw concurrent cache: lookup + `Bytes` clone.
        let mut cur = Cursor::new();
        g.bench_function("quick_cache_get_clone", |b| {
            b.iter(|| s.quick.get(black_box(&s.keys[cur.next_index()])))
        });
        g.finish();
    }
}

/// `lookup` and the trait `get` against quick_cache get + clone, alternated (see the
/// crate docs of this file).
fn memory_ratios() {
    let rt = runtime();
    for (size, label) in VALUE_SIZES {
        let s = Stores::new(&rt, size);
        let order = visit_order(ENTRIES);
        let key = |i: usize| &s.keys[order[i % ENTRIES]];
        let quick = |i: usize| {
            let q = &s.quick;
            let k = key(i);
            async move {
                black_box(q.get(black_box(k)));
            }
        };
        let (rounds, per_round) = (40, 20_000);
        let lookup = rt.block_on(alternate(
            rounds,
            per_round,
            |i| {
                let (b, k) = (&s.backend, key(i));
                async move {
                    black_box(b.lookup(black_box(k)).await.expect("get"));
                }
            },
            quick,
        ));
        report_ns("memory", &format!("lookup/{label}"), lookup);
        let get = rt.block_on(alternate(
            rounds,
            per_round,
            |i| {
                let (b, k) = (&s.backend, key(i));
                async move {
                    black_box(b.get(black_box(k)).await.expect("get"));
                }
            },
            quick,
        ));
        report_ns("memory", &format!("trait_get/{label}"), get);
    }
}

fn memory_put(c: &mut Criterion) {
    let rt = runtime();
    for (size, label) in VALUE_SIZES {
        let s = Stores::new(&rt, size);
        // One shared value: cloning it is a reference-count increment for both stores.
        let v = value(size, 7);
        let mut g = c.benchmark_group(format!("memory_put/{label}"));

        let mut cur = Cursor::new();
        g.bench_function("larder_arc_dyn_trait_overwrite", |b| {
            b.to_async(&rt).iter(|| {
                let k = &s.keys[cur.next_index()];
                let backend = &s.backend;
                let v = v.clone();
                async move {
                    backend
                        .put(k, v, None, PutMode::Overwrite)
                        .await
                        .expect("put")
                }
            })
        });

        let mut cur = Cursor::new();
        g.bench_function("quick_cache_insert", |b| {
            b.iter(|| {
                let k = &s.keys[cur.next_index()];
                s.quick.insert(black_box(k.clone()), v.clone())
            })
        });
        g.finish();
        assert_eq!(s.concrete.evictions(), 0);
    }
}

fn memory_typed_get(c: &mut Criterion) {
    let rt = runtime();
    let keys = keys(ENTRIES);
    let bytes_cache = Cache::new(Arc::new(MemoryBackend::default()));
    let session_cache = Cache::new(Arc::new(MemoryBackend::default()));
    rt.block_on(async {
        for (i, k) in keys.iter().enumerate() {
            let v: Vec<u8> = value(128, i).to_vec();
            bytes_cache.set(k, &v, None).await.expect("prefill");
            session_cache
                .set(k, &Session::sample(i as u64), None)
                .await
                .expect("prefill");
        }
    });

    let mut g = c.benchmark_group("memory_typed_get");
    let mut cur = Cursor::new();
    g.bench_with_input(
        BenchmarkId::new("cache_get_vec_u8", "128B"),
        &bytes_cache,
        |b, cache| {
            b.to_async(&rt).iter(|| {
                let k = &keys[cur.next_index()];
                async move { cache.get::<Vec<u8>>(k).await.expect("get").expect("hit") }
            })
        },
    );
    let mut cur = Cursor::new();
    g.bench_with_input(
        BenchmarkId::new("cache_get_session", "postcard"),
        &session_cache,
        |b, cache| {
            b.to_async(&rt).iter(|| {
                let k = &keys[cur.next_index()];
                async move { cache.get::<Session>(k).await.expect("get").expect("hit") }
            })
        },
    );
    g.finish();
}

// What `criterion_group!`/`criterion_main!` expand to, written out because the macro's
// `pub fn benches` trips the workspace's `missing_docs` lint.
fn main() {
    let mut c = Criterion::default().configure_from_args();
    memory_get(&mut c);
    memory_put(&mut c);
    memory_typed_get(&mut c);
    c.final_summary();
    memory_ratios();
}
