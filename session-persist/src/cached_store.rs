//! Write-through caching over any store and any cache backend: [`CachedStore`].
//!
//! This file fills and invalidates cache entries. The parts it calls are their own: the
//! circuit breaker (`breaker.rs`), the stored form of an entry and its integrity tag
//! (`seal.rs`), the change log and its cursor (`outbox.rs`) and the counters (`stats.rs`). A save runs
//! through it once: the store's statement, then one fill of the session's cache slot.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use larder_cache_api::layer::Timeout;
use larder_cache_api::retry::Backoff;
use larder_cache_api::{DeleteMode, DynBackend, Key, PutMode, Result, Ttl, Version};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::breaker::{Breaker, Call, When};
use crate::id::{IdHash, SessionId};
use crate::outbox::{self, Cursor, DrainSchedule, Invalidation, Outbox, Start, DRAIN_BATCH};
use crate::record::{Record, SessionData, Timestamp};
use crate::seal::{Sealer, Unsealed};
use crate::stats::WriteThroughStats;
use crate::store::{ApplyFn, SaveOutcome, SessionStore};

/// What the cache holds for one session (keyed by the id's hash, never the id).
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Cached {
    version: i64,
    expires_at: i64,
    principal: Option<String>,
    data: SessionData,
    deleted: bool,
}

/// Order of cache entries: a fill only ever replaces a lower rank. A touch keeps the version
/// and moves the expiry, so the expiry breaks ties; a tombstone outranks everything; an
/// invalidation marker ranks just below the versions it lets in.
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

    /// What an invalidation leaves in place of an entry: no session (its expiry is the
    /// smallest there is, so a load misses), ranked below every record of version `floor`
    /// and above every older one, so a slow fill of an older version cannot come back after
    /// it. Earlier releases read it the same way (an expired entry, ranked by its fields).
    fn marker(floor: i64) -> Self {
        Cached {
            version: floor,
            expires_at: i64::MIN,
            principal: None,
            data: SessionData::new(),
            deleted: false,
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

/// Where one session lives in the cache: its id's hash and the cache key made of it,
/// worked out once per operation.
struct Slot {
    hash: IdHash,
    key: Key,
}

impl Slot {
    fn of(hash: IdHash) -> Self {
        Slot {
            key: hash.cache_key(),
            hash,
        }
    }
}

/// Write-through caching over any [`SessionStore`] with an [`Outbox`]: the store stays the
/// authority.
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
///   calls. An invalidation leaves a short-lived marker carrying the newest version it knows
///   of, so a slower fill of an older version (read from the store before the invalidation)
///   is refused rather than served until `max_cache_ttl`.
/// * **Logout and changes reach every cache within a bound, shared or per process.** A
///   delete, rotation or revocation writes a tombstone that outranks every version, so no
///   fill can bring the session back. The database records every change (saves with their
///   version, and deletions) in its change log ([`Outbox`]) in the same transaction, and
///   every `CachedStore` reads the log from its own cursor (on a load, at most every
///   `drain_interval`, default 500 ms): a deletion becomes a tombstone, a save evicts an
///   older version. So a tombstone that could not be written — the cache failed at that
///   moment, or the process died right after the commit — is written by the next reader,
///   and a cache of another process (each instance its own memory or sled cache in front of
///   one database) learns of a change or a logout made elsewhere: no instance serves a
///   deleted session, or a version older than one saved elsewhere, from a reachable cache
///   more than `drain_interval` + `breaker_cooldown` (1.5 s by default) after the change
///   returned. The cursor is kept in the cache itself (so a shared cache has one, a
///   persistent cache keeps it across restarts, and a new memory cache starts at the log's
///   head) and in memory. A reader away longer than the log keeps entries
///   ([`log_retention`](Outbox::log_retention)) starts at the head; as cache entries never
///   live longer than that (`max_cache_ttl` is capped at it), nothing it held before can
///   still be served (counted in [`log_flushes`](crate::WriteThroughSnapshot::log_flushes)).
/// * **Optional integrity** ([`integrity_key`](CachedStore::integrity_key)): entries carry
///   an HMAC-SHA256 tag; an entry that fails the check is a miss, counted and logged.
///
/// Cache entries live at most `max_cache_ttl` (default 10 minutes, and never longer than the
/// store's [`log_retention`](Outbox::log_retention)), which bounds how long a cache that
/// missed an invalidation during a network partition can serve old data.
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
    breaker: Breaker,
    drains: DrainSchedule,
    sealer: Sealer,
    stats: Arc<WriteThroughStats>,
    /// Invalidations waiting for the cache, each with the lowest version a fill may still
    /// bring (see [`Cached::marker`]).
    pending: Mutex<HashMap<Key, i64>>,
    /// Per session: the rank and cache version this process last saw in the cache, so a
    /// write can be one compare-and-swap instead of a read and a write.
    hints: quick_cache::sync::Cache<[u8; 32], (Rank, Version)>,
    /// Where this reader is in the change log, should the cache lose its copy.
    cursor: Mutex<Option<Cursor>>,
}

/// Most invalidations kept waiting for a cache that is down; beyond it the oldest entries
/// are only bounded by `max_cache_ttl`.
const MAX_PENDING: usize = 100_000;

/// Longest life of an invalidation marker (and at most `max_cache_ttl`): longer than a fill
/// takes, from its store read to its cache write, so a fill that read before the
/// invalidation finds the marker. A marker holds no session: a newer fill replaces it.
const MARKER_TTL: Duration = Duration::from_secs(60);

impl<S: fmt::Debug> fmt::Debug for CachedStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedStore")
            .field("store", &self.store)
            .field("cache", &self.raw_cache)
            .field("cache_timeout", &self.cache_timeout)
            .field("max_cache_ttl", &self.max_cache_ttl)
            .field("drain_interval", &self.drains.interval())
            .field("integrity", &self.sealer.is_keyed())
            .finish()
    }
}

