//! sled backend operations, each beside the raw sled call doing the same work, in the same
//! run and on the same database.
//!
//! One temporary database holds [`ENTRIES`] larder entries (tree `larder/entries`) and the
//! same keys and values stored raw in a tree of their own (`bench/raw`), so larder and the
//! anchor read through the same page cache. Keys are visited in one fixed pseudo-random
//! order. Groups:
//!
//! * `sled_get/<size>`: `Arc<dyn CacheBackend>::get` awaited (inline dispatch, the
//!   default), the same with `Dispatch::SpawnBlocking` (what a `spawn_blocking` hand-off
//!   per call costs), and raw `Tree::get` plus a copy of the value into `Bytes` (what a
//!   caller of raw sled needs to own the bytes; larder hands out the value without a copy).
//! * `sled_put/<size>`: overwrite through the trait against raw `Tree::insert` of the same
//!   bytes (no flush on either side; sled's background flusher is off). The raw side
//!   alternates two values, because sled skips an insert of the bytes already stored.
//! * `sled_cas/200B`: `PutMode::Update(current version)` through the trait against raw
//!   `Tree::compare_and_swap` from the current bytes to new ones.
//! * `sled_durable_put/200B`: overwrite with `Flush::EveryWrite` against raw `insert` +
//!   `flush_async`: both pay one fsync per write.
//!
//! The trait benches run inside one current-thread runtime per sample (`to_async`), as a
//! caller already in a task would; see `benches/memory.rs` for why.

use std::cell::Cell;
use std::hint::black_box;
use std::sync::Arc;

use bytes::Bytes;
use criterion::Criterion;
use larder_backend_sled::sled::{self, IVec};
use larder_backend_sled::{Dispatch, Flush, SledBackend, SledConfig};
use larder_benches::{keys, value, visit_order, ENTRIES};
use larder_cache_api::{DynBackend, Key, PutMode, Version};
use tokio::runtime::Runtime;

/// Value sizes: a typical session, and a larger cached fragment.
const SIZES: [(usize, &str); 2] = [(200, "200B"), (4096, "4KiB")];

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("current-thread runtime")
}

/// Walks a fixed pseudo-random order of the keys round and round.
struct Cursor {
    order: Vec<usize>,
    at: usize,
    passes: u64,
}

impl Cursor {
    fn new() -> Self {
        Cursor {
            order: visit_order(ENTRIES),
            at: 0,
            passes: 0,
        }
    }

    fn next_index(&mut self) -> usize {
        let i = self.order[self.at];
        self.at += 1;
        if self.at == self.order.len() {
            self.at = 0;
            self.passes += 1;
        }
        i
    }

    /// The next key and whether this is an odd pass over the keys: alternating values by
    /// pass makes every write differ from the one before it on the same key.
    fn next_with_pass(&mut self) -> (usize, bool) {
        let odd = self.passes % 2 == 1;
        (self.next_index(), odd)
    }
}

/// A database with the same entries through larder and raw.
struct Store {
    keys: Vec<Key>,
    backend: DynBackend,
    raw: sled::Tree,
    // Last: removed after the database is closed.
    _dir: tempfile::TempDir,
}

impl Store {
    fn new(rt: &Runtime, size: usize, dispatch: Dispatch, flush: Flush) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = SledConfig::new(dir.path())
            .with_flush(flush)
            .with_dispatch(dispatch)
            .with_sweep_interval(None);
        let concrete = rt.block_on(SledBackend::new(config)).expect("open sled");
        let raw = concrete.db().open_tree("bench/raw").expect("raw tree");
        let keys = keys(ENTRIES);
        let backend: DynBackend = Arc::new(concrete);
        rt.block_on(async {
            for (i, k) in keys.iter().enumerate() {
                let v = value(size, i);
                backend
                    .put(k, v.clone(), None, PutMode::Overwrite)
                    .await
                    .expect("prefill put");
                raw.insert(k.as_bytes(), &v[..]).expect("prefill insert");
            }
        });
        // Every get below must be a hit on both sides.
        for k in &keys {
            assert!(raw.get(k.as_bytes()).expect("get").is_some());
            assert!(rt.block_on(backend.get(k)).expect("get").is_some());
        }
        Store {
            keys,
            backend,
            raw,
            _dir: dir,
        }
    }
}

fn sled_get(c: &mut Criterion) {
    let rt = runtime();
    for (size, label) in SIZES {
        let s = Store::new(&rt, size, Dispatch::Inline, Flush::Never);
        let spawn = Store::new(&rt, size, Dispatch::SpawnBlocking, Flush::Never);
        let mut g = c.benchmark_group(format!("sled_get/{label}"));

        let mut cur = Cursor::new();
        g.bench_function("larder_dyn_trait", |b| {
            b.to_async(&rt).iter(|| {
                let k = &s.keys[cur.next_index()];
                let backend = &s.backend;
                async move { backend.get(k).await.expect("get").expect("hit") }
            })
        });

        let mut cur = Cursor::new();
        g.bench_function("larder_dyn_trait_spawn_blocking", |b| {
            b.to_async(&rt).iter(|| {
                let k = &spawn.keys[cur.next_index()];
                let backend = &spawn.backend;
                async move { backend.get(k).await.expect("get").expect("hit") }
            })
        });

        let mut cur = Cursor::new();
        g.bench_function("raw_tree_get_copy", |b| {
            b.iter(|| {
                let k = &s.keys[cur.next_index()];
                let v = s
                    .raw
                    .get(black_box(k.as_bytes()))
                    .expect("get")
                    .expect("hit");
                Bytes::copy_from_slice(&v)
            })
        });
        g.finish();
    }
}

