//! The sharded map under the memory backend.
//!
//! Each shard is a mutex around an `IndexMap`, which gives O(1) random sampling: eviction
//! picks the least recently used of a few random entries (as Redis does), and every write
//! also samples a few entries to drop expired ones, so expired entries cannot pile up.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use foldhash::fast::FixedState;
use indexmap::IndexMap;
use larder_cache_api::{Bytes, DeleteMode, Entry, Key, PutMode, Result, Ttl, Version};
use parking_lot::Mutex;

use crate::error::{exists, version_mismatch};

/// Fixed per-entry overhead counted against `max_bytes` (map slot, key `Arc`, metadata).
const ENTRY_OVERHEAD: usize = 64;
/// Entries sampled per eviction.
const EVICTION_SAMPLES: usize = 5;
/// Entries sampled for expiry on every write.
const EXPIRY_SAMPLES: usize = 2;
/// No expiry.
const NEVER: u64 = u64::MAX;

struct Slot {
    value: Bytes,
    version: u64,
    expires_at: u64,
    last_access: u64,
}

impl Slot {
    fn entry(&self) -> Entry {
        Entry::new(self.value.clone(), Version::from_raw(self.version))
    }
    fn cost(key: &Key, value: &Bytes) -> usize {
        key.len() + value.len() + ENTRY_OVERHEAD
    }
}

struct Shard {
    map: IndexMap<Key, Slot, FixedState>,
    bytes: usize,
    tick: u64,
    rng: u64,
}

impl Shard {
    fn next_random(&mut self) -> usize {
        // xorshift64: sampling only needs to be cheap and spread out.
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x as usize
    }

    fn remove_at(&mut self, i: usize) {
        if let Some((k, s)) = self.map.swap_remove_index(i) {
            self.bytes -= Slot::cost(&k, &s.value);
        }
    }

    fn remove_key(&mut self, key: &Key) -> Option<Slot> {
        let s = self.map.swap_remove(key)?;
        self.bytes -= Slot::cost(key, &s.value);
        Some(s)
    }

    /// The live slot for `key`, removing it first if it has expired.
    fn live(&mut self, key: &Key, now: u64) -> Option<&mut Slot> {
        let i = self.map.get_index_of(key)?;
        if self.map[i].expires_at <= now {
            self.remove_at(i);
            return None;
        }
        Some(&mut self.map[i])
    }

    fn sample_expired(&mut self, now: u64) {
        for _ in 0..EXPIRY_SAMPLES {
            if self.map.is_empty() {
                return;
            }
            let i = self.next_random() % self.map.len();
            if self.map[i].expires_at <= now {
                self.remove_at(i);
            }
        }
    }

    /// Evicts until within limits, never evicting `keep`.
    fn enforce(&mut self, max_entries: usize, max_bytes: usize, keep: &Key, now: u64) -> u64 {
        let mut evicted = 0;
        while (self.map.len() > max_entries || self.bytes > max_bytes) && self.map.len() > 1 {
            let mut victim: Option<(usize, u64)> = None;
            for _ in 0..EVICTION_SAMPLES {
                let i = self.next_random() % self.map.len();
                let (k, s) = self.map.get_index(i).expect("index in range");
                if k == keep {
                    continue;
                }
                // An expired entry is the best victim; otherwise the least recently used.
                let score = if s.expires_at <= now {
                    0
                } else {
                    s.last_access
                };
                if victim.is_none_or(|(_, best)| score < best) {
                    victim = Some((i, score));
                }
            }
            if let Some((i, _)) = victim {
                self.remove_at(i);
                evicted += 1;
            }
        }
        evicted
    }
}

fn prev_power_of_two(n: usize) -> usize {
    1 << (usize::BITS - 1 - n.max(1).leading_zeros())
}

/// The store: shards, limits, the version counter and the clock.
pub(crate) struct Store {
    shards: Box<[Mutex<Shard>]>,
    hasher: FixedState,
    max_entries_per_shard: usize,
    max_bytes_per_shard: usize,
    next_version: AtomicU64,
    evictions: AtomicU64,
    origin: Instant,
}

