//! Write-through caching over any store and any cache backend.

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use larder_cache_api::codec::Postcard;
use larder_cache_api::{
    envelope, DeleteMode, DynBackend, Error, ErrorKind, Key, PutMode, Result, Ttl,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::id::{IdHash, SessionId};
use crate::record::{Record, SessionData, Timestamp};
use crate::store::SessionStore;

/// What the cache holds for one session (keyed by the id's hash, never the id).
#[derive(Debug, Serialize, Deserialize)]
struct Cached {
    version: i64,
    expires_at: i64,
    principal: Option<String>,
    data: SessionData,
    deleted: bool,
}

/// Cache-side counters of a [`CachedStore`].
#[derive(Debug, Default)]
pub struct WriteThroughStats {
    hits: AtomicU64,
    misses: AtomicU64,
    cache_errors: AtomicU64,
    invalidations: AtomicU64,
    skipped: AtomicU64,
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
        }
    }
}

/// Write-through caching over any [`SessionStore`]: the store stays the authority.
///
/// * **Load**: the cache first; on a miss, an error or a timeout, the store, then the cache
///   is refilled.
/// * **Save**: the store first; then the cache, with a version that only moves forward (a
///   slow request never puts an older session into the cache).
/// * **Cache trouble never fails a request**: errors and timeouts become misses, are logged
///   and counted; a cache write that fails invalidates the entry instead of leaving a stale
///   one, and invalidations that fail are retried on later calls.
/// * **Deletes** leave a tombstone in the cache as in the store, so a slow refill cannot
///   bring a logged-out session back.
///
/// Cache entries live at most `max_cache_ttl` (default 10 minutes), which bounds how long a
/// cache that missed an invalidation during a network partition can serve old data.
///
/// A circuit breaker keeps an outage cheap: after a cache failure the cache is skipped for
/// `breaker_cooldown` (default 1 s), so requests pay the cache timeout once per cool-down,
/// not once per operation. Entries written meanwhile are queued for invalidation.
pub struct CachedStore<S> {
    store: S,
    cache: DynBackend,
    cache_timeout: Duration,
    max_cache_ttl: Duration,
    breaker_cooldown: Duration,
    open_until: Mutex<Option<std::time::Instant>>,
    stats: Arc<WriteThroughStats>,
    pending: Mutex<HashSet<Key>>,
}

/// Most invalidations kept waiting for a cache that is down; beyond it the oldest entries
/// are only bounded by `max_cache_ttl`.
const MAX_PENDING: usize = 100_000;

impl<S: fmt::Debug> fmt::Debug for CachedStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedStore")
            .field("store", &self.store)
            .field("cache", &self.cache)
            .field("cache_timeout", &self.cache_timeout)
            .field("max_cache_ttl", &self.max_cache_ttl)
            .finish()
    }
}

impl<S: SessionStore> CachedStore<S> {
    /// Caches `store` in `cache`.
    pub fn new(store: S, cache: DynBackend) -> Self {
        CachedStore {
            store,
            cache,
            cache_timeout: Duration::from_millis(250),
            max_cache_ttl: Duration::from_secs(600),
            breaker_cooldown: Duration::from_secs(1),
            open_until: Mutex::new(None),
            stats: Arc::default(),
            pending: Mutex::new(HashSet::new()),
        }
    }

    /// Deadline of each cache operation (default 250 ms); past it the cache counts as down.
    pub fn cache_timeout(mut self, d: Duration) -> Self {
        self.cache_timeout = d;
        self
    }

    /// Longest life of a cache entry (default 10 minutes).
    pub fn max_cache_ttl(mut self, d: Duration) -> Self {
        self.max_cache_ttl = d.max(Duration::from_millis(1));
        self
    }

    /// How long the cache is skipped after a failure (default 1 s; zero disables the
    /// breaker).
    pub fn breaker_cooldown(mut self, d: Duration) -> Self {
        self.breaker_cooldown = d;
        self
    }

    /// The counters (shared; keep the `Arc`).
    pub fn stats(&self) -> Arc<WriteThroughStats> {
        Arc::clone(&self.stats)
    }

