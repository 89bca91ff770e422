//! The change log of sessions ([`Outbox`]): a store that has one records, in the same
//! transaction as the change, every change a cache could hold stale — a save (with the
//! version it wrote), a delete, a rotation, a revocation — so that no failed cache write, no
//! crash and no cache in another process can keep serving the old state.
//! [`CachedStore`](crate::CachedStore) reads it from a cursor of its own ([`follow`]) and
//! applies each entry: a tombstone for a deletion, an eviction of an older version for a
//! save. Readers never remove entries; the store's sweep ages them out after
//! [`log_retention`](Outbox::log_retention).
//!
//! It is a trait of its own, beside [`SessionStore`] (as tower-sessions keeps its
//! `ExpiredDeletion` apart), so a store, or a wrapper of one, says whether it has a log
//! instead of inheriting a log that is silently empty.
//!
//! # Positions that commit out of order
//!
//! Positions come from a sequence, and PostgreSQL hands out sequence values when a
//! statement runs, not when its transaction commits: a transaction that took position 5 may
//! commit after one that took 6. A reader that has seen 6 therefore remembers 5 as a *gap*
//! and reads it again on every poll for [`GAP_GRACE`] (30 s) after first missing it, longer
//! than any session write transaction stays open between its statement and its commit. A
//! position that never fills (its transaction rolled back, or the sequence skipped values
//! after a crash) is dropped after the grace. The limit: a change whose transaction commits
//! more than 30 s after its statement ran may be missed by a reader that already passed it;
//! its cache entry then lives at most `max_cache_ttl`. SQLite serialises writers, so its
//! positions appear in commit order and no gap stays open.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use larder_cache_api::Result;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::id::IdHash;
use crate::record::Timestamp;
use crate::store::SessionStore;

/// One entry of the change log, recorded by the database in the same transaction as the
/// change it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalidation {
    /// Its position in the log (increasing; see the module docs for commit order).
    pub seq: i64,
    /// The session that changed.
    pub hash: IdHash,
    /// The version the change wrote (`i64::MAX` for a deletion recorded before the log
    /// carried versions).
    pub version: i64,
    /// True for a deletion (delete, the old id of a rotation, revocation by principal):
    /// caches bury the session. False for a save: caches drop an older version.
    pub deleted: bool,
}

/// A store that records every change of a session (save, delete, rotation, revocation) in
/// a change log in the same transaction: what [`CachedStore`](crate::CachedStore) needs
/// under it so that a change and a logout reach every cache, shared or per process, within
/// a bound. The SQL stores have one. Readers keep their own cursor; nothing is removed by
/// reading.
///
/// A store without such a log (an in-memory test store) returns no entries; a wrapper of a
/// store forwards every method.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> larder_cache_api::Result<()> {
/// # let dir = std::env::temp_dir().join(format!("larder-doc-outbox-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir).unwrap();
/// use larder_session_persist::{Outbox, SessionData, SessionStore, SqliteStore, Timestamp};
///
/// let store = SqliteStore::open(&dir.join("s.db")).await?;
/// let start = store.log_start(Timestamp::now()).await?;
/// let later = Timestamp::now().plus(std::time::Duration::from_secs(60));
/// let s = store.create(SessionData::new(), None, later).await?;
/// let mut r = s.clone();
/// r.data.insert("n", &1)?;
/// store.save(&r).await?;
/// store.delete(&s.id).await?;
/// let log = store.log_after(start, 10).await?;
/// let seen: Vec<(i64, bool)> = log.iter().map(|e| (e.version, e.deleted)).collect();
/// assert_eq!(seen, [(2, false), (3, true)]);
/// // Reading removes nothing: another reader from the same cursor sees the same.
/// assert_eq!(store.log_after(start, 10).await?, log);
/// # Ok(()) }
/// ```
#[async_trait]
pub trait Outbox: SessionStore {
    /// Up to `limit` entries after position `after`, in position order.
    async fn log_after(&self, after: i64, limit: u32) -> Result<Vec<Invalidation>>;

    /// The entries at `seqs` that exist now (a reader looking again at positions it found
    /// missing), in position order.
    async fn log_at(&self, seqs: &[i64]) -> Result<Vec<Invalidation>>;

    /// Where a reader that starts now begins: the newest position recorded before `before`
    /// (or just before the oldest entry kept, or 0 for an empty log). A reader starts a
    /// grace period back, so that a change still committing is not passed over.
    async fn log_start(&self, before: Timestamp) -> Result<i64>;

    /// How long entries are kept before the sweep removes them (a reader away longer may
    /// have missed some). `Duration::MAX` for a store without a log.
    fn log_retention(&self) -> Duration;
}

#[async_trait]
impl<O: Outbox + ?Sized> Outbox for Arc<O> {
    async fn log_after(&self, after: i64, limit: u32) -> Result<Vec<Invalidation>> {
        (**self).log_after(after, limit).await
    }
    async fn log_at(&self, seqs: &[i64]) -> Result<Vec<Invalidation>> {
        (**self).log_at(seqs).await
    }
    async fn log_start(&self, before: Timestamp) -> Result<i64> {
        (**self).log_start(before).await
    }
    fn log_retention(&self) -> Duration {
        (**self).log_retention()
    }
}