impl<S: Outbox> CachedStore<S> {
    /// Caches `store` in `cache`.
    pub fn new(store: S, cache: DynBackend) -> Self {
        let timeout = Duration::from_millis(250);
        let stats = Arc::<WriteThroughStats>::default();
        let max_cache_ttl = Duration::from_secs(600).min(store.log_retention());
        CachedStore {
            store,
            raw_cache: cache.clone(),
            cache: Arc::new(Timeout::new(cache, timeout)),
            cache_timeout: timeout,
            max_cache_ttl,
            breaker: Breaker::new(Duration::from_secs(1), Arc::clone(&stats)),
            drains: DrainSchedule::new(Duration::from_millis(500)),
            sealer: Sealer::default(),
            stats,
            pending: Mutex::new(HashMap::new()),
            hints: quick_cache::sync::Cache::new(10_000),
            cursor: Mutex::new(None),
        }
    }

    /// Deadline of each cache operation (default 250 ms); past it the cache counts as down.
    pub fn cache_timeout(mut self, d: Duration) -> Self {
        self.cache_timeout = d;
        self.cache = Arc::new(Timeout::new(self.raw_cache.clone(), d));
        self
    }

    /// Longest life of a cache entry (default 10 minutes). Capped at the store's
    /// [`log_retention`](Outbox::log_retention): an entry must not outlive the log entry
    /// that would evict it.
    pub fn max_cache_ttl(mut self, d: Duration) -> Self {
        self.max_cache_ttl = d
            .min(self.store.log_retention())
            .max(Duration::from_millis(1));
        self
    }

    /// How long the cache is skipped after a failure (default 1 s; zero disables the
    /// breaker).
    pub fn breaker_cooldown(mut self, d: Duration) -> Self {
        self.breaker.set_cooldown(d);
        self
    }

    /// How often a load first reads the database's change log (default 500 ms): the bound
    /// on how late a change made through another process is seen here.
    pub fn drain_interval(mut self, d: Duration) -> Self {
        self.drains.set_interval(d);
        self
    }

    /// Tags every cache entry with an HMAC-SHA256 under `key` (at least 16 bytes, from
    /// configuration, the same on every instance), so an entry written by anyone without
    /// the key is refused (a miss, counted in
    /// [`integrity_failures`](crate::WriteThroughSnapshot::integrity_failures)).
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
        self.sealer = Sealer::keyed(key)?;
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

