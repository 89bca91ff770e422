use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use tracing::Instrument;

use crate::{
    CacheBackend, Capabilities, DeleteMode, DynBackend, Entry, Key, PutMode, Result, Ttl, Version,
};

/// In-process counters of an [`Instrumented`] layer, for a status page.
#[derive(Debug, Default)]
pub struct CacheStats {
    hits: AtomicU64,
    misses: AtomicU64,
    writes: AtomicU64,
    errors: AtomicU64,
}

/// A copy of [`CacheStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StatsSnapshot {
    /// Keys found by `get`/`get_many`.
    pub hits: u64,
    /// Keys not found by `get`/`get_many`.
    pub misses: u64,
    /// Successful writes, deletes and touches.
    pub writes: u64,
    /// Operations that returned an error (conflicts included).
    pub errors: u64,
}

impl CacheStats {
    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }
}

/// Emits a `tracing` span per operation and records, through the `metrics` facade:
///
/// | metric | kind | labels |
/// |---|---|---|
/// | `larder_cache_hits_total` | counter | `backend` |
/// | `larder_cache_misses_total` | counter | `backend` |
/// | `larder_cache_errors_total` | counter | `backend`, `op`, `kind` |
/// | `larder_cache_op_seconds` | histogram | `backend`, `op` |
///
/// Install any `metrics` recorder (Prometheus, StatsD, ...) to export them; with none
/// installed they cost almost nothing. [`stats`](Instrumented::stats) gives the same
/// counts in process.
#[derive(Debug)]
pub struct Instrumented {
    inner: DynBackend,
    stats: Arc<CacheStats>,
}

impl Instrumented {
    /// Instruments `inner`.
    pub fn new(inner: DynBackend) -> Self {
        Instrumented {
            inner,
            stats: Arc::default(),
        }
    }

    /// The in-process counters (shared; keep the `Arc`).
    pub fn stats(&self) -> Arc<CacheStats> {
        Arc::clone(&self.stats)
    }

    fn name(&self) -> &'static str {
        (*self.inner).capabilities().name
    }

    async fn observe<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let backend = self.name();
        let span = tracing::debug_span!("larder.cache", op, backend);
        let start = Instant::now();
        let res = fut.instrument(span).await;
        self.record(op, start, &res);
        res
    }

    /// What [`observe`](Self::observe) records, for an answer given without waiting.
    fn observe_now<T>(
        &self,
        op: &'static str,
        f: impl FnOnce() -> Option<Result<T>>,
    ) -> Option<Result<T>> {
        let backend = self.name();
        let span = tracing::debug_span!("larder.cache", op, backend);
        let _in = span.enter();
        let start = Instant::now();
        let res = f()?;
        self.record(op, start, &res);
        Some(res)
    }

    fn record<T>(&self, op: &'static str, start: Instant, res: &Result<T>) {
        let backend = self.name();
        metrics::histogram!("larder_cache_op_seconds", "backend" => backend, "op" => op)
            .record(start.elapsed().as_secs_f64());
        if let Err(e) = res {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("larder_cache_errors_total", "backend" => backend, "op" => op, "kind" => e.kind().as_str())
                .increment(1);
            tracing::debug!(op, backend, error = %e, "cache operation failed");
        }
    }

    fn count_lookups(&self, found: u64, missing: u64) {
        let backend = self.name();
        self.stats.hits.fetch_add(found, Ordering::Relaxed);
        self.stats.misses.fetch_add(missing, Ordering::Relaxed);
        metrics::counter!("larder_cache_hits_total", "backend" => backend).increment(found);
        metrics::counter!("larder_cache_misses_total", "backend" => backend).increment(missing);
    }

    fn count_write<T>(&self, res: Result<T>) -> Result<T> {
        if res.is_ok() {
            self.stats.writes.fetch_add(1, Ordering::Relaxed);
        }
        res
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl CacheBackend for Instrumented {
    fn capabilities(&self) -> &Capabilities {
        (*self.inner).capabilities()
    }

    fn details(&self) -> Vec<(&'static str, String)> {
        self.inner.details()
    }

    async fn get(&self, key: &Key) -> Result<Option<Entry>> {
        let r = self.observe("get", (*self.inner).get(key)).await?;
        let hit = u64::from(r.is_some());
        self.count_lookups(hit, 1 - hit);
        Ok(r)
    }

    /// Recorded like `get`: the same span, histogram and counters.
    fn get_now(&self, key: &Key) -> Option<Result<Option<Entry>>> {
        let r = self.observe_now("get", || (*self.inner).get_now(key))?;
        if let Ok(e) = &r {
            let hit = u64::from(e.is_some());
            self.count_lookups(hit, 1 - hit);
        }
        Some(r)
    }

    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Entry>>> {
        let r = self
            .observe("get_many", (*self.inner).get_many(keys))
            .await?;
        let found = r.iter().filter(|e| e.is_some()).count() as u64;
        self.count_lookups(found, r.len() as u64 - found);
        Ok(r)
    }

    async fn put(
        &self,
        key: &Key,
        value: Bytes,
        ttl: Option<Ttl>,
        mode: PutMode,
    ) -> Result<Version> {
        let r = self
            .observe("put", (*self.inner).put(key, value, ttl, mode))
            .await;
        self.count_write(r)
    }

    async fn put_many(&self, items: &[(Key, Bytes)], ttl: Option<Ttl>) -> Result<Vec<Version>> {
        let r = self
            .observe("put_many", (*self.inner).put_many(items, ttl))
            .await;
        self.count_write(r)
    }

    async fn delete(&self, key: &Key, mode: DeleteMode) -> Result<bool> {
        let r = self
            .observe("delete", (*self.inner).delete(key, mode))
            .await;
        self.count_write(r)
    }

    async fn touch(&self, key: &Key, ttl: Option<Ttl>) -> Result<bool> {
        let r = self.observe("touch", (*self.inner).touch(key, ttl)).await;
        self.count_write(r)
    }
}
