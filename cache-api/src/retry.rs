//! One retry policy for every compare-and-swap loop in the family: full-jitter exponential
//! back-off, bounded by attempts and by a deadline.
//!
//! Full jitter (a random pause in `[0, min(cap, base × 2^attempt)]`) spreads writers that
//! lost the same race, so they do not collide again in lockstep.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use std::time::Duration;
//! use larder_cache_api::retry::Backoff;
//!
//! let mut tries = Backoff::new(Duration::from_micros(100), Duration::from_millis(20))
//!     .max_attempts(5);
//! let mut n = 0;
//! while tries.next_attempt().await {
//!     n += 1; // lost a race: try again
//! }
//! assert_eq!(n, 5);
//! # }
//! ```

use std::time::{Duration, Instant};

/// Attempts of one retry loop: call [`next_attempt`](Backoff::next_attempt) before each
/// attempt; it pauses before every attempt but the first and says whether to go on.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    max_attempts: u32,
    deadline: Option<Instant>,
    attempt: u32,
}

impl Backoff {
    /// Pauses start at up to `base` and double up to `cap`; unbounded until
    /// [`max_attempts`](Backoff::max_attempts) or [`deadline`](Backoff::deadline) is set.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base,
            cap: cap.max(base),
            max_attempts: u32::MAX,
            deadline: None,
            attempt: 0,
        }
    }

    /// At most `n` attempts (at least one).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    /// No attempt starts after `within` from now (the first one always does).
    pub fn deadline(mut self, within: Duration) -> Self {
        self.deadline = Some(Instant::now() + within);
        self
    }

    /// Attempts started so far.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// True if another attempt may start (without pausing).
    pub fn can_retry(&self) -> bool {
        if self.attempt >= self.max_attempts {
            return false;
        }
        match self.deadline {
            Some(d) if self.attempt > 0 => Instant::now() + self.pause_cap() < d,
            _ => true,
        }
    }

    /// The longest pause before the next attempt.
    fn pause_cap(&self) -> Duration {
        if self.attempt == 0 {
            return Duration::ZERO;
        }
        let shift = (self.attempt - 1).min(20);
        self.base.saturating_mul(1 << shift).min(self.cap)
    }

    /// The pause before the next attempt: random in `[0, pause cap]`.
    pub fn next_pause(&self) -> Duration {
        let cap = self.pause_cap();
        if cap.is_zero() {
            return cap;
        }
        let micros = cap.as_micros().max(1) as u64;
        Duration::from_micros(crate::random::random_u64() % (micros + 1))
    }

    /// Waits the jittered pause (none before the first attempt) and returns true, or returns
    /// false at once if the attempts or the deadline are used up.
    pub async fn next_attempt(&mut self) -> bool {
        if !self.can_retry() {
            return false;
        }
        let pause = self.next_pause();
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        self.attempt += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_are_bounded_by_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(1), Duration::from_millis(20));
        assert_eq!(
            b.next_pause(),
            Duration::ZERO,
            "no pause before the first attempt"
        );
        for a in 1..100 {
            b.attempt = a;
            assert!(b.next_pause() <= Duration::from_millis(20));
            assert!(b.pause_cap() <= Duration::from_millis(20));
        }
        b.attempt = 3;
        assert_eq!(b.pause_cap(), Duration::from_millis(4));
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn attempts_and_deadline_end_the_loop() {
        let mut b =
            Backoff::new(Duration::from_millis(1), Duration::from_millis(8)).max_attempts(3);
        let mut n = 0;
        while b.next_attempt().await {
            n += 1;
        }
        assert_eq!(n, 3);
        assert_eq!(b.attempts(), 3);

        let mut b = Backoff::new(Duration::from_millis(1), Duration::from_millis(8))
            .deadline(Duration::ZERO);
        assert!(b.next_attempt().await, "the first attempt always runs");
        assert!(!b.next_attempt().await, "a passed deadline ends the loop");
    }
}
