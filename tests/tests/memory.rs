//! Memory-backend behaviour beyond the shared contract: bounds, eviction, expiry cleanup;
//! and the coordination cases of the conformance suite over it.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use larder::{Bytes, CacheBackend, Key, PutMode, Ttl};
use larder_backend_memory::{MemoryBackend, MemoryConfig};
use larder_tests::{eventually, Patience};

fn k(i: usize) -> Key {
    Key::new(format!("key-{i}")).unwrap()
}

#[tokio::test]
async fn entry_count_stays_within_capacity() {
    let b = MemoryBackend::new(MemoryConfig::default().with_max_entries(1000)).unwrap();
    for i in 0..20_000 {
        b.put(&k(i), Bytes::from_static(b"v"), None, PutMode::Overwrite)
            .await
            .unwrap();
        assert!(b.len() <= 1000, "{} entries after {i} writes", b.len());
    }
    assert!(b.evictions() >= 19_000);
    // The most recent writes survive (sampled LRU keeps recent entries).
    assert!(b.get(&k(19_999)).await.unwrap().is_some());
}

#[tokio::test]
async fn byte_budget_is_enforced() {
    let cfg = MemoryConfig::default()
        .with_max_bytes(256 * 1024)
        .with_max_value_size(8 * 1024);
    let b = MemoryBackend::new(cfg).unwrap();
    for i in 0..1000 {
        b.put(
            &k(i),
            Bytes::from(vec![0u8; 4096]),
            None,
            PutMode::Overwrite,
        )
        .await
        .unwrap();
        assert!(
            b.bytes() <= 256 * 1024,
            "{} bytes after {i} writes",
            b.bytes()
        );
    }
}

#[tokio::test]
async fn recently_read_entries_outlive_cold_ones() {
    let b = MemoryBackend::new(MemoryConfig::default().with_max_entries(64)).unwrap();
    let hot = Key::new("hot").unwrap();
    b.put(&hot, Bytes::from_static(b"h"), None, PutMode::Overwrite)
        .await
        .unwrap();
    for i in 0..5000 {
        b.put(&k(i), Bytes::from_static(b"c"), None, PutMode::Overwrite)
            .await
            .unwrap();
        // Reading keeps it recently used.
        assert!(
            b.get(&hot).await.unwrap().is_some(),
            "hot key evicted after {i} writes"
        );
    }
}

