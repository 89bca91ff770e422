//! Periodic tasks claimed once per period by compare-and-swap.
//!
//! * `spec`: what a task is and how a scheduler is set up (the public configuration);
//! * `record`: the stored state of a task and the layouts it is stored in;
//! * `plan`: the claim decision, a pure function of the task, the time, the record and the
//!   runs seen dead (the protocol model calls it);
//! * `store`: the reads and compare-and-swap writes of a record, and `last_write`: the record
//!   as this process last wrote it (tried without a read);
//! * `runner`: a run beside its heartbeats, and the loop of each task;
//! * this file: the [`Scheduler`], what it observes of runs in progress before it decides,
//!   and one claim attempt.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::clock::{Clock, SystemClock};
use crate::holder::HolderId;
use crate::lease::check_backend;
use crate::liveness::{Look, Watcher};
use larder_cache_api::{Cache, DynBackend, Error, ErrorKind, Key, Result, Version};

mod admin;
mod history;
mod last_write;
pub(crate) mod plan;
mod record;
mod runner;
mod spec;
mod store;

pub use admin::TaskAdmin;
pub use admin::MAX_REQUEST_ID;
pub use record::{
    Heartbeat, HistoryEntry, Outcome, Pause, RunInfo, RunRequest, TaskRecord, DEFAULT_HISTORY,
    MAX_ERROR_CHARS, MAX_HISTORY, MAX_REMEMBERED_REQUESTS, MAX_RUNS_IN_PROGRESS,
    MAX_WAITING_REQUESTS,
};
pub use spec::{Candidacy, Claim, RunContext, RunMode, SchedulerConfig, TaskSpec, TaskStatus};

use last_write::LastWrite;
use plan::{plan, DeadRuns};

/// What shows that a run in progress is alive: for a run that never overlapped another any
/// change of its record (its version), for one that did its own heartbeat count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sign {
    Record(Version),
    Beats(u64),
}

/// What one [`Scheduler::step`] did.
#[derive(Default)]
struct Step {
    /// The period it claimed (or the run it took over), with the instant before the write.
    claim: Option<(Claim, tokio::time::Instant)>,
    watch: Option<Instant>,
    blocked: bool,
}

/// How many times one step re-plans on the current record a lost compare-and-swap returned
/// (another process's write in between each time) before it waits for its next turn.
const REPLANS: usize = 8;

/// Runs periodic tasks across every process that shares the backend: each period is
/// claimed by one compare-and-swap on the task's last claimed period, so at most one
/// process claims a given period, and no leader is needed.
///
/// A [`spawn`](Scheduler::spawn)ed scheduler runs one loop per task. Each sleeps until its
/// task's next period begins, then makes one claim attempt. The process that wrote the
/// task's record last (normally the one that ran the last period) goes at once and tries its
/// compare-and-swap on the record as it wrote it, without a read; the others wait a random
/// [`jitter`](SchedulerConfig::jitter) and read the record once, which normally shows the
/// period claimed, and write only if it is still free. A process whose compare-and-swap
/// loses learns the new record from the conflict and does not try that period again.
/// Between periods a loop reads the store only to look again at a run in progress that it
/// may have to take over (an at-least-once run, or a run that holds up a due period), once
/// per lease; its own runs write their heartbeats and their end. Runs go on beside the
/// loop, so a slow run of one task never delays the claims of another (nor, with
/// [`TaskSpec::allow_overlap`], of its own). The crate docs ("Cost") give the figures.
pub struct Scheduler {
    cache: Cache,
    holder: HolderId,
    config: SchedulerConfig,
    clock: Arc<dyn Clock>,
    tasks: Vec<TaskSpec>,
    /// Per task and run token: the sign of life last seen, and since when.
    seen: Mutex<Watcher<(String, u64), Sign>>,
    /// The runs going on in this process (task, token): never judged dead by it.
    here: Mutex<HashSet<(String, u64)>>,
    /// The run history of each task as this process last wrote it.
    history: history::LastHistory,
}