/// Log entries handled per database read.
pub(crate) const DRAIN_BATCH: u32 = 256;

/// How long a reader looks again at a position it found missing (see the module docs).
pub const GAP_GRACE: Duration = Duration::from_secs(30);

/// Most missing positions remembered at once, and per jump between two entries: the
/// positions nearest the entry are kept (those of transactions still committing).
const MAX_GAPS: usize = 4096;
const MAX_GAPS_PER_JUMP: i64 = 256;

/// Where a reader is in the log: kept in the cache it serves (so a shared cache has one, and
/// a persistent cache keeps it across restarts) and in the reader's memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Cursor {
    /// Every entry up to here is applied, but the gaps.
    pub(crate) seq: i64,
    /// Positions below `seq` not seen yet, each with when it was first missed (ms).
    pub(crate) gaps: Vec<(i64, i64)>,
    /// When the reader last caught up with the log (ms).
    pub(crate) read_at: i64,
}

/// How a read began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// From the reader's cursor.
    Continued,
    /// A reader without a cursor (a new cache) started near the log's head.
    Fresh,
    /// The reader's cursor was older than the log's retention: entries it never applied may
    /// be gone, so it started near the head and its cache must drop what it held.
    Flushed,
}

/// What [`follow`] did.
#[derive(Debug)]
pub(crate) struct Followed {
    /// The cursor to keep.
    pub(crate) cursor: Cursor,
    /// Entries applied.
    pub(crate) applied: usize,
    /// How the read began.
    pub(crate) start: Start,
}