    /// The store under the cache.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Runs a cache operation under the deadline; failures are logged, counted, and `None`.
    async fn quietly<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = Result<T>>,
    ) -> Option<T> {
        if let Some(until) = *self.open_until.lock() {
            if std::time::Instant::now() < until {
                self.stats.skipped.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        }
        let res = match tokio::time::timeout(self.cache_timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(Error::new(ErrorKind::Timeout, "cache operation timed out")),
        };
        match res {
            Ok(v) => Some(v),
            Err(e) => {
                self.stats.cache_errors.fetch_add(1, Ordering::Relaxed);
                if !self.breaker_cooldown.is_zero() {
                    *self.open_until.lock() =
                        Some(std::time::Instant::now() + self.breaker_cooldown);
                }
                metrics::counter!("larder_session_cache_errors_total", "op" => op).increment(1);
                tracing::warn!(op, error = %e, "session cache unavailable; using the database");
                None
            }
        }
    }

    async fn cache_read(&self, key: &Key) -> Option<(Cached, larder_cache_api::Version)> {
        let entry = self.quietly("get", self.cache.get(key)).await??;
        match envelope::open::<_, Cached>(&Postcard, &entry.value) {
            Ok(c) => Some((c, entry.version)),
            Err(e) => {
                tracing::warn!(error = %e, "undecodable session cache entry ignored");
                None
            }
        }
    }

    /// Stores `cached` unless the cache already holds the same or a newer version.
    async fn fill(&self, key: &Key, cached: Cached) {
        let now = Timestamp::now();
        let life = if cached.deleted {
            self.max_cache_ttl
        } else {
            Timestamp(cached.expires_at)
                .remaining_from(now)
                .min(self.max_cache_ttl)
        };
        let Ok(ttl) = Ttl::new(life) else { return };
        let Ok(bytes) = envelope::seal(&Postcard, &cached) else {
            return self.invalidate(key).await;
        };
        if self.cache.capabilities().max_value_size < bytes.len() {
            return self.invalidate(key).await;
        }
        if !self.cache.capabilities().cas {
            // Without CAS the forward-only rule cannot be enforced; last writer wins.
            if self
                .quietly(
                    "put",
                    self.cache.put(key, bytes, Some(ttl), PutMode::Overwrite),
                )
                .await
                .is_none()
            {
                self.invalidate(key).await;
            }
            return;
        }
        for _ in 0..4 {
            let mode = match self.quietly("get", self.cache.get(key)).await {
                None => return self.invalidate(key).await,
                Some(None) => PutMode::Create,
                Some(Some(e)) => {
                    if let Ok(c) = envelope::open::<_, Cached>(&Postcard, &e.value) {
                        if c.version >= cached.version {
                            return;
                        }
                    }
                    PutMode::Update(e.version)
                }
            };
            let res = tokio::time::timeout(
                self.cache_timeout,
                self.cache.put(key, bytes.clone(), Some(ttl), mode),
            )
            .await;
            match res {
                Ok(Ok(_)) => return,
                Ok(Err(e)) if e.kind() == ErrorKind::Conflict => continue,
                _ => {
                    self.stats.cache_errors.fetch_add(1, Ordering::Relaxed);
                    return self.invalidate(key).await;
                }
            }
        }
        // Lost four races in a row: leave the newer writers to it, but never stale data.
        self.invalidate(key).await;
    }

    async fn fill_record(&self, r: &Record) {
        self.fill(
            &r.id.hash().cache_key(),
            Cached {
                version: r.version,
                expires_at: r.expires_at.0,
                principal: r.principal.clone(),
                data: r.data.clone(),
                deleted: false,
            },
        )
        .await;
    }

    /// A tombstone that outranks every version, so nothing can refill a deleted session.
    async fn tombstone(&self, hash: &IdHash) {
        let key = hash.cache_key();
        let cached = Cached {
            version: i64::MAX,
            expires_at: 0,
            principal: None,
            data: SessionData::new(),
            deleted: true,
        };
        let Ok(bytes) = envelope::seal(&Postcard, &cached) else {
            return;
        };
        let Ok(ttl) = Ttl::new(self.max_cache_ttl) else {
            return;
        };
        if self
            .quietly(
                "put",
                self.cache.put(&key, bytes, Some(ttl), PutMode::Overwrite),
            )
            .await
            .is_none()
        {
            self.invalidate(&key).await;
        }
    }

    async fn invalidate(&self, key: &Key) {
        self.stats.invalidations.fetch_add(1, Ordering::Relaxed);
        if self
            .quietly("delete", self.cache.delete(key, DeleteMode::Any))
            .await
            .is_none()
        {
            let mut p = self.pending.lock();
            if p.len() < MAX_PENDING {
                p.insert(key.clone());
            }
        }
    }

    /// Retries invalidations that failed while the cache was down.
    async fn retry_pending(&self) {
        let keys: Vec<Key> = {
            let mut p = self.pending.lock();
            if p.is_empty() {
                return;
            }
            let batch: Vec<Key> = p.iter().take(256).cloned().collect();
            for k in &batch {
                p.remove(k);
            }
            batch
        };
        for key in keys {
            if self
                .quietly("delete", self.cache.delete(&key, DeleteMode::Any))
                .await
                .is_none()
            {
                self.pending.lock().insert(key);
            }
        }
    }

    /// Invalidations still waiting for the cache to come back.
    pub fn pending_invalidations(&self) -> usize {
        self.pending.lock().len()
    }
}

