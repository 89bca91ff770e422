//! A backend wrapper that injects one fault at one point: the call into the real backend.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use larder_cache_api::{
    async_trait, Bytes, CacheBackend, Capabilities, DeleteMode, DynBackend, Entry, Error,
    ErrorKind, Key, PutMode, Result, Ttl, Version,
};
use parking_lot::Mutex;

/// The fault to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Calls go through.
    None,
    /// Calls fail with this kind (`Unavailable`, `Backend`, ...).
    Fail(ErrorKind),
    /// Calls hang for this long before going through.
    Stall(Duration),
}

/// Wraps a real backend and injects [`Fault`]s into every call, or into the next puts only
/// ([`fail_next_puts`](Faulty::fail_next_puts), [`lose_next_put_replies`](Faulty::lose_next_put_replies)).
#[derive(Debug)]
pub struct Faulty {
    inner: DynBackend,
    fault: Mutex<Fault>,
    fail_puts: AtomicUsize,
    lose_replies: AtomicUsize,
    injected: AtomicUsize,
}

/// Takes one from `n` if it is above zero.
fn take_one(n: &AtomicUsize) -> bool {
    n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
        .is_ok()
}

impl Faulty {
    /// Wraps `inner`, passing calls through until [`set`](Self::set) says otherwise.
    pub fn new(inner: DynBackend) -> Arc<Self> {
        Arc::new(Faulty {
            inner,
            fault: Mutex::new(Fault::None),
            fail_puts: AtomicUsize::new(0),
            lose_replies: AtomicUsize::new(0),
            injected: AtomicUsize::new(0),
        })
    }

    /// The next `n` puts fail with `Unavailable` without reaching the backend.
    pub fn fail_next_puts(&self, n: usize) {
        self.fail_puts.store(n, Ordering::SeqCst);
    }

    /// The next `n` puts reach the backend, and are applied, but their answer is lost: they
    /// fail with `Timeout` (the write's effect is unknown to the caller).
    pub fn lose_next_put_replies(&self, n: usize) {
        self.lose_replies.store(n, Ordering::SeqCst);
    }

    /// How many puts [`fail_next_puts`](Self::fail_next_puts) and
    /// [`lose_next_put_replies`](Self::lose_next_put_replies) have failed so far.
    pub fn injected(&self) -> usize {
        self.injected.load(Ordering::SeqCst)
    }

    /// Injects `fault` from now on.
    pub fn set(&self, fault: Fault) {
        *self.fault.lock() = fault;
    }

    async fn gate(&self) -> Result<()> {
        let f = *self.fault.lock();
        match f {
            Fault::None => Ok(()),
            Fault::Fail(kind) => Err(Error::new(kind, "injected fault").with_backend("faulty")),
            Fault::Stall(d) => {
                tokio::time::sleep(d).await;
                Ok(())
            }
        }
    }
}

#[async_trait]
impl CacheBackend for Faulty {
    fn capabilities(&self) -> &Capabilities {
        self.inner.capabilities()
    }
    async fn get(&self, key: &Key) -> Result<Option<Entry>> {
        self.gate().await?;
        self.inner.get(key).await
    }
    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Entry>>> {
        self.gate().await?;
        self.inner.get_many(keys).await
    }
    async fn put(
        &self,
        key: &Key,
        value: Bytes,
        ttl: Option<Ttl>,
        mode: PutMode,
    ) -> Result<Version> {
        self.gate().await?;
        if take_one(&self.fail_puts) {
            self.injected.fetch_add(1, Ordering::SeqCst);
            return Err(
                Error::new(ErrorKind::Unavailable, "injected put failure").with_backend("faulty")
            );
        }
        let written = self.inner.put(key, value, ttl, mode).await?;
        if take_one(&self.lose_replies) {
            self.injected.fetch_add(1, Ordering::SeqCst);
            return Err(Error::new(
                ErrorKind::Timeout,
                "injected lost reply (the put was applied)",
            )
            .with_backend("faulty"));
        }
        Ok(written)
    }
    async fn put_many(&self, items: &[(Key, Bytes)], ttl: Option<Ttl>) -> Result<Vec<Version>> {
        self.gate().await?;
        self.inner.put_many(items, ttl).await
    }
    async fn delete(&self, key: &Key, mode: DeleteMode) -> Result<bool> {
        self.gate().await?;
        self.inner.delete(key, mode).await
    }
    async fn touch(&self, key: &Key, ttl: Option<Ttl>) -> Result<bool> {
        self.gate().await?;
        self.inner.touch(key, ttl).await
    }
}

/// Wraps a real backend and holds the next `put` once [`arm`](PutGate::arm)ed: the put
/// reports that it arrived, then waits for [`release`](PutGate::release). For races that
/// must happen in one order (a fill that read the database before a delete).
#[derive(Debug)]
pub struct PutGate {
    inner: DynBackend,
    armed: std::sync::atomic::AtomicBool,
    reached: tokio::sync::Notify,
    release: tokio::sync::Notify,
}

impl PutGate {
    /// Wraps `inner`; calls pass until armed.
    pub fn new(inner: DynBackend) -> Arc<Self> {
        Arc::new(PutGate {
            inner,
            armed: std::sync::atomic::AtomicBool::new(false),
            reached: tokio::sync::Notify::new(),
            release: tokio::sync::Notify::new(),
        })
    }

    /// Holds the next put.
    pub fn arm(&self) {
        self.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Waits until the held put has arrived.
    pub async fn reached(&self) {
        self.reached.notified().await;
    }

    /// Lets the held put go on into the real backend.
    pub fn release(&self) {
        self.release.notify_one();
    }
}

#[async_trait]
impl CacheBackend for PutGate {
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
        if self.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
            self.reached.notify_one();
            self.release.notified().await;
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