/// `d` in milliseconds, saturating.
pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Reads `log` from `cursor` at time `now` and applies each entry with `apply`, `batch` per
/// read, until the log is read or an entry could not be applied (that one and the rest wait
/// for the next read). Positions passed over are remembered as gaps and looked at again
/// for [`GAP_GRACE`].
pub(crate) async fn follow<O, A, F>(
    log: &O,
    cursor: Option<Cursor>,
    now: Timestamp,
    batch: u32,
    mut apply: A,
) -> Result<Followed>
where
    O: Outbox + ?Sized,
    A: FnMut(Invalidation) -> F,
    F: Future<Output = bool>,
{
    let retention = millis(log.log_retention());
    let grace = millis(GAP_GRACE);
    let (mut cur, start) = match cursor {
        Some(c) if now.0.saturating_sub(c.read_at) <= retention => (c, Start::Continued),
        away => {
            let seq = log
                .log_start(Timestamp(now.0.saturating_sub(grace)))
                .await?;
            let start = if away.is_some() {
                Start::Flushed
            } else {
                Start::Fresh
            };
            let fresh = Cursor {
                seq,
                gaps: Vec::new(),
                read_at: now.0,
            };
            (fresh, start)
        }
    };
    let mut applied = 0;
    cur.gaps
        .retain(|&(_, missed)| now.0.saturating_sub(missed) < grace);
    if !cur.gaps.is_empty() {
        let seqs: Vec<i64> = cur.gaps.iter().map(|&(s, _)| s).collect();
        for entry in log.log_at(&seqs).await? {
            let seq = entry.seq;
            if !apply(entry).await {
                return Ok(Followed {
                    cursor: cur,
                    applied,
                    start,
                });
            }
            cur.gaps.retain(|&(s, _)| s != seq);
            applied += 1;
        }
    }
    loop {
        let rows = log.log_after(cur.seq, batch).await?;
        let full = rows.len() >= batch as usize;
        for entry in rows {
            let seq = entry.seq;
            if !apply(entry).await {
                return Ok(Followed {
                    cursor: cur,
                    applied,
                    start,
                });
            }
            let skipped_from = cur.seq.saturating_add(1).max(seq - MAX_GAPS_PER_JUMP);
            cur.gaps.extend((skipped_from..seq).map(|s| (s, now.0)));
            cur.seq = seq;
            applied += 1;
        }
        if cur.gaps.len() > MAX_GAPS {
            let extra = cur.gaps.len() - MAX_GAPS;
            cur.gaps.drain(..extra);
        }
        if !full {
            cur.read_at = now.0;
            return Ok(Followed {
                cursor: cur,
                applied,
                start,
            });
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
        use crate::{SessionData, SqliteStore};

        /// A store in a fresh SQLite file with `n` sessions saved once and deleted (so `2n`
        /// log entries), and their hashes.
        async fn with_changes(n: usize) -> (SqliteStore, tempfile::TempDir, Vec<IdHash>) {
            let dir = tempfile::tempdir().unwrap();
            let store = SqliteStore::open(&dir.path().join("s.db")).await.unwrap();
            let later = Timestamp::now().plus(Duration::from_secs(60));
            let mut hashes = Vec::new();
            for _ in 0..n {
                let s = store.create(SessionData::new(), None, later).await.unwrap();
                store.save(&s).await.unwrap();
                store.delete(&s.id).await.unwrap();
                hashes.push(s.id.hash());
            }
            (store, dir, hashes)
        }

        fn from_start() -> Option<Cursor> {
            Some(Cursor {
                seq: 0,
                gaps: Vec::new(),
                read_at: Timestamp::now().0,
            })
        }

        #[tokio::test]
        async fn every_entry_is_applied_in_order_and_stays_for_other_readers() {
            let (store, _dir, hashes) = with_changes(3).await;
            for _ in 0..2 {
                let mut seen = Vec::new();
                let f = follow(&store, from_start(), Timestamp::now(), 2, |e| {
                    seen.push((e.hash, e.deleted));
                    async { true }
                })
                .await
                .unwrap();
                assert_eq!((f.applied, f.start), (6, Start::Continued));
                let want: Vec<(IdHash, bool)> = hashes
                    .iter()
                    .flat_map(|h| [(*h, false), (*h, true)])
                    .collect();
                assert_eq!(seen, want, "oldest first, saves and deletions");
                assert!(f.cursor.gaps.is_empty(), "{:?}", f.cursor.gaps);
                assert_eq!(f.cursor.seq, 6);
            }
        }

        #[tokio::test]
        async fn an_entry_not_applied_stops_the_read_and_is_read_again() {
            let (store, _dir, _) = with_changes(2).await;
            let mut calls = 0;
            let f = follow(&store, from_start(), Timestamp::now(), DRAIN_BATCH, |_| {
                calls += 1;
                let ok = calls == 1;
                async move { ok }
            })
            .await
            .unwrap();
            assert_eq!((f.applied, calls, f.cursor.seq), (1, 2, 1));
            let mut rest = 0;
            let g = follow(
                &store,
                Some(f.cursor),
                Timestamp::now(),
                DRAIN_BATCH,
                |_| {
                    rest += 1;
                    async { true }
                },
            )
            .await
            .unwrap();
            assert_eq!((g.applied, rest, g.cursor.seq), (3, 3, 4));
        }

        #[tokio::test]
        async fn a_missing_position_is_read_again_until_its_grace_ends() {
            let (store, _dir, _) = with_changes(2).await;
            // As if position 2 had been taken by a transaction not yet committed.
            let held: (Vec<u8>, i64, i64) = sqlx::query_as(
                "SELECT id_hash, created_at, version FROM larder_session_outbox WHERE seq = 2",
            )
            .fetch_one(store.pool())
            .await
            .unwrap();
            sqlx::query("DELETE FROM larder_session_outbox WHERE seq = 2")
                .execute(store.pool())
                .await
                .unwrap();
            let now = Timestamp::now();
            let f = follow(&store, from_start(), now, DRAIN_BATCH, |_| async { true })
                .await
                .unwrap();
            assert_eq!((f.applied, f.cursor.seq), (3, 4));
            assert_eq!(f.cursor.gaps, [(2, now.0)], "2 is a gap");
            // It commits: the next read applies it.
            sqlx::query(
                "INSERT INTO larder_session_outbox (seq, id_hash, created_at, version, deleted) \
                 VALUES (2, $1, $2, $3, TRUE)",
            )
            .bind(&held.0[..])
            .bind(held.1)
            .bind(held.2)
            .execute(store.pool())
            .await
            .unwrap();
            let mut seen = Vec::new();
            let g = follow(&store, Some(f.cursor.clone()), now, DRAIN_BATCH, |e| {
                seen.push(e.seq);
                async { true }
            })
            .await
            .unwrap();
            assert_eq!(seen, [2]);
            assert!(g.cursor.gaps.iter().all(|&(s, _)| s != 2));
            // Past the grace a gap is dropped unread.
            let late = now.plus(GAP_GRACE);
            let h = follow(&store, Some(f.cursor), late, DRAIN_BATCH, |_| async {
                panic!("nothing to read")
            })
            .await
            .unwrap();
            assert!(h.cursor.gaps.is_empty(), "{:?}", h.cursor.gaps);
        }

        #[tokio::test]
        async fn a_reader_without_a_cursor_or_away_too_long_starts_near_the_head() {
            let (store, _dir, _) = with_changes(2).await;
            let now = Timestamp::now()
                .plus(GAP_GRACE)
                .plus(Duration::from_secs(1));
            let f = follow(&store, None, now, DRAIN_BATCH, |_| async {
                panic!("older entries are not read")
            })
            .await
            .unwrap();
            assert_eq!((f.start, f.cursor.seq), (Start::Fresh, 4));
            let away = Cursor {
                seq: 0,
                gaps: Vec::new(),
                read_at: now.0 - millis(store.log_retention()) - 1,
            };
            let g = follow(&store, Some(away), now, DRAIN_BATCH, |_| async {
                panic!("older entries are not read")
            })
            .await
            .unwrap();
            assert_eq!((g.start, g.cursor.seq), (Start::Flushed, 4));
        }
    }
}
