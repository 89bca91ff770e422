//! The claim decision: given a task, the time, one view of its record and which of its runs
//! in progress this process has seen dead, what to write. Pure: no I/O, no lock, no clock
//! read, so the property tests (`plan/tests.rs`) and the protocol model (`tests/model.rs`)
//! call the code that runs. The scheduler reads the record, observes the runs' signs of
//! life (`crate::liveness`), calls [`plan`], and writes what it decided by compare-and-swap.

use std::time::Instant;

use larder_cache_api::Version;

use super::record::{HistoryEntry, Outcome, RunInfo, TaskRecord, MAX_RUNS_IN_PROGRESS};
use super::spec::{Claim, RunMode, TaskSpec};
use crate::token;

/// Which runs in progress of a record the deciding process has seen unchanged for a whole
/// lease, by its own monotonic clock (never its own runs), as the caller observed them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadRuns {
    /// Their tokens. Tokens that are not runs in progress of the record are ignored.
    pub tokens: Vec<u64>,
    /// When the first of the other runs (not this process's) would have been seen unchanged
    /// for a whole lease: the time to look again.
    pub recheck: Option<Instant>,
}

/// A record to write by compare-and-swap, with the claim it makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// The record as it is to be stored.
    pub record: TaskRecord,
    /// The period claimed, or the run taken over.
    pub claim: Claim,
    /// `true`: a dead run taken over (same period, higher token; at-least-once only);
    /// `false`: a period claimed for the first time.
    pub takeover: bool,
    /// The runs this write ends (taken over, or recorded as abandoned), for the task's
    /// history once the write succeeded.
    pub ended: Vec<HistoryEntry>,
}

/// The decision about one task on one view of its record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// What to write, if anything.
    pub write: Option<Write>,
    /// When a run in progress (another process's) that matters here would have been seen
    /// unchanged for a whole lease: look at it again then.
    pub watch: Option<Instant>,
    /// A due period waits for runs in progress to end.
    pub blocked: bool,
    /// The task is paused: no period is claimed.
    pub paused: bool,
}

