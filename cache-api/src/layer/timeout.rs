use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::{
    CacheBackend, Capabilities, DeleteMode, DynBackend, Entry, Error, ErrorKind, Key, PutMode,
    Result, Ttl, Version,
};

/// Counters of a [`Timeout`] layer.
#[derive(Debug, Default)]
pub struct TimeoutStats {
    timeouts: AtomicU64,
    errors: AtomicU64,
    failed_open: AtomicU64,
}

impl TimeoutStats {
    /// Operations that hit the deadline.
    pub fn timeouts(&self) -> u64 {
        self.timeouts.load(Ordering::Relaxed)
    }
    /// Operations that failed with an infrastructure error (unavailable, backend, timeout).
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
    /// Reads whose failure was turned into a miss.
    pub fn failed_open(&self) -> u64 {
        self.failed_open.load(Ordering::Relaxed)
    }
}

/// A deadline on every operation and, when chosen, **fail-open reads**: a read that fails
/// because the backend is slow or down answers "miss" instead of an error, and is counted.
///
/// Writes are never failed open: a write that did not happen is reported. An operation that
/// timed out may still have taken effect ([`ErrorKind::Timeout`] says so).
///
/// Fail-open reads suit caching, not coordination: compare-and-swap stays safe behind them
/// (a write based on a read that failed open loses its race), but a record that could not be
/// read looks absent, so a task scheduler would take a failed heartbeat for a run taken over.
/// Put leases and schedulers on the backend, or on a `Timeout` without fail-open reads.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> larder_cache_api::Result<()> {
/// use std::{sync::Arc, time::Duration};
/// use larder_cache_api::layer::Timeout;
/// # let backend: larder_cache_api::DynBackend = Arc::new(larder_backend_memory::MemoryBackend::default());
/// let guarded = Timeout::new(backend, Duration::from_millis(250)).fail_open_reads(true);
/// let stats = guarded.stats();
/// # let _ = (guarded, stats);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Timeout {
    inner: DynBackend,
    timeout: Duration,
    fail_open_reads: bool,
    stats: Arc<TimeoutStats>,
}

impl Timeout {
    /// Every operation on `inner` gets `timeout`.
    pub fn new(inner: DynBackend, timeout: Duration) -> Self {
        Timeout {
            inner,
            timeout,
            fail_open_reads: false,
            stats: Arc::default(),
        }
    }

    /// Turn failed reads (`get`, `get_many`) into misses.
    pub fn fail_open_reads(mut self, yes: bool) -> Self {
        self.fail_open_reads = yes;
        self
    }

    /// The layer's counters (shared; keep the `Arc`).
    pub fn stats(&self) -> Arc<TimeoutStats> {
        Arc::clone(&self.stats)
    }

    async fn run<T>(&self, op: &'static str, fut: impl Future<Output = Result<T>>) -> Result<T> {
        let res = match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r,
            Err(_) => {
                self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                Err(Error::new(
                    ErrorKind::Timeout,
                    format!("{op} did not finish within {:?}", self.timeout),
                )
                .with_backend((*self.inner).capabilities().name))
            }
        };
        if let Err(e) = &res {
            self.count_error(op, e);
        }
        res
    }

    fn count_error(&self, op: &'static str, e: &Error) {
        if is_infrastructure(e) {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("larder_cache_backend_errors_total", "op" => op, "kind" => e.kind().as_str())
                .increment(1);
        }
    }

    fn fail_open<T>(
        &self,
        op: &'static str,
        res: Result<T>,
        miss: impl FnOnce() -> T,
    ) -> Result<T> {
        match res {
            Err(e) if self.fail_open_reads && is_infrastructure(&e) => {
                self.stats.failed_open.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("larder_cache_failed_open_total", "op" => op).increment(1);
                tracing::warn!(op, error = %e, "cache read failed open (answered as a miss)");
                Ok(miss())
            }
            other => other,
        }
    }
}

fn is_infrastructure(e: &Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Unavailable | ErrorKind::Timeout | ErrorKind::Backend
    )
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl CacheBackend for Timeout {
    fn capabilities(&self) -> &Capabilities {
        (*self.inner).capabilities()
    }

    fn details(&self) -> Vec<(&'static str, String)> {
        self.inner.details()
    }

    async fn get(&self, key: &Key) -> Result<Option<Entry>> {
        let r = self.run("get", (*self.inner).get(key)).await;
        self.fail_open("get", r, || None)
    }

    /// An answer at hand cannot be late: forwarded, failed open like `get` if it is an error.
    fn get_now(&self, key: &Key) -> Option<Result<Option<Entry>>> {
        let r = (*self.inner).get_now(key)?;
        if let Err(e) = &r {
            self.count_error("get", e);
        }
        Some(self.fail_open("get", r, || None))
    }

    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Entry>>> {
        let r = self.run("get_many", (*self.inner).get_many(keys)).await;
        self.fail_open("get_many", r, || vec![None; keys.len()])
    }

    async fn put(
        &self,
        key: &Key,
        value: Bytes,
        ttl: Option<Ttl>,
        mode: PutMode,
    ) -> Result<Version> {
        self.run("put", (*self.inner).put(key, value, ttl, mode))
            .await
    }

    async fn put_many(&self, items: &[(Key, Bytes)], ttl: Option<Ttl>) -> Result<Vec<Version>> {
        self.run("put_many", (*self.inner).put_many(items, ttl))
            .await
    }

    async fn delete(&self, key: &Key, mode: DeleteMode) -> Result<bool> {
        self.run("delete", (*self.inner).delete(key, mode)).await
    }

    async fn touch(&self, key: &Key, ttl: Option<Ttl>) -> Result<bool> {
        self.run("touch", (*self.inner).touch(key, ttl)).await
    }
}