fn sled_put(c: &mut Criterion) {
    let rt = runtime();
    for (size, label) in SIZES {
        let s = Store::new(&rt, size, Dispatch::Inline, Flush::Never);
        let v = value(size, 7);
        let mut g = c.benchmark_group(format!("sled_put/{label}"));

        let mut cur = Cursor::new();
        g.bench_function("larder_dyn_trait_overwrite", |b| {
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

        // Alternate two values: sled skips an insert of the bytes already stored, which
        // larder never hits (every record carries a new version).
        let other = value(size, 8);
        let mut cur = Cursor::new();
        g.bench_function("raw_tree_insert", |b| {
            b.iter(|| {
                let (i, odd_pass) = cur.next_with_pass();
                let k = &s.keys[i];
                let v = if odd_pass { &other } else { &v };
                s.raw
                    .insert(black_box(k.as_bytes()), &v[..])
                    .expect("insert")
            })
        });
        g.finish();
    }
}

fn sled_cas(c: &mut Criterion) {
    let rt = runtime();
    let s = Store::new(&rt, 200, Dispatch::Inline, Flush::Never);
    let (a, b_val) = (value(200, 1), value(200, 2));
    let mut g = c.benchmark_group("sled_cas/200B");

    // Each key's current version, so that every update wins.
    let versions: Vec<Cell<Version>> = rt.block_on(async {
        let mut out = Vec::with_capacity(s.keys.len());
        for k in &s.keys {
            let e = s.backend.get(k).await.expect("get").expect("hit");
            out.push(Cell::new(e.version));
        }
        out
    });
    let mut cur = Cursor::new();
    let mut flip = false;
    g.bench_function("larder_dyn_trait_update", |bch| {
        bch.to_async(&rt).iter(|| {
            let i = cur.next_index();
            flip = !flip;
            let v = if flip { a.clone() } else { b_val.clone() };
            let (backend, k) = (&s.backend, &s.keys[i]);
            let slot = &versions[i];
            async move {
                let new = backend
                    .put(k, v, None, PutMode::Update(slot.get()))
                    .await
                    .expect("update wins");
                slot.set(new);
            }
        })
    });

    // Raw: each key's current bytes, swapped for the other value.
    let mut current: Vec<IVec> = s
        .keys
        .iter()
        .map(|k| s.raw.get(k.as_bytes()).expect("get").expect("hit"))
        .collect();
    let (ia, ib) = (IVec::from(&a[..]), IVec::from(&b_val[..]));
    let mut cur = Cursor::new();
    g.bench_function("raw_tree_compare_and_swap", |bch| {
        bch.iter(|| {
            let i = cur.next_index();
            let new = if current[i] == ia {
                ib.clone()
            } else {
                ia.clone()
            };
            s.raw
                .compare_and_swap(s.keys[i].as_bytes(), Some(&current[i]), Some(new.clone()))
                .expect("cas")
                .expect("cas wins");
            current[i] = new;
        })
    });
    g.finish();
}

fn sled_durable_put(c: &mut Criterion) {
    let rt = runtime();
    let s = Store::new(&rt, 200, Dispatch::Inline, Flush::EveryWrite);
    let v = value(200, 9);
    let mut g = c.benchmark_group("sled_durable_put/200B");
    g.sample_size(20);

    let mut cur = Cursor::new();
    g.bench_function("larder_dyn_trait_overwrite_flush_every_write", |b| {
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

    // Two values, alternated, so that every insert writes (see `sled_put`).
    let other = value(200, 10);
    let mut cur = Cursor::new();
    g.bench_function("raw_tree_insert_flush_async", |b| {
        b.to_async(&rt).iter(|| {
            let (i, odd_pass) = cur.next_with_pass();
            let k = &s.keys[i];
            let raw = &s.raw;
            let v = if odd_pass { &other } else { &v };
            async move {
                raw.insert(k.as_bytes(), &v[..]).expect("insert");
                raw.flush_async().await.expect("flush")
            }
        })
    });
    g.finish();
}

// What `criterion_group!`/`criterion_main!` expand to, written out because the macro's
// `pub fn benches` trips the workspace's `missing_docs` lint.
fn main() {
    let mut c = Criterion::default().configure_from_args();
    sled_get(&mut c);
    sled_put(&mut c);
    sled_cas(&mut c);
    sled_durable_put(&mut c);
    c.final_summary();
}
