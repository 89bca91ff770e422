//! TTL hints: the expiry a write or touch through the layer gave a key, so that a local copy
//! never outlives the entry it copies.

use std::time::{Duration, Instant};

use larder_cache_api::{Key, Ttl, Version};

use crate::clock::Clock;

/// The expiry a write or touch through this layer gave a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TtlHint {
    /// The version written, when known (a touch keeps a version this layer may not know).
    pub(crate) version: Option<Version>,
    /// Never later than the backend's expiry: taken before the request was sent.
    pub(crate) expires: Instant,
}

/// What a hint says about keeping an entry just read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// No hint for this version: keep it up to the maximum age.
    NoHint,
    /// Keep it until this tick at the latest.
    Until(u64),
    /// Read around its expiry: serve it, do not keep it.
    ServeOnly,
    /// Long past the hinted expiry, so rewritten or touched elsewhere: the hint is outdated
    /// (forget it) and the entry is kept up to the maximum age.
    Outdated,
}

impl TtlHint {
    /// The verdict on an entry of `version` read at tick `now`, allowing reads to reach the
    /// backend up to `grace` after the hinted expiry (clocks and TTL precision differ).
    pub(crate) fn judge(
        &self,
        version: Version,
        now: u64,
        clock: &Clock,
        grace: Duration,
    ) -> Verdict {
        if self.version.is_some_and(|v| v != version) {
            return Verdict::NoHint;
        }
        let expires = clock.at(self.expires);
        if expires > now {
            Verdict::Until(expires)
        } else if self.expires.elapsed() < grace {
            Verdict::ServeOnly
        } else {
            Verdict::Outdated
        }
    }
}

/// The hints of the keys written or touched through this layer with a TTL.
pub(crate) struct TtlHints {
    hints: quick_cache::sync::Cache<Key, TtlHint>,
    /// How late after its hinted expiry an entry may still be read from the backend.
    grace: Duration,
}

impl TtlHints {
    /// Room for `capacity` hints, with the grace a backend of `ttl_precision` needs.
    pub(crate) fn new(capacity: usize, ttl_precision: Duration) -> Self {
        TtlHints {
            hints: quick_cache::sync::Cache::new(capacity),
            grace: Duration::from_secs(1) + ttl_precision,
        }
    }

    /// A write or touch that started at `start` gave `key` the `ttl` (none: no expiry) and,
    /// when known, `version`.
    pub(crate) fn record(
        &self,
        key: &Key,
        version: Option<Version>,
        ttl: Option<Ttl>,
        start: Instant,
    ) {
        match ttl {
            Some(t) => self.hints.insert(
                key.clone(),
                TtlHint {
                    version,
                    expires: start + t.as_duration(),
                },
            ),
            None => {
                self.forget(key);
            }
        }
    }

    /// Nothing is known of `key`'s expiry any more.
    pub(crate) fn forget(&self, key: &Key) {
        self.hints.remove(key);
    }

    /// The version hinted for `key`, if any.
    pub(crate) fn version(&self, key: &Key) -> Option<Version> {
        self.hints.get(key).and_then(|h| h.version)
    }

    /// The verdict on an entry of `key` read at tick `now`; an outdated hint is forgotten.
    pub(crate) fn judge(&self, key: &Key, version: Version, now: u64, clock: &Clock) -> Verdict {
        let Some(hint) = self.hints.get(key) else {
            return Verdict::NoHint;
        };
        let verdict = hint.judge(version, now, clock, self.grace);
        if verdict == Verdict::Outdated {
            self.forget(key);
        }
        verdict
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const GRACE: Duration = Duration::from_secs(1);

    fn hint(version: Option<u64>, expires: Instant) -> TtlHint {
        TtlHint {
            version: version.map(Version::from_raw),
            expires,
        }
    }

    #[test]
    fn a_future_expiry_bounds_the_local_copy() {
        let clock = Clock::new();
        let exp = Instant::now() + Duration::from_secs(10);
        let now = clock.now();
        let v = Version::from_raw(1);
        assert_eq!(
            hint(Some(1), exp).judge(v, now, &clock, GRACE),
            Verdict::Until(clock.at(exp))
        );
        assert_eq!(
            hint(None, exp).judge(v, now, &clock, GRACE),
            Verdict::Until(clock.at(exp)),
            "a hint without a version (a touch) applies to every version"
        );
        assert_eq!(
            hint(Some(2), exp).judge(v, now, &clock, GRACE),
            Verdict::NoHint,
            "another version's hint applied"
        );
    }

    #[test]
    fn around_its_expiry_an_entry_is_served_but_not_kept_and_long_after_the_hint_is_outdated() {
        let clock = Clock::new();
        std::thread::sleep(Duration::from_millis(5));
        let v = Version::from_raw(1);
        let just = Instant::now();
        let now = clock.now();
        assert_eq!(
            hint(Some(1), just).judge(v, now, &clock, GRACE),
            Verdict::ServeOnly
        );
        let long_ago = just.checked_sub(Duration::from_secs(5)).unwrap_or(just);
        if long_ago < just {
            assert_eq!(
                hint(Some(1), long_ago).judge(v, now, &clock, GRACE),
                Verdict::Outdated
            );
        }
    }

    #[test]
    fn hints_are_recorded_forgotten_and_outdated_ones_dropped() {
        let clock = Clock::new();
        let hints = TtlHints::new(10, Duration::ZERO);
        let k = Key::new("k").unwrap();
        let v = Version::from_raw(1);
        let start = Instant::now();
        hints.record(&k, Some(v), Some(Ttl::from_secs(5).unwrap()), start);
        assert_eq!(hints.version(&k), Some(v));
        assert!(matches!(
            hints.judge(&k, v, clock.now(), &clock),
            Verdict::Until(_)
        ));
        hints.record(&k, Some(v), None, start);
        assert_eq!(
            hints.judge(&k, v, clock.now(), &clock),
            Verdict::NoHint,
            "no TTL keeps a hint"
        );
        if let Some(long_ago) = start.checked_sub(Duration::from_secs(10)) {
            hints.record(&k, None, Some(Ttl::from_secs(1).unwrap()), long_ago);
            assert_eq!(hints.judge(&k, v, clock.now(), &clock), Verdict::Outdated);
            assert_eq!(hints.judge(&k, v, clock.now(), &clock), Verdict::NoHint);
        }
        hints.record(&k, Some(v), Some(Ttl::from_secs(5).unwrap()), start);
        hints.forget(&k);
        assert_eq!(hints.version(&k), None);
    }
}
