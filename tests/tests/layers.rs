//! Layers over a real memory backend, with faults injected at the call into it.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use larder::layer::{Instrumented, Namespace, Near, Restrict, Timeout};
use larder::{Bytes, Cache, CacheBackend, DynBackend, ErrorKind, Key, PutMode};
use larder_backend_memory::MemoryBackend;
use larder_tests::fault::{Fault, Faulty};

fn memory() -> DynBackend {
    Arc::new(MemoryBackend::default())
}

#[tokio::test]
async fn timeout_bounds_a_stalled_backend() {
    let faulty = Faulty::new(memory());
    let guarded = Timeout::new(faulty.clone(), Duration::from_millis(100));
    let stats = guarded.stats();
    let cache = Cache::new(Arc::new(guarded));
    let k = Key::new("t").unwrap();
    cache.set(&k, &1u8, None).await.unwrap();
    faulty.set(Fault::Stall(Duration::from_secs(30)));
    let started = std::time::Instant::now();
    let err = cache.get::<u8>(&k).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert!(err.is_retryable());
    let err = cache.set(&k, &2u8, None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    // Generous bound: the point is "no hang", not a latency figure.
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(stats.timeouts(), 2);
    faulty.set(Fault::None);
    assert_eq!(
        cache.get::<u8>(&k).await.unwrap(),
        Some(1),
        "same object works again"
    );
}

#[tokio::test]
async fn fail_open_reads_become_counted_misses_writes_still_fail() {
    let faulty = Faulty::new(memory());
    let guarded = Timeout::new(faulty.clone(), Duration::from_millis(100)).fail_open_reads(true);
    let stats = guarded.stats();
    let cache = Cache::new(Arc::new(guarded));
    let k = Key::new("fo").unwrap();
    cache.set(&k, &"v", None).await.unwrap();

    faulty.set(Fault::Fail(ErrorKind::Unavailable));
    assert_eq!(cache.get::<String>(&k).await.unwrap(), None);
    assert_eq!(
        cache
            .get_many::<String>(&[k.clone(), k.clone()])
            .await
            .unwrap(),
        vec![None, None]
    );
    faulty.set(Fault::Stall(Duration::from_secs(30)));
    assert_eq!(cache.get::<String>(&k).await.unwrap(), None);
    assert_eq!(stats.failed_open(), 3);
    assert_eq!(stats.timeouts(), 1);

    // Writes are never failed open: a write that did not happen is reported.
    faulty.set(Fault::Fail(ErrorKind::Unavailable));
    assert_eq!(
        cache.set(&k, &"w", None).await.unwrap_err().kind(),
        ErrorKind::Unavailable
    );

    // get-or-compute still answers from the loader while the cache is down.
    let v: u32 = cache
        .get_or_insert_with(&Key::new("computed").unwrap(), None, || async {
            Ok::<_, std::io::Error>(7)
        })
        .await
        .unwrap();
    assert_eq!(v, 7);
    faulty.set(Fault::None);
    assert_eq!(cache.get::<String>(&k).await.unwrap().as_deref(), Some("v"));
}

#[tokio::test]
async fn fail_open_does_not_hide_caller_errors() {
    let faulty = Faulty::new(memory());
    let guarded: DynBackend =
        Arc::new(Timeout::new(faulty.clone(), Duration::from_secs(1)).fail_open_reads(true));
    let k = Key::new("x").unwrap();
    guarded
        .put(
            &k,
            larder::Bytes::from_static(b"junk"),
            None,
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    // A decode error is about the data, not the backend: it is not failed open.
    let err = Cache::new(guarded.clone())
        .get::<u32>(&k)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Decode);
    faulty.set(Fault::Fail(ErrorKind::Conflict));
    let err = guarded.get(&k).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
}

#[tokio::test]
async fn instrumented_counts_hits_misses_writes_errors() {
    let faulty = Faulty::new(memory());
    let inst = Instrumented::new(faulty.clone());
    let stats = inst.stats();
    let cache = Cache::new(Arc::new(inst));
    let (a, b) = (Key::new("a").unwrap(), Key::new("b").unwrap());
    cache.set(&a, &1u8, None).await.unwrap();
    cache.get::<u8>(&a).await.unwrap();
    cache.get::<u8>(&b).await.unwrap();
    cache
        .get_many::<u8>(&[a.clone(), b.clone(), a.clone()])
        .await
        .unwrap();
    faulty.set(Fault::Fail(ErrorKind::Unavailable));
    cache.get::<u8>(&a).await.unwrap_err();
    let s = stats.snapshot();
    assert_eq!((s.hits, s.misses, s.writes, s.errors), (3, 2, 1, 1));
}

#[test]
fn instrumented_reports_through_the_metrics_facade() {
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            let cache = Cache::new(Arc::new(Instrumented::new(memory())));
            let k = Key::new("m").unwrap();
            cache.set(&k, &1u8, None).await.unwrap();
            cache.get::<u8>(&k).await.unwrap();
            cache.get::<u8>(&k).await.unwrap();
            cache.get::<u8>(&Key::new("none").unwrap()).await.unwrap();
        })
    });
    let mut hits = None;
    let mut misses = None;
    let mut latency_samples = 0;
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        match (key.key().name(), value) {
            ("larder_cache_hits_total", metrics_util::debugging::DebugValue::Counter(n)) => {
                hits = Some(n)
            }
            ("larder_cache_misses_total", metrics_util::debugging::DebugValue::Counter(n)) => {
                misses = Some(n)
            }
            ("larder_cache_op_seconds", metrics_util::debugging::DebugValue::Histogram(v)) => {
                latency_samples += v.len()
            }
            _ => {}
        }
    }
    assert_eq!(hits, Some(2));
    assert_eq!(misses, Some(1));
    assert_eq!(latency_samples, 4, "one latency sample per operation");
}

