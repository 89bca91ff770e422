use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;

use super::invalidation::{InvalidationChannel, InvalidationSink, Subscription};
use crate::{
    CacheBackend, Capabilities, DeleteMode, DynBackend, Entry, Error, ErrorKind, Key, PutMode,
    Result, Ttl, Version,
};

/// Default number of entries kept in process.
pub const DEFAULT_CAPACITY: usize = 10_000;
/// Default longest time an entry is served from process memory.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(60);
/// Default staleness bound of a near cache with an invalidation channel.
pub const DEFAULT_MAX_STALENESS: Duration = Duration::from_millis(50);

/// Whether the local tier of a [`Near`] cache is in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChannelState {
    /// The invalidation channel is subscribed (local entries are served while it is synced).
    Up,
    /// The channel is down or not yet subscribed: the local tier is empty and bypassed.
    Down,
    /// No channel: local entries are served up to the accepted staleness.
    Accepted,
}

/// Counters of a [`Near`] cache, kept in process and exported through the `metrics` facade
/// (labelled with the backend's name):
///
/// | metric | counts |
/// |---|---|
/// | `larder_near_local_hits_total` | [`local_hits`](Self::local_hits) |
/// | `larder_near_shared_hits_total` | [`shared_hits`](Self::shared_hits) |
/// | `larder_near_misses_total` | [`misses`](Self::misses) |
/// | `larder_near_invalidations_total` | [`invalidations`](Self::invalidations) |
/// | `larder_near_bypassed_total` | [`bypassed`](Self::bypassed) |
/// | `larder_near_flushes_total` | [`flushes`](Self::flushes) |
///
/// The exported counters are registered when the cache is built: install the `metrics`
/// recorder before that.
#[derive(Debug)]
pub struct NearStats {
    local_hits: Tally,
    shared_hits: Tally,
    misses: Tally,
    invalidations: Tally,
    bypassed: Tally,
    flushes: Tally,
}

/// One counter: in process, and in the `metrics` recorder.
#[derive(Debug)]
struct Tally {
    n: AtomicU64,
    exported: metrics::Counter,
}

impl Tally {
    fn new(name: &'static str, backend: &'static str) -> Self {
        Tally {
            n: AtomicU64::new(0),
            exported: metrics::counter!(name, "backend" => backend),
        }
    }

    fn add(&self) {
        self.n.fetch_add(1, Ordering::Relaxed);
        self.exported.increment(1);
    }

    fn get(&self) -> u64 {
        self.n.load(Ordering::Relaxed)
    }
}

impl NearStats {
    fn new(backend: &'static str) -> Self {
        NearStats {
            local_hits: Tally::new("larder_near_local_hits_total", backend),
            shared_hits: Tally::new("larder_near_shared_hits_total", backend),
            misses: Tally::new("larder_near_misses_total", backend),
            invalidations: Tally::new("larder_near_invalidations_total", backend),
            bypassed: Tally::new("larder_near_bypassed_total", backend),
            flushes: Tally::new("larder_near_flushes_total", backend),
        }
    }

    /// Reads answered from process memory.
    pub fn local_hits(&self) -> u64 {
        self.local_hits.get()
    }
    /// Reads answered by the shared backend with an entry.
    pub fn shared_hits(&self) -> u64 {
        self.shared_hits.get()
    }
    /// Reads that found nothing (in the shared backend).
    pub fn misses(&self) -> u64 {
        self.misses.get()
    }
    /// Key invalidations received from the channel.
    pub fn invalidations(&self) -> u64 {
        self.invalidations.get()
    }
    /// Reads that skipped the local tier because the channel was down or not synced within
    /// the staleness bound.
    pub fn bypassed(&self) -> u64 {
        self.bypassed.get()
    }
    /// Times the local tier was flushed because the channel went down (or asked for it).
    pub fn flushes(&self) -> u64 {
        self.flushes.get()
    }
}

/// One entry in process memory, with what decides whether it may still be served.
#[derive(Clone)]
struct Local {
    entry: Entry,
    /// The flush epoch and the key's invalidation sequence number seen *before* the read
    /// that fetched the entry was sent.
    epoch: u64,
    seq: u64,
    /// The key's stripe, so that a hit does not hash the key a second time.
    stripe: u32,
    /// Served until then (nanoseconds on the coherence clock).
    until: u64,
}

