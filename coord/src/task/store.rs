//! The reads and compare-and-swap writes of a task record: the record this process wrote
//! last (tried without a read), the retried edit, and the two edits runs make (a heartbeat,
//! the end of a run).

use std::time::Duration;

use super::last_write::LastWrite;
use super::record::{decode, Heartbeat, Outcome, RunInfo, TaskRecord};
use super::spec::Claim;
use super::Scheduler;
use larder_cache_api::{Cache, Error, ErrorKind, Key, Result, Version};

/// The retries of a read-and-compare-and-swap on a task record that lost a race.
fn cas_retries() -> larder_cache_api::retry::Backoff {
    larder_cache_api::retry::Backoff::new(Duration::from_micros(100), Duration::from_millis(20))
        .max_attempts(16)
}

/// The error of a read-and-compare-and-swap that lost every race to other writers.
pub(super) fn lost_races(task: &str, what: &str) -> Error {
    Error::new(
        ErrorKind::Conflict,
        format!("{what} of task {task:?} lost every compare-and-swap race; its effect is unknown"),
    )
}

/// A record as stored, or `None` (absent) with no version.
pub(super) type Stored = (TaskRecord, Option<Version>);

/// What an edit of a task record does on the record it is given.
enum Edit<T> {
    /// Write the edited record, then answer this.
    Write(T),
    /// Answer this without writing.
    Answer(T),
}

impl Scheduler {
    /// The key of a task's record.
    pub(super) fn key(name: &str) -> Result<Key> {
        Key::new(format!("larder:task:{name}"))
    }

    /// The record of a task with its version.
    pub(super) async fn load(&self, key: &Key) -> Result<Option<(TaskRecord, Version)>> {
        Self::load_from(&self.cache, key).await
    }

    /// [`load`](Self::load) from `cache` (the operators' handle has no scheduler).
    pub(super) async fn load_from(
        cache: &Cache,
        key: &Key,
    ) -> Result<Option<(TaskRecord, Version)>> {
        let Some(entry) = cache.backend().get(key).await? else {
            return Ok(None);
        };
        Ok(Some((decode(&entry)?, entry.version)))
    }

    /// Writes `rec` by compare-and-swap on `version` (`None`: create it): its new version,
    /// or, if another write came first, the record stored instead, as the conflict carries
    /// it (no read).
    pub(super) async fn put(
        &self,
        key: &Key,
        rec: &TaskRecord,
        version: Option<Version>,
    ) -> Result<std::result::Result<Version, Stored>> {
        Self::put_to(&self.cache, key, rec, version).await
    }

    /// [`put`](Self::put) to `cache`.
    pub(super) async fn put_to(
        cache: &Cache,
        key: &Key,
        rec: &TaskRecord,
        version: Option<Version>,
    ) -> Result<std::result::Result<Version, Stored>> {
        let res = match version {
            None => cache.create(key, rec, None).await,
            Some(v) => cache.replace(key, rec, None, v).await,
        };
        match res {
            Ok(v) => Ok(Ok(v)),
            Err(e) if e.kind() == ErrorKind::Conflict => Ok(Err(match e.into_current() {
                Some(entry) => (decode(&entry)?, Some(entry.version)),
                None => (TaskRecord::default(), None),
            })),
            Err(e) => Err(e),
        }
    }

    /// Edits a task record by compare-and-swap, retried on conflict: `change` edits the
    /// record it is given, or answers without writing. The first attempt starts from this
    /// process's own last write of the record when it has one (no read); a conflict's
    /// current record is the next attempt's (no read either). `None`: the record is absent.
    async fn edit<T>(
        &self,
        key: &Key,
        last: &LastWrite,
        task: &str,
        what: &str,
        mut change: impl FnMut(&mut TaskRecord) -> Edit<T>,
    ) -> Result<Option<T>> {
        let mut known = last.get().map(|(rec, v)| (rec, Some(v)));
        let mut tries = cas_retries();
        while tries.next_attempt().await {
            let (mut rec, version) = match known.take() {
                Some((rec, Some(v))) => (rec, v),
                Some((_, None)) => return Ok(None),
                None => match self.load(key).await? {
                    Some(found) => found,
                    None => return Ok(None),
                },
            };
            let answer = match change(&mut rec) {
                Edit::Answer(answer) => return Ok(Some(answer)),
                Edit::Write(answer) => answer,
            };
            match self.put(key, &rec, Some(version)).await {
                Ok(Ok(v)) => {
                    last.set(rec, v);
                    return Ok(Some(answer));
                }
                Ok(Err(current)) => {
                    last.clear();
                    known = Some(current);
                }
                Err(e) => {
                    last.clear();
                    return Err(e);
                }
            }
        }
        Err(lost_races(task, what))
    }

