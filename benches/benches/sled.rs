//! sled backend operations, each beside the raw sled call doing the same work, in the same
//! run and on the same database.
//!
//! One temporary database holds [`ENTRIES`] larder entries (1,000 for 64 KiB values; tree
//! `larder/entries`) and the same keys and values stored raw in a tree of their own
//! (`bench/raw`), so larder and the anchor read through the same page cache. Keys are
//! visited in one fixed pseudo-random order. `<size>` is 128B, 4KiB or 64KiB. Groups:
//!
//! * `sled_get/<size>`: `Arc<dyn CacheBackend>::get` awaited (inline dispatch, the
//!   default), for 128 B also with `Dispatch::SpawnBlocking` (what a `spawn_blocking`
//!   hand-off per call costs), and raw `Tree::get` plus a copy of the value into `Bytes`
//!   (what a caller of raw sled needs to own the bytes; larder hands out the value without
//!   a copy).
//! * `sled_put/<size>`: overwrite through the trait against raw `Tree::insert` of the same
//!   bytes (no flush on either side; sled's background flusher is off). The raw side
//!   alternates two values, because sled skips an insert of the bytes already stored.
//! * `sled_cas/128B`: `PutMode::Update(current version)` through the trait against raw
//!   `Tree::compare_and_swap` from the current bytes to new ones.
//! * `sled_get_many/100x128B`: `get_many` of 100 keys against 100 raw `Tree::get` + copy.
//! * `sled_durable_put/128B`: overwrite with `Flush::EveryWrite` against raw `insert` +
//!   `flush_async`: both pay one fsync per write.
//!
//! The trait benches run inside one current-thread runtime per sample (`to_async`), as a
//! caller already in a task would; see `benches/memory.rs` for why.
//!
//! After the criterion groups come the alternated `ratio sled ...` lines (larder and raw
//! every 1,000 operations for 40 rounds, median per-op time of each; the figures
//! `RESULTS.md` reports) and the `throughput sled ...` line (64 tasks looping `get` of 128 B
//! values for 2 s on a 2-worker runtime, L R L R, best run of each kept), on stderr.

use std::cell::Cell;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::Criterion;
use larder_backend_sled::sled::{self, IVec};
use larder_backend_sled::{Dispatch, Flush, SledBackend, SledConfig};
use larder_benches::harness::{self, alternate, report};
use larder_benches::{keys, value, visit_order, BACKEND_SIZES, ENTRIES, MANY, TASKS};
use larder_cache_api::{DynBackend, Key, PutMode, Version};
use tokio::runtime::Runtime;