#[tokio::test]
async fn expired_entries_stay_bounded_and_are_purged() {
    let b = MemoryBackend::new(MemoryConfig::default().with_max_entries(1000)).unwrap();
    let ttl = Ttl::from_millis(50).unwrap();
    for i in 0..5000 {
        b.put(
            &k(i),
            Bytes::from_static(b"v"),
            Some(ttl),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
        assert!(
            b.len() <= 1000,
            "expired or not, entries stay within capacity"
        );
    }
    tokio::time::sleep(Duration::from_millis(120)).await;
    // New entries are admitted although the cache is full of expired ones.
    for i in 5000..5100 {
        b.put(&k(i), Bytes::from_static(b"live"), None, PutMode::Overwrite)
            .await
            .unwrap();
        assert!(b.get(&k(i)).await.unwrap().is_some());
    }
    let removed = b.purge_expired();
    assert!(removed > 0);
    assert!(b.len() <= 1000);
    for i in 5000..5100 {
        assert!(
            b.get(&k(i)).await.unwrap().is_some(),
            "live entries survive the purge"
        );
    }
    // Once everything has expired and been purged, nothing is held.
    let c = MemoryBackend::default();
    for i in 0..500 {
        c.put(
            &k(i),
            Bytes::from_static(b"v"),
            Some(ttl),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(c.purge_expired(), 500);
    assert_eq!(
        (c.len(), c.bytes()),
        (0, 0),
        "weight accounting returns to zero"
    );
}

#[tokio::test]
async fn background_sweeper_removes_expired_and_stops_with_the_backend() {
    let b = Arc::new(MemoryBackend::default());
    let sweeper = b.spawn_sweeper(Duration::from_millis(50));
    for i in 0..100 {
        b.put(
            &k(i),
            Bytes::from_static(b"v"),
            Some(Ttl::from_millis(20).unwrap()),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    }
    let patience = Patience::new(Duration::from_secs(5)).every(Duration::from_millis(20));
    eventually(patience, "the sweeper empties the backend", async || {
        b.is_empty()
    })
    .await;
    drop(b);
    tokio::time::timeout(Duration::from_secs(5), sweeper)
        .await
        .expect("sweeper ends once the backend is dropped")
        .unwrap();
}

#[test]
fn invalid_configuration_is_a_typed_error() {
    for cfg in [
        MemoryConfig::default().with_max_entries(0),
        MemoryConfig::default()
            .with_max_bytes(10)
            .with_max_value_size(100),
    ] {
        assert_eq!(
            MemoryBackend::new(cfg).unwrap_err().kind(),
            larder::ErrorKind::Config
        );
    }
}

/// Every `put` that returns `Ok` is readable right after it, whatever the limits: a value
/// the budget cannot hold is an error, never a silent drop.
#[tokio::test(flavor = "current_thread")]
async fn no_put_is_silently_dropped_under_any_limits() {
    use larder::{CacheBackend, Key, PutMode};
    let mut checked = 0;
    for (entries, bytes, max_value) in [
        (4usize, 4096usize, 1024usize),
        (4, 1024 + 1536, 1024),
        (8, 64 * 1024, 8 * 1024),
        (16, 8 * 1024 + 512, 8 * 1024),
        (1000, 256 * 1024, 64 * 1024),
        (100_000, 256 << 20, 1 << 20),
    ] {
        let Ok(b) = MemoryBackend::new(
            MemoryConfig::default()
                .with_max_entries(entries)
                .with_max_bytes(bytes)
                .with_max_value_size(max_value),
        ) else {
            continue;
        };
        for i in 0..200usize {
            let len = [0, 1, max_value / 3, max_value / 2, max_value][i % 5];
            let key = Key::new(format!("k{}", i % 37)).unwrap();
            // Unconditional and conditional writes alike.
            let mode = match (i % 3, b.get(&key).await.unwrap()) {
                (0, _) => PutMode::Overwrite,
                (_, Some(e)) => PutMode::Update(e.version),
                (_, None) => PutMode::Create,
            };
            match b.put(&key, vec![7u8; len].into(), None, mode).await {
                Ok(v) => {
                    let e = b.get(&key).await.unwrap();
                    assert_eq!(
                        e.map(|e| (e.version, e.value.len())),
                        Some((v, len)),
                        "{entries}/{bytes}/{max_value}: put #{i} of {len} B returned Ok but is gone"
                    );
                    checked += 1;
                }
                Err(e) => assert_eq!(e.kind(), larder::ErrorKind::ValueTooLarge, "{e}"),
            }
        }
    }
    assert!(checked > 600, "most puts fit: {checked}");
}

#[test]
fn too_small_limits_are_refused_at_construction() {
    for cfg in [
        MemoryConfig::default().with_max_entries(1),
        MemoryConfig::default().with_max_entries(3),
    ] {
        let e = MemoryBackend::new(cfg).unwrap_err();
        assert_eq!(e.kind(), larder::ErrorKind::Config, "{e}");
    }
}

/// A TTL never ends early: an entry with a 1 ms TTL read 0.2 ms after it was written is
/// always there (10,000 times).
#[tokio::test(flavor = "current_thread")]
async fn a_one_millisecond_ttl_is_never_early() {
    use larder::{CacheBackend, Key, PutMode, Ttl};
    let b = MemoryBackend::new(MemoryConfig::default()).unwrap();
    let key = Key::new("short").unwrap();
    let ttl = Ttl::from_millis(1).unwrap();
    let mut early = 0;
    for _ in 0..10_000 {
        let written = std::time::Instant::now();
        b.put(
            &key,
            Bytes::from_static(b"v"),
            Some(ttl),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
        while written.elapsed() < Duration::from_micros(200) {
            std::hint::spin_loop();
        }
        let read = b.get(&key).await.unwrap();
        if read.is_none() && written.elapsed() < Duration::from_millis(1) {
            early += 1;
        }
    }
    assert_eq!(
        early, 0,
        "reads that found a 1 ms entry gone before 1 ms had passed"
    );
}

async fn memory_backend() -> larder::DynBackend {
    Arc::new(MemoryBackend::default())
}

/// The coordination cases of the conformance suite over the memory backend (its own tests
/// stamp the contract's cases; the backend does not depend on `larder-coord`).
mod coordination {
    larder_coord::coordination_cases!(super::memory_backend);
}
