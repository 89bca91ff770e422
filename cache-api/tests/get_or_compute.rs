//! `Cache::get_or_compute`, the infallible get-or-compute, on the in-process backend.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use larder_cache_api::{Cache, Key, Ttl};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_run_the_loader_once_and_a_hit_skips_it() {
    let cache = Cache::new(Arc::new(larder_backend_memory::MemoryBackend::default()));
    let key = Key::new("report").unwrap();
    let loads = Arc::new(AtomicUsize::new(0));
    let mut calls = Vec::new();
    for _ in 0..20 {
        let (cache, key, loads) = (cache.clone(), key.clone(), loads.clone());
        calls.push(tokio::spawn(async move {
            cache
                .get_or_compute(&key, Some(Ttl::from_secs(60).unwrap()), || async move {
                    loads.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    vec![1u32, 2, 3]
                })
                .await
        }));
    }
    for c in calls {
        assert_eq!(c.await.unwrap().unwrap(), vec![1, 2, 3]);
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    let again: Vec<u32> = cache
        .get_or_compute(&key, None, || async {
            unreachable!("served from the cache")
        })
        .await
        .unwrap();
    assert_eq!(again, vec![1, 2, 3]);
    assert_eq!(
        cache.get::<Vec<u32>>(&key).await.unwrap(),
        Some(vec![1, 2, 3])
    );
}
