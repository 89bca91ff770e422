//! Wall-clock time for schedules, injectable for tests.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use tokio::sync::Notify;

/// The longest a [`Clock::sleep_until`] naps before it reads the clock again: a wall clock
/// may be stepped (NTP, an operator) while a task sleeps until a period far ahead.
const MAX_NAP: Duration = Duration::from_secs(10);

/// Milliseconds since the Unix epoch. Only periodic-task schedules read it (to name the
/// current period and to sleep until the next one); lease expiry never does (it uses local
/// monotonic time).
pub trait Clock: Send + Sync + Debug {
    /// Now, in milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;

    /// Waits until [`now_ms`](Clock::now_ms) reads `ms` or later. The default sleeps on the
    /// tokio timer and reads the clock again at least every 10 s, so a clock that is stepped
    /// meanwhile is followed.
    fn sleep_until(&self, ms: i64) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            loop {
                let left = ms.saturating_sub(self.now_ms());
                if left <= 0 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(left as u64).min(MAX_NAP)).await;
            }
        })
    }
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }
}

/// A clock the test moves by hand, forwards or backwards. [`Clock::sleep_until`] on it
/// returns when the test moves it far enough, and [`waiting`](ManualClock::waiting) says how
/// many sleepers wait for a later time, so a test can tell when every scheduler has gone back
/// to sleep.
#[derive(Debug, Default)]
pub struct ManualClock {
    now: AtomicI64,
    moved: Notify,
    /// The times sleepers wait for, with how many wait for each.
    sleepers: Mutex<BTreeMap<i64, usize>>,
}

impl ManualClock {
    /// A clock showing `ms`.
    pub fn new(ms: i64) -> Self {
        ManualClock {
            now: AtomicI64::new(ms),
            ..ManualClock::default()
        }
    }
    /// Sets the time.
    pub fn set(&self, ms: i64) {
        self.now.store(ms, Ordering::SeqCst);
        self.moved.notify_waiters();
    }
    /// Moves the time by `delta` (negative: backwards).
    pub fn advance(&self, delta: i64) {
        self.now.fetch_add(delta, Ordering::SeqCst);
        self.moved.notify_waiters();
    }
    /// How many [`sleep_until`](Clock::sleep_until) calls wait for a time later than now
    /// (sleepers whose time has come are not counted, even before they wake).
    pub fn waiting(&self) -> usize {
        let now = self.now_ms();
        self.sleepers
            .lock()
            .range(now.saturating_add(1)..)
            .map(|(_, n)| n)
            .sum()
    }
}

/// Counts one sleeper for `ms` while it lives.
struct Sleeper<'a> {
    clock: &'a ManualClock,
    ms: i64,
}

impl<'a> Sleeper<'a> {
    fn new(clock: &'a ManualClock, ms: i64) -> Self {
        *clock.sleepers.lock().entry(ms).or_default() += 1;
        Sleeper { clock, ms }
    }
}

impl Drop for Sleeper<'_> {
    fn drop(&mut self) {
        let mut sleepers = self.clock.sleepers.lock();
        if let Some(n) = sleepers.get_mut(&self.ms) {
            *n -= 1;
            if *n == 0 {
                sleepers.remove(&self.ms);
            }
        }
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.now.load(Ordering::SeqCst)
    }

    fn sleep_until(&self, ms: i64) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            let _counted = Sleeper::new(self, ms);
            loop {
                // Created before the clock is read: a move in between still wakes it.
                let moved = self.moved.notified();
                if self.now_ms() >= ms {
                    return;
                }
                moved.await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn manual_sleepers_wake_when_the_clock_reaches_their_time() {
        let clock = std::sync::Arc::new(ManualClock::new(100));
        let c = clock.clone();
        let sleeper = tokio::spawn(async move { c.sleep_until(150).await });
        while clock.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        clock.advance(20);
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished(), "not yet at 120");
        assert_eq!(clock.waiting(), 1);
        clock.set(150);
        assert_eq!(clock.waiting(), 0, "due sleepers are not counted");
        sleeper.await.unwrap();
        // A time already passed does not wait.
        clock.sleep_until(10).await;
        assert_eq!(clock.waiting(), 0);
    }
}