    /// Reads a stored entry; foreign, corrupt or untagged bytes are `None` (logged).
    fn open(&self, key: &Key, raw: &[u8]) -> Option<Cached> {
        match self.sealer.open(key, raw) {
            Ok(c) => Some(c),
            Err(Unsealed::Forged) => {
                self.stats.integrity_failure();
                None
            }
            Err(Unsealed::Undecodable(e)) => {
                tracing::warn!(error = %e, "undecodable session cache entry ignored");
                None
            }
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
    async fn fill(&self, slot: &Slot, cached: Cached) {
        let Slot { hash, key } = slot;
        // Any invalidation below keeps out what is older than this committed version.
        let floor = cached.version;
        if self.breaker.is_open() {
            self.breaker.skipped();
            return self.queue_invalidation(key.clone(), floor);
        }
        let Some(ttl) = self.ttl_for(&cached) else {
            return;
        };
        let Ok(bytes) = self.sealer.seal(key, &cached) else {
            return self.invalidate(key, floor).await;
        };
        let caps = self.cache.capabilities();
        if caps.max_value_size < bytes.len() {
            return self.invalidate(key, floor).await;
        }
        let rank = cached.rank();
        if !caps.cas {
            // Without CAS the forward-only rule cannot be enforced; last writer wins.
            let put = self.cache.put(key, bytes, Some(ttl), PutMode::Overwrite);
            if let Call::Done(_) = self.breaker.call("put", When::Closed, put).await {
                return;
            }
            return self.invalidate(key, floor).await;
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
            let put = self.cache.put(key, bytes.clone(), Some(ttl), mode);
            match self.breaker.call("put", When::Closed, put).await {
                Call::Done(v) => {
                    self.hints.insert(*hash.as_bytes(), (rank, v));
                    return;
                }
                // The conflict carries what is stored: no second read.
                Call::Conflict(e) => match e.into_current() {
                    None => mode = PutMode::Create,
                    Some(cur) => match self.open(key, &cur.value) {
                        Some(c) if c.rank() >= rank => {
                            self.hints.insert(*hash.as_bytes(), (c.rank(), cur.version));
                            return;
                        }
                        _ => mode = PutMode::Update(cur.version),
                    },
                },
                Call::Failed => return self.invalidate(key, floor).await,
            }
        }
        // Lost four races in a row: leave it to the newer writers, but never stale data.
        self.invalidate(key, floor).await;
    }

    async fn fill_record(&self, r: &Record) {
        self.fill(&Slot::of(r.id.hash()), Cached::of(r)).await;
    }

    /// Writes a tombstone that outranks every version, so nothing can refill a deleted
    /// session. Attempted even while the breaker is open; true if it is in the cache.
    async fn bury(&self, slot: &Slot) -> bool {
        let cached = Cached::tombstone();
        let (Ok(bytes), Some(ttl)) = (self.sealer.seal(&slot.key, &cached), self.ttl_for(&cached))
        else {
            return false;
        };
        let put = self
            .cache
            .put(&slot.key, bytes, Some(ttl), PutMode::Overwrite);
        match self.breaker.call("put", When::Always, put).await {
            Call::Done(v) => {
                self.hints.insert(*slot.hash.as_bytes(), (cached.rank(), v));
                true
            }
            _ => false,
        }
    }

    /// Queues an invalidation that keeps out versions older than `floor`.
    fn queue_invalidation(&self, key: Key, floor: i64) {
        let mut p = self.pending.lock();
        if p.len() < MAX_PENDING || p.contains_key(&key) {
            let f = p.entry(key).or_insert(floor);
            *f = (*f).max(floor);
        }
    }

    /// Replaces a possibly stale entry with a marker that refuses fills older than `floor`
    /// (a committed version) or than the entry it removes, so a slower fill of an older
    /// version cannot land after it; never replaces a tombstone (a fill racing a delete
    /// must find it). Queued for a later retry if the cache cannot be reached.
    async fn invalidate(&self, key: &Key, floor: i64) {
        WriteThroughStats::bump(&self.stats.invalidations);
        if !self.try_invalidate(key, floor).await {
            self.queue_invalidation(key.clone(), floor);
        }
    }

    async fn try_invalidate(&self, key: &Key, floor: i64) -> bool {
        let cas = self.cache.capabilities().cas;
        let mut tries = Backoff::new(Duration::ZERO, Duration::ZERO).max_attempts(3);
        while tries.next_attempt_now() {
            let entry = match self
                .breaker
                .call("get", When::Closed, self.cache.get(key))
                .await
            {
                Call::Done(e) => e,
                _ => return false,
            };
            let stored = entry.as_ref().and_then(|e| self.open(key, &e.value));
            if stored.as_ref().is_some_and(|c| c.deleted) {
                return true;
            }
            let write = match (&entry, cas) {
                // Without CAS no fill is refused anyway: removing the entry is all there is.
                (None, false) => return true,
                (Some(e), false) => {
                    let delete = self.cache.delete(key, DeleteMode::IfVersion(e.version));
                    settled(self.breaker.call("delete", When::Closed, delete).await)
                }
                (_, true) => {
                    let floor = stored.map_or(floor, |c| c.version.max(floor));
                    let marker = Cached::marker(floor);
                    let (Ok(ttl), Ok(bytes)) = (
                        Ttl::new(MARKER_TTL.min(self.max_cache_ttl)),
                        self.sealer.seal(key, &marker),
                    ) else {
                        return false;
                    };
                    let mode = entry.map_or(PutMode::Create, |e| PutMode::Update(e.version));
                    let put = self.cache.put(key, bytes, Some(ttl), mode);
                    settled(self.breaker.call("put", When::Closed, put).await)
                }
            };
            match write {
                Call::Done(()) => return true,
                Call::Conflict(_) => continue,
                Call::Failed => return false,
            }
        }
        false
    }

    /// Retries invalidations that failed while the cache was down.
    async fn retry_pending(&self) {
        if self.breaker.is_open() {
            return;
        }
        let keys: Vec<(Key, i64)> = {
            let mut p = self.pending.lock();
            if p.is_empty() {
                return;
            }
            let batch: Vec<Key> = p.keys().take(256).cloned().collect();
            batch
                .into_iter()
                .filter_map(|k| p.remove_entry(&k))
                .collect()
        };
        for (key, floor) in keys {
            if !self.try_invalidate(&key, floor).await {
                self.queue_invalidation(key, floor);
            }
        }
    }

    /// Invalidations still waiting for the cache to come back.
    pub fn pending_invalidations(&self) -> usize {
        self.pending.lock().len()
    }

    /// Reads the database's change log from this cache's cursor and applies what it
    /// finds: a tombstone for each deletion, an eviction for each save of a newer version
    /// than the cache holds. Returns how many entries were applied.
    ///
    /// Loads do this on their own every `drain_interval`; call it after a known cache
    /// outage, or from a periodic task on instances that rarely load.
    pub async fn drain_outbox(&self) -> Result<usize> {
        let key = cursor_key();
        let (stored, version) = self.read_cursor(&key).await;
        // A cursor the cache lost (evicted) is continued from memory.
        let cursor = stored.clone().or_else(|| self.cursor.lock().clone());
        let apply = |entry| self.apply_change(entry);
        let followed =
            outbox::follow(&self.store, cursor, Timestamp::now(), DRAIN_BATCH, apply).await?;
        if followed.start == Start::Flushed {
            // Entries it never applied may be gone from the log; what the cache held from
            // before has expired (entries are capped at the log's retention).
            WriteThroughStats::bump(&self.stats.log_flushes);
            self.hints.clear();
            tracing::warn!(
                "session cache was away from the change log longer than its retention; \
                 restarted at the log's head"
            );
        }
        *self.cursor.lock() = Some(followed.cursor.clone());
        // Nothing new read: the stored cursor stands, refreshed only often enough that it
        // never looks away for longer than the log's retention.
        let refresh = outbox::millis(self.store.log_retention() / 4);
        let unchanged = stored.is_some_and(|s| {
            s.seq == followed.cursor.seq
                && s.gaps == followed.cursor.gaps
                && followed.cursor.read_at.saturating_sub(s.read_at) < refresh
        });
        if !unchanged {
            self.write_cursor(&key, &followed.cursor, version).await;
        }
        Ok(followed.applied)
    }

    /// The cursor the cache holds, and its cache version; `None` if absent or unreadable.
    async fn read_cursor(&self, key: &Key) -> (Option<Cursor>, Option<Version>) {
        let get = self.cache.get(key);
        match self.breaker.call("get", When::Closed, get).await {
            Call::Done(Some(e)) => match self.sealer.open::<Cursor>(key, &e.value) {
                Ok(c) => (Some(c), Some(e.version)),
                Err(_) => (None, Some(e.version)),
            },
            _ => (None, None),
        }
    }

    /// Stores the cursor in the cache, with no expiry. Where the cache compares versions a
    /// cursor another reader of the same cache moved meanwhile is left as it is.
    async fn write_cursor(&self, key: &Key, cursor: &Cursor, seen: Option<Version>) {
        let Ok(bytes) = self.sealer.seal(key, cursor) else {
            return;
        };
        let mode = match (self.cache.capabilities().cas, seen) {
            (false, _) => PutMode::Overwrite,
            (true, Some(v)) => PutMode::Update(v),
            (true, None) => PutMode::Create,
        };
        let put = self.cache.put(key, bytes, None, mode);
        let _ = self.breaker.call("put", When::Closed, put).await;
    }

    /// Applies one log entry; false if the cache could not be written (read again later).
    async fn apply_change(&self, entry: Invalidation) -> bool {
        let slot = Slot::of(entry.hash);
        if entry.deleted {
            let buried = self.bury(&slot).await;
            if buried {
                WriteThroughStats::bump(&self.stats.outbox_drained);
            }
            return buried;
        }
        self.evict_older(&slot, entry.version).await
    }

    /// Replaces the cache entry of `slot` by a marker of `version` unless it holds that
    /// version or a newer one, or a tombstone; true once it does. The marker is an entry
    /// already expired (a load passes it by and refills from the store) whose rank refuses
    /// the fill of an older version still under way, which would otherwise put back what
    /// the log entry removed. Absent entries get one too, for the same reason; it lives
    /// [`GAP_GRACE`](outbox::GAP_GRACE), longer than any fill takes.
    async fn evict_older(&self, slot: &Slot, version: i64) -> bool {
        let marker = Cached::marker(version);
        let (Ok(bytes), Ok(ttl)) = (
            self.sealer.seal(&slot.key, &marker),
            Ttl::new(outbox::GAP_GRACE.min(self.max_cache_ttl)),
        ) else {
            return false;
        };
        let cas = self.cache.capabilities().cas;
        for _ in 0..3 {
            let get = self.cache.get(&slot.key);
            let mode = match self.breaker.call("get", When::Closed, get).await {
                Call::Done(Some(e)) => {
                    if self
                        .open(&slot.key, &e.value)
                        .is_some_and(|c| c.deleted || c.version >= version)
                    {
                        return true;
                    }
                    if cas {
                        PutMode::Update(e.version)
                    } else {
                        PutMode::Overwrite
                    }
                }
                Call::Done(None) if cas => PutMode::Create,
                // Without compare-and-swap a marker could overwrite a newer fill.
                Call::Done(None) => return true,
                _ => return false,
            };
            let put = self.cache.put(&slot.key, bytes.clone(), Some(ttl), mode);
            match self.breaker.call("put", When::Closed, put).await {
                Call::Done(v) => {
                    self.hints.insert(*slot.hash.as_bytes(), (marker.rank(), v));
                    WriteThroughStats::bump(&self.stats.log_evictions);
                    return true;
                }
                Call::Conflict(_) => continue,
                Call::Failed => return false,
            }
        }
        false
    }
}

/// Where a cache keeps its reader's cursor in the change log (no session's key: those
/// are hashes of 32-byte ids).
fn cursor_key() -> Key {
    Key::hashed("sess-log:cursor")
}

/// `call` without its value: whether it was done, lost a race or failed.
fn settled<T>(call: Call<T>) -> Call<()> {
    match call {
        Call::Done(_) => Call::Done(()),
        Call::Conflict(e) => Call::Conflict(e),
        Call::Failed => Call::Failed,
    }
}

#[async_trait]
impl<S: Outbox> SessionStore for CachedStore<S> {
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
        let cache_down = self.breaker.is_open();
        self.drains
            .run_if_due(cache_down, || self.drain_outbox())
            .await;
        let slot = Slot::of(id.hash());
        let lookup = self.cache.lookup(&slot.key);
        if let Call::Done(Some(entry)) = self.breaker.call("get", When::Closed, lookup).await {
            if let Some(c) = self.open(&slot.key, &entry.value) {
                self.hints
                    .insert(*slot.hash.as_bytes(), (c.rank(), entry.version));
                if c.deleted {
                    WriteThroughStats::bump(&self.stats.hits);
                    return Ok(None);
                }
                if c.expires_at > Timestamp::now().0 {
                    WriteThroughStats::bump(&self.stats.hits);
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
        WriteThroughStats::bump(&self.stats.misses);
        metrics::counter!("larder_session_cache_misses_total").increment(1);
        let r = self.store.load(id).await?;
        if let Some(r) = &r {
            self.fill(&slot, Cached::of(r)).await;
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
        self.bury(&Slot::of(id.hash())).await;
        Ok(deleted)
    }

    async fn rotate(&self, id: &SessionId) -> Result<Option<Record>> {
        let r = self.store.rotate(id).await?;
        self.bury(&Slot::of(id.hash())).await;
        if let Some(r) = &r {
            self.fill_record(r).await;
        }
        Ok(r)
    }

    async fn delete_principal(&self, principal: &str) -> Result<Vec<IdHash>> {
        let hashes = self.store.delete_principal(principal).await?;
        for h in &hashes {
            self.bury(&Slot::of(*h)).await;
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

/// The change log of the store underneath: a `CachedStore` can itself be cached.
#[async_trait]
impl<S: Outbox> Outbox for CachedStore<S> {
    async fn log_after(&self, after: i64, limit: u32) -> Result<Vec<Invalidation>> {
        self.store.log_after(after, limit).await
    }

    async fn log_at(&self, seqs: &[i64]) -> Result<Vec<Invalidation>> {
        self.store.log_at(seqs).await
    }

    async fn log_start(&self, before: Timestamp) -> Result<i64> {
        self.store.log_start(before).await
    }

    fn log_retention(&self) -> Duration {
        self.store.log_retention()
    }
}

#[cfg(test)]
mod stored_form {
    use larder_cache_api::codec::{Bincode, Json, Postcard};
    use larder_cache_api::{envelope, Key};
    use proptest::prelude::*;

    use super::*;
    use crate::seal::Sealer;

    fn cached() -> impl Strategy<Value = Cached> {
        (
            any::<i64>(),
            any::<i64>(),
            proptest::option::of(".{0,12}"),
            proptest::collection::btree_map(
                ".{0,8}",
                proptest::collection::vec(any::<u8>(), 0..8),
                0..4,
            ),
            any::<bool>(),
        )
            .prop_map(|(version, expires_at, principal, map, deleted)| {
                let mut data = SessionData::new();
                for (k, v) in map {
                    data.insert_raw(&k, v);
                }
                Cached {
                    version,
                    expires_at,
                    principal,
                    data,
                    deleted,
                }
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// A session's cache entry reads back as it was written: through the store's own
        /// sealer (keyed or not), and on every codec.
        #[test]
        fn cache_entries_open_as_sealed(c in cached()) {
            let key = Key::new("larder:session:k").unwrap();
            for sealer in [Sealer::default(), Sealer::keyed(b"sixteen bytes or more").unwrap()] {
                let bytes = sealer.seal(&key, &c).unwrap();
                let back: Cached = sealer.open(&key, &bytes).unwrap();
                prop_assert_eq!(&back, &c);
            }
            let back: Cached = envelope::open(&Postcard, &envelope::seal(&Postcard, &c).unwrap()).unwrap();
            prop_assert_eq!(&back, &c);
            let back: Cached = envelope::open(&Json, &envelope::seal(&Json, &c).unwrap()).unwrap();
            prop_assert_eq!(&back, &c);
            let back: Cached = envelope::open(&Bincode, &envelope::seal(&Bincode, &c).unwrap()).unwrap();
            prop_assert_eq!(&back, &c);
        }
    }
}
