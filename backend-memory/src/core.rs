//! The store under the memory backend: a `quick_cache` concurrent cache (lock-free-ish
//! reads under a shard read lock, S3-FIFO-style eviction by weight), with every write done
//! through its `entry` API so that compare-and-swap is atomic per key.
//!
//! quick_cache was measured against a hand-written sharded map (see `benches/RESULTS.md`):
//! its `get` is about three times faster, so the backend is built on it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use larder_cache_api::{
    Bytes, DeleteMode, Entry, Error, ErrorKind, Key, PutMode, Result, Ttl, Version,
};
use quick_cache::sync::{Cache, EntryAction, EntryResult};
use quick_cache::{Lifecycle, OptionsBuilder, Weighter};

use crate::error::{exists, version_mismatch, BACKEND};

/// Fixed per-entry overhead counted against `max_bytes` (slot, key `Arc`, metadata).
const ENTRY_OVERHEAD: usize = 64;
/// No expiry.
const NEVER: u64 = u64::MAX;

#[derive(Clone)]
pub(crate) struct Slot {
    value: Bytes,
    version: u64,
    expires_at: u64,
}

impl Slot {
    fn into_entry(self) -> Entry {
        Entry::new(self.value, Version::from_raw(self.version))
    }
    fn entry(&self) -> Entry {
        Entry::new(self.value.clone(), Version::from_raw(self.version))
    }
    fn live(&self, now: u64) -> bool {
        self.expires_at > now
    }
}

/// Weight of an entry: its bytes, but at least `max_bytes / max_entries`, so that the one
/// weight budget enforces both limits.
#[derive(Clone)]
struct Cost {
    min: u64,
}

impl Weighter<Key, Slot> for Cost {
    fn weight(&self, key: &Key, val: &Slot) -> u64 {
        ((key.len() + val.value.len() + ENTRY_OVERHEAD) as u64).max(self.min)
    }
}

/// Counts evictions.
#[derive(Clone)]
struct Evictions(Arc<AtomicU64>);

impl Lifecycle<Key, Slot> for Evictions {
    type RequestState = ();
    fn begin_request(&self) -> Self::RequestState {}
    fn on_evict(&self, _: &mut Self::RequestState, _: Key, _: Slot) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

type Inner = Cache<Key, Slot, Cost, foldhash::fast::RandomState, Evictions>;

/// The store: the cache, the version counter and the clock.
pub(crate) struct Store {
    cache: Inner,
    /// Entries at least this heavy may not survive their own insertion (the eviction that
    /// makes room can take them): their puts check.
    heavy: u64,
    cost: Cost,
    next_version: AtomicU64,
    evictions: Arc<AtomicU64>,
    origin: Instant,
}

/// When an entry written at `now` (whole milliseconds since the origin, truncated) with
/// `ttl` stops being live. One millisecond more than the TTL: `now` may already be up to a
/// millisecond late, and a TTL never ends early.
fn deadline(now: u64, ttl: Option<Ttl>) -> u64 {
    ttl.map_or(NEVER, |t| {
        now.saturating_add(t.as_millis()).saturating_add(1)
    })
}

fn prev_power_of_two(n: usize) -> usize {
    1 << (usize::BITS - 1 - n.max(1).leading_zeros())
}

impl Store {
    pub(crate) fn new(max_entries: usize, max_bytes: usize, max_value_size: usize) -> Result<Self> {
        // Each shard must hold several of the largest entries, or quick_cache would refuse
        // a large value silently (an Ok that did nothing).
        let largest = max_value_size + Key::MAX_LEN + ENTRY_OVERHEAD;
        // The weight floor (max_bytes / max_entries) counts too: a shard holds at least four
        // entries of either kind.
        let shards = prev_power_of_two(max_bytes / (4 * largest))
            .min(prev_power_of_two(max_entries / 4))
            .clamp(1, 64);
        let options = OptionsBuilder::new()
            .estimated_items_capacity(max_entries)
            .weight_capacity(max_bytes as u64)
            .shards(shards)
            .build()
            .map_err(|e| {
                Error::new(ErrorKind::Config, format!("memory backend limits: {e:?}"))
                    .with_backend(BACKEND)
            })?;
        let evictions = Arc::new(AtomicU64::new(0));
        let cost = Cost {
            min: (max_bytes / max_entries.max(1)) as u64,
        };
        let cache = Cache::with_options(
            options,
            cost.clone(),
            foldhash::fast::RandomState::default(),
            Evictions(evictions.clone()),
        );
        let heavy = (cache.shard_capacity() / 16).max(1);
        Ok(Store {
            cache,
            heavy,
            cost,
            next_version: AtomicU64::new(1),
            evictions,
            origin: Instant::now(),
        })
    }

