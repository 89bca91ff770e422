//! Write-through caching over any store and any cache backend: [`CachedStore`].

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use larder_cache_api::codec::Postcard;
use larder_cache_api::layer::Timeout;
use larder_cache_api::retry::Backoff;
use larder_cache_api::{
    envelope, DeleteMode, DynBackend, Error, ErrorKind, Key, PutMode, Result, Ttl, Version,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::id::{IdHash, SessionId};
use crate::record::{Record, SessionData, Timestamp};
use crate::store::{ApplyFn, Invalidation, SaveOutcome, SessionStore};

/// What the cache holds for one session (keyed by the id's hash, never the id).
#[derive(Debug, Serialize, Deserialize)]
struct Cached {
    version: i64,
    expires_at: i64,
    principal: Option<String>,
    data: SessionData,
    deleted: bool,
}

/// Order of cache entries: a fill only ever replaces a lower rank. A touch keeps the version
/// and moves the expiry, so the expiry breaks ties; a tombstone outranks everything.
type Rank = (i64, i64);

impl Cached {
    fn rank(&self) -> Rank {
        if self.deleted {
            (i64::MAX, i64::MAX)
        } else {
            (self.version, self.expires_at)
        }
    }

    fn tombstone() -> Self {
        Cached {
            version: i64::MAX,
            expires_at: 0,
            principal: None,
            data: SessionData::new(),
            deleted: true,
        }
    }

    fn of(r: &Record) -> Self {
        Cached {
            version: r.version,
            expires_at: r.expires_at.0,
            principal: r.principal.clone(),
            data: r.data.clone(),
            deleted: false,
        }
    }
}

/// Cache-side counters of a [`CachedStore`].
#[derive(Debug, Default)]
pub struct WriteThroughStats {
    hits: AtomicU64,
    misses: AtomicU64,
    cache_errors: AtomicU64,
    invalidations: AtomicU64,
    skipped: AtomicU64,
    integrity_failures: AtomicU64,
    outbox_drained: AtomicU64,
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
    /// Outbox invalidations (deleted sessions) whose tombstones this store wrote.
    pub outbox_drained: u64,
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
        }
    }
}

/// What a guarded cache call came to.
enum Call<T> {
    Done(T),
    /// A lost compare-and-swap (not a failure: the breaker stays closed).
    Conflict(Error),
    /// Failed, timed out, or skipped while the breaker was open (already counted).
    Failed,
}

/// Write-through caching over any [`SessionStore`]: the store stays the authority.
///
/// * **Load**: the cache first; on a miss, an error or a timeout, the store, then the cache
///   is filled.
/// * **Save**: one versioned statement in the store, then one compare-and-swap in the cache
///   that only moves forward (the cache version seen at load travels as a hint, so the
///   common case needs no read first; a lost race is answered by the entry the conflict
///   carries). A slow request never puts an older session into the cache.
/// * **Touch** moves the expiry in the store only: the cache entry keeps its older expiry
///   and is refilled from the store when that passes.
/// * **Cache trouble never fails a request**: errors and timeouts become misses, are logged
///   and counted; a cache write that fails invalidates the entry instead of leaving a stale
///   one (never removing a tombstone), and invalidations that fail are retried on later
///   calls.
/// * **Logout is effective everywhere within a bound.** A delete, rotation or revocation
///   writes a tombstone that outranks every version, so no fill can bring the session back.
///   The database records the same deletion in its outbox in the same transaction, and
///   every `CachedStore` drains the outbox (on a load, at most every `drain_interval`,
///   default 500 ms), so a tombstone that could not be written — the cache failed at that
///   moment, or the process died right after the commit — is written by the next instance
///   that loads: no instance serves a deleted session from a reachable cache more than
///   `drain_interval` + `breaker_cooldown` (1.5 s by default) after the delete returned.
/// * **Optional integrity** ([`integrity_key`](CachedStore::integrity_key)): entries carry
///   an HMAC-SHA256 tag; an entry that fails the check is a miss, counted and logged.
///
/// Cache entries live at most `max_cache_ttl` (default 10 minutes), which bounds how long a
/// cache that missed an invalidation during a network partition can serve old data.
///
/// A circuit breaker keeps an outage cheap: after a cache failure, reads and fills skip the
/// cache for `breaker_cooldown` (default 1 s), so requests pay the cache timeout once per
/// cool-down, not once per operation. Entries written meanwhile are queued for
/// invalidation. Tombstones are always attempted.
pub struct CachedStore<S> {
    store: S,
    /// The backend as given; `cache` is it under the deadline.
    raw_cache: DynBackend,
    cache: DynBackend,
    cache_timeout: Duration,
    max_cache_ttl: Duration,
    breaker_cooldown: Duration,
    drain_interval: Duration,
    open_until: Mutex<Option<Instant>>,
    stats: Arc<WriteThroughStats>,
    pending: Mutex<HashSet<Key>>,
    /// Per session: the rank and cache version this process last saw in the cache, so a
    /// write can be one compare-and-swap instead of a read and a write.
    hints: quick_cache::sync::Cache<[u8; 32], (Rank, Version)>,
    mac: Option<Hmac<Sha256>>,
    last_integrity_log: Mutex<Option<Instant>>,
    last_drain: Mutex<Option<Instant>>,
    draining: AtomicBool,
}

