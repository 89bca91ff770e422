//! The session database as the app uses it: every call is timed into
//! [`DB_OP_SECONDS`](crate::telemetry::DB_OP_SECONDS), and the expiry task's sweeps are
//! counted for the status page.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use larder::sessions::{
    ApplyFn, IdHash, Invalidation, Outbox, Record, SaveOutcome, SessionData, SessionId,
    SessionStore, Timestamp,
};

use crate::telemetry::DB_OP_SECONDS;

/// Wraps the SQL store. Forwards every method, the provided ones too, so the store's own
/// `save_locked` (a row lock) is kept, and its outbox.
#[derive(Debug)]
pub(crate) struct ObservedStore {
    inner: Arc<dyn Outbox>,
    sweeps: Arc<AtomicU64>,
}

impl ObservedStore {
    /// Wraps `inner`; `sweeps` counts its `sweep` calls.
    pub(crate) fn new(inner: Arc<dyn Outbox>, sweeps: Arc<AtomicU64>) -> Self {
        ObservedStore { inner, sweeps }
    }

    async fn timed<T>(&self, op: &'static str, fut: impl Future<Output = T>) -> T {
        let start = Instant::now();
        let out = fut.await;
        metrics::histogram!(DB_OP_SECONDS, "op" => op).record(start.elapsed().as_secs_f64());
        out
    }
}

#[async_trait]
impl SessionStore for ObservedStore {
    async fn create(
        &self,
        data: SessionData,
        principal: Option<String>,
        expires_at: Timestamp,
    ) -> larder::Result<Record> {
        self.timed("create", self.inner.create(data, principal, expires_at))
            .await
    }
    async fn load(&self, id: &SessionId) -> larder::Result<Option<Record>> {
        self.timed("load", self.inner.load(id)).await
    }
    async fn load_authoritative(&self, id: &SessionId) -> larder::Result<Option<Record>> {
        self.timed("load", self.inner.load_authoritative(id)).await
    }
    async fn save_or_current(&self, record: &Record) -> larder::Result<SaveOutcome> {
        self.timed("save", self.inner.save_or_current(record)).await
    }
    async fn save(&self, record: &Record) -> larder::Result<Record> {
        self.timed("save", self.inner.save(record)).await
    }
    async fn save_locked(
        &self,
        id: &SessionId,
        apply: &ApplyFn,
        expires_at: Timestamp,
    ) -> larder::Result<Record> {
        self.timed("save_locked", self.inner.save_locked(id, apply, expires_at))
            .await
    }
    async fn touch(&self, id: &SessionId, expires_at: Timestamp) -> larder::Result<Option<Record>> {
        self.timed("touch", self.inner.touch(id, expires_at)).await
    }
    async fn delete(&self, id: &SessionId) -> larder::Result<bool> {
        self.timed("delete", self.inner.delete(id)).await
    }
    async fn rotate(&self, id: &SessionId) -> larder::Result<Option<Record>> {
        self.timed("rotate", self.inner.rotate(id)).await
    }
    async fn delete_principal(&self, principal: &str) -> larder::Result<Vec<IdHash>> {
        self.timed("delete_principal", self.inner.delete_principal(principal))
            .await
    }
    async fn sweep(&self, batch: u32) -> larder::Result<u64> {
        self.sweeps.fetch_add(1, Ordering::Relaxed);
        self.timed("sweep", self.inner.sweep(batch)).await
    }
    async fn count(&self) -> larder::Result<u64> {
        self.timed("count", self.inner.count()).await
    }
}

#[async_trait]
impl Outbox for ObservedStore {
    async fn log_after(&self, after: i64, limit: u32) -> larder::Result<Vec<Invalidation>> {
        self.timed("log_after", self.inner.log_after(after, limit))
            .await
    }
    async fn log_at(&self, seqs: &[i64]) -> larder::Result<Vec<Invalidation>> {
        self.timed("log_at", self.inner.log_at(seqs)).await
    }
    async fn log_start(&self, before: Timestamp) -> larder::Result<i64> {
        self.timed("log_start", self.inner.log_start(before)).await
    }
    fn log_retention(&self) -> std::time::Duration {
        self.inner.log_retention()
    }
}
