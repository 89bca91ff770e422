//! The coherence rules, checked on the shared state directly: what makes a local entry
//! usable, and what takes it away.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use larder_cache_api::Version;

use super::*;

const BOUND: Duration = Duration::from_secs(60);

fn with_channel() -> Coherence {
    let c = Coherence::new(
        100,
        Health::new(true, crate::clock::nanos(BOUND)),
        NearStats::new("test"),
    );
    c.up();
    c.synced(Instant::now());
    c
}

fn key(k: &str) -> Key {
    Key::new(k).unwrap()
}

fn entry(v: u64) -> Entry {
    Entry::new(&b"v"[..], Version::from_raw(v))
}

/// Keeps `v` for `k` as a read sent now would, for a minute.
fn read(c: &Coherence, k: &Key, v: u64) {
    let tag = c.tag(k);
    let now = c.now();
    c.keep(k, &entry(v), tag, now, now + crate::clock::nanos(BOUND));
}

#[test]
fn a_kept_entry_is_served_while_its_tag_is_current_and_its_time_lasts() {
    let c = with_channel();
    let k = key("k");
    let tag = c.tag(&k);
    let now = c.now();
    c.keep(&k, &entry(1), tag, now, now + 1_000);
    assert_eq!(c.local(&k, now).unwrap().version, Version::from_raw(1));
    assert!(c.local(&k, now + 1_000).is_none(), "served past its time");
    assert!(c.local(&key("other"), now).is_none());
}

#[test]
fn an_invalidation_from_the_channel_drops_the_entry() {
    let c = with_channel();
    let k = key("k");
    read(&c, &k, 1);
    assert!(c.local(&k, c.now()).is_some());
    c.invalidate(b"k");
    assert!(
        c.local(&k, c.now()).is_none(),
        "served after its invalidation"
    );
    assert_eq!(c.stats.invalidations(), 1);
    read(&c, &k, 2);
    assert_eq!(c.local(&k, c.now()).unwrap().version, Version::from_raw(2));
}

#[test]
fn an_own_write_drops_the_entry_without_counting_an_invalidation() {
    let c = with_channel();
    let k = key("k");
    read(&c, &k, 1);
    c.invalidate_own(&k);
    assert!(c.local(&k, c.now()).is_none());
    assert_eq!(c.stats.invalidations(), 0);
}

#[test]
fn a_read_invalidated_in_flight_is_not_kept() {
    let c = with_channel();
    let k = key("k");
    let tag = c.tag(&k);
    c.invalidate(b"k");
    let now = c.now();
    c.keep(&k, &entry(1), tag, now, now + 1_000);
    assert!(
        c.local(&k, now).is_none(),
        "a read raced by an invalidation was kept"
    );
    assert!(c.cache.peek(&k).is_none());
}

#[test]
fn two_versions_of_one_window_keep_neither() {
    let c = with_channel();
    let k = key("k");
    let tag = c.tag(&k);
    let now = c.now();
    c.keep(&k, &entry(1), tag, now, now + 1_000);
    c.keep(&k, &entry(1), tag, now, now + 1_000);
    assert!(
        c.local(&k, now).is_some(),
        "the same version twice is no conflict"
    );
    c.keep(&k, &entry(2), tag, now, now + 1_000);
    assert!(
        c.local(&k, now).is_none(),
        "one of two versions of one window was kept"
    );
}

#[test]
fn a_flush_empties_the_tier_and_outdates_reads_in_flight() {
    let c = with_channel();
    let (a, b) = (key("a"), key("b"));
    read(&c, &a, 1);
    read(&c, &b, 1);
    let in_flight = c.tag(&a);
    c.invalidate_all();
    assert_eq!(c.cache.len(), 0);
    assert_eq!(c.stats.flushes(), 1);
    let now = c.now();
    c.keep(&a, &entry(1), in_flight, now, now + 1_000);
    assert!(
        c.local(&a, now).is_none(),
        "a read sent before the flush was kept"
    );
    assert!(c.usable(now), "a flush asked by the channel keeps it up");
}

#[test]
fn down_flushes_and_bypasses_until_up_and_synced_again() {
    let c = with_channel();
    let k = key("k");
    read(&c, &k, 1);
    c.down();
    assert_eq!(c.state(), ChannelState::Down);
    assert_eq!(c.cache.len(), 0);
    assert_eq!(c.stats.flushes(), 1);
    assert!(!c.usable(c.now()));
    c.down();
    assert_eq!(c.stats.flushes(), 1, "a second down is no second flush");
    c.up();
    assert_eq!(c.state(), ChannelState::Up);
    assert!(!c.usable(c.now()), "usable before a fresh sync");
    c.synced(Instant::now());
    assert!(c.usable(c.now()));
}

#[test]
fn resubscribing_outdates_entries_read_before() {
    let c = with_channel();
    let k = key("k");
    read(&c, &k, 1);
    c.up();
    assert!(
        c.local(&k, c.now()).is_none(),
        "an entry read before resubscribing was served"
    );
}

#[test]
fn a_sync_older_than_the_bound_makes_the_tier_unusable() {
    let c = Coherence::new(10, Health::new(true, 1_000), NearStats::new("test"));
    c.up();
    let sent = Instant::now();
    c.synced(sent);
    let at = c.clock.at(sent);
    assert!(c.usable(at + 999));
    assert!(!c.usable(at + 1_000));
}

#[test]
fn without_a_channel_the_tier_is_always_usable() {
    let c = Coherence::new(10, Health::new(false, 1), NearStats::new("test"));
    assert_eq!(c.state(), ChannelState::Accepted);
    assert!(c.usable(c.now()));
    let k = key("k");
    read(&c, &k, 1);
    assert!(c.local(&k, c.now()).is_some());
}

#[test]
fn the_stats_say_why_the_channel_is_down_until_it_is_up_again() {
    let c = with_channel();
    assert_eq!(c.stats.channel_fault(), None);
    c.down_because(ChannelFault::TriggerMissing);
    assert_eq!(c.state(), ChannelState::Down);
    assert_eq!(c.stats.flushes(), 1);
    // The resubscribing loop's plain `down` keeps the reason given.
    c.down();
    assert_eq!(c.stats.channel_fault(), Some(ChannelFault::TriggerMissing));
    c.down_because(ChannelFault::TriggerDisabled);
    assert_eq!(c.stats.channel_fault(), Some(ChannelFault::TriggerDisabled));
    c.up();
    assert_eq!(c.stats.channel_fault(), None);
    c.down();
    assert_eq!(c.stats.channel_fault(), Some(ChannelFault::Lost));
    assert_eq!(c.stats.flushes(), 2);
}