#[tokio::test]
async fn layers_stack_in_any_order() {
    let base = memory();
    let ns: DynBackend = Arc::new(Namespace::new(base.clone(), "app").unwrap());
    let stack: DynBackend = Arc::new(Instrumented::new(Arc::new(Timeout::new(
        ns,
        Duration::from_secs(1),
    ))));
    let cache = Cache::new(stack);
    let k = Key::new("k").unwrap();
    cache.set(&k, &"layered", None).await.unwrap();
    assert_eq!(
        cache.get::<String>(&k).await.unwrap().as_deref(),
        Some("layered")
    );
    assert!(
        base.get(&k).await.unwrap().is_none(),
        "stored under the namespace prefix"
    );
}

#[tokio::test]
async fn namespace_survives_eviction_of_its_generation() {
    // A generation entry that vanishes (evicted) yields a fresh generation: old entries
    // never come back.
    let base = memory();
    let ns = Arc::new(
        Namespace::new(base.clone(), "evict")
            .unwrap()
            .refresh(Duration::ZERO),
    );
    let cache = Cache::new(ns.clone());
    let k = Key::new("k").unwrap();
    cache.set(&k, &1u8, None).await.unwrap();
    base.delete(&Key::new("evict:gen").unwrap(), larder::DeleteMode::Any)
        .await
        .unwrap();
    assert_eq!(cache.get::<u8>(&k).await.unwrap(), None);
}

/// The futures of the typed handle are `Send`, so they run on multi-threaded runtimes.
#[test]
fn public_futures_are_send() {
    fn send<T: Send>(_: &T) {}
    let cache = Cache::new(memory());
    let k = Key::new("s").unwrap();
    send(&cache.get::<String>(&k));
    send(&cache.set(&k, "v", None));
    send(&cache.update(&k, None, |n: Option<u8>| n.unwrap_or(0)));
    send(&cache.get_or_insert_with(&k, None, || async { Ok::<u8, std::io::Error>(1) }));
    send(&larder::connect("memory://"));
}