impl Store {
    pub(crate) fn new(max_entries: usize, max_bytes: usize, max_value_size: usize) -> Self {
        // Few shards for small caches so the per-shard bounds stay meaningful: at least 64
        // entries per shard, and room for four of the largest entries, so that one large
        // value never exceeds its shard's byte budget on its own.
        let largest = max_value_size + Key::MAX_LEN + ENTRY_OVERHEAD;
        let by_entries = (max_entries / 64).max(1);
        let by_bytes = (max_bytes / (4 * largest)).max(1);
        let shards = prev_power_of_two(by_entries.min(by_bytes)).min(64);
        let seed =
            std::collections::hash_map::RandomState::new().hash_one(0x9E37_79B9_7F4A_7C15u64);
        Store {
            shards: (0..shards)
                .map(|i| {
                    Mutex::new(Shard {
                        map: IndexMap::with_hasher(FixedState::with_seed(seed)),
                        bytes: 0,
                        tick: 0,
                        rng: seed.rotate_left(i as u32) | 1,
                    })
                })
                .collect(),
            hasher: FixedState::with_seed(seed.rotate_left(17)),
            max_entries_per_shard: (max_entries / shards).max(1),
            max_bytes_per_shard: (max_bytes / shards).max(1),
            next_version: AtomicU64::new(1),
            evictions: AtomicU64::new(0),
            origin: Instant::now(),
        }
    }

    fn shard(&self, key: &Key) -> &Mutex<Shard> {
        &self.shards[(self.hasher.hash_one(key) as usize) & (self.shards.len() - 1)]
    }

    pub(crate) fn now(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    fn deadline(&self, now: u64, ttl: Option<Ttl>) -> u64 {
        ttl.map_or(NEVER, |t| now.saturating_add(t.as_millis()))
    }

    pub(crate) fn get(&self, key: &Key) -> Option<Entry> {
        let now = self.now();
        let mut shard = self.shard(key).lock();
        shard.tick += 1;
        let tick = shard.tick;
        let slot = shard.live(key, now)?;
        slot.last_access = tick;
        Some(slot.entry())
    }

    pub(crate) fn put(
        &self,
        key: &Key,
        value: Bytes,
        ttl: Option<Ttl>,
        mode: PutMode,
    ) -> Result<Version> {
        let now = self.now();
        let expires_at = self.deadline(now, ttl);
        let mut shard = self.shard(key).lock();
        shard.sample_expired(now);
        match (mode, shard.live(key, now)) {
            (PutMode::Overwrite, _) | (PutMode::Create, None) => {}
            (PutMode::Create, Some(s)) => return Err(exists(s.entry())),
            (PutMode::Update(v), Some(s)) if s.version == v.into_raw() => {}
            (PutMode::Update(_), s) => return Err(version_mismatch(s.map(|s| s.entry()))),
        }
        let version = self.next_version.fetch_add(1, Ordering::Relaxed);
        shard.tick += 1;
        let slot = Slot {
            last_access: shard.tick,
            value,
            version,
            expires_at,
        };
        shard.bytes += Slot::cost(key, &slot.value);
        if let Some(old) = shard.map.insert(key.clone(), slot) {
            shard.bytes -= Slot::cost(key, &old.value);
        }
        let evicted = shard.enforce(
            self.max_entries_per_shard,
            self.max_bytes_per_shard,
            key,
            now,
        );
        if evicted > 0 {
            self.evictions.fetch_add(evicted, Ordering::Relaxed);
        }
        Ok(Version::from_raw(version))
    }

    pub(crate) fn delete(&self, key: &Key, mode: DeleteMode) -> Result<bool> {
        let now = self.now();
        let mut shard = self.shard(key).lock();
        match (mode, shard.live(key, now)) {
            (DeleteMode::Any, None) => Ok(false),
            (DeleteMode::Any, Some(_)) => Ok(shard.remove_key(key).is_some()),
            (DeleteMode::IfVersion(v), Some(s)) if s.version == v.into_raw() => {
                Ok(shard.remove_key(key).is_some())
            }
            (DeleteMode::IfVersion(_), s) => Err(version_mismatch(s.map(|s| s.entry()))),
        }
    }

    pub(crate) fn touch(&self, key: &Key, ttl: Option<Ttl>) -> bool {
        let now = self.now();
        let expires_at = self.deadline(now, ttl);
        let mut shard = self.shard(key).lock();
        match shard.live(key, now) {
            Some(s) => {
                s.expires_at = expires_at;
                true
            }
            None => false,
        }
    }

    /// Removes every expired entry; returns how many.
    pub(crate) fn purge_expired(&self) -> usize {
        let now = self.now();
        let mut removed = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            let before = shard.map.len();
            let mut freed = 0;
            shard.map.retain(|k, s| {
                let keep = s.expires_at > now;
                if !keep {
                    freed += Slot::cost(k, &s.value);
                }
                keep
            });
            shard.bytes -= freed;
            removed += before - shard.map.len();
        }
        removed
    }

    /// Entries held now, expired ones not yet removed included.
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map.len()).sum()
    }

    /// Bytes held now, as counted against `max_bytes`.
    pub(crate) fn bytes(&self) -> usize {
        self.shards.iter().map(|s| s.lock().bytes).sum()
    }

    pub(crate) fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }
}
