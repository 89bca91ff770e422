//! Whether the invalidation channel is healthy enough for local entries to be served.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Whether the local tier of a [`Near`](crate::Near) cache is in use.
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

/// What the channel last reported about itself.
#[derive(Debug)]
pub(crate) struct Health {
    /// Without a channel, staleness is bounded by the entries' age alone.
    has_channel: bool,
    up: AtomicBool,
    /// The latest tick before which every change has been reported (0: never, or not since
    /// the channel went down).
    synced: AtomicU64,
    max_staleness_ns: u64,
}

impl Health {
    /// A channel not yet subscribed (`has_channel`), or none at all.
    pub(crate) fn new(has_channel: bool, max_staleness_ns: u64) -> Self {
        Health {
            has_channel,
            up: AtomicBool::new(false),
            synced: AtomicU64::new(0),
            max_staleness_ns,
        }
    }

    /// Whether local entries may be served at tick `now`: no channel, or a channel that is up
    /// and confirmed less than the staleness bound ago that it had reported every change.
    pub(crate) fn usable(&self, now: u64) -> bool {
        if !self.has_channel {
            return true;
        }
        if !self.up.load(Ordering::Acquire) {
            return false;
        }
        let s = self.synced.load(Ordering::Acquire);
        s != 0 && now.saturating_sub(s) < self.max_staleness_ns
    }

    pub(crate) fn set_up(&self) {
        self.up.store(true, Ordering::Release);
    }

    /// Down until up and synced again; returns whether it was up.
    pub(crate) fn set_down(&self) -> bool {
        let was_up = self.up.swap(false, Ordering::AcqRel);
        self.synced.store(0, Ordering::Release);
        was_up
    }

    /// Every change before tick `t` has been reported (confirmations may arrive out of
    /// order: the latest wins).
    pub(crate) fn synced(&self, t: u64) {
        self.synced.fetch_max(t, Ordering::AcqRel);
    }

    pub(crate) fn state(&self) -> ChannelState {
        if !self.has_channel {
            ChannelState::Accepted
        } else if self.up.load(Ordering::Acquire) {
            ChannelState::Up
        } else {
            ChannelState::Down
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_channel_local_entries_are_always_usable() {
        let h = Health::new(false, 10);
        assert!(h.usable(1));
        assert!(h.usable(u64::MAX));
        assert_eq!(h.state(), ChannelState::Accepted);
    }

    #[test]
    fn a_channel_is_usable_only_up_and_synced_within_the_bound() {
        let h = Health::new(true, 10);
        assert_eq!(h.state(), ChannelState::Down);
        assert!(!h.usable(1), "usable before subscribing");
        h.synced(100);
        assert!(!h.usable(100), "usable while down");
        h.set_up();
        assert_eq!(h.state(), ChannelState::Up);
        assert!(h.usable(100));
        assert!(h.usable(109));
        assert!(!h.usable(110), "usable a whole bound after the last sync");
        h.synced(105);
        h.synced(50);
        assert!(h.usable(110), "an older confirmation moved the sync back");
    }

    #[test]
    fn down_forgets_the_sync_until_a_fresh_one() {
        let h = Health::new(true, 10);
        h.set_up();
        h.synced(100);
        assert!(h.set_down());
        assert!(!h.set_down(), "was already down");
        h.set_up();
        assert!(!h.usable(101), "up again, but the old sync still counted");
        h.synced(101);
        assert!(h.usable(101));
    }
}