/// Most invalidations kept waiting for a cache that is down; beyond it the oldest entries
/// are only bounded by `max_cache_ttl`.
const MAX_PENDING: usize = 100_000;
/// Length of the integrity tag appended to each entry.
const TAG_LEN: usize = 32;
/// Outbox rows handled per database read.
const DRAIN_BATCH: u32 = 256;

impl<S: fmt::Debug> fmt::Debug for CachedStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedStore")
            .field("store", &self.store)
            .field("cache", &self.raw_cache)
            .field("cache_timeout", &self.cache_timeout)
            .field("max_cache_ttl", &self.max_cache_ttl)
            .field("drain_interval", &self.drain_interval)
            .field("integrity", &self.mac.is_some())
            .finish()
    }
}

impl<S: SessionStore> CachedStore<S> {
    /// Caches `store` in `cache`.
    pub fn new(store: S, cache: DynBackend) -> Self {
        let timeout = Duration::from_millis(250);
        CachedStore {
            store,
            raw_cache: cache.clone(),
            cache: Arc::new(Timeout::new(cache, timeout)),
            cache_timeout: timeout,
            max_cache_ttl: Duration::from_secs(600),
            breaker_cooldown: Duration::from_secs(1),
            drain_interval: Duration::from_millis(500),
            open_until: Mutex::new(None),
            stats: Arc::default(),
            pending: Mutex::new(HashSet::new()),
            hints: quick_cache::sync::Cache::new(10_000),
            mac: None,
            last_integrity_log: Mutex::new(None),
            last_drain: Mutex::new(None),
            draining: AtomicBool::new(false),
        }
    }

