//! The layer: reads served from the local tier when the coherence rules allow, everything
//! else passed to the shared backend.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use larder_cache_api::layer::{InvalidationChannel, Subscription};
use larder_cache_api::{
    CacheBackend, Capabilities, DeleteMode, DynBackend, Entry, Key, PutMode, Result, Ttl, Version,
};

use crate::clock::nanos;
use crate::coherence::Coherence;
use crate::hint::{TtlHints, Verdict};
use crate::stats::NearStats;
use crate::sync::ChannelState;
use crate::tag::Tag;

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
/// store whose channel it uses (below a [`Namespace`](larder_cache_api::layer::Namespace)):
/// invalidations name keys as the store sees them. An entry written elsewhere with a TTL may
/// outlive its expiry locally by up to `max_age`, unless the channel reports expiries (Redis
/// does).
///
/// A local hit is answered by [`get_now`](CacheBackend::get_now), so callers that try it
/// first ([`Cache`](larder_cache_api::Cache), `lookup` on a [`DynBackend`]) read it without a
/// boxed future.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> larder_cache_api::Result<()> {
/// use std::{sync::Arc, time::Duration};
/// use larder_cache_api::{Cache, Key};
/// use larder_near::Near;
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
    pub(crate) inner: DynBackend,
    pub(crate) caps: Capabilities,
    pub(crate) coherence: Arc<Coherence>,
    /// Expiry of entries written or touched through this layer with a TTL (and the version
    /// written, when known), so that a local copy never outlives it.
    pub(crate) ttl_hints: TtlHints,
    pub(crate) max_age: Duration,
    pub(crate) channel_name: String,
    pub(crate) channel: Option<Arc<dyn InvalidationChannel>>,
    pub(crate) _subscription: Option<Subscription>,
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

impl Near {
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
        self.coherence.local(key, now)
    }

    /// Keeps `entry`, read with `tag` taken before the read was sent, unless the key was
    /// invalidated since or another read of the same window saw another version.
    fn remember(&self, key: &Key, entry: &Entry, tag: Tag) {
        if let Some(ch) = &self.channel {
            if !ch.covers(key.as_bytes()) {
                return;
            }
        }
        let c = &self.coherence;
        let now = c.now();
        let mut until = now.saturating_add(nanos(self.max_age));
        match self.ttl_hints.judge(key, entry.version, now, &c.clock) {
            Verdict::NoHint | Verdict::Outdated => {}
            Verdict::Until(expires) => until = until.min(expires),
            Verdict::ServeOnly => return,
        }
        c.keep(key, entry, tag, now, until);
    }

    /// Counts the backend's answer to a read and, given the read's tag, keeps what it found.
    fn count_shared(&self, key: &Key, got: &Result<Option<Entry>>, keep: Option<Tag>) {
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
        self.ttl_hints.record(key, version, ttl, start);
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
        if let Some(fault) = s.channel_fault() {
            d.push(("near channel fault", fault.to_string()));
        }
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
                self.ttl_hints.forget(key);
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
                    self.ttl_hints.forget(k);
                }
            }
        }
        r
    }

    async fn delete(&self, key: &Key, mode: DeleteMode) -> Result<bool> {
        let r = (*self.inner).delete(key, mode).await;
        self.after_write(key);
        if matches!(r, Ok(true)) {
            self.ttl_hints.forget(key);
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
                let v = self.ttl_hints.version(key);
                self.hint(key, v, ttl, start);
            }
            _ => {
                self.ttl_hints.forget(key);
            }
        }
        r
    }
}

#[cfg(test)]
mod tests;
