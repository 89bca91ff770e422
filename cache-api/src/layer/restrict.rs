use async_trait::async_trait;
use bytes::Bytes;

use crate::{
    CacheBackend, Capabilities, DeleteMode, DynBackend, Entry, Error, ErrorKind, Key, PutMode,
    Result, Ttl, Version,
};

/// Offers only some of a backend's capabilities and refuses the rest with
/// [`ErrorKind::Unsupported`]: for code that must run on the weakest backend of a deployment
/// (test on memory restricted like memcached), and for the conformance suite's refusal checks.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> larder_cache_api::Result<()> {
/// use std::sync::Arc;
/// use bytes::Bytes;
/// use larder_cache_api::{layer::Restrict, CacheBackend, ErrorKind, Key, PutMode};
/// # let backend: larder_cache_api::DynBackend = Arc::new(larder_backend_memory::MemoryBackend::default());
/// let mut caps = backend.capabilities().clone();
/// caps.cas = false;
/// let plain = Restrict::new(backend, caps)?;
/// let err = plain
///     .put(&Key::new("k")?, Bytes::new(), None, PutMode::Create)
///     .await
///     .unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::Unsupported);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Restrict {
    inner: DynBackend,
    caps: Capabilities,
}

impl Restrict {
    /// Restricts `inner` to `caps`, which must not claim more than `inner` offers.
    pub fn new(inner: DynBackend, caps: Capabilities) -> Result<Self> {
        let have = inner.capabilities();
        let widens = (caps.cas && !have.cas)
            || (caps.linearizable_cas && !have.linearizable_cas)
            || (caps.touch && !have.touch)
            || (caps.persistent && !have.persistent)
            || (caps.shared && !have.shared)
            || (caps.invalidation_channel && !have.invalidation_channel)
            || (!caps.may_evict && have.may_evict)
            || caps.ttl_precision < have.ttl_precision
            || caps.max_value_size > have.max_value_size
            || caps.max_key_len > have.max_key_len;
        if widens {
            return Err(Error::new(
                ErrorKind::Config,
                "Restrict cannot declare capabilities the backend does not have",
            ));
        }
        Ok(Restrict { inner, caps })
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl CacheBackend for Restrict {
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    fn details(&self) -> Vec<(&'static str, String)> {
        self.inner.details()
    }

    async fn get(&self, key: &Key) -> Result<Option<Entry>> {
        self.caps.check_key_len(key)?;
        (*self.inner).get(key).await
    }

    fn get_now(&self, key: &Key) -> Option<Result<Option<Entry>>> {
        if let Err(e) = self.caps.check_key_len(key) {
            return Some(Err(e));
        }
        (*self.inner).get_now(key)
    }

    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Entry>>> {
        for k in keys {
            self.caps.check_key_len(k)?;
        }
        (*self.inner).get_many(keys).await
    }

    async fn put(
        &self,
        key: &Key,
        value: Bytes,
        ttl: Option<Ttl>,
        mode: PutMode,
    ) -> Result<Version> {
        self.caps.check_key_len(key)?;
        self.caps.check_put_mode(mode)?;
        self.caps.check_value_size(value.len())?;
        (*self.inner).put(key, value, ttl, mode).await
    }

    async fn put_many(&self, items: &[(Key, Bytes)], ttl: Option<Ttl>) -> Result<Vec<Version>> {
        for (k, v) in items {
            self.caps.check_key_len(k)?;
            self.caps.check_value_size(v.len())?;
        }
        (*self.inner).put_many(items, ttl).await
    }

    async fn delete(&self, key: &Key, mode: DeleteMode) -> Result<bool> {
        self.caps.check_key_len(key)?;
        if let DeleteMode::IfVersion(_) = mode {
            self.caps.check_conditional_delete()?;
        }
        (*self.inner).delete(key, mode).await
    }

    async fn touch(&self, key: &Key, ttl: Option<Ttl>) -> Result<bool> {
        self.caps.check_key_len(key)?;
        self.caps.check_touch()?;
        (*self.inner).touch(key, ttl).await
    }
}
