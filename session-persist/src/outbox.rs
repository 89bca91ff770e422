//! The change log of deletions ([`Outbox`]): a store that has one records, in the same
//! transaction as a delete, rotation or revocation, which sessions must leave the caches, so
//! that no failed cache write and no crash can leave a deleted session live in a shared
//! cache. [`CachedStore`](crate::CachedStore) drains it into cache tombstones.
//!
//! It is a trait of its own, beside [`SessionStore`] (as tower-sessions keeps its
//! `ExpiredDeletion` apart), so a store, or a wrapper of one, says whether it has a log
//! instead of inheriting a log that is silently empty.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use larder_cache_api::Result;
use parking_lot::Mutex;

use crate::id::IdHash;
use crate::store::SessionStore;

/// A pending cache invalidation recorded by the database in the same transaction as a
/// delete, rotation or revocation (the outbox), so that no failed cache write and no crash
/// can leave a deleted session live in a shared cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalidation {
    /// Its position in the outbox (acknowledge it with
    /// [`outbox_ack`](Outbox::outbox_ack)).
    pub seq: i64,
    /// The deleted session.
    pub hash: IdHash,
}

/// A store that records every deletion (delete, rotation, revocation) in a change log, the
/// outbox, in the same transaction: what [`CachedStore`](crate::CachedStore) needs under it
/// so that a logout reaches every cache within a bound. The SQL stores have one.
///
/// A store without such a log (an in-memory test store) implements it with an empty
/// `outbox_pending`; a wrapper of a store forwards both methods.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> larder_cache_api::Result<()> {
/// # let dir = std::env::temp_dir().join(format!("larder-doc-outbox-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir).unwrap();
/// use larder_session_persist::{Outbox, SessionData, SessionStore, SqliteStore, Timestamp};
///
/// let store = SqliteStore::open(&dir.join("s.db")).await?;
/// let later = Timestamp::now().plus(std::time::Duration::from_secs(60));
/// let s = store.create(SessionData::new(), None, later).await?;
/// store.delete(&s.id).await?;
/// let pending = store.outbox_pending(10).await?;
/// assert!(pending.iter().any(|i| i.hash == s.id.hash()));
/// store.outbox_ack(&pending.iter().map(|i| i.seq).collect::<Vec<_>>()).await?;
/// assert!(store.outbox_pending(10).await?.is_empty());
/// # Ok(()) }
/// ```
#[async_trait]
pub trait Outbox: SessionStore {
    /// Up to `limit` pending cache invalidations, oldest first.
    async fn outbox_pending(&self, limit: u32) -> Result<Vec<Invalidation>>;

    /// Removes invalidations whose tombstones are now in the cache.
    async fn outbox_ack(&self, seqs: &[i64]) -> Result<()>;
}

#[async_trait]
impl<O: Outbox + ?Sized> Outbox for Arc<O> {
    async fn outbox_pending(&self, limit: u32) -> Result<Vec<Invalidation>> {
        (**self).outbox_pending(limit).await
    }
    async fn outbox_ack(&self, seqs: &[i64]) -> Result<()> {
        (**self).outbox_ack(seqs).await
    }
}

/// Outbox rows handled per database read.
pub(crate) const DRAIN_BATCH: u32 = 256;

/// Writes the tombstones of `outbox` with `bury` and acknowledges those written, `batch`
/// rows per read, until the outbox is empty or a tombstone could not be written (the rest
/// wait for the next drain). Returns how many were written; `drained` counts them as each
/// batch is acknowledged.
pub(crate) async fn drain<O, B, F>(
    outbox: &O,
    batch: u32,
    drained: &AtomicU64,
    mut bury: B,
) -> Result<usize>
where
    O: Outbox + ?Sized,
    B: FnMut(IdHash) -> F,
    F: Future<Output = bool>,
{
    let mut total = 0;
    loop {
        let rows = outbox.outbox_pending(batch).await?;
        if rows.is_empty() {
            return Ok(total);
        }
        let mut done = Vec::with_capacity(rows.len());
        for inv in &rows {
            if !bury(inv.hash).await {
                break;
            }
            done.push(inv.seq);
        }
        outbox.outbox_ack(&done).await?;
        total += done.len();
        drained.fetch_add(done.len() as u64, Ordering::Relaxed);
        if done.len() < rows.len() || rows.len() < batch as usize {
            return Ok(total);
        }
    }
}

/// When loads drain the outbox: at most once per interval, one caller at a time, never while
/// the cache is known to be down.
#[derive(Debug)]
pub(crate) struct DrainSchedule {
    interval: Duration,
    last: Mutex<Option<Instant>>,
    running: AtomicBool,
}

impl DrainSchedule {
    /// Drains at most every `interval`.
    pub(crate) fn new(interval: Duration) -> Self {
        DrainSchedule {
            interval,
            last: Mutex::new(None),
            running: AtomicBool::new(false),
        }
    }

    /// The interval.
    pub(crate) fn interval(&self) -> Duration {
        self.interval
    }

