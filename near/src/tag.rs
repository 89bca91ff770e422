//! Tags: which invalidations a read had seen when it was sent.
//!
//! Every key hashes to one stripe of a fixed array of sequence numbers; an invalidation of the
//! key bumps its stripe, a flush bumps the one epoch. A read takes its key's [`Tag`] before it
//! is sent, and what it fetched may be served only while the tag is still the current one.
//! Stripes, not keys, so that an invalidation costs an atomic add and no allocation; a bump
//! also retires the other keys of the stripe, which only costs them a re-read.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

/// The flush epoch and a key's stripe sequence number, as seen at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tag {
    /// Bumped on every flush (and every change of the channel's state).
    pub(crate) epoch: u64,
    /// Bumped on every invalidation of a key of the stripe.
    pub(crate) seq: u64,
}

/// The invalidation counters: one epoch, and one sequence number per stripe of the key space.
pub(crate) struct Tags {
    /// A power-of-two count, so a key's stripe is its masked hash.
    stripes: Box<[AtomicU64]>,
    /// foldhash, because a local hit hashes the key twice (here and in the local tier) and
    /// SipHash took ~15 ns of a ~150 ns hit.
    hasher: foldhash::fast::RandomState,
    epoch: AtomicU64,
}

impl Tags {
    /// Counters for a local tier of `capacity` entries: twice as many stripes, within
    /// 2^12..=2^20, so that an invalidation seldom retires another cached key.
    pub(crate) fn for_capacity(capacity: usize) -> Self {
        let stripes = capacity
            .saturating_mul(2)
            .clamp(1 << 12, 1 << 20)
            .next_power_of_two();
        Tags {
            stripes: (0..stripes).map(|_| AtomicU64::new(0)).collect(),
            hasher: Default::default(),
            epoch: AtomicU64::new(0),
        }
    }

    /// The key's hash (also picks its insert lock).
    pub(crate) fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The key's stripe; at most 2^20, so it fits a `u32`.
    pub(crate) fn stripe_of(&self, key: &[u8]) -> u32 {
        ((self.hash(key) as usize) & (self.stripes.len() - 1)) as u32
    }

    /// The key's tag now; a read takes it before it is sent.
    pub(crate) fn tag(&self, key: &[u8]) -> Tag {
        Tag {
            epoch: self.epoch.load(Ordering::SeqCst),
            seq: self.stripes[self.stripe_of(key) as usize].load(Ordering::SeqCst),
        }
    }

    /// The current tag of a stripe already known (a local hit does not hash the key again).
    pub(crate) fn tag_of_stripe(&self, stripe: u32) -> Tag {
        Tag {
            epoch: self.epoch.load(Ordering::SeqCst),
            seq: self.stripes[stripe as usize].load(Ordering::SeqCst),
        }
    }

    /// The key changed: every tag of its stripe taken before is outdated.
    pub(crate) fn invalidate(&self, key: &[u8]) {
        self.stripes[self.stripe_of(key) as usize].fetch_add(1, Ordering::SeqCst);
    }

    /// Anything may have changed: every tag taken before is outdated.
    pub(crate) fn new_epoch(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    #[cfg(test)]
    pub(crate) fn stripe_count(&self) -> usize {
        self.stripes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stripe_counts_are_powers_of_two_within_bounds() {
        assert_eq!(Tags::for_capacity(1).stripe_count(), 1 << 12);
        assert_eq!(Tags::for_capacity(3_000).stripe_count(), 8_192);
        assert_eq!(Tags::for_capacity(usize::MAX).stripe_count(), 1 << 20);
    }

    #[test]
    fn an_invalidation_outdates_the_keys_tag_only_in_its_stripe() {
        let t = Tags::for_capacity(10);
        let before = t.tag(b"a");
        let other = (0..10_000)
            .map(|i| format!("k{i}"))
            .find(|k| t.stripe_of(k.as_bytes()) != t.stripe_of(b"a"))
            .unwrap_or_default();
        let other_before = t.tag(other.as_bytes());
        t.invalidate(b"a");
        assert_ne!(t.tag(b"a"), before);
        assert_eq!(t.tag(b"a").epoch, before.epoch);
        assert_eq!(t.tag(other.as_bytes()), other_before);
        assert_eq!(t.tag_of_stripe(t.stripe_of(b"a")), t.tag(b"a"));
    }

    #[test]
    fn a_new_epoch_outdates_every_tag() {
        let t = Tags::for_capacity(10);
        let a = t.tag(b"a");
        let b = t.tag(b"b");
        t.new_epoch();
        assert_ne!(t.tag(b"a"), a);
        assert_ne!(t.tag(b"b"), b);
        assert_eq!(t.tag(b"a").seq, a.seq);
    }
}
