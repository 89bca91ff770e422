//! Wall-clock time for schedules, injectable for tests.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
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
    /// The sleepers, by the time they wait for (and a number, to tell them apart); each is
    /// woken alone when the clock reaches its time, so moving the clock costs only the
    /// sleepers that are due.
    sleepers: Mutex<BTreeMap<(i64, u64), Arc<Notify>>>,
    next_id: AtomicU64,
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
        self.wake_due();
    }
    /// Moves the time by `delta` (negative: backwards).
    pub fn advance(&self, delta: i64) {
        self.now.fetch_add(delta, Ordering::SeqCst);
        self.wake_due();
    }
    /// How many [`sleep_until`](Clock::sleep_until) calls wait for a time later than now.
    pub fn waiting(&self) -> usize {
        let now = self.now_ms();
        self.sleepers
            .lock()
            .range((now.saturating_add(1), 0)..)
            .count()
    }

    fn wake_due(&self) {
        let now = self.now_ms();
        let due = {
            let mut sleepers = self.sleepers.lock();
            let later = sleepers.split_off(&(now.saturating_add(1), 0));
            std::mem::replace(&mut *sleepers, later)
        };
        for wake in due.values() {
            // Stores a permit if the sleeper is not waiting yet: no wake-up is lost.
            wake.notify_one();
        }
    }
}

/// Takes a sleeper off the list when it ends (woken, or dropped before).
struct Sleeper<'a> {
    clock: &'a ManualClock,
    key: (i64, u64),
}

impl Drop for Sleeper<'_> {
    fn drop(&mut self) {
        self.clock.sleepers.lock().remove(&self.key);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.now.load(Ordering::SeqCst)
    }

    fn sleep_until(&self, ms: i64) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            if self.now_ms() >= ms {
                return;
            }
            let key = (ms, self.next_id.fetch_add(1, Ordering::Relaxed));
            let wake = Arc::new(Notify::new());
            self.sleepers.lock().insert(key, wake.clone());
            let _listed = Sleeper { clock: self, key };
            // Read again once listed: a move in between has either been seen here or will
            // wake this sleeper.
            while self.now_ms() < ms {
                wake.notified().await;
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