/// The decision about `task` for the process `holder` at `now` (its wall clock, ms) on the
/// record `rec` (with `version`; `None`: absent, and `rec` is the default), given the runs
/// in progress it has seen dead (`dead`): the claim of the next due period, or the takeover
/// of a run whose process died (at-least-once), and when to look again at runs in progress.
///
/// The rules (checked by the property tests in `plan/tests.rs`):
///
/// * a period is claimed only if the task's [`MisfirePolicy`](crate::MisfirePolicy) names it
///   (the first of [`periods_to_claim`](crate::MisfirePolicy::periods_to_claim)), so it is
///   always after the last claimed period, and the record's last claimed period becomes it;
/// * every write carries a token above the record's (a record created now: a time-based
///   one, see `token`);
/// * only a run reported dead is taken over, only in [`RunMode::AtLeastOnce`], the oldest
///   first, for the same period; the others go on untouched;
/// * at most once, a dead run is recorded as abandoned, never run again (written only with
///   a claim);
/// * no period is claimed while [`MAX_RUNS_IN_PROGRESS`] runs are in progress, or while any
///   is unless the task allows overlap: the period (or request) is then `blocked`;
/// * no period is claimed while the record says the task is paused (`paused`);
/// * with no period due, the oldest run-now request waiting is claimed (while paused, only a
///   forced one), as a run of its own: `last_period` is unchanged, the run's period is `now`.
pub fn plan(
    task: &TaskSpec,
    holder: &str,
    now: i64,
    mut rec: TaskRecord,
    version: Option<Version>,
    dead: &DeadRuns,
) -> Decision {
    // An at-least-once run is watched for as long as it goes on; an at-most-once run only
    // while it holds up a due period (below).
    let mut decision = Decision {
        watch: dead.recheck.filter(|_| task.mode == RunMode::AtLeastOnce),
        ..Decision::default()
    };
    let is_dead = |r: &RunInfo| dead.tokens.contains(&r.token);
    let mut ended = Vec::new();
    if rec.runs_in_progress().any(is_dead) {
        let mut runs = rec.take_runs();
        if task.mode == RunMode::AtLeastOnce {
            // Take the oldest dead run over: same period, higher token. The live runs go on
            // untouched.
            let i = runs.iter().position(is_dead).unwrap_or_default();
            let old = runs[i].token;
            let ended = vec![rec.history_entry(&runs[i], Outcome::TakenOver, now)];
            rec.token = token::after(rec.token);
            // A run-now request's run is taken over as its request's.
            let trigger = rec
                .requests
                .iter_mut()
                .find(|r| r.token == Some(old))
                .map(|r| {
                    r.token = Some(rec.token);
                    r.id.clone()
                });
            let claim = Claim {
                task: task.name.clone(),
                period: runs[i].period,
                token: rec.token,
                started_at_ms: now,
                trigger,
            };
            runs[i] = started(claim.period, holder, &claim, now);
            let mut write = Write::of(rec, runs, claim, true);
            write.ended = ended;
            decision.write = Some(write);
            return decision;
        }
        // At most once: a dead run is recorded as abandoned, never repeated.
        let (gone, alive): (Vec<RunInfo>, Vec<RunInfo>) = runs.into_iter().partition(is_dead);
        for run in gone {
            ended.push(rec.history_entry(&run, Outcome::Abandoned, now));
            rec.set_last_run(RunInfo {
                finished_at_ms: None,
                outcome: Some(Err("abandoned: its process stopped heartbeating".into())),
                ..run
            });
        }
        rec.put_runs(alive);
    }
    // Paused by an operator: no period starts (the takeover above continues a period
    // claimed before; an abandoned run is recorded with the next claim), only a forced
    // run-now request.
    decision.paused = rec.paused.is_some();
    // The oldest period the task's misfire policy still runs, else the oldest run-now
    // request waiting: a period is due at a time, a request can wait.
    let period = task
        .misfire
        .periods_to_claim(&task.schedule, rec.last_period, now)
        .next()
        .filter(|_| !decision.paused);
    let request = rec
        .requests
        .iter()
        .position(|r| r.token.is_none() && (r.forced || !decision.paused));
    if period.is_none() && request.is_none() {
        return decision;
    }
    let in_progress = rec.runs_in_progress().count();
    // (Dead runs recorded as abandoned above are written only with a claim; until then
    // every process sees them as they are.)
    if (in_progress > 0 && !task.allow_overlap) || in_progress >= MAX_RUNS_IN_PROGRESS {
        decision.blocked = true;
        decision.watch = dead.recheck;
        return decision;
    }
    // A record created now (first claim, or the store lost it) starts at a time-based
    // token, above every token of a lost record (see `token`).
    rec.token = token::next(version.map(|_| rec.token), now);
    let Some(period) = period else {
        // A run-now request: a run of its own, named by the time it starts; the schedule's
        // periods are untouched.
        let r = &mut rec.requests[request.unwrap_or_default()];
        r.token = Some(rec.token);
        let claim = Claim {
            task: task.name.clone(),
            period: now,
            token: rec.token,
            started_at_ms: now,
            trigger: Some(r.id.clone()),
        };
        let mut runs = rec.take_runs();
        runs.push(started(now, holder, &claim, now));
        let mut write = Write::of(rec, runs, claim, false);
        write.ended = ended;
        decision.write = Some(write);
        return decision;
    };
    rec.last_period = Some(period);
    let claim = Claim {
        task: task.name.clone(),
        period,
        token: rec.token,
        started_at_ms: now,
        trigger: None,
    };
    let mut runs = rec.take_runs();
    runs.push(started(period, holder, &claim, now));
    let mut write = Write::of(rec, runs, claim, false);
    write.ended = ended;
    decision.write = Some(write);
    decision
}

#[cfg(test)]
mod tests;

/// A run of `period` by `holder` that starts now under `claim`'s token.
fn started(period: i64, holder: &str, claim: &Claim, now: i64) -> RunInfo {
    RunInfo {
        period,
        holder: holder.to_owned(),
        token: claim.token,
        started_at_ms: now,
        finished_at_ms: None,
        outcome: None,
    }
}

impl Write {
    /// The write of `rec` with `runs` as its runs in progress, for `claim`.
    fn of(mut rec: TaskRecord, runs: Vec<RunInfo>, claim: Claim, takeover: bool) -> Self {
        rec.put_runs(runs);
        Write {
            record: rec,
            claim,
            takeover,
            ended: Vec::new(),
        }
    }
}