#[async_trait]
impl<S: SessionStore> SessionStore for CachedStore<S> {
    async fn create(
        &self,
        data: SessionData,
        principal: Option<String>,
        expires_at: Timestamp,
    ) -> Result<Record> {
        let r = self.store.create(data, principal, expires_at).await?;
        self.fill_record(&r).await;
        Ok(r)
    }

    async fn load(&self, id: &SessionId) -> Result<Option<Record>> {
        self.retry_pending().await;
        let key = id.hash().cache_key();
        if let Some((c, _)) = self.cache_read(&key).await {
            if c.deleted {
                self.stats.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(None);
            }
            if c.expires_at > Timestamp::now().0 {
                self.stats.hits.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("larder_session_cache_hits_total").increment(1);
                return Ok(Some(Record {
                    id: id.clone(),
                    data: c.data,
                    principal: c.principal,
                    expires_at: Timestamp(c.expires_at),
                    version: c.version,
                }));
            }
        }
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("larder_session_cache_misses_total").increment(1);
        let r = self.store.load(id).await?;
        if let Some(r) = &r {
            self.fill_record(r).await;
        }
        Ok(r)
    }

    async fn load_authoritative(&self, id: &SessionId) -> Result<Option<Record>> {
        let r = self.store.load_authoritative(id).await?;
        if let Some(r) = &r {
            self.fill_record(r).await;
        }
        Ok(r)
    }

    async fn save(&self, record: &Record) -> Result<Record> {
        self.retry_pending().await;
        let saved = self.store.save(record).await?;
        self.fill_record(&saved).await;
        Ok(saved)
    }

    async fn touch(&self, id: &SessionId, expires_at: Timestamp) -> Result<Option<Record>> {
        let r = self.store.touch(id, expires_at).await?;
        match &r {
            Some(r) => self.fill_record(r).await,
            None => self.invalidate(&id.hash().cache_key()).await,
        }
        Ok(r)
    }

    async fn delete(&self, id: &SessionId) -> Result<bool> {
        let deleted = self.store.delete(id).await?;
        self.tombstone(&id.hash()).await;
        Ok(deleted)
    }

    async fn rotate(&self, id: &SessionId) -> Result<Option<Record>> {
        let r = self.store.rotate(id).await?;
        self.tombstone(&id.hash()).await;
        if let Some(r) = &r {
            self.fill_record(r).await;
        }
        Ok(r)
    }

    async fn delete_principal(&self, principal: &str) -> Result<Vec<IdHash>> {
        let hashes = self.store.delete_principal(principal).await?;
        for h in &hashes {
            self.tombstone(h).await;
        }
        Ok(hashes)
    }

    async fn sweep(&self, batch: u32) -> Result<u64> {
        self.store.sweep(batch).await
    }

    async fn count(&self) -> Result<u64> {
        self.store.count().await
    }
}