    /// Sets the interval.
    pub(crate) fn set_interval(&mut self, d: Duration) {
        self.interval = d;
    }

    /// Runs `drain` if a drain is due, none is running and the cache is not known to be
    /// down (`cache_down`); a failure is logged, not returned (the next one retries).
    pub(crate) async fn run_if_due<F>(&self, cache_down: bool, drain: impl FnOnce() -> F)
    where
        F: Future<Output = Result<usize>>,
    {
        {
            let mut last = self.last.lock();
            if last.is_some_and(|t| t.elapsed() < self.interval) {
                return;
            }
            if cache_down || self.running.swap(true, Ordering::AcqRel) {
                return;
            }
            *last = Some(Instant::now());
        }
        // A load cancelled mid-drain must not leave the flag set: no drain would run again.
        let _running = Running(&self.running);
        if let Err(e) = drain().await {
            tracing::warn!(error = %e, "draining the session invalidation outbox failed");
        }
    }
}

/// Clears the "a drain is running" flag when the drain ends, finished or dropped.
struct Running<'a>(&'a AtomicBool);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// A load cancelled while it drains (its request was dropped) once left the schedule
    /// marked running for good, so that no drain ran again.
    #[tokio::test]
    async fn a_drain_cut_short_does_not_stop_later_drains() {
        let schedule = DrainSchedule::new(Duration::ZERO);
        let cut = tokio::time::timeout(
            Duration::from_millis(10),
            schedule.run_if_due(false, std::future::pending::<Result<usize>>),
        )
        .await;
        assert!(cut.is_err(), "the drain never ends on its own");
        let runs = AtomicUsize::new(0);
        schedule
            .run_if_due(false, || async {
                runs.fetch_add(1, Ordering::Relaxed);
                Ok(0)
            })
            .await;
        assert_eq!(runs.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_drain_is_due_once_per_interval_and_never_while_the_cache_is_down() {
        let schedule = DrainSchedule::new(Duration::from_secs(60));
        let runs = AtomicUsize::new(0);
        let run = || async {
            runs.fetch_add(1, Ordering::Relaxed);
            Ok(0)
        };
        // Down: not run, and the turn is not used up.
        schedule.run_if_due(true, run).await;
        assert_eq!(runs.load(Ordering::Relaxed), 0);
        schedule.run_if_due(false, run).await;
        schedule.run_if_due(false, run).await;
        assert_eq!(runs.load(Ordering::Relaxed), 1);

        let every_time = DrainSchedule::new(Duration::ZERO);
        every_time.run_if_due(false, run).await;
        every_time
            .run_if_due(false, || async {
                Err(larder_cache_api::Error::new(
                    larder_cache_api::ErrorKind::Unavailable,
                    "a failed drain is logged and the next one runs",
                ))
            })
            .await;
        every_time.run_if_due(false, run).await;
        assert_eq!(runs.load(Ordering::Relaxed), 3);
    }

    #[cfg(feature = "sqlite")]
    mod sqlite {
        use super::*;
        use crate::{SessionData, SqliteStore, Timestamp};

        /// A store in a fresh SQLite file with `n` deleted sessions (so `n` outbox rows).
        async fn with_deleted(name: &str, n: usize) -> (SqliteStore, Vec<IdHash>) {
            let dir =
                std::env::temp_dir().join(format!("larder-outbox-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let store = SqliteStore::open(&dir.join("s.db")).await.unwrap();
            let later = Timestamp::now().plus(Duration::from_secs(60));
            let mut hashes = Vec::new();
            for _ in 0..n {
                let s = store.create(SessionData::new(), None, later).await.unwrap();
                store.delete(&s.id).await.unwrap();
                hashes.push(s.id.hash());
            }
            (store, hashes)
        }

        #[tokio::test]
        async fn every_row_is_buried_and_acknowledged_in_batches() {
            let (store, hashes) = with_deleted("all", 5).await;
            let drained = AtomicU64::new(0);
            let mut buried = Vec::new();
            let n = drain(&store, 2, &drained, |h| {
                buried.push(h);
                async { true }
            })
            .await
            .unwrap();
            assert_eq!(n, 5);
            assert_eq!(buried, hashes, "oldest first");
            assert_eq!(drained.load(Ordering::Relaxed), 5);
            assert!(store.outbox_pending(10).await.unwrap().is_empty());
        }

        #[tokio::test]
        async fn a_tombstone_not_written_stops_the_drain_and_stays_pending() {
            let (store, hashes) = with_deleted("stop", 3).await;
            let drained = AtomicU64::new(0);
            let mut calls = 0;
            let n = drain(&store, DRAIN_BATCH, &drained, |_| {
                calls += 1;
                let ok = calls == 1;
                async move { ok }
            })
            .await
            .unwrap();
            assert_eq!((n, calls), (1, 2));
            let left: Vec<IdHash> = store
                .outbox_pending(10)
                .await
                .unwrap()
                .into_iter()
                .map(|i| i.hash)
                .collect();
            assert_eq!(left, hashes[1..]);
            assert_eq!(drained.load(Ordering::Relaxed), 1);
        }
    }
}
