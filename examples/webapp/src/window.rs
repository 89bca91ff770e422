//! The last minute of traffic, for the status page chart: the session cache's hit ratio and
//! the cache and database latency percentiles, per second and over the whole minute.
//!
//! The choice: a ring of 60 one-second buckets, each holding hit and miss counts and one
//! quantile sketch per latency series (`metrics_util::storage::Summary`, a DDSketch). A
//! bucket is reused when its slot comes round again and its second is older, so nothing
//! needs a timer, and a reading covers exactly the current second and the 59 before it.
//! Sketches merge without losing their error bound, so the minute's p50/p99 are the
//! percentiles of all the minute's samples (within [`RELATIVE_ERROR`]), not an average of
//! per-second percentiles; a sketch stays within about 8 KiB however many samples it
//! takes. One mutex guards the ring: each cache or database operation takes it once, for
//! an addition.

use std::sync::Mutex;
use std::time::Instant;

use metrics_util::storage::Summary;

/// Seconds the window covers (the current one included).
pub const SECONDS: u64 = 60;

/// The sketches' relative error: a percentile read back is within 1 % of a sample that
/// holds that rank.
pub const RELATIVE_ERROR: f64 = 0.01;

/// Bins a sketch may use (8 bytes each): at [`RELATIVE_ERROR`] they span a ratio of about
/// 10^8 between the smallest and largest sample, 1 µs to 10 minutes; past that the
/// smallest bins merge, which blurs only the lowest quantiles.
const MAX_BINS: u32 = 1024;

/// Shorter samples (in seconds) count as zero.
const MIN_VALUE: f64 = 1e-7;

fn sketch() -> Summary {
    Summary::new(RELATIVE_ERROR, MAX_BINS, MIN_VALUE)
}

/// Which latency a sample belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Latency {
    /// One operation on the session cache backend.
    Cache,
    /// One call to the session database.
    Database,
}

/// Which lookup outcome a count belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// A session load answered by the cache.
    Hit,
    /// A session load that went to the database.
    Miss,
}

#[derive(Debug)]
struct Bucket {
    second: u64,
    hits: u64,
    misses: u64,
    cache: Summary,
    database: Summary,
}

impl Bucket {
    fn new(second: u64) -> Self {
        Bucket {
            second,
            hits: 0,
            misses: 0,
            cache: sketch(),
            database: sketch(),
        }
    }

    fn latency(&self, which: Latency) -> &Summary {
        match which {
            Latency::Cache => &self.cache,
            Latency::Database => &self.database,
        }
    }
}

/// The 50th and 99th percentiles of some latency samples, in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Percentiles {
    /// How many samples.
    pub count: u64,
    /// The median.
    pub p50: f64,
    /// The 99th percentile.
    pub p99: f64,
}

impl Percentiles {
    fn of(s: &Summary) -> Option<Self> {
        Some(Percentiles {
            count: s.count() as u64,
            p50: s.quantile(0.5)?,
            p99: s.quantile(0.99)?,
        })
    }
}

/// The hit ratio of some lookups, `None` when there were none.
fn ratio(hits: u64, misses: u64) -> Option<f64> {
    let all = hits + misses;
    (all > 0).then(|| hits as f64 / all as f64)
}

/// One second of the window that saw any traffic.
#[derive(Debug, Clone, PartialEq)]
pub struct Second {
    /// How long ago: 0 is the current second, 59 the oldest.
    pub age: u64,
    /// Session loads the cache answered.
    pub hits: u64,
    /// Session loads that went to the database.
    pub misses: u64,
    /// Cache operation latency, if there were any.
    pub cache: Option<Percentiles>,
    /// Database call latency, if there were any.
    pub database: Option<Percentiles>,
}

impl Second {
    /// Hits over lookups, `None` without lookups.
    pub fn hit_ratio(&self) -> Option<f64> {
        ratio(self.hits, self.misses)
    }
}