impl fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scheduler")
            .field("holder", &self.holder)
            .field("config", &self.config)
            .field("tasks", &self.tasks)
            .finish()
    }
}

impl Scheduler {
    /// A scheduler on `backend`, which must offer linearizable CAS and keep its records
    /// (unless `config` accepts their loss: [`SchedulerConfig::durability`]).
    pub fn new(backend: DynBackend, holder: HolderId, config: SchedulerConfig) -> Result<Self> {
        check_backend(&backend, config.lease.durability)?;
        config.lease.validate()?;
        Ok(Scheduler {
            cache: Cache::new(backend),
            holder,
            config,
            clock: Arc::new(SystemClock),
            tasks: Vec::new(),
            seen: Mutex::new(Watcher::default()),
            here: Mutex::new(HashSet::new()),
            history: history::LastHistory::default(),
        })
    }

    /// Replaces the wall clock (tests inject a [`ManualClock`](crate::ManualClock)).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Adds a task.
    pub fn with_task(mut self, task: TaskSpec) -> Result<Self> {
        task.schedule.check()?;
        task.misfire.check()?;
        if task.history == 0 || task.history > record::MAX_HISTORY {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "task {:?}: a history of {} runs; it keeps 1 to {} runs",
                    task.name,
                    task.history,
                    record::MAX_HISTORY
                ),
            ));
        }
        Key::new(format!("larder:task:{}", task.name))?;
        if self.tasks.iter().any(|t| t.name == task.name) {
            return Err(Error::new(
                ErrorKind::Config,
                format!("task {:?} added twice", task.name),
            ));
        }
        self.tasks.push(task);
        Ok(self)
    }

    /// A handle that pauses and resumes this scheduler's tasks across the deployment
    /// (every scheduler that shares the store honours it before its next claim).
    pub fn admin(&self) -> TaskAdmin {
        TaskAdmin::of(self)
    }

    /// Pauses task `name` everywhere ([`TaskAdmin::pause`]); `by` says who.
    pub async fn pause(&self, name: &str, by: &str) -> Result<(Pause, bool)> {
        self.admin().pause(name, by).await
    }

    /// The last runs of task `name` that ended, oldest first ([`TaskAdmin::history`]).
    pub async fn history(&self, name: &str) -> Result<Vec<HistoryEntry>> {
        self.admin().history(name).await
    }

    /// Resumes task `name` everywhere ([`TaskAdmin::resume`]).
    pub async fn resume(&self, name: &str) -> Result<Option<Pause>> {
        self.admin().resume(name).await
    }

    /// Requests one run of task `name` now, across the deployment
    /// ([`TaskAdmin::run_now`]).
    pub async fn run_now(
        &self,
        name: &str,
        request_id: &str,
        by: &str,
        force: bool,
    ) -> Result<(RunRequest, bool)> {
        self.admin().run_now(name, request_id, by, force).await
    }

    /// This process's holder id.
    pub fn holder(&self) -> &HolderId {
        &self.holder
    }

    /// Whether `task`'s current period is longer than the run-now request check.
    fn rarer_than_request_check(&self, task: &TaskSpec) -> bool {
        let Some(check) = self.config.request_check else {
            return false;
        };
        let now = self.clock.now_ms();
        let period = task
            .schedule
            .period_at(now)
            .and_then(|p| task.schedule.next(p).map(|n| n.saturating_sub(p)));
        period.is_none_or(|ms| ms > check.as_millis() as i64)
    }

    fn eligible(&self, task: &TaskSpec) -> bool {
        self.config.candidacy == Candidacy::Always
            && task
                .pinned_to
                .as_ref()
                .is_none_or(|names| names.contains(&self.config.process_name))
    }

    /// The tokens of the runs in progress in `rec` whose sign of life this process has seen
    /// unchanged for a whole lease (by its own monotonic clock), oldest period first, and
    /// when the first of the others would have been (runs of this process are neither).
    /// Forgets what it saw of runs no longer in progress.
    fn dead_runs(&self, task: &str, rec: &TaskRecord, version: Version) -> DeadRuns {
        let tokens: Vec<u64> = rec.runs_in_progress().map(|r| r.token).collect();
        let here = self.here.lock();
        let mut seen = self.seen.lock();
        seen.retain(|(t, token)| t.as_str() != task || tokens.contains(token));
        let now = Instant::now();
        let mut dead = DeadRuns::default();
        for token in tokens {
            let id = (task.to_owned(), token);
            if here.contains(&id) {
                continue;
            }
            // A run switches from the first sign to the second at most once (when it first
            // overlaps another), which only restarts the wait.
            let sign = match rec.heartbeats.iter().find(|h| h.token == token) {
                Some(h) => Sign::Beats(h.beats),
                None => Sign::Record(version),
            };
            match seen.look(id, sign, now, self.config.lease.lease) {
                Look::Dead => dead.tokens.push(token),
                Look::AliveUntil(at) => {
                    dead.recheck = Some(dead.recheck.map_or(at, |r| r.min(at)));
                }
            }
        }
        dead
    }

    /// One claim attempt for `task`: decides on this process's own last write of the record
    /// if it has one, else on a read, and writes what the decision calls for. A lost
    /// compare-and-swap carries the record that won; the decision is taken again on it (no
    /// read), so a period another process claimed meanwhile is not tried again.
    async fn step(&self, task: &TaskSpec, last: &LastWrite) -> Result<Step> {
        let mut step = Step::default();
        if !self.eligible(task) {
            return Ok(step);
        }
        let key = Self::key(&task.name)?;
        let now = self.clock.now_ms();
        if task.schedule.period_at(now).is_none() {
            return Ok(step);
        }
        let (mut rec, mut version) = match last.get() {
            Some((rec, v)) => (rec, Some(v)),
            None => match self.load(&key).await? {
                Some((rec, v)) => (rec, Some(v)),
                None => (TaskRecord::default(), None),
            },
        };
        for _ in 0..REPLANS {
            let dead =
                version.map_or_else(DeadRuns::default, |v| self.dead_runs(&task.name, &rec, v));
            let decision = plan(task, self.holder.as_str(), now, rec, version, &dead);
            step.watch = decision.watch;
            step.blocked = decision.blocked;
            let Some(plan::Write {
                record: next,
                claim,
                ended,
                ..
            }) = decision.write
            else {
                break;
            };
            // Before the claim's write: nobody takes the run over within a lease of it.
            let claimed_at = tokio::time::Instant::now();
            match self.put(&key, &next, version).await {
                Ok(Ok(v)) => {
                    last.set(next, v);
                    self.here.lock().insert((claim.task.clone(), claim.token));
                    self.add_history(&task.name, ended).await;
                    step.claim = Some((claim, claimed_at));
                    break;
                }
                Ok(Err((current_rec, current_version))) => {
                    last.clear();
                    (rec, version) = (current_rec, current_version);
                }
                Err(e) => {
                    last.clear();
                    return Err(e);
                }
            }
        }
        Ok(step)
    }

    /// Tries to claim the next due period of `task`, or to take over a run of it whose
    /// process died (at-least-once): one read, then one compare-and-swap if something is
    /// due (another if that one loses to a write that left something due).
    pub async fn claim(&self, task: &TaskSpec) -> Result<Option<Claim>> {
        let step = self.step(task, &LastWrite::default()).await?;
        if let Some((claim, _)) = &step.claim {
            // Not run here (yet): the caller decides.
            self.here.lock().remove(&(claim.task.clone(), claim.token));
        }
        Ok(step.claim.map(|(claim, _)| claim))
    }

    /// Records the end of a claimed run and removes it from the runs in progress. Returns
    /// `false` (and records nothing) if the run was taken over by another process
    /// (at-least-once); a run that overlapped a later period's run is recorded as the last
    /// run only if no later run has ended. Idempotent: a retry after an answer that was lost
    /// finds the run already recorded and returns `true`.
    ///
    /// One attempt: an error (or losing every compare-and-swap race to other writers of the
    /// record) leaves it unknown whether the end was recorded; retry. The scheduler's own
    /// runs retry it with backoff for up to a lease.
    pub async fn finish(
        &self,
        claim: &Claim,
        outcome: std::result::Result<(), String>,
    ) -> Result<bool> {
        self.record_end(claim, outcome, false, &LastWrite::default())
            .await
    }
    /// Proves a run is alive (changes its record; while runs overlap, counts a heartbeat of
    /// this run in it) if it is still in progress as ours; `false` if another process has
    /// taken it over or recorded it as abandoned. An error leaves it unknown whether the
    /// heartbeat was recorded.
    pub async fn heartbeat(&self, claim: &Claim) -> Result<bool> {
        self.beat(claim, &LastWrite::default()).await
    }

    /// One pass: claims every due period of every task and runs it here, to completion,
    /// heartbeating meanwhile, one task after another. Returns the claims run. Tests call it
    /// to step a scheduler by hand; [`spawn`](Scheduler::spawn) runs the tasks on their own.
    pub async fn tick(&self) -> Result<Vec<Claim>> {
        self.tick_until(&CancellationToken::new()).await
    }

    /// The status of every task.
    pub async fn status(&self) -> Result<Vec<TaskStatus>> {
        let now = self.clock.now_ms();
        let mut out = Vec::new();
        for task in &self.tasks {
            let rec = self
                .load(&Self::key(&task.name)?)
                .await?
                .map(|(r, _)| r)
                .unwrap_or_default();
            let due = task
                .misfire
                .periods_to_claim(&task.schedule, rec.last_period, now)
                .next()
                .is_some();
            let next_due_ms = match task.schedule.period_at(now) {
                Some(_) if due => Some(now),
                Some(cur) => task.schedule.next(cur),
                None => None,
            };
            out.push(TaskStatus {
                name: task.name.clone(),
                last_period: rec.last_period,
                token: rec.token,
                running: rec.running,
                overlapping: rec.overlapping,
                last_run: rec.last_run,
                next_due_ms,
                paused: rec.paused,
            });
        }
        Ok(out)
    }

    /// Runs every task this process may run on the current runtime, each in a loop of its
    /// own, until the returned token is cancelled; then cancels the runs in progress and
    /// waits for them to end. Each loop sleeps until its task's next period (plus jitter),
    /// makes one claim attempt, and runs what it claimed beside the loop (see
    /// [`Scheduler`] for what it reads and writes). Errors are logged and the attempt is
    /// retried after [`poll`](SchedulerConfig::poll), never fatal.
    pub fn spawn(self: Arc<Self>) -> (CancellationToken, tokio::task::JoinHandle<()>) {
        let stop = CancellationToken::new();
        let s2 = stop.clone();
        let handle = tokio::spawn(async move {
            // So that operators' tools know the deployment's task names.
            let names: Vec<String> = self.tasks.iter().map(|t| t.name.clone()).collect();
            if let Err(e) = admin::register(&self.cache, &names).await {
                tracing::warn!(error = %e, "registering the task names failed");
            }
            let mut loops = tokio::task::JoinSet::new();
            let mut bells = Vec::new();
            for index in 0..self.tasks.len() {
                if self.eligible(&self.tasks[index]) {
                    let bell = Arc::new(tokio::sync::Notify::new());
                    // A task whose periods come at least as often as the doorbell would be
                    // read finds its requests at its next period's read anyway.
                    if self.rarer_than_request_check(&self.tasks[index]) {
                        bells.push(bell.clone());
                    }
                    loops.spawn(self.clone().task_loop(index, bell, s2.clone()));
                }
            }
            if !bells.is_empty() {
                loops.spawn(self.clone().doorbell(bells, s2.clone()));
            }
            while loops.join_next().await.is_some() {}
        });
        (stop, handle)
    }
}