    /// Deadline of each cache operation (default 250 ms); past it the cache counts as down.
    pub fn cache_timeout(mut self, d: Duration) -> Self {
        self.cache_timeout = d;
        self.cache = Arc::new(Timeout::new(self.raw_cache.clone(), d));
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

    /// How often a load first drains the database's invalidation outbox (default 500 ms).
    pub fn drain_interval(mut self, d: Duration) -> Self {
        self.drain_interval = d;
        self
    }

    /// Tags every cache entry with an HMAC-SHA256 under `key` (at least 16 bytes, from
    /// configuration, the same on every instance), so an entry written by anyone without
    /// the key is refused (a miss, counted in
    /// [`integrity_failures`](WriteThroughSnapshot::integrity_failures)).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> larder_cache_api::Result<()> {
    /// # let dir = std::env::temp_dir().join(format!("larder-doc-mac-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir).unwrap();
    /// use std::sync::Arc;
    /// use larder_cache_api::ErrorKind;
    /// use larder_session_persist::{CachedStore, SqliteStore};
    ///
    /// let sql = SqliteStore::open(&dir.join("s.db")).await?;
    /// let cache = Arc::new(larder_backend_memory::MemoryBackend::default());
    /// let short = CachedStore::new(sql.clone(), cache.clone()).integrity_key(b"short");
    /// assert_eq!(short.unwrap_err().kind(), ErrorKind::Config);
    /// let cached = CachedStore::new(sql, cache).integrity_key(b"at least sixteen bytes, shared")?;
    /// # let _ = cached; Ok(()) }
    /// ```
    pub fn integrity_key(mut self, key: &[u8]) -> Result<Self> {
        if key.len() < 16 {
            return Err(Error::new(
                ErrorKind::Config,
                "the cache integrity key must be at least 16 bytes",
            ));
        }
        let mac = Hmac::<Sha256>::new_from_slice(key)
            .map_err(|_| Error::new(ErrorKind::Config, "unusable cache integrity key"))?;
        self.mac = Some(mac);
        Ok(self)
    }

    /// The counters (shared; keep the `Arc`).
    pub fn stats(&self) -> Arc<WriteThroughStats> {
        Arc::clone(&self.stats)
    }

    /// The store under the cache.
    pub fn store(&self) -> &S {
        &self.store
    }

    fn breaker_open(&self) -> bool {
        matches!(*self.open_until.lock(), Some(until) if Instant::now() < until)
    }

    fn trip(&self, op: &'static str, e: &Error) {
        self.stats.cache_errors.fetch_add(1, Ordering::Relaxed);
        if !self.breaker_cooldown.is_zero() {
            *self.open_until.lock() = Some(Instant::now() + self.breaker_cooldown);
        }
        metrics::counter!("larder_session_cache_errors_total", "op" => op).increment(1);
        tracing::warn!(op, error = %e, "session cache unavailable; using the database");
    }

    /// Runs a cache operation under the deadline. `always` attempts it even while the
    /// breaker is open (tombstones). Failures are logged and counted.
    async fn call<T>(
        &self,
        op: &'static str,
        always: bool,
        fut: impl Future<Output = Result<T>>,
    ) -> Call<T> {
        if !always && self.breaker_open() {
            self.stats.skipped.fetch_add(1, Ordering::Relaxed);
            return Call::Failed;
        }
        // The deadline is the cache-api `Timeout` layer's, around every operation.
        match fut.await {
            Ok(v) => Call::Done(v),
            Err(e) if e.kind() == ErrorKind::Conflict => Call::Conflict(e),
            Err(e) => {
                self.trip(op, &e);
                Call::Failed
            }
        }
    }

    /// The stored form: the envelope, then the integrity tag if configured.
    fn seal(&self, key: &Key, cached: &Cached) -> Result<Bytes> {
        let sealed = envelope::seal(&Postcard, cached)?;
        let Some(mac) = &self.mac else {
            return Ok(sealed);
        };
        let mut m = mac.clone();
        m.update(key.as_str().as_bytes());
        m.update(&sealed);
        let mut out = Vec::with_capacity(sealed.len() + TAG_LEN);
        out.extend_from_slice(&sealed);
        out.extend_from_slice(&m.finalize().into_bytes());
        Ok(Bytes::from(out))
    }

    /// Reads a stored entry; foreign, corrupt or untagged bytes are `None` (logged).
    fn open(&self, key: &Key, raw: &[u8]) -> Option<Cached> {
        let body = match &self.mac {
            None => raw,
            Some(mac) => {
                let ok = raw.len() >= TAG_LEN && {
                    let (body, tag) = raw.split_at(raw.len() - TAG_LEN);
                    let mut m = mac.clone();
                    m.update(key.as_str().as_bytes());
                    m.update(body);
                    m.verify_slice(tag).is_ok()
                };
                if !ok {
                    self.integrity_failure();
                    return None;
                }
                &raw[..raw.len() - TAG_LEN]
            }
        };
        match envelope::open::<_, Cached>(&Postcard, body) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(error = %e, "undecodable session cache entry ignored");
                None
            }
        }
    }

    fn integrity_failure(&self) {
        self.stats
            .integrity_failures
            .fetch_add(1, Ordering::Relaxed);
        metrics::counter!("larder_session_cache_integrity_failures_total").increment(1);
        // Once per interval: a flood of forged entries must not flood the log.
        let mut last = self.last_integrity_log.lock();
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            *last = Some(Instant::now());
            tracing::warn!(
                total = self.stats.integrity_failures.load(Ordering::Relaxed),
                "session cache entry failed its integrity check; treated as a miss"
            );
        }
    }

    fn ttl_for(&self, cached: &Cached) -> Option<Ttl> {
        let life = if cached.deleted {
            self.max_cache_ttl
        } else {
            Timestamp(cached.expires_at)
                .remaining_from(Timestamp::now())
                .min(self.max_cache_ttl)
        };
        Ttl::new(life).ok()
    }

    /// Stores `cached` unless the cache already holds the same or a higher rank: one
    /// compare-and-swap in the common case (the hint names the entry to replace).
    async fn fill(&self, hash: &IdHash, cached: Cached) {
        let key = hash.cache_key();
        if self.breaker_open() {
            self.stats.skipped.fetch_add(1, Ordering::Relaxed);
            return self.queue_invalidation(key);
        }
        let Some(ttl) = self.ttl_for(&cached) else {
            return;
        };
        let Ok(bytes) = self.seal(&key, &cached) else {
            return self.invalidate(&key).await;
        };
        let caps = self.cache.capabilities();
        if caps.max_value_size < bytes.len() {
            return self.invalidate(&key).await;
        }
        let rank = cached.rank();
        if !caps.cas {
            // Without CAS the forward-only rule cannot be enforced; last writer wins.
            if let Call::Done(_) = self
                .call(
                    "put",
                    false,
                    self.cache.put(&key, bytes, Some(ttl), PutMode::Overwrite),
                )
                .await
            {
                return;
            }
            return self.invalidate(&key).await;
        }
        let mut mode = match self.hints.get(hash.as_bytes()) {
            Some((seen, _)) if seen >= rank => return,
            Some((_, v)) => PutMode::Update(v),
            None => PutMode::Create,
        };
        // No pause between attempts: each one writes over the entry the last conflict
        // reported, which is as fresh as a read.
        let mut tries = Backoff::new(Duration::ZERO, Duration::ZERO).max_attempts(4);
        while tries.next_attempt_now() {
            match self
                .call(
                    "put",
                    false,
                    self.cache.put(&key, bytes.clone(), Some(ttl), mode),
                )
                .await
            {
                Call::Done(v) => {
                    self.hints.insert(*hash.as_bytes(), (rank, v));
                    return;
                }
                // The conflict carries what is stored: no second read.
                Call::Conflict(e) => match e.into_current() {
                    None => mode = PutMode::Create,
                    Some(cur) => match self.open(&key, &cur.value) {
                        Some(c) if c.rank() >= rank => {
                            self.hints.insert(*hash.as_bytes(), (c.rank(), cur.version));
                            return;
                        }
                        _ => mode = PutMode::Update(cur.version),
                    },
                },
                Call::Failed => return self.invalidate(&key).await,
            }
        }
        // Lost four races in a row: leave it to the newer writers, but never stale data.
        self.invalidate(&key).await;
    }

    async fn fill_record(&self, r: &Record) {
        self.fill(&r.id.hash(), Cached::of(r)).await;
    }

    /// Writes a tombstone that outranks every version, so nothing can refill a deleted
    /// session. Attempted even while the breaker is open; true if it is in the cache.
    async fn bury(&self, hash: &IdHash) -> bool {
        let key = hash.cache_key();
        let cached = Cached::tombstone();
        let (Ok(bytes), Some(ttl)) = (self.seal(&key, &cached), self.ttl_for(&cached)) else {
            return false;
        };
        match self
            .call(
                "put",
                true,
                self.cache.put(&key, bytes, Some(ttl), PutMode::Overwrite),
            )
            .await
        {
            Call::Done(v) => {
                self.hints.insert(*hash.as_bytes(), (cached.rank(), v));
                true
            }
            _ => false,
        }
    }

    fn queue_invalidation(&self, key: Key) {
        let mut p = self.pending.lock();
        if p.len() < MAX_PENDING {
            p.insert(key);
        }
    }

    /// Removes a possibly stale entry, but never a tombstone (a fill racing a delete must
    /// find it). Queued for a later retry if the cache cannot be reached.
    async fn invalidate(&self, key: &Key) {
        self.stats.invalidations.fetch_add(1, Ordering::Relaxed);
        if !self.try_invalidate(key).await {
            self.queue_invalidation(key.clone());
        }
    }

    async fn try_invalidate(&self, key: &Key) -> bool {
        let mut tries = Backoff::new(Duration::ZERO, Duration::ZERO).max_attempts(3);
        while tries.next_attempt_now() {
            let entry = match self.call("get", false, self.cache.get(key)).await {
                Call::Done(Some(e)) => e,
                Call::Done(None) => return true,
                _ => return false,
            };
            if self.open(key, &entry.value).is_some_and(|c| c.deleted) {
                return true;
            }
            match self
                .call(
                    "delete",
                    false,
                    self.cache.delete(key, DeleteMode::IfVersion(entry.version)),
                )
                .await
            {
                Call::Done(_) => return true,
                Call::Conflict(_) => continue,
                Call::Failed => return false,
            }
        }
        false
    }

    /// Retries invalidations that failed while the cache was down.
    async fn retry_pending(&self) {
        if self.breaker_open() {
            return;
        }
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
            if !self.try_invalidate(&key).await {
                self.queue_invalidation(key);
            }
        }
    }

    /// Invalidations still waiting for the cache to come back.
    pub fn pending_invalidations(&self) -> usize {
        self.pending.lock().len()
    }

    /// Writes the tombstones of the database's outbox into the cache and acknowledges them;
    /// at most once per `drain_interval`, one caller at a time.
    async fn drain_if_due(&self) {
        {
            let mut last = self.last_drain.lock();
            if last.is_some_and(|t| t.elapsed() < self.drain_interval) {
                return;
            }
            if self.breaker_open() || self.draining.swap(true, Ordering::AcqRel) {
                return;
            }
            *last = Some(Instant::now());
        }
        if let Err(e) = self.drain_outbox().await {
            tracing::warn!(error = %e, "draining the session invalidation outbox failed");
        }
        self.draining.store(false, Ordering::Release);
    }

    /// Writes every pending tombstone now; returns how many were written.
    ///
    /// Loads do this on their own every `drain_interval`; call it after a known cache
    /// outage, or from a periodic task on instances that rarely load.
    pub async fn drain_outbox(&self) -> Result<usize> {
        let mut total = 0;
        loop {
            let batch: Vec<Invalidation> = self.store.outbox_pending(DRAIN_BATCH).await?;
            if batch.is_empty() {
                return Ok(total);
            }
            let mut done = Vec::with_capacity(batch.len());
            for inv in &batch {
                if !self.bury(&inv.hash).await {
                    break;
                }
                done.push(inv.seq);
            }
            self.store.outbox_ack(&done).await?;
            total += done.len();
            self.stats
                .outbox_drained
                .fetch_add(done.len() as u64, Ordering::Relaxed);
            if done.len() < batch.len() || batch.len() < DRAIN_BATCH as usize {
                return Ok(total);
            }
        }
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
        self.drain_if_due().await;
        let hash = id.hash();
        let key = hash.cache_key();
        if let Call::Done(Some(entry)) = self.call("get", false, self.cache.lookup(&key)).await {
            if let Some(c) = self.open(&key, &entry.value) {
                self.hints
                    .insert(*hash.as_bytes(), (c.rank(), entry.version));
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

    async fn save_or_current(&self, record: &Record) -> Result<SaveOutcome> {
        self.retry_pending().await;
        let out = self.store.save_or_current(record).await?;
        if let SaveOutcome::Saved(saved) = &out {
            self.fill_record(saved).await;
        }
        Ok(out)
    }

    async fn save_locked(
        &self,
        id: &SessionId,
        apply: &ApplyFn,
        expires_at: Timestamp,
    ) -> Result<Record> {
        let saved = self.store.save_locked(id, apply, expires_at).await?;
        self.fill_record(&saved).await;
        Ok(saved)
    }

    async fn touch(&self, id: &SessionId, expires_at: Timestamp) -> Result<Option<Record>> {
        // Expiry only: the cached entry keeps its earlier expiry and is refilled from the
        // store once that passes, so a touch costs no cache write.
        self.store.touch(id, expires_at).await
    }

    async fn delete(&self, id: &SessionId) -> Result<bool> {
        let deleted = self.store.delete(id).await?;
        self.bury(&id.hash()).await;
        Ok(deleted)
    }

    async fn rotate(&self, id: &SessionId) -> Result<Option<Record>> {
        let r = self.store.rotate(id).await?;
        self.bury(&id.hash()).await;
        if let Some(r) = &r {
            self.fill_record(r).await;
        }
        Ok(r)
    }

    async fn delete_principal(&self, principal: &str) -> Result<Vec<IdHash>> {
        let hashes = self.store.delete_principal(principal).await?;
        for h in &hashes {
            self.bury(h).await;
        }
        Ok(hashes)
    }

    async fn sweep(&self, batch: u32) -> Result<u64> {
        self.store.sweep(batch).await
    }

    async fn count(&self) -> Result<u64> {
        self.store.count().await
    }

    async fn outbox_pending(&self, limit: u32) -> Result<Vec<Invalidation>> {
        self.store.outbox_pending(limit).await
    }

    async fn outbox_ack(&self, seqs: &[i64]) -> Result<()> {
        self.store.outbox_ack(seqs).await
    }
}