/// A reading of the window.
#[derive(Debug, Clone, PartialEq)]
pub struct Minute {
    /// The seconds that saw traffic, oldest first.
    pub seconds: Vec<Second>,
    /// Hits over the whole window.
    pub hits: u64,
    /// Misses over the whole window.
    pub misses: u64,
    /// Cache latency over the whole window.
    pub cache: Option<Percentiles>,
    /// Database latency over the whole window.
    pub database: Option<Percentiles>,
}

impl Minute {
    /// Hits over lookups in the whole window, `None` without lookups.
    pub fn hit_ratio(&self) -> Option<f64> {
        ratio(self.hits, self.misses)
    }
}

/// The ring of per-second buckets (see the module docs).
#[derive(Debug)]
pub struct Window {
    start: Instant,
    ring: Mutex<Vec<Option<Bucket>>>,
}

impl Default for Window {
    fn default() -> Self {
        Window::new()
    }
}

impl Window {
    /// An empty window; its seconds count from now.
    pub fn new() -> Self {
        Window {
            start: Instant::now(),
            ring: Mutex::new((0..SECONDS).map(|_| None).collect()),
        }
    }

    /// The current second on the window's clock (monotonic, from its creation).
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_secs()
    }

    /// Runs `f` on the bucket of `second`, starting it afresh if its slot holds an older
    /// second. A sample of a second already out of the window is dropped.
    fn with_bucket(&self, second: u64, f: impl FnOnce(&mut Bucket)) {
        // A panic elsewhere while holding the lock leaves counts, not broken invariants.
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let slot = &mut ring[(second % SECONDS) as usize];
        match slot {
            Some(b) if b.second == second => f(b),
            Some(b) if b.second > second => {}
            _ => {
                let mut b = Bucket::new(second);
                f(&mut b);
                *slot = Some(b);
            }
        }
    }

    /// Counts `n` lookups with this outcome now.
    pub fn count(&self, outcome: Lookup, n: u64) {
        self.count_at(self.now(), outcome, n);
    }

    /// Counts `n` lookups with this outcome in `second`.
    pub fn count_at(&self, second: u64, outcome: Lookup, n: u64) {
        self.with_bucket(second, |b| match outcome {
            Lookup::Hit => b.hits += n,
            Lookup::Miss => b.misses += n,
        });
    }

    /// Records a latency sample (in seconds) now.
    pub fn record(&self, which: Latency, seconds: f64) {
        self.record_at(self.now(), which, seconds);
    }

    /// Records a latency sample (in seconds) in `second`.
    pub fn record_at(&self, second: u64, which: Latency, seconds: f64) {
        if !seconds.is_finite() || seconds < 0.0 {
            return;
        }
        self.with_bucket(second, |b| match which {
            Latency::Cache => b.cache.add(seconds),
            Latency::Database => b.database.add(seconds),
        });
    }

    /// The window now.
    pub fn read(&self) -> Minute {
        self.read_at(self.now())
    }

    /// The window as seen at `now`: the seconds `now - 59 ..= now`.
    pub fn read_at(&self, now: u64) -> Minute {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let mut live: Vec<&Bucket> = ring
            .iter()
            .flatten()
            .filter(|b| b.second <= now && now - b.second < SECONDS)
            .collect();
        live.sort_by_key(|b| b.second);
        let merged = |which: Latency| {
            let mut all = sketch();
            for b in &live {
                // Same parameters on both sides: merging cannot fail.
                let _ = all.merge(b.latency(which));
            }
            Percentiles::of(&all)
        };
        Minute {
            seconds: live
                .iter()
                .map(|b| Second {
                    age: now - b.second,
                    hits: b.hits,
                    misses: b.misses,
                    cache: Percentiles::of(&b.cache),
                    database: Percentiles::of(&b.database),
                })
                .collect(),
            hits: live.iter().map(|b| b.hits).sum(),
            misses: live.iter().map(|b| b.misses).sum(),
            cache: merged(Latency::Cache),
            database: merged(Latency::Database),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Within the sketch's error of `want` (plus a hair for float rounding).
    fn close(got: f64, want: f64) -> bool {
        (got - want).abs() <= want * RELATIVE_ERROR * 1.01
    }

    #[test]
    fn percentiles_of_known_samples() {
        let w = Window::new();
        // 1 ms ..= 100 ms in one second: the median is 50 ms, the 99th percentile 99 ms.
        for ms in 1..=100 {
            w.record_at(7, Latency::Database, f64::from(ms) / 1000.0);
        }
        let m = w.read_at(7);
        let db = m.database.unwrap();
        assert_eq!(db.count, 100);
        assert!(close(db.p50, 0.050), "p50 {}", db.p50);
        assert!(close(db.p99, 0.099), "p99 {}", db.p99);
        assert_eq!(m.cache, None, "no cache samples were recorded");
        assert_eq!(m.seconds.len(), 1);
        assert_eq!(m.seconds[0].age, 0);
        assert_eq!(m.seconds[0].database, Some(db));
    }

    #[test]
    fn the_minute_merges_its_seconds() {
        let w = Window::new();
        // 90 fast cache operations in one second and 10 slow ones in another: per second
        // the p99s are 1 ms and 200 ms; over the minute the median is fast and p99 slow.
        for _ in 0..90 {
            w.record_at(100, Latency::Cache, 0.001);
        }
        for _ in 0..10 {
            w.record_at(130, Latency::Cache, 0.200);
        }
        let m = w.read_at(130);
        let all = m.cache.unwrap();
        assert_eq!(all.count, 100);
        assert!(close(all.p50, 0.001), "p50 {}", all.p50);
        assert!(close(all.p99, 0.200), "p99 {}", all.p99);
        let ages: Vec<u64> = m.seconds.iter().map(|s| s.age).collect();
        assert_eq!(ages, [30, 0]);
        assert!(close(m.seconds[0].cache.unwrap().p99, 0.001));
        assert!(close(m.seconds[1].cache.unwrap().p50, 0.200));
    }

    #[test]
    fn hit_ratio_per_second_and_over_the_minute() {
        let w = Window::new();
        w.count_at(10, Lookup::Hit, 3);
        w.count_at(10, Lookup::Miss, 1);
        w.count_at(11, Lookup::Miss, 4);
        w.record_at(12, Latency::Cache, 0.002);
        let m = w.read_at(12);
        assert_eq!((m.hits, m.misses), (3, 5));
        assert_eq!(m.hit_ratio(), Some(3.0 / 8.0));
        let ratios: Vec<Option<f64>> = m.seconds.iter().map(Second::hit_ratio).collect();
        assert_eq!(ratios, [Some(0.75), Some(0.0), None]);
    }

    #[test]
    fn seconds_older_than_the_window_drop_out() {
        let w = Window::new();
        w.count_at(5, Lookup::Hit, 1);
        w.record_at(5, Latency::Database, 0.010);
        w.count_at(6, Lookup::Miss, 2);
        // At 64, second 5 is 59 s old (still in); at 65 it is out, second 6 still in.
        assert_eq!(w.read_at(64).hits, 1);
        let m = w.read_at(65);
        assert_eq!((m.hits, m.misses), (0, 2));
        assert_eq!(m.database, None);
        assert_eq!(m.seconds.len(), 1);
        assert_eq!(m.seconds[0].age, 59);
        // Second 65 reuses second 5's slot: the old counts are gone, not added to.
        w.count_at(65, Lookup::Hit, 7);
        let m = w.read_at(65);
        assert_eq!((m.hits, m.misses), (7, 2));
        // A late sample for a second whose slot has moved on is dropped.
        w.count_at(5, Lookup::Hit, 100);
        assert_eq!(w.read_at(65).hits, 7);
        // Long after, the window is empty.
        let m = w.read_at(10_000);
        assert!(m.seconds.is_empty());
        assert_eq!(m.hit_ratio(), None);
    }

    #[test]
    fn bad_samples_are_ignored() {
        let w = Window::new();
        w.record_at(1, Latency::Cache, f64::NAN);
        w.record_at(1, Latency::Cache, -1.0);
        w.record_at(1, Latency::Cache, f64::INFINITY);
        assert_eq!(w.read_at(1).cache, None);
    }
}
