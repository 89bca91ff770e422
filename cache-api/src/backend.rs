//! The backend contract.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::{Capabilities, DeleteMode, Entry, Key, PutMode, Result, Ttl, Version};

/// A shared, type-erased backend: what [`Cache`](crate::Cache), the layers and the rest of
/// larder hold.
pub type DynBackend = Arc<dyn CacheBackend>;

/// What a cache backend must implement. Small on purpose: typed values, get-or-compute,
/// CAS loops and namespaces are built on top, once, for every backend.
///
/// # Contract
///
/// * Keys are already validated ([`Key`]); values are opaque bytes.
/// * Every write states its TTL: `None` means the entry does not expire (it may still be
///   evicted where [`Capabilities::may_evict`] says so). Overwriting an entry replaces its
///   TTL too.
/// * An expired entry behaves exactly like an absent one, for every operation.
/// * [`PutMode::Create`] and [`PutMode::Update`] that lose return
///   [`ErrorKind::Conflict`](crate::ErrorKind::Conflict) with the current entry (or `None`
///   if the key is absent).
/// * Operations a backend does not declare in [`Capabilities`] return
///   [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported).
/// * Values longer than [`Capabilities::max_value_size`] return
///   [`ErrorKind::ValueTooLarge`](crate::ErrorKind::ValueTooLarge) and store nothing.
///
/// The shared conformance suite (feature `conformance`) checks all of the above.
///
/// # Wrappers
///
/// Layers wrapping a backend should forward every method, batch ones included, so that a
/// native batch is not lost behind a wrapper.
///
/// There is deliberately no `impl CacheBackend for Arc<B>`: calling a method on a
/// [`DynBackend`] then dereferences to the trait object and allocates one boxed future per
/// call, not two (measured: about 60 ns per call on the memory backend).
#[async_trait]
pub trait CacheBackend: Send + Sync + Debug {
    /// What this backend offers.
    fn capabilities(&self) -> &Capabilities;

    /// Facts about this backend's configuration for an operator (`larder cache stats`), as
    /// label and value pairs; never a secret. Layers pass their backend's on.
    fn details(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }

    /// The entry under `key`, or `None` if absent or expired.
    ///
    /// Callers on a hot path use `lookup` (an inherent method of `dyn CacheBackend`)
    /// instead, which tries [`get_now`](Self::get_now) first.
    async fn get(&self, key: &Key) -> Result<Option<Entry>>;

    /// The answer [`get`](Self::get) would give, if this backend has it at hand without
    /// waiting; `None` means "not at hand: ask `get`".
    ///
    /// The synchronous hit path: the memory backend always answers here, a
    /// near cache (`larder_near::Near`) answers its local hits, and a network backend keeps
    /// the default (`None`). `Some` must be exactly what `get` would have returned at that
    /// moment, errors included (the conformance suite compares the two). It must not block:
    /// no I/O, no waiting on a lock held across I/O.
    ///
    /// Layers forward it, doing their own part (a namespace maps the key, instrumentation
    /// counts the hit), or return `None` when their part needs to wait.
    fn get_now(&self, key: &Key) -> Option<Result<Option<Entry>>> {
        let _ = key;
        None
    }

    /// Entries for `keys`, in the same order (duplicates allowed, each answered).
    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Entry>>> {
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            out.push(self.get(k).await?);
        }
        Ok(out)
    }

    /// Stores `value` under `key` according to `mode`, and returns the new version.
    async fn put(
        &self,
        key: &Key,
        value: Bytes,
        ttl: Option<Ttl>,
        mode: PutMode,
    ) -> Result<Version>;

    /// Overwrites several entries with one TTL; returns their versions in order.
    /// Not atomic: on error, some entries may have been written.
    async fn put_many(&self, items: &[(Key, Bytes)], ttl: Option<Ttl>) -> Result<Vec<Version>> {
        let mut out = Vec::with_capacity(items.len());
        for (k, v) in items {
            out.push(self.put(k, v.clone(), ttl, PutMode::Overwrite).await?);
        }
        Ok(out)
    }

    /// Deletes `key` according to `mode`; `Ok(true)` if an entry was removed.
    async fn delete(&self, key: &Key, mode: DeleteMode) -> Result<bool>;

    /// Sets a new TTL (`None`: no expiry) without rewriting the value; `Ok(false)` if the key
    /// is absent. The version does not change.
    async fn touch(&self, key: &Key, ttl: Option<Ttl>) -> Result<bool>;
}

impl dyn CacheBackend {
    /// The entry under `key`: [`get_now`](CacheBackend::get_now)'s answer when the backend
    /// has one, else [`get`](CacheBackend::get)'s.
    ///
    /// What [`Cache`](crate::Cache) and the session stores call. Unlike `get` (an
    /// `async-trait` method, one boxed future per call), this future is not boxed, and an
    /// answer at hand completes on the first poll without allocating.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> larder_cache_api::Result<()> {
    /// use std::sync::Arc;
    /// use larder_cache_api::{Bytes, DynBackend, Key, PutMode};
    /// let backend: DynBackend = Arc::new(larder_backend_memory::MemoryBackend::default());
    /// let k = Key::new("k")?;
    /// backend.put(&k, Bytes::from_static(b"v"), None, PutMode::Overwrite).await?;
    /// assert_eq!(backend.lookup(&k).await?.unwrap().value, &b"v"[..]);
    /// # Ok(()) }
    /// ```
    pub async fn lookup(&self, key: &Key) -> Result<Option<Entry>> {
        match self.get_now(key) {
            Some(answer) => answer,
            None => self.get(key).await,
        }
    }
}
