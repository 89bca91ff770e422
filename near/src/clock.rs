//! The coherence clock: instants as nanosecond ticks since the cache was built, so that they
//! fit in an atomic.

use std::time::{Duration, Instant};

/// Turns instants into ticks: nanoseconds since `base`, plus one, so that tick 0 can mean
/// "never".
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    base: Instant,
}

impl Clock {
    pub(crate) fn new() -> Self {
        Clock {
            base: Instant::now(),
        }
    }

    /// The tick of this moment.
    pub(crate) fn now(&self) -> u64 {
        nanos(self.base.elapsed()) + 1
    }

    /// The tick of `t` (the first tick for instants before the clock began).
    pub(crate) fn at(&self, t: Instant) -> u64 {
        nanos(t.saturating_duration_since(self.base)) + 1
    }
}

/// `d` in whole nanoseconds, saturating (a duration of centuries is "forever" here).
pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_start_at_one_and_follow_instants() {
        let c = Clock::new();
        assert!(c.now() >= 1);
        let before = c.base.checked_sub(Duration::from_secs(1));
        if let Some(before) = before {
            assert_eq!(c.at(before), 1);
        }
        assert_eq!(c.at(c.base + Duration::from_millis(2)), 2_000_001);
        assert_eq!(nanos(Duration::MAX), u64::MAX);
    }
}
