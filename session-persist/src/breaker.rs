//! The circuit breaker of the write-through layer: after a cache failure, the cache is
//! skipped for a cool-down, so requests pay the cache timeout once per cool-down, not once
//! per operation.
//!
//! It lives here rather than as a `cache-api` layer beside `layer::Timeout`, because what it
//! decides is not per operation: the write-through layer asks whether the circuit is open
//! before work that is no cache call (a fill queues an invalidation instead of sealing an
//! entry; pending invalidations and the outbox wait), a tombstone is attempted even while
//! it is open yet still trips it when it fails, and a call skipped must be told apart from a
//! call that failed (the two are counted apart, and only a failure is logged). A layer would
//! answer all of these with one `Unavailable` error.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use larder_cache_api::{Error, ErrorKind, Result};
use parking_lot::Mutex;

use crate::stats::WriteThroughStats;

/// What a guarded cache call came to.
pub(crate) enum Call<T> {
    Done(T),
    /// A lost compare-and-swap (not a failure: the breaker stays closed).
    Conflict(Error),
    /// Failed, timed out, or skipped while the breaker was open (already counted).
    Failed,
}

/// Whether a call may be skipped while the circuit is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum When {
    /// Skipped while open (reads, fills, invalidations).
    Closed,
    /// Attempted even while open (tombstones: a logout must reach the cache if it can).
    Always,
}

/// Opens for `cooldown` after a failed cache call; counts failures and skipped calls.
#[derive(Debug)]
pub(crate) struct Breaker {
    cooldown: Duration,
    open_until: Mutex<Option<Instant>>,
    stats: Arc<WriteThroughStats>,
}

impl Breaker {
    /// A closed breaker that opens for `cooldown` (zero: never opens).
    pub(crate) fn new(cooldown: Duration, stats: Arc<WriteThroughStats>) -> Self {
        Breaker {
            cooldown,
            open_until: Mutex::new(None),
            stats,
        }
    }

    /// Sets the cool-down.
    pub(crate) fn set_cooldown(&mut self, d: Duration) {
        self.cooldown = d;
    }

    /// True while calls that may be skipped are skipped.
    pub(crate) fn is_open(&self) -> bool {
        matches!(*self.open_until.lock(), Some(until) if Instant::now() < until)
    }

    /// Counts a cache operation not attempted because the circuit is open.
    pub(crate) fn skipped(&self) {
        WriteThroughStats::bump(&self.stats.skipped);
    }

    fn trip(&self, op: &'static str, e: &Error) {
        WriteThroughStats::bump(&self.stats.cache_errors);
        if !self.cooldown.is_zero() {
            *self.open_until.lock() = Some(Instant::now() + self.cooldown);
        }
        metrics::counter!("larder_session_cache_errors_total", "op" => op).increment(1);
        tracing::warn!(op, error = %e, "session cache unavailable; using the database");
    }

    /// Runs a cache operation (already under its deadline: the cache-api `Timeout` layer).
    /// Skipped while open unless `when` is [`When::Always`]; a failure opens the circuit and
    /// is logged and counted.
    pub(crate) async fn call<T>(
        &self,
        op: &'static str,
        when: When,
        fut: impl Future<Output = Result<T>>,
    ) -> Call<T> {
        if when == When::Closed && self.is_open() {
            self.skipped();
            return Call::Failed;
        }
        match fut.await {
            Ok(v) => Call::Done(v),
            Err(e) if e.kind() == ErrorKind::Conflict => Call::Conflict(e),
            Err(e) => {
                self.trip(op, &e);
                Call::Failed
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn down() -> Error {
        Error::new(ErrorKind::Unavailable, "down")
    }

    fn breaker(cooldown: Duration) -> (Breaker, Arc<WriteThroughStats>) {
        let stats = Arc::new(WriteThroughStats::default());
        (Breaker::new(cooldown, Arc::clone(&stats)), stats)
    }

    #[tokio::test]
    async fn a_failure_opens_it_and_later_calls_are_skipped_unpolled() {
        let (b, stats) = breaker(Duration::from_secs(60));
        assert!(matches!(
            b.call("get", When::Closed, async { Ok(1) }).await,
            Call::Done(1)
        ));
        assert!(!b.is_open());
        assert!(matches!(
            b.call::<()>("get", When::Closed, async { Err(down()) })
                .await,
            Call::Failed
        ));
        assert!(b.is_open());
        let skipped = b
            .call::<()>("get", When::Closed, async {
                unreachable!("skipped calls never run")
            })
            .await;
        assert!(matches!(skipped, Call::Failed));
        let s = stats.snapshot();
        assert_eq!((s.cache_errors, s.skipped), (1, 1));
    }

    #[tokio::test]
    async fn tombstones_are_attempted_while_open_and_still_trip_it() {
        let (b, stats) = breaker(Duration::from_secs(60));
        let _ = b
            .call::<()>("put", When::Closed, async { Err(down()) })
            .await;
        assert!(matches!(
            b.call("put", When::Always, async { Ok(7) }).await,
            Call::Done(7)
        ));
        let _ = b
            .call::<()>("put", When::Always, async { Err(down()) })
            .await;
        let s = stats.snapshot();
        assert_eq!((s.cache_errors, s.skipped), (2, 0));
    }

    #[tokio::test]
    async fn a_lost_race_is_no_failure() {
        let (b, stats) = breaker(Duration::from_secs(60));
        let lost = b
            .call::<()>("put", When::Closed, async {
                Err(Error::new(ErrorKind::Conflict, "lost"))
            })
            .await;
        assert!(matches!(lost, Call::Conflict(_)));
        assert!(!b.is_open());
        assert_eq!(stats.snapshot().cache_errors, 0);
    }

    #[tokio::test]
    async fn it_closes_after_the_cooldown_and_zero_never_opens_it() {
        let (b, _) = breaker(Duration::from_millis(20));
        let _ = b
            .call::<()>("get", When::Closed, async { Err(down()) })
            .await;
        assert!(b.is_open());
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert!(!b.is_open());

        let (mut never, stats) = breaker(Duration::from_secs(60));
        never.set_cooldown(Duration::ZERO);
        let _ = never
            .call::<()>("get", When::Closed, async { Err(down()) })
            .await;
        assert!(!never.is_open());
        assert_eq!(stats.snapshot().cache_errors, 1);
    }
}
