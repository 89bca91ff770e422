//! When another process counts as dead: the one rule leases and periodic tasks share.
//!
//! A record (a lease, a run in progress) shows a **sign of life** that changes whenever its
//! holder proves it is alive (the record's version, a heartbeat count). Another process
//! judges the holder dead only after it has seen the same sign **unchanged for a whole
//! lease, by its own monotonic clock**; no wall clocks are compared across machines (the
//! way Kubernetes leader election judges a lease). The watcher is plain data: the caller
//! reads the clock and passes `now`, so the rule is tested without waiting.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// What one look at a sign of life found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Look {
    /// Unchanged for a whole lease: its holder is taken as dead.
    Dead,
    /// Seen changing less than a lease ago: dead at this instant if it stays unchanged.
    AliveUntil(Instant),
}

#[derive(Debug)]
struct Seen<S> {
    sign: S,
    since: Instant,
}

/// The signs of life seen of records named by `K`, each with the instant it was first seen.
#[derive(Debug)]
pub(crate) struct Watcher<K, S> {
    seen: HashMap<K, Seen<S>>,
}

impl<K, S> Default for Watcher<K, S> {
    fn default() -> Self {
        Watcher {
            seen: HashMap::new(),
        }
    }
}

impl<K: Eq + Hash, S: PartialEq> Watcher<K, S> {
    /// Looks at `key` showing `sign` at `now`: a sign other than the one seen last (or the
    /// first seen) starts the wait anew; one unchanged since a whole `lease` ago is dead.
    pub(crate) fn look(&mut self, key: K, sign: S, now: Instant, lease: Duration) -> Look {
        let since = match self.seen.get(&key) {
            Some(s) if s.sign == sign => s.since,
            _ => {
                self.seen.insert(key, Seen { sign, since: now });
                now
            }
        };
        if now.saturating_duration_since(since) >= lease {
            Look::Dead
        } else {
            Look::AliveUntil(since + lease)
        }
    }

    /// When the sign last seen of `key` would have been unchanged for `lease` (`None`: never
    /// looked at).
    pub(crate) fn dead_at(&self, key: &K, lease: Duration) -> Option<Instant> {
        self.seen.get(key).map(|s| s.since + lease)
    }

    /// Forgets the records for which `keep` is false (their runs ended, say).
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&K) -> bool) {
        self.seen.retain(|k, _| keep(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(15);

    #[test]
    fn a_sign_unchanged_for_a_whole_lease_is_dead() {
        let t0 = Instant::now();
        let mut w = Watcher::<(), u64>::default();
        assert_eq!(w.look((), 7, t0, LEASE), Look::AliveUntil(t0 + LEASE));
        let almost = t0 + LEASE - Duration::from_millis(1);
        assert_eq!(w.look((), 7, almost, LEASE), Look::AliveUntil(t0 + LEASE));
        assert_eq!(w.look((), 7, t0 + LEASE, LEASE), Look::Dead);
        assert_eq!(w.dead_at(&(), LEASE), Some(t0 + LEASE));
    }

    #[test]
    fn a_changed_sign_starts_the_wait_anew() {
        let t0 = Instant::now();
        let mut w = Watcher::<(), u64>::default();
        w.look((), 1, t0, LEASE);
        let t1 = t0 + LEASE - Duration::from_secs(1);
        assert_eq!(w.look((), 2, t1, LEASE), Look::AliveUntil(t1 + LEASE));
        // The old sign's lease has passed, but the new one was seen since.
        assert_eq!(
            w.look((), 2, t0 + LEASE, LEASE),
            Look::AliveUntil(t1 + LEASE)
        );
        // Going back to an earlier sign is a change too.
        let t2 = t1 + LEASE;
        assert_eq!(w.look((), 1, t2, LEASE), Look::AliveUntil(t2 + LEASE));
    }

    #[test]
    fn each_record_is_judged_on_its_own_and_forgotten_on_request() {
        let t0 = Instant::now();
        let mut w = Watcher::<u64, u64>::default();
        w.look(1, 0, t0, LEASE);
        w.look(2, 0, t0 + Duration::from_secs(5), LEASE);
        let later = t0 + LEASE;
        assert_eq!(w.look(1, 0, later, LEASE), Look::Dead);
        assert_eq!(
            w.look(2, 0, later, LEASE),
            Look::AliveUntil(t0 + Duration::from_secs(5) + LEASE)
        );
        w.retain(|k| *k == 2);
        assert_eq!(w.dead_at(&1, LEASE), None);
        // Forgotten: seen anew, the wait starts again.
        assert_eq!(w.look(1, 0, later, LEASE), Look::AliveUntil(later + LEASE));
    }

    #[test]
    fn a_longer_lease_waits_longer_for_the_same_sign() {
        let t0 = Instant::now();
        let mut w = Watcher::<(), u64>::default();
        w.look((), 3, t0, LEASE);
        let at = t0 + LEASE;
        assert_eq!(w.look((), 3, at, LEASE), Look::Dead);
        assert_eq!(
            w.look((), 3, at, LEASE * 2),
            Look::AliveUntil(t0 + LEASE * 2)
        );
    }
}
