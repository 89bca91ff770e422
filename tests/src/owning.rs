//! A backend that keeps whatever it needs alive (test servers, a temporary directory) for as
//! long as the backend itself lives.

use std::fmt;

use larder_cache_api::{
    async_trait, Bytes, CacheBackend, Capabilities, DeleteMode, DynBackend, Entry, Key, PutMode,
    Result, Ttl, Version,
};

/// Forwards every call to `backend`; drops `guard` only after the backend is gone.
pub struct Owning<G> {
    backend: DynBackend,
    _guard: G,
}

impl<G: Send + Sync + 'static> Owning<G> {
    /// `backend`, keeping `guard` alive beside it.
    pub fn wrap(backend: DynBackend, guard: G) -> DynBackend {
        std::sync::Arc::new(Owning {
            backend,
            _guard: guard,
        })
    }
}

impl<G> fmt::Debug for Owning<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.backend, f)
    }
}

#[async_trait]
impl<G: Send + Sync> CacheBackend for Owning<G> {
    fn capabilities(&self) -> &Capabilities {
        self.backend.capabilities()
    }
    async fn get(&self, key: &Key) -> Result<Option<Entry>> {
        self.backend.get(key).await
    }
    fn get_now(&self, key: &Key) -> Option<Result<Option<Entry>>> {
        self.backend.get_now(key)
    }
    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Entry>>> {
        self.backend.get_many(keys).await
    }
    async fn put(
        &self,
        key: &Key,
        value: Bytes,
        ttl: Option<Ttl>,
        mode: PutMode,
    ) -> Result<Version> {
        self.backend.put(key, value, ttl, mode).await
    }
    async fn put_many(&self, items: &[(Key, Bytes)], ttl: Option<Ttl>) -> Result<Vec<Version>> {
        self.backend.put_many(items, ttl).await
    }
    async fn delete(&self, key: &Key, mode: DeleteMode) -> Result<bool> {
        self.backend.delete(key, mode).await
    }
    async fn touch(&self, key: &Key, ttl: Option<Ttl>) -> Result<bool> {
        self.backend.touch(key, ttl).await
    }
}