/// A hit on the memory backend is answered without waiting (`get_now`) through every layer,
/// each doing its part: instrumentation counts it, a restriction checks the key, a namespace
/// maps the key and masks the version, a near cache keeps and then serves the entry.
#[tokio::test]
async fn memory_hits_are_answered_at_once_through_every_layer() {
    let mem = memory();
    let k = Key::new("sync").unwrap();
    let v = mem
        .put(&k, Bytes::from_static(b"v"), None, PutMode::Overwrite)
        .await
        .unwrap();

    let inst = Instrumented::new(mem.clone());
    let stats = inst.stats();
    let mut caps = mem.capabilities().clone();
    caps.max_key_len = 8;
    let restricted = Restrict::new(Arc::new(inst), caps).unwrap();
    let stack = Timeout::new(Arc::new(restricted), Duration::from_secs(1));
    let e = stack
        .get_now(&k)
        .expect("answered at once")
        .unwrap()
        .unwrap();
    assert_eq!((&e.value[..], e.version), (&b"v"[..], v));
    let absent = stack.get_now(&Key::new("none").unwrap()).expect("answered");
    assert!(absent.unwrap().is_none());
    let s = stats.snapshot();
    assert_eq!(
        (s.hits, s.misses),
        (1, 1),
        "instrumentation counts sync answers"
    );
    let long = stack
        .get_now(&Key::new("too-long-key").unwrap())
        .expect("answered");
    assert_eq!(long.unwrap_err().kind(), ErrorKind::InvalidKey);
    assert_eq!(
        stats.snapshot().misses,
        1,
        "a refused key never reaches the backend"
    );

    let ns = Namespace::new(mem.clone(), "app").unwrap();
    assert!(
        ns.get_now(&k).is_none(),
        "the generation is not known yet: the async path loads it"
    );
    let nv = ns
        .put(&k, Bytes::from_static(b"n"), None, PutMode::Overwrite)
        .await
        .unwrap();
    let e = ns.get_now(&k).expect("answered at once").unwrap().unwrap();
    assert_eq!(
        (&e.value[..], e.version),
        (&b"n"[..], nv),
        "mapped key, masked version"
    );
    assert_eq!(ns.get(&k).await.unwrap(), Some(e));

    let near = Near::builder(mem)
        .accept_staleness(Duration::from_secs(5))
        .build()
        .unwrap();
    let near_stats = near.stats();
    for _ in 0..2 {
        let e = near
            .get_now(&k)
            .expect("answered at once")
            .unwrap()
            .unwrap();
        assert_eq!(e.version, v);
    }
    assert_eq!((near_stats.shared_hits(), near_stats.local_hits()), (1, 1));
}

/// The near cache's counters reach the `metrics` recorder installed when it is built, as
/// well as its stats.
#[test]
fn near_reports_through_the_metrics_facade() {
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let near = metrics::with_local_recorder(&recorder, || {
        Near::builder(memory())
            .accept_staleness(Duration::from_secs(5))
            .build()
            .unwrap()
    });
    let stats = near.stats();
    let cache = Cache::new(Arc::new(near));
    rt.block_on(async {
        let k = Key::new("m").unwrap();
        cache.set(&k, &1u8, None).await.unwrap();
        for _ in 0..3 {
            cache.get::<u8>(&k).await.unwrap();
        }
        cache.get::<u8>(&Key::new("none").unwrap()).await.unwrap();
    });
    let mut seen = std::collections::HashMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        if let metrics_util::debugging::DebugValue::Counter(n) = value {
            seen.insert(key.key().name().to_owned(), n);
        }
    }
    let exported = |name: &str| seen.get(name).copied();
    assert_eq!(exported("larder_near_local_hits_total"), Some(2));
    assert_eq!(exported("larder_near_shared_hits_total"), Some(1));
    assert_eq!(exported("larder_near_misses_total"), Some(1));
    assert_eq!(exported("larder_near_bypassed_total"), Some(0));
    assert_eq!(
        (stats.local_hits(), stats.shared_hits(), stats.misses()),
        (2, 1, 1)
    );
}
