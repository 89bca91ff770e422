//! The linearizability checker of the conformance suite catches broken compare-and-swap:
//! test-only backends over the memory backend, one whose conditional update forgets to
//! compare versions and one whose reads lag a write behind, give histories the checker
//! rejects, while the memory backend itself passes.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use larder_backend_memory::MemoryBackend;
use larder_cache_api::conformance::key;
use larder_cache_api::conformance::linearizability::{
    check, increment_workload, mixed_workload, Call, Outcome, Recorder,
};
use larder_cache_api::{
    CacheBackend, Capabilities, DeleteMode, DynBackend, Entry, Error, Key, PutMode, Result, Ttl,
    Version,
};
use parking_lot::Mutex;

/// A conditional update that does not compare versions: it reads, lets others run, and
/// overwrites whatever is there (the classic lost update).
#[derive(Debug, Default)]
struct NoVersionCheck {
    inner: MemoryBackend,
}

#[async_trait]
impl CacheBackend for NoVersionCheck {
    fn capabilities(&self) -> &Capabilities {
        self.inner.capabilities()
    }
    async fn get(&self, key: &Key) -> Result<Option<Entry>> {
        self.inner.get(key).await
    }
    async fn put(
        &self,
        key: &Key,
        value: Bytes,
        ttl: Option<Ttl>,
        mode: PutMode,
    ) -> Result<Version> {
        if let PutMode::Update(_) = mode {
            if self.inner.get(key).await?.is_none() {
                return Err(Error::conflict("absent", None));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
            return self.inner.put(key, value, ttl, PutMode::Overwrite).await;
        }
        self.inner.put(key, value, ttl, mode).await
    }
    async fn delete(&self, key: &Key, mode: DeleteMode) -> Result<bool> {
        self.inner.delete(key, mode).await
    }
    async fn touch(&self, key: &Key, ttl: Option<Ttl>) -> Result<bool> {
        self.inner.touch(key, ttl).await
    }
}

/// Reads served by a replica that lags one write behind: every write is correct, but a read
/// shows the entry the key held before the last write.
#[derive(Debug, Default)]
struct LaggingReads {
    inner: MemoryBackend,
    before_last: Mutex<HashMap<Key, Option<Entry>>>,
}

#[async_trait]
impl CacheBackend for LaggingReads {
    fn capabilities(&self) -> &Capabilities {
        self.inner.capabilities()
    }
    async fn get(&self, key: &Key) -> Result<Option<Entry>> {
        let lagging = self.before_last.lock().get(key).cloned();
        match lagging {
            Some(e) => Ok(e),
            None => self.inner.get(key).await,
        }
    }
    async fn put(
        &self,
        key: &Key,
        value: Bytes,
        ttl: Option<Ttl>,
        mode: PutMode,
    ) -> Result<Version> {
        let before = self.inner.get(key).await?;
        let v = self.inner.put(key, value, ttl, mode).await?;
        self.before_last.lock().insert(key.clone(), before);
        Ok(v)
    }
    async fn delete(&self, key: &Key, mode: DeleteMode) -> Result<bool> {
        let before = self.inner.get(key).await?;
        let d = self.inner.delete(key, mode).await?;
        self.before_last.lock().insert(key.clone(), before);
        Ok(d)
    }
    async fn touch(&self, key: &Key, ttl: Option<Ttl>) -> Result<bool> {
        self.inner.touch(key, ttl).await
    }
}

fn memory() -> DynBackend {
    Arc::new(MemoryBackend::default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_backend_histories_are_linearizable() {
    for (k, h) in mixed_workload(memory(), 2, 8, 40).await {
        assert!(!h.is_empty());
        let order = check(&h).unwrap_or_else(|v| panic!("{k}: {v}"));
        assert_eq!(order.len(), h.len());
    }
    let (total, (_, h)) = increment_workload(memory(), 8, 25).await;
    assert_eq!(total, Some(200));
    check(&h).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cas_without_version_check_fails_the_check() {
    // One task alone: a stale update succeeds, which no order explains.
    let rec = Recorder::new(Arc::new(NoVersionCheck::default()));
    let k = key("broken-seq");
    let v1 = rec
        .put(&k, Bytes::from_static(b"1"), None, PutMode::Create)
        .await
        .unwrap();
    rec.put(&k, Bytes::from_static(b"2"), None, PutMode::Update(v1))
        .await
        .unwrap();
    rec.put(&k, Bytes::from_static(b"3"), None, PutMode::Update(v1))
        .await
        .unwrap();
    let err = check(&rec.history(&k)).unwrap_err();
    assert!(err.reason.contains("not linearizable"), "{err}");

    // Racing increments lose updates; the checker says so from the history alone.
    let (total, (_, h)) = increment_workload(Arc::new(NoVersionCheck::default()), 6, 15).await;
    assert_ne!(total, Some(90), "the broken backend does lose increments");
    let err = check(&h).unwrap_err();
    assert!(err.reason.contains("not linearizable"), "{err}");

    // The conformance case's random mix, too.
    let histories = mixed_workload(Arc::new(NoVersionCheck::default()), 1, 6, 30).await;
    assert!(
        histories.iter().any(|(_, h)| check(h).is_err()),
        "a stale update that succeeds is caught"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_reads_fail_the_check() {
    let rec = Recorder::new(Arc::new(LaggingReads::default()));
    let k = key("lagging-seq");
    let v1 = rec
        .put(&k, Bytes::from_static(b"1"), None, PutMode::Create)
        .await
        .unwrap();
    rec.put(&k, Bytes::from_static(b"2"), None, PutMode::Update(v1))
        .await
        .unwrap();
    let stale = rec.get(&k).await.unwrap().unwrap();
    assert_eq!(stale.version, v1, "the test backend does lag");
    let h = rec.history(&k);
    assert!(matches!(
        h[2],
        larder_cache_api::conformance::linearizability::Operation {
            call: Call::Get,
            outcome: Outcome::Got(Some(_)),
            ..
        }
    ));
    let err = check(&h).unwrap_err();
    assert!(err.reason.contains("not linearizable"), "{err}");

    let histories = mixed_workload(Arc::new(LaggingReads::default()), 1, 6, 30).await;
    assert!(
        histories.iter().any(|(_, h)| check(h).is_err()),
        "a stale read is caught"
    );
}
