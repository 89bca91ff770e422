//! A counter incremented by compare-and-swap from several tasks, counting the increments the
//! backend acknowledged: with replies lost after the server applied them, the stored counter
//! must still equal the acknowledged increments exactly (a resent write that applied twice,
//! or that reported a conflict with itself and was tried again, moves it further).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use larder_cache_api::{Bytes, DynBackend, ErrorKind, Key, PutMode};

/// What a run of [`run`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counted {
    /// The stored counter at the end.
    pub stored: u64,
    /// Increments the backend acknowledged.
    pub acknowledged: u64,
    /// Increments that failed with an error other than a conflict (not retried).
    pub failed: u64,
}

fn decode(value: &[u8]) -> u64 {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse().ok())
        .expect("the counter holds a number")
}

/// Increments the counter at `key` (created at 0) `n` times, `at_once` tasks at a time: each
/// reads it and writes it back plus one if its version did not move (a conflict reads again).
pub async fn run(b: DynBackend, key: &Key, n: usize, at_once: usize) -> Counted {
    b.put(key, Bytes::from_static(b"0"), None, PutMode::Overwrite)
        .await
        .expect("the counter starts at 0");
    let acknowledged = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..at_once {
        let (b, key) = (b.clone(), key.clone());
        let (acknowledged, failed, next) = (acknowledged.clone(), failed.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::SeqCst) < n {
                loop {
                    let current = match b.get(&key).await {
                        Ok(e) => e.expect("the counter is never deleted"),
                        // A read that failed changed nothing: read again.
                        Err(_) => continue,
                    };
                    let bumped = (decode(&current.value) + 1).to_string();
                    let put = b
                        .put(
                            &key,
                            Bytes::from(bumped),
                            None,
                            PutMode::Update(current.version),
                        )
                        .await;
                    match put {
                        Ok(_) => {
                            acknowledged.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) if e.kind() == ErrorKind::Conflict => continue,
                        Err(e) => {
                            eprintln!("increment failed: {e}");
                            failed.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    break;
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("a counting task");
    }
    let stored = b
        .get(key)
        .await
        .expect("read the counter")
        .expect("present");
    Counted {
        stored: decode(&stored.value),
        acknowledged: acknowledged.load(Ordering::SeqCst),
        failed: failed.load(Ordering::SeqCst),
    }
}
