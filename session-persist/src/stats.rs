//! The counters of the write-through layer ([`WriteThroughStats`]), shared by its parts: the
//! breaker counts failures and skipped calls, the fills count hits and integrity failures,
//! the change log's reader counts tombstones written and entries evicted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Cache-side counters of a [`CachedStore`](crate::CachedStore).
#[derive(Debug, Default)]
pub struct WriteThroughStats {
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) cache_errors: AtomicU64,
    pub(crate) invalidations: AtomicU64,
    pub(crate) skipped: AtomicU64,
    pub(crate) integrity_failures: AtomicU64,
    pub(crate) outbox_drained: AtomicU64,
    pub(crate) log_evictions: AtomicU64,
    pub(crate) log_flushes: AtomicU64,
    /// When an integrity failure was last logged.
    last_integrity_log: Mutex<Option<Instant>>,
}

/// A copy of [`WriteThroughStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WriteThroughSnapshot {
    /// Loads answered by the cache.
    pub hits: u64,
    /// Loads that went to the database.
    pub misses: u64,
    /// Cache operations that failed or timed out (each became a miss or an invalidation).
    pub cache_errors: u64,
    /// Cache entries invalidated because writing them failed.
    pub invalidations: u64,
    /// Cache operations not attempted because the cache had just failed (circuit open).
    pub skipped: u64,
    /// Cache entries refused because their integrity tag did not match (counted as misses).
    pub integrity_failures: u64,
    /// Change log deletions (deleted sessions) whose tombstones this store wrote.
    pub outbox_drained: u64,
    /// Cache entries replaced by a marker (a refill from the store on the next load)
    /// because the change log named a newer saved version.
    pub log_evictions: u64,
    /// Times this store came back to the change log after longer than its retention and
    /// started again at its head.
    pub log_flushes: u64,
}

impl WriteThroughStats {
    /// The counters now.
    pub fn snapshot(&self) -> WriteThroughSnapshot {
        WriteThroughSnapshot {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            cache_errors: self.cache_errors.load(Ordering::Relaxed),
            invalidations: self.invalidations.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
            integrity_failures: self.integrity_failures.load(Ordering::Relaxed),
            outbox_drained: self.outbox_drained.load(Ordering::Relaxed),
            log_evictions: self.log_evictions.load(Ordering::Relaxed),
            log_flushes: self.log_flushes.load(Ordering::Relaxed),
        }
    }

    /// Adds one to `counter`.
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an entry whose integrity tag did not match, and logs it.
    pub(crate) fn integrity_failure(&self) {
        Self::bump(&self.integrity_failures);
        metrics::counter!("larder_session_cache_integrity_failures_total").increment(1);
        // Once per interval: a flood of forged entries must not flood the log.
        let mut last = self.last_integrity_log.lock();
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            *last = Some(Instant::now());
            tracing::warn!(
                total = self.integrity_failures.load(Ordering::Relaxed),
                "session cache entry failed its integrity check; treated as a miss"
            );
        }
    }
}