/// Entries per store: [`ENTRIES`], but 1,000 for 64 KiB values (two copies of 10,000 would
/// be 1.3 GB).
fn entries(size: usize) -> usize {
    if size > 8192 {
        1000
    } else {
        ENTRIES
    }
}

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
    fn new(n: usize) -> Self {
        Cursor {
            order: visit_order(n),
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
        let keys = keys(entries(size));
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
    for (size, label) in BACKEND_SIZES {
        let s = Store::new(&rt, size, Dispatch::Inline, Flush::Never);
        let mut g = c.benchmark_group(format!("sled_get/{label}"));

        let mut cur = Cursor::new(s.keys.len());
        g.bench_function("larder_dyn_trait", |b| {
            b.to_async(&rt).iter(|| {
                let k = &s.keys[cur.next_index()];
                let backend = &s.backend;
                async move { backend.get(k).await.expect("get").expect("hit") }
            })
        });

        if size == 128 {
            let spawn = Store::new(&rt, size, Dispatch::SpawnBlocking, Flush::Never);
            let mut cur = Cursor::new(spawn.keys.len());
            g.bench_function("larder_dyn_trait_spawn_blocking", |b| {
                b.to_async(&rt).iter(|| {
                    let k = &spawn.keys[cur.next_index()];
                    let backend = &spawn.backend;
                    async move { backend.get(k).await.expect("get").expect("hit") }
                })
            });
        }

        let mut cur = Cursor::new(s.keys.len());
        g.bench_function("raw_tree_get_copy", |b| {
            b.iter(|| raw_get(&s.raw, &s.keys[cur.next_index()]))
        });
        g.finish();
    }
}

/// Raw sled's get, with the value copied into `Bytes` so that the caller owns it.
fn raw_get(raw: &sled::Tree, k: &Key) -> Bytes {
    let v = raw.get(black_box(k.as_bytes())).expect("get").expect("hit");
    Bytes::copy_from_slice(&v)
}

fn raw_get_many(raw: &sled::Tree, batch: &[Key]) -> Vec<Option<Bytes>> {
    batch
        .iter()
        .map(|k| {
            raw.get(k.as_bytes())
                .expect("get")
                .map(|v| Bytes::copy_from_slice(&v))
        })
        .collect()
}

fn sled_get_many(c: &mut Criterion, rt: &Runtime, s: &Store) {
    let batches: Vec<Vec<Key>> = s.keys.chunks(MANY).map(<[Key]>::to_vec).collect();
    let mut g = c.benchmark_group(format!("sled_get_many/{MANY}x128B"));
    let mut i = 0usize;
    g.bench_function("larder_dyn_trait", |b| {
        b.to_async(rt).iter(|| {
            i = (i + 1) % batches.len();
            let (batch, backend) = (&batches[i], &s.backend);
            async move { black_box(backend.get_many(batch).await.expect("get_many")) }
        })
    });
    g.bench_function("raw_tree_get_copy_x100", |b| {
        b.iter(|| {
            i = (i + 1) % batches.len();
            black_box(raw_get_many(&s.raw, &batches[i]))
        })
    });
    g.finish();
}

fn sled_put(c: &mut Criterion) {
    let rt = runtime();
    for (size, label) in BACKEND_SIZES {
        let s = Store::new(&rt, size, Dispatch::Inline, Flush::Never);
        let v = value(size, 7);
        let mut g = c.benchmark_group(format!("sled_put/{label}"));

        let mut cur = Cursor::new(s.keys.len());
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
        let mut cur = Cursor::new(s.keys.len());
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
    let s = Store::new(&rt, 128, Dispatch::Inline, Flush::Never);
    let (a, b_val) = (value(128, 1), value(128, 2));
    let mut g = c.benchmark_group("sled_cas/128B");

    // Each key's current version, so that every update wins.
    let versions: Vec<Cell<Version>> = rt.block_on(async {
        let mut out = Vec::with_capacity(s.keys.len());
        for k in &s.keys {
            let e = s.backend.get(k).await.expect("get").expect("hit");
            out.push(Cell::new(e.version));
        }
        out
    });
    let mut cur = Cursor::new(s.keys.len());
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
    let mut cur = Cursor::new(s.keys.len());
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
    let s = Store::new(&rt, 128, Dispatch::Inline, Flush::EveryWrite);
    let v = value(128, 9);
    let mut g = c.benchmark_group("sled_durable_put/128B");
    g.sample_size(20);

    let mut cur = Cursor::new(s.keys.len());
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
    let other = value(128, 10);
    let mut cur = Cursor::new(s.keys.len());
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

const ROUNDS: usize = 40;
const PER_ROUND: usize = 1000;

/// The ratios larder / raw sled, measured alternately, printed to stderr.
fn ratios(rt: &Runtime) {
    for (size, label) in BACKEND_SIZES {
        let s = Store::new(rt, size, Dispatch::Inline, Flush::Never);
        let (keys, backend, raw) = (&s.keys, &s.backend, &s.raw);
        let order = visit_order(keys.len());
        let order = &order;
        let n = keys.len();
        rt.block_on(async {
            let got = alternate(
                ROUNDS,
                PER_ROUND,
                |i| async move {
                    black_box(backend.get(&keys[order[i % n]]).await.expect("get"));
                },
                |i| async move {
                    black_box(raw_get(raw, &keys[order[i % n]]));
                },
            )
            .await;
            report("sled", &format!("get {label}"), got);
            // Both sides write a value differing from the one stored: larder's records
            // always differ (new version), and raw alternates two values by pass.
            let (v1, v2) = (value(size, 11), value(size, 12));
            let (v1, v2) = (&v1, &v2);
            let put = alternate(
                ROUNDS,
                PER_ROUND / 4,
                |i| async move {
                    black_box(
                        backend
                            .put(&keys[order[i % n]], v1.clone(), None, PutMode::Overwrite)
                            .await
                            .expect("put"),
                    );
                },
                |i| async move {
                    let v = if (i / n) % 2 == 0 { v1 } else { v2 };
                    black_box(
                        raw.insert(keys[order[i % n]].as_bytes(), &v[..])
                            .expect("insert"),
                    );
                },
            )
            .await;
            report("sled", &format!("put {label}"), put);
            if size == 128 {
                // CAS: each key's current version (larder) and current bytes (raw).
                let mut vers = Vec::with_capacity(n);
                for k in keys.iter() {
                    vers.push(Cell::new(
                        backend.get(k).await.expect("get").expect("hit").version,
                    ));
                }
                let cur: Vec<std::cell::RefCell<IVec>> = keys
                    .iter()
                    .map(|k| {
                        std::cell::RefCell::new(raw.get(k.as_bytes()).expect("get").expect("hit"))
                    })
                    .collect();
                let (vers, cur) = (&vers, &cur);
                let (ia, ib) = (IVec::from(&v1[..]), IVec::from(&v2[..]));
                let (ia, ib) = (&ia, &ib);
                let cas = alternate(
                    ROUNDS,
                    PER_ROUND / 4,
                    |i| async move {
                        let j = order[i % n];
                        let new = backend
                            .put(&keys[j], v2.clone(), None, PutMode::Update(vers[j].get()))
                            .await
                            .expect("update wins");
                        vers[j].set(new);
                    },
                    |i| async move {
                        let j = order[i % n];
                        let old = cur[j].borrow().clone();
                        let new = if old == *ia { ib.clone() } else { ia.clone() };
                        raw.compare_and_swap(keys[j].as_bytes(), Some(&old), Some(new.clone()))
                            .expect("cas")
                            .expect("cas wins");
                        *cur[j].borrow_mut() = new;
                    },
                )
                .await;
                report("sled", "cas 128B", cas);
                let batches: Vec<Vec<Key>> = keys.chunks(MANY).map(<[Key]>::to_vec).collect();
                let (batches, m) = (&batches, batches.len());
                let many = alternate(
                    ROUNDS,
                    PER_ROUND / 20,
                    |i| async move {
                        black_box(backend.get_many(&batches[i % m]).await.expect("get_many"));
                    },
                    |i| async move {
                        black_box(raw_get_many(raw, &batches[i % m]));
                    },
                )
                .await;
                report("sled", &format!("get_many {MANY}x128B"), many);
            }
        });
        if size == 128 {
            concurrent(&s);
        }
    }
}

/// 64 tasks looping `get` of 128 B values for 2 s, larder against raw sled.
fn concurrent(s: &Store) {
    let mrt = harness::multi_thread();
    let keys: Arc<Vec<Key>> = Arc::new(s.keys.clone());
    let n = keys.len();
    let (b, k) = (s.backend.clone(), keys.clone());
    let larder = move |i: usize| {
        let (b, k) = (b.clone(), k.clone());
        async move {
            black_box(b.get(&k[i % n]).await.expect("get"));
        }
    };
    let (raw, k) = (s.raw.clone(), keys);
    let raw = move |i: usize| {
        let (raw, k) = (raw.clone(), k.clone());
        async move {
            black_box(raw_get(&raw, &k[i % n]));
        }
    };
    harness::throughput_pair(
        "sled",
        "get 128B",
        &mrt,
        TASKS,
        Duration::from_secs(2),
        larder,
        raw,
    );
}

// What `criterion_group!`/`criterion_main!` expand to, written out because the macro's
// `pub fn benches` trips the workspace's `missing_docs` lint.
fn main() {
    let mut c = Criterion::default().configure_from_args();
    sled_get(&mut c);
    sled_put(&mut c);
    sled_cas(&mut c);
    let rt = runtime();
    {
        let s = Store::new(&rt, 128, Dispatch::Inline, Flush::Never);
        sled_get_many(&mut c, &rt, &s);
    }
    sled_durable_put(&mut c);
    c.final_summary();
    // `--test`/`--list` runs skip the extra measurements.
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    ratios(&rt);
}