    fn now(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    fn next_version(&self) -> u64 {
        self.next_version.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn get(&self, key: &Key) -> Option<Entry> {
        let slot = self.cache.get(key)?;
        // Only entries with a TTL pay for a clock read.
        if slot.expires_at != NEVER && !slot.live(self.now()) {
            self.cache.remove_if(key, |s| s.version == slot.version);
            return None;
        }
        Some(slot.into_entry())
    }

    pub(crate) fn put(
        &self,
        key: &Key,
        value: Bytes,
        ttl: Option<Ttl>,
        mode: PutMode,
    ) -> Result<Version> {
        let heavy = self.cost.weight(
            key,
            &Slot {
                value: value.clone(),
                version: 0,
                expires_at: NEVER,
            },
        ) >= self.heavy;
        let kept = |s: &Self, version: Version| {
            s.cache
                .peek(key)
                .is_some_and(|slot| slot.version == version.into_raw())
        };
        let version = self.put_inner(key, value.clone(), ttl, mode)?;
        if !heavy || kept(self, version) {
            return Ok(version);
        }
        // quick_cache makes room after placing an entry through its entry API, and that
        // eviction can take the new entry itself. An unconditional write is placed again
        // through the insert path, which makes room first; a conditional one cannot be
        // repeated without breaking its condition, so it is reported.
        if mode == PutMode::Overwrite {
            let now = self.now();
            self.cache.insert(
                key.clone(),
                Slot {
                    value,
                    version: version.into_raw(),
                    expires_at: deadline(now, ttl),
                },
            );
            if kept(self, version) {
                return Ok(version);
            }
        }
        Err(Error::new(
            ErrorKind::ValueTooLarge,
            "the value did not fit the memory backend's byte budget (raise max_bytes)",
        )
        .with_backend(BACKEND))
    }

    fn put_inner(
        &self,
        key: &Key,
        value: Bytes,
        ttl: Option<Ttl>,
        mode: PutMode,
    ) -> Result<Version> {
        let now = self.now();
        let expires_at = deadline(now, ttl);
        // The placeholder of a vacant key can vanish under a concurrent delete: try again.
        for _ in 0..16 {
            let mut value_slot = Some(value.clone());
            let outcome = self.cache.entry(key, None, |_, cur: &mut Slot| {
                let live = cur.live(now);
                let allowed = match mode {
                    PutMode::Overwrite => Ok(()),
                    PutMode::Create if !live => Ok(()),
                    PutMode::Create => Err(exists(cur.entry())),
                    PutMode::Update(v) if live && cur.version == v.into_raw() => Ok(()),
                    PutMode::Update(_) => Err(version_mismatch(live.then(|| cur.entry()))),
                };
                EntryAction::Retain(allowed.map(|()| {
                    let version = self.next_version();
                    *cur = Slot {
                        value: value_slot.take().unwrap_or_default(),
                        version,
                        expires_at,
                    };
                    version
                }))
            });
            match outcome {
                EntryResult::Retained(r) => return r.map(Version::from_raw),
                EntryResult::Vacant(guard) => {
                    if let PutMode::Update(_) = mode {
                        return Err(version_mismatch(None));
                    }
                    let version = self.next_version();
                    let slot = Slot {
                        value: value_slot.take().unwrap_or_default(),
                        version,
                        expires_at,
                    };
                    if guard.insert(slot).is_ok() {
                        return Ok(Version::from_raw(version));
                    }
                }
                _ => {}
            }
        }
        Err(Error::new(ErrorKind::Backend, "write kept racing with deletes").with_backend(BACKEND))
    }

    pub(crate) fn delete(&self, key: &Key, mode: DeleteMode) -> Result<bool> {
        let now = self.now();
        let outcome = self.cache.entry(key, None, |_, cur: &mut Slot| {
            let live = cur.live(now);
            match mode {
                DeleteMode::Any => EntryAction::Remove,
                DeleteMode::IfVersion(v) if live && cur.version == v.into_raw() => {
                    EntryAction::Remove
                }
                DeleteMode::IfVersion(_) if live => {
                    EntryAction::Retain(Err(version_mismatch(Some(cur.entry()))))
                }
                // An expired entry is absent: drop it and report the key absent.
                DeleteMode::IfVersion(_) => EntryAction::Remove,
            }
        });
        match (outcome, mode) {
            (EntryResult::Retained(r), _) => r,
            (EntryResult::Removed(_, old), DeleteMode::Any) => Ok(old.live(now)),
            (EntryResult::Removed(_, old), DeleteMode::IfVersion(v)) => {
                if old.live(now) && old.version == v.into_raw() {
                    Ok(true)
                } else {
                    Err(version_mismatch(None))
                }
            }
            (_, DeleteMode::Any) => Ok(false),
            (_, DeleteMode::IfVersion(_)) => Err(version_mismatch(None)),
        }
    }

    pub(crate) fn touch(&self, key: &Key, ttl: Option<Ttl>) -> bool {
        let now = self.now();
        let expires_at = deadline(now, ttl);
        let outcome = self.cache.entry(key, None, |_, cur: &mut Slot| {
            if cur.live(now) {
                cur.expires_at = expires_at;
                EntryAction::Retain(true)
            } else {
                EntryAction::Remove
            }
        });
        matches!(outcome, EntryResult::Retained(true))
    }

    /// Removes every expired entry; returns how many.
    pub(crate) fn purge_expired(&self) -> usize {
        let now = self.now();
        let before = self.cache.len();
        self.cache.retain(|_, s| s.live(now));
        before.saturating_sub(self.cache.len())
    }

    /// Entries held now, expired ones not yet removed included.
    pub(crate) fn len(&self) -> usize {
        self.cache.len()
    }

    /// Weight held now, as counted against `max_bytes`.
    pub(crate) fn bytes(&self) -> usize {
        self.cache.weight() as usize
    }

    pub(crate) fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }
}