/// What the invalidation channel and the read path share.
pub(super) struct Coherence {
    base: Instant,
    /// Invalidation sequence numbers, one per stripe of the key space.
    stripes: Box<[AtomicU64]>,
    /// Picks a key's stripe; foldhash, because a local hit hashes the key twice (here and in
    /// the local tier) and SipHash took ~15 ns of a ~150 ns hit.
    hasher: foldhash::fast::RandomState,
    /// Bumped on every flush: entries of older epochs are dead.
    epoch: AtomicU64,
    up: AtomicBool,
    /// The latest instant (coherence clock, +1; 0: never) before which every change has been
    /// reported by the channel.
    synced: AtomicU64,
    has_channel: bool,
    max_staleness_ns: u64,
    cache: quick_cache::sync::Cache<Key, Local>,
    stats: Arc<NearStats>,
}

impl Coherence {
    fn now(&self) -> u64 {
        nanos(self.base.elapsed()) + 1
    }

    fn stripe_index(&self, key: &[u8]) -> usize {
        // Power-of-two length: mask the hash.
        (self.hasher.hash_one(key) as usize) & (self.stripes.len() - 1)
    }

    fn stripe(&self, key: &[u8]) -> &AtomicU64 {
        &self.stripes[self.stripe_index(key)]
    }

    /// Whether local entries may be served at `now`.
    fn usable(&self, now: u64) -> bool {
        if !self.has_channel {
            return true;
        }
        if !self.up.load(Ordering::Acquire) {
            return false;
        }
        let s = self.synced.load(Ordering::Acquire);
        s != 0 && now.saturating_sub(s) < self.max_staleness_ns
    }

    /// The tag a read takes before it is sent.
    fn tag(&self, key: &Key) -> (u64, u64) {
        (
            self.epoch.load(Ordering::SeqCst),
            self.stripe(key.as_bytes()).load(Ordering::SeqCst),
        )
    }

    pub(super) fn invalidate(&self, key: &[u8]) {
        self.stripe(key).fetch_add(1, Ordering::SeqCst);
        self.stats.invalidations.add();
    }

    /// Our own write: later reads must not serve what was read before it.
    fn invalidate_own(&self, key: &Key) {
        self.stripe(key.as_bytes()).fetch_add(1, Ordering::SeqCst);
    }

    pub(super) fn invalidate_all(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.cache.clear();
        self.stats.flushes.add();
    }

    pub(super) fn set_up(&self) {
        // Entries read before the channel (re)subscribed may have missed an invalidation.
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.up.store(true, Ordering::Release);
    }

    pub(super) fn set_down(&self) {
        let was_up = self.up.swap(false, Ordering::AcqRel);
        self.synced.store(0, Ordering::Release);
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.cache.clear();
        if was_up {
            self.stats.flushes.add();
            tracing::warn!(
                "near cache: invalidation channel down; local tier flushed and bypassed"
            );
        }
    }

    pub(super) fn synced(&self, sent_at: Instant) {
        let t = nanos(sent_at.saturating_duration_since(self.base)) + 1;
        self.synced.fetch_max(t, Ordering::AcqRel);
    }