    pub(super) async fn record_end(
        &self,
        claim: &Claim,
        outcome: std::result::Result<(), String>,
        cancelled: bool,
        last: &LastWrite,
    ) -> Result<bool> {
        let key = Self::key(&claim.task)?;
        let ended = match (&outcome, cancelled) {
            (_, true) => Outcome::Cancelled,
            (Ok(()), false) => Outcome::Ok,
            (Err(e), false) => Outcome::Error(e.clone()),
        };

        let mine = RunInfo {
            period: claim.period,
            holder: self.holder.as_str().to_owned(),
            token: claim.token,
            started_at_ms: claim.started_at_ms,
            finished_at_ms: Some(self.clock.now_ms()),
            outcome: Some(outcome),
        };
        let mut entry = None;
        let recorded = self
            .edit(
                &key,
                last,
                &claim.task,
                "recording the end of a run",
                |rec| {
                    let mut runs = rec.take_runs();
                    let found = runs.iter().position(|r| r.token == claim.token);
                    if let Some(i) = found {
                        runs.remove(i);
                    }
                    rec.put_runs(runs);
                    if found.is_none() {
                        // Same period in progress under another token: taken over; the new
                        // holder records it.
                        if rec.runs_in_progress().any(|r| r.period == claim.period) {
                            return Edit::Answer(false);
                        }
                        match &rec.last_run {
                            // Already recorded (an earlier attempt whose answer was lost).
                            Some(l) if l.token == claim.token && l.finished_at_ms.is_some() => {
                                return Edit::Answer(true)
                            }
                            // The same period ended under another token: it was taken over.
                            Some(l) if l.period == claim.period && l.token != claim.token => {
                                return Edit::Answer(false)
                            }
                            // A later period has already ended: keep it as the last run.
                            Some(l) if l.period > claim.period => return Edit::Answer(true),
                            // Recorded as abandoned by another process (at most once): it did end.
                            _ => {}
                        }
                    }
                    entry = Some(rec.history_entry(
                        &mine,
                        ended.clone(),
                        mine.finished_at_ms.unwrap_or(mine.started_at_ms),
                    ));
                    rec.set_last_run(mine.clone());
                    Edit::Write(true)
                },
            )
            .await?;
        if recorded == Some(true) {
            if let Some(entry) = entry {
                self.add_history(&claim.task, vec![entry]).await;
            }
        }
        Ok(recorded.unwrap_or(false))
    }

    pub(super) async fn beat(&self, claim: &Claim, last: &LastWrite) -> Result<bool> {
        let key = Self::key(&claim.task)?;
        let at_ms = self.clock.now_ms();
        let alive = self
            .edit(&key, last, &claim.task, "a heartbeat", |rec| {
                if !rec.runs_in_progress().any(|r| r.token == claim.token) {
                    // Taken over (same period, another token), or abandoned: not ours any more.
                    return Edit::Answer(false);
                }
                if !rec.overlapping.is_empty()
                    || rec.heartbeats.iter().any(|h| h.token == claim.token)
                {
                    match rec.heartbeats.iter_mut().find(|h| h.token == claim.token) {
                        Some(h) => {
                            h.beats += 1;
                            h.at_ms = at_ms;
                        }
                        None => rec.heartbeats.push(Heartbeat {
                            token: claim.token,
                            beats: 1,
                            at_ms,
                        }),
                    }
                }
                // Rewriting the record gives it a new version: that is the heartbeat of a run
                // that never overlapped another.
                Edit::Write(true)
            })
            .await?;
        Ok(alive.unwrap_or(false))
    }
}
