//! The state the invalidation channel and the read path share: the local tier, the tags that
//! decide which of its entries are still current, and the channel's health.

use std::sync::Arc;
use std::time::Instant;

use larder_cache_api::layer::{ChannelFault, InvalidationTarget};
use larder_cache_api::{Entry, Key};
use parking_lot::Mutex;

use crate::clock::Clock;
use crate::local::Local;
use crate::stats::NearStats;
use crate::sync::{ChannelState, Health};
use crate::tag::{Tag, Tags};

/// Serialises the check-then-insert of local entries; one lock per group of keys.
const INSERT_LOCKS: usize = 256;

/// The local tier and what keeps it coherent.
pub(crate) struct Coherence {
    pub(crate) clock: Clock,
    pub(crate) tags: Tags,
    pub(crate) health: Health,
    pub(crate) cache: quick_cache::sync::Cache<Key, Local>,
    /// Serialises the check-then-insert of local entries, per group of keys.
    insert_locks: Box<[Mutex<()>]>,
    pub(crate) stats: Arc<NearStats>,
}

impl Coherence {
    /// An empty tier of `capacity` entries, with its channel not yet up (`has_channel`) or
    /// without one.
    pub(crate) fn new(capacity: usize, health: Health, stats: NearStats) -> Self {
        Coherence {
            clock: Clock::new(),
            tags: Tags::for_capacity(capacity),
            health,
            cache: quick_cache::sync::Cache::new(capacity),
            insert_locks: (0..INSERT_LOCKS).map(|_| Mutex::new(())).collect(),
            stats: Arc::new(stats),
        }
    }

    /// The tick of this moment.
    pub(crate) fn now(&self) -> u64 {
        self.clock.now()
    }

    /// Whether local entries may be served at `now`.
    pub(crate) fn usable(&self, now: u64) -> bool {
        self.health.usable(now)
    }

    /// The tag a read takes before it is sent.
    pub(crate) fn tag(&self, key: &Key) -> Tag {
        self.tags.tag(key.as_bytes())
    }

    pub(crate) fn state(&self) -> ChannelState {
        self.health.state()
    }

    /// The local entry for `key`, if it may be served at `now`.
    pub(crate) fn local(&self, key: &Key, now: u64) -> Option<Entry> {
        let l = self.cache.get(key)?;
        l.servable(self.tags.tag_of_stripe(l.stripe), now)
            .then_some(l.entry)
    }

    /// Our own write: later reads must not serve what was read before it.
    pub(crate) fn invalidate_own(&self, key: &Key) {
        self.tags.invalidate(key.as_bytes());
    }

    /// Keeps `entry`, read with `tag` taken before the read was sent, until tick `until`,
    /// unless the key was invalidated since or another read of the same window saw another
    /// version (then keeps neither).
    pub(crate) fn keep(&self, key: &Key, entry: &Entry, tag: Tag, now: u64, until: u64) {
        let lock = (self.tags.hash(key.as_bytes()) as usize) % self.insert_locks.len();
        let _g = self.insert_locks[lock].lock();
        if self.tag(key) != tag {
            return; // invalidated while the read was in flight
        }
        if let Some(old) = self.cache.peek(key) {
            if old.contradicted_by(tag, entry.version, now) {
                // Which of the two is newer is unknown: keep neither.
                self.cache.remove(key);
                return;
            }
        }
        self.cache.insert(
            key.clone(),
            Local {
                entry: entry.clone(),
                tag,
                stripe: self.tags.stripe_of(key.as_bytes()),
                until,
            },
        );
    }
}

impl InvalidationTarget for Coherence {
    fn invalidate(&self, key: &[u8]) {
        self.tags.invalidate(key);
        self.stats.invalidations.add();
    }

    fn invalidate_all(&self) {
        self.tags.new_epoch();
        self.cache.clear();
        self.stats.flushes.add();
    }

    fn up(&self) {
        // Entries read before the channel (re)subscribed may have missed an invalidation.
        self.tags.new_epoch();
        self.health.set_up();
        self.stats.channel_up();
    }

    fn down(&self) {
        self.go_down(None);
    }

    fn down_because(&self, fault: ChannelFault) {
        self.go_down(Some(fault));
    }

    fn synced(&self, sent_at: Instant) {
        self.health.synced(self.clock.at(sent_at));
    }
}

impl Coherence {
    /// Flushes and bypasses the local tier; `fault` (if known) is what the stats show.
    fn go_down(&self, fault: Option<ChannelFault>) {
        let was_up = self.health.set_down();
        self.tags.new_epoch();
        self.cache.clear();
        let fault = self.stats.channel_down(fault, was_up);
        if was_up {
            self.stats.flushes.add();
            tracing::warn!(
                %fault,
                "near cache: invalidation channel down; local tier flushed and bypassed"
            );
        }
    }
}

#[cfg(test)]
mod tests;