    fn state(&self) -> ChannelState {
        if !self.has_channel {
            ChannelState::Accepted
        } else if self.up.load(Ordering::Acquire) {
            ChannelState::Up
        } else {
            ChannelState::Down
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// An in-process cache in front of a shared backend, kept coherent by the backend's
/// invalidation channel.
///
/// **Guarantee**: a read started at least `max_staleness` (default 50 ms) after a write
/// completed, in any process, returns that write or a newer one. Local entries are served only
/// while the channel is up and has confirmed delivery of every change made before
/// `now - max_staleness`; when it drops, the local tier is flushed and bypassed until it is
/// back. Without a channel, staleness up to the accepted bound must be asked for explicitly.
///
/// Versions, compare-and-swap and every write go to the shared backend; a write through this
/// layer drops the local entry at once, in this process. An entry is only ever replaced by one
/// read after a newer invalidation (versions of some backends are random, so "newer" is
/// decided by the invalidation sequence, not by the version). Put `Near` directly on the
/// store whose channel it uses (below a [`Namespace`](super::Namespace)): invalidations name
/// keys as the store sees them. An entry written elsewhere with a TTL may outlive its expiry
/// locally by up to `max_age`, unless the channel reports expiries (Redis does).
///
/// A local hit is answered by [`get_now`](CacheBackend::get_now), so callers that try it
/// first ([`Cache`](crate::Cache), `lookup` on a [`DynBackend`]) read it without a boxed
/// future.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> larder_cache_api::Result<()> {
/// use std::{sync::Arc, time::Duration};
/// use larder_cache_api::{layer::Near, Cache, Key};
/// # let backend: larder_cache_api::DynBackend = Arc::new(larder_backend_memory::MemoryBackend::default());
///
/// // A backend without an invalidation channel must accept a staleness bound explicitly;
/// // with Redis, pass `.channel(redis.tracking())` instead.
/// let near = Arc::new(
///     Near::builder(backend)
///         .capacity(1_000)
///         .accept_staleness(Duration::from_secs(2))
///         .build()?,
/// );
/// let cache = Cache::new(near.clone());
/// let k = Key::new("greeting")?;
/// cache.set(&k, "hello", None).await?;
/// assert_eq!(cache.get::<String>(&k).await?.as_deref(), Some("hello")); // from the backend
/// assert_eq!(cache.get::<String>(&k).await?.as_deref(), Some("hello")); // from memory
/// assert_eq!(near.stats().local_hits(), 1);
/// # Ok(()) }
/// ```
pub struct Near {
    inner: DynBackend,
    caps: Capabilities,
    coherence: Arc<Coherence>,
    /// Expiry of entries written or touched through this layer with a TTL (and the version
    /// written, when known), so that a local copy never outlives it.
    ttl_hints: quick_cache::sync::Cache<Key, (Option<Version>, Instant)>,
    /// How late after its hinted expiry an entry may still be read from the backend.
    expiry_grace: Duration,
    /// Serialises the check-then-insert of local entries, per stripe.
    insert_locks: Box<[Mutex<()>]>,
    max_age: Duration,
    channel_name: String,
    channel: Option<Arc<dyn InvalidationChannel>>,
    _subscription: Option<Subscription>,
}

impl fmt::Debug for Near {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Near")
            .field("channel", &self.channel_name)
            .field("state", &self.coherence.state())
            .field("max_age", &self.max_age)
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Near`] cache; see [`Near::builder`].
#[derive(Debug)]
pub struct NearBuilder {
    inner: DynBackend,
    capacity: usize,
    max_age: Duration,
    max_staleness: Duration,
    channel: Option<Arc<dyn InvalidationChannel>>,
    accepted: Option<Duration>,
}

impl NearBuilder {
    /// Most entries kept in process (default 10,000; 0 is refused).
    pub fn capacity(mut self, entries: usize) -> Self {
        self.capacity = entries;
        self
    }

    /// Longest time an entry is served from process memory (default 60 s).
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = age;
        self
    }

    /// The staleness bound with a channel (default 50 ms): local entries are served only
    /// while the channel has confirmed, less than this long ago, that it reported every
    /// change. The channel pings four times per bound.
    pub fn max_staleness(mut self, bound: Duration) -> Self {
        self.max_staleness = bound;
        self
    }

    /// The backend's invalidation channel.
    pub fn channel(mut self, channel: impl InvalidationChannel + 'static) -> Self {
        self.channel = Some(Arc::new(channel));
        self
    }

    /// No channel: accept that another process's write is seen up to `staleness` late.
    /// Entries are then kept at most that long.
    pub fn accept_staleness(mut self, staleness: Duration) -> Self {
        self.accepted = Some(staleness);
        self
    }

    /// Builds the cache and, with a channel, subscribes to it (inside a tokio runtime).
    ///
    /// [`ErrorKind::Config`] for a capacity, age or staleness of zero, for a backend given
    /// neither a channel nor an accepted staleness, and for both at once.
    pub fn build(self) -> Result<Near> {
        let name = self.inner.capabilities().name;
        let config = |msg: String| Err(Error::new(ErrorKind::Config, msg).with_backend(name));
        if self.capacity == 0 {
            return config("near cache: capacity must be at least 1 entry".into());
        }
        if self.max_age.is_zero() || self.max_staleness.is_zero() {
            return config("near cache: max_age and max_staleness must be above zero".into());
        }
        let (channel, max_age) = match (self.channel, self.accepted) {
            (Some(_), Some(_)) => {
                return config(
                    "near cache: give either an invalidation channel or an accepted staleness, not both"
                        .into(),
                )
            }
            (None, None) if self.inner.capabilities().invalidation_channel => {
                return config(format!(
                    "near cache over {name}: no invalidation channel was given, so another \
                     process's writes would be seen late; this backend offers one: pass it with \
                     `.channel(..)` (Redis: `tracking()`, PostgreSQL: `notify()`), or accept \
                     the staleness explicitly with `.accept_staleness(duration)`"
                ))
            }
            (None, None) => {
                return config(format!(
                    "near cache over {name}: this backend has no invalidation channel, so \
                     another process's writes would be seen late; accept the staleness \
                     explicitly with `.accept_staleness(duration)`"
                ))
            }
            (None, Some(s)) if s.is_zero() => {
                return config("near cache: accepted staleness must be above zero".into())
            }
            (None, Some(s)) => (None, self.max_age.min(s)),
            (Some(c), None) => (Some(c), self.max_age),
        };
        let stripes = self.capacity.saturating_mul(2).clamp(1 << 12, 1 << 20);
        let stripes = stripes.next_power_of_two();
        let coherence = Arc::new(Coherence {
            base: Instant::now(),
            stripes: (0..stripes).map(|_| AtomicU64::new(0)).collect(),
            hasher: Default::default(),
            epoch: AtomicU64::new(0),
            up: AtomicBool::new(false),
            synced: AtomicU64::new(0),
            has_channel: channel.is_some(),
            max_staleness_ns: nanos(self.max_staleness),
            cache: quick_cache::sync::Cache::new(self.capacity),
            stats: Arc::new(NearStats::new(name)),
        });
        let (subscription, channel_name) = match &channel {
            Some(c) => {
                let sink = InvalidationSink {
                    target: Arc::downgrade(&coherence),
                    sync_interval: self.max_staleness / 4,
                };
                (Some(c.subscribe(sink)?), c.describe())
            }
            None => (None, format!("none (accepted staleness {max_age:?})")),
        };
        let expiry_grace = Duration::from_secs(1) + self.inner.capabilities().ttl_precision;
        let mut caps = self.inner.capabilities().clone();
        // CAS itself goes to the backend, but a read through the layer may be stale by the
        // bound, so a successful CAS is not visible to every later read at once.
        caps.linearizable_cas = false;
        // Its local tier is not covered by any channel another near cache could use.
        caps.invalidation_channel = false;
        Ok(Near {
            caps,
            inner: self.inner,
            coherence,
            ttl_hints: quick_cache::sync::Cache::new(self.capacity),
            expiry_grace,
            insert_locks: (0..256).map(|_| Mutex::new(())).collect(),
            max_age,
            channel_name,
            channel,
            _subscription: subscription,
        })
    }
}

impl Near {
    /// A builder for a near cache in front of `inner`.
    pub fn builder(inner: DynBackend) -> NearBuilder {
        NearBuilder {
            inner,
            capacity: DEFAULT_CAPACITY,
            max_age: DEFAULT_MAX_AGE,
            max_staleness: DEFAULT_MAX_STALENESS,
            channel: None,
            accepted: None,
        }
    }

    /// The layer's counters (shared; keep the `Arc`).
    pub fn stats(&self) -> Arc<NearStats> {
        Arc::clone(&self.coherence.stats)
    }

    /// Whether the local tier is in use.
    pub fn channel_state(&self) -> ChannelState {
        self.coherence.state()
    }

    /// The local entry for `key`, if it may be served at `now`.
    fn local(&self, key: &Key, now: u64) -> Option<Entry> {
        let c = &self.coherence;
        let l = c.cache.get(key)?;
        let epoch = c.epoch.load(Ordering::SeqCst);
        let seq = c.stripes[l.stripe as usize].load(Ordering::SeqCst);
        if l.epoch == epoch && l.seq == seq && now < l.until {
            Some(l.entry)
        } else {
            None
        }
    }

    /// Keeps `entry`, read with `tag` taken before the read was sent, unless the key was
    /// invalidated since or another read of the same window saw another version.
    fn remember(&self, key: &Key, entry: &Entry, tag: (u64, u64)) {
        if let Some(ch) = &self.channel {
            if !ch.covers(key.as_bytes()) {
                return;
            }
        }
        let c = &self.coherence;
        let now = c.now();
        let mut until = now.saturating_add(nanos(self.max_age));
        if let Some((v, exp)) = self.ttl_hints.get(key) {
            if v.is_none_or(|v| v == entry.version) {
                let exp_ns = nanos(exp.saturating_duration_since(c.base)) + 1;
                if exp_ns > now {
                    until = until.min(exp_ns);
                } else if exp.elapsed() < self.expiry_grace {
                    // Read around its expiry: serve it, do not keep it.
                    return;
                } else {
                    // Long past the hinted expiry: rewritten or touched elsewhere.
                    self.ttl_hints.remove(key);
                }
            }
        }
        let lock_i = (c.hasher.hash_one(key.as_bytes()) as usize) % self.insert_locks.len();
        let _g = self.insert_locks[lock_i].lock();
        if c.tag(key) != tag {
            return; // invalidated while the read was in flight
        }
        if let Some(old) = c.cache.peek(key) {
            if (old.epoch, old.seq) == tag && old.until > now && old.entry.version != entry.version
            {
                // Two reads of one invalidation window saw different versions: a write's
                // invalidation is on its way, and which is newer is unknown. Keep neither.
                c.cache.remove(key);
                return;
            }
        }
        c.cache.insert(
            key.clone(),
            Local {
                entry: entry.clone(),
                epoch: tag.0,
                seq: tag.1,
                // At most 2^20 stripes.
                stripe: c.stripe_index(key.as_bytes()) as u32,
                until,
            },
        );
    }

    /// Counts the backend's answer to a read and, given the read's tag, keeps what it found.
    fn count_shared(&self, key: &Key, got: &Result<Option<Entry>>, keep: Option<(u64, u64)>) {
        let stats = &self.coherence.stats;
        match got {
            Ok(Some(e)) => {
                stats.shared_hits.add();
                if let Some(tag) = keep {
                    self.remember(key, e, tag);
                }
            }
            Ok(None) => {
                stats.misses.add();
            }
            Err(_) => {}
        }
    }

    fn after_write(&self, key: &Key) {
        self.coherence.invalidate_own(key);
    }

    /// Remembers the expiry a write or touch gave `key`. `start` is taken before the
    /// request was sent, so the hinted expiry is never later than the backend's.
    fn hint(&self, key: &Key, version: Option<Version>, ttl: Option<Ttl>, start: Instant) {
        match ttl {
            Some(t) => self
                .ttl_hints
                .insert(key.clone(), (version, start + t.as_duration())),
            None => {
                self.ttl_hints.remove(key);
            }
        }
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl CacheBackend for Near {
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    fn details(&self) -> Vec<(&'static str, String)> {
        let mut d = self.inner.details();
        let s = &self.coherence.stats;
        d.push(("near channel", self.channel_name.clone()));
        d.push(("near state", format!("{:?}", self.coherence.state())));
        d.push(("near capacity", self.coherence.cache.capacity().to_string()));
        d.push(("near max age", format!("{:?}", self.max_age)));
        d.push((
            "near hits local/shared",
            format!("{}/{}", s.local_hits(), s.shared_hits()),
        ));
        d
    }

    async fn get(&self, key: &Key) -> Result<Option<Entry>> {
        let c = &self.coherence;
        let now = c.now();
        let usable = c.usable(now);
        if usable {
            if let Some(e) = self.local(key, now) {
                c.stats.local_hits.add();
                return Ok(Some(e));
            }
        } else {
            c.stats.bypassed.add();
        }
        let tag = c.tag(key);
        let got = (*self.inner).get(key).await;
        self.count_shared(key, &got, usable.then_some(tag));
        got
    }

    /// A local hit; on a local miss, the backend's own answer at hand (kept like `get`
    /// keeps it). `None` while the local tier is bypassed: `get` counts and serves that.
    fn get_now(&self, key: &Key) -> Option<Result<Option<Entry>>> {
        let c = &self.coherence;
        let now = c.now();
        if !c.usable(now) {
            return None;
        }
        if let Some(e) = self.local(key, now) {
            c.stats.local_hits.add();
            return Some(Ok(Some(e)));
        }
        let tag = c.tag(key);
        let got = (*self.inner).get_now(key)?;
        self.count_shared(key, &got, Some(tag));
        Some(got)
    }

    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Entry>>> {
        let c = &self.coherence;
        let now = c.now();
        let usable = c.usable(now);
        if !usable {
            c.stats.bypassed.add();
        }
        let mut out: Vec<Option<Entry>> = vec![None; keys.len()];
        let mut missing = Vec::new();
        let mut missing_keys = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            match usable.then(|| self.local(k, now)).flatten() {
                Some(e) => {
                    c.stats.local_hits.add();
                    out[i] = Some(e);
                }
                None => {
                    missing.push((i, c.tag(k)));
                    missing_keys.push(k.clone());
                }
            }
        }
        if missing_keys.is_empty() {
            return Ok(out);
        }
        let got = (*self.inner).get_many(&missing_keys).await?;
        for ((i, tag), e) in missing.into_iter().zip(got) {
            match &e {
                Some(e) => {
                    c.stats.shared_hits.add();
                    if usable {
                        self.remember(&keys[i], e, tag);
                    }
                }
                None => {
                    c.stats.misses.add();
                }
            }
            out[i] = e;
        }
        Ok(out)
    }

    async fn put(
        &self,
        key: &Key,
        value: Bytes,
        ttl: Option<Ttl>,
        mode: PutMode,
    ) -> Result<Version> {
        let start = Instant::now();
        let r = (*self.inner).put(key, value, ttl, mode).await;
        self.after_write(key);
        match &r {
            Ok(v) => self.hint(key, Some(*v), ttl, start),
            Err(_) => {
                self.ttl_hints.remove(key);
            }
        }
        r
    }

    async fn put_many(&self, items: &[(Key, Bytes)], ttl: Option<Ttl>) -> Result<Vec<Version>> {
        let start = Instant::now();
        let r = (*self.inner).put_many(items, ttl).await;
        for (k, _) in items {
            self.after_write(k);
        }
        match &r {
            Ok(vs) => {
                for ((k, _), v) in items.iter().zip(vs) {
                    self.hint(k, Some(*v), ttl, start);
                }
            }
            Err(_) => {
                for (k, _) in items {
                    self.ttl_hints.remove(k);
                }
            }
        }
        r
    }

    async fn delete(&self, key: &Key, mode: DeleteMode) -> Result<bool> {
        let r = (*self.inner).delete(key, mode).await;
        self.after_write(key);
        if matches!(r, Ok(true)) {
            self.ttl_hints.remove(key);
        }
        r
    }

    async fn touch(&self, key: &Key, ttl: Option<Ttl>) -> Result<bool> {
        let start = Instant::now();
        let r = (*self.inner).touch(key, ttl).await;
        self.after_write(key);
        match &r {
            // Touch keeps the version, which this layer may not know.
            Ok(true) => {
                let v = self.ttl_hints.get(key).and_then(|(v, _)| v);
                self.hint(key, v, ttl, start);
            }
            _ => {
                self.ttl_hints.remove(key);
            }
        }
        r
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A channel driven by the test: it hands its sink out.
    #[derive(Debug, Clone, Default)]
    struct Manual(Arc<Mutex<Option<InvalidationSink>>>);

    impl InvalidationChannel for Manual {
        fn subscribe(&self, sink: InvalidationSink) -> Result<Subscription> {
            *self.0.lock() = Some(sink);
            Ok(Subscription::new(()))
        }
        fn describe(&self) -> String {
            "manual".into()
        }
    }

    impl Manual {
        fn sink(&self) -> InvalidationSink {
            self.0.lock().clone().unwrap()
        }
    }

    /// A plain map, enough to stand behind the layer.
    #[derive(Debug)]
    struct Map {
        caps: Capabilities,
        entries: Mutex<std::collections::HashMap<Key, Entry>>,
        next: AtomicU64,
    }

    impl Default for Map {
        fn default() -> Self {
            Map {
                caps: Capabilities::full("map"),
                entries: Mutex::default(),
                next: AtomicU64::new(1),
            }
        }
    }

    #[async_trait]
    impl CacheBackend for Map {
        fn capabilities(&self) -> &Capabilities {
            &self.caps
        }
        async fn get(&self, key: &Key) -> Result<Option<Entry>> {
            Ok(self.entries.lock().get(key).cloned())
        }
        async fn put(
            &self,
            key: &Key,
            value: Bytes,
            _: Option<Ttl>,
            _: PutMode,
        ) -> Result<Version> {
            let v = Version::from_raw(self.next.fetch_add(1, Ordering::Relaxed));
            self.entries
                .lock()
                .insert(key.clone(), Entry::new(value, v));
            Ok(v)
        }
        async fn delete(&self, key: &Key, _: DeleteMode) -> Result<bool> {
            Ok(self.entries.lock().remove(key).is_some())
        }
        async fn touch(&self, key: &Key, _: Option<Ttl>) -> Result<bool> {
            Ok(self.entries.lock().contains_key(key))
        }
    }

    type Hook = Box<dyn FnOnce() + Send>;

    /// The map, running `hook` once, inside the next `get`, after the read.
    struct Hooked {
        inner: DynBackend,
        hook: Mutex<Option<Hook>>,
    }

    impl fmt::Debug for Hooked {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("Hooked").finish_non_exhaustive()
        }
    }

    #[async_trait]
    impl CacheBackend for Hooked {
        fn capabilities(&self) -> &Capabilities {
            self.inner.capabilities()
        }
        async fn get(&self, key: &Key) -> Result<Option<Entry>> {
            let r = self.inner.get(key).await;
            let hook = self.hook.lock().take();
            if let Some(h) = hook {
                h();
            }
            r
        }
        async fn put(
            &self,
            key: &Key,
            value: Bytes,
            ttl: Option<Ttl>,
            mode: PutMode,
        ) -> Result<Version> {
            self.inner.put(key, value, ttl, mode).await
        }
        async fn delete(&self, key: &Key, mode: DeleteMode) -> Result<bool> {
            self.inner.delete(key, mode).await
        }
        async fn touch(&self, key: &Key, ttl: Option<Ttl>) -> Result<bool> {
            self.inner.touch(key, ttl).await
        }
    }

    fn setup() -> (Near, Arc<Hooked>, Manual) {
        let hooked = Arc::new(Hooked {
            inner: Arc::new(Map::default()),
            hook: Mutex::new(None),
        });
        let channel = Manual::default();
        let near = Near::builder(hooked.clone())
            .channel(channel.clone())
            .max_staleness(Duration::from_secs(60))
            .build()
            .unwrap();
        let sink = channel.sink();
        sink.up();
        sink.synced(Instant::now());
        (near, hooked, channel)
    }

    async fn put(b: &dyn CacheBackend, k: &Key, v: &'static [u8]) -> Version {
        b.put(k, Bytes::from_static(v), None, PutMode::Overwrite)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn an_invalidation_during_a_read_keeps_its_result_out() {
        let (near, hooked, channel) = setup();
        let stats = near.stats();
        let k = Key::new("k").unwrap();
        put(&*hooked.inner, &k, b"old").await;
        let sink = channel.sink();
        // A write elsewhere lands, and its invalidation arrives, while the read is in flight.
        *hooked.hook.lock() = Some(Box::new(move || sink.invalidate(b"k")));
        assert_eq!(near.get(&k).await.unwrap().unwrap().value, &b"old"[..]);
        assert_eq!(near.get(&k).await.unwrap().unwrap().value, &b"old"[..]);
        assert_eq!(
            stats.local_hits(),
            0,
            "a read raced by an invalidation was kept"
        );
        assert_eq!(stats.shared_hits(), 2);
        near.get(&k).await.unwrap();
        assert_eq!(stats.local_hits(), 1, "a clean read is kept");
        assert_eq!(stats.invalidations(), 1);
    }

    #[tokio::test]
    async fn a_channel_down_flushes_and_bypasses_until_up_and_synced() {
        let (near, hooked, channel) = setup();
        let stats = near.stats();
        let sink = channel.sink();
        let k = Key::new("k").unwrap();
        put(&*hooked.inner, &k, b"v1").await;
        near.get(&k).await.unwrap();
        near.get(&k).await.unwrap();
        assert_eq!(stats.local_hits(), 1);
        sink.down();
        assert_eq!(near.channel_state(), ChannelState::Down);
        assert_eq!(stats.flushes(), 1);
        // Changed while the channel was down: never reported.
        put(&*hooked.inner, &k, b"v2").await;
        assert_eq!(near.get(&k).await.unwrap().unwrap().value, &b"v2"[..]);
        sink.up();
        // Up, but not synced since: still bypassed.
        assert_eq!(near.get(&k).await.unwrap().unwrap().value, &b"v2"[..]);
        assert_eq!(stats.bypassed(), 2);
        assert_eq!(stats.local_hits(), 1);
        sink.synced(Instant::now());
        near.get(&k).await.unwrap();
        assert_eq!(near.get(&k).await.unwrap().unwrap().value, &b"v2"[..]);
        assert_eq!(stats.local_hits(), 2);
    }

    #[tokio::test]
    async fn a_sync_older_than_the_bound_bypasses() {
        let hooked: DynBackend = Arc::new(Map::default());
        let channel = Manual::default();
        let near = Near::builder(hooked.clone())
            .channel(channel.clone())
            .max_staleness(Duration::from_millis(20))
            .build()
            .unwrap();
        let stats = near.stats();
        let k = Key::new("k").unwrap();
        put(&*hooked, &k, b"v").await;
        channel.sink().up();
        channel.sink().synced(Instant::now());
        near.get(&k).await.unwrap();
        near.get(&k).await.unwrap();
        assert_eq!(stats.local_hits(), 1);
        tokio::time::sleep(Duration::from_millis(40)).await;
        near.get(&k).await.unwrap();
        assert_eq!(
            stats.local_hits(),
            1,
            "served past the bound without a sync"
        );
        assert_eq!(stats.bypassed(), 1);
    }

    #[tokio::test]
    async fn two_versions_read_in_one_window_keep_neither() {
        let (near, hooked, _channel) = setup();
        let stats = near.stats();
        let k = Key::new("k").unwrap();
        let v1 = put(&*hooked.inner, &k, b"v1").await;
        let tag = near.coherence.tag(&k);
        near.remember(&k, &Entry::new(&b"v1"[..], v1), tag);
        near.remember(
            &k,
            &Entry::new(&b"v2"[..], Version::from_raw(v1.into_raw() ^ 1)),
            tag,
        );
        near.get(&k).await.unwrap();
        assert_eq!(
            stats.local_hits(),
            0,
            "one of two versions of one window was kept"
        );
    }

    #[tokio::test]
    async fn own_writes_drop_the_local_entry_at_once() {
        let (near, _hooked, _channel) = setup();
        let k = Key::new("k").unwrap();
        put(&near, &k, b"v1").await;
        near.get(&k).await.unwrap();
        assert_eq!(near.get(&k).await.unwrap().unwrap().value, &b"v1"[..]);
        put(&near, &k, b"v2").await;
        assert_eq!(near.get(&k).await.unwrap().unwrap().value, &b"v2"[..]);
        near.delete(&k, DeleteMode::Any).await.unwrap();
        assert!(near.get(&k).await.unwrap().is_none());
    }
}
