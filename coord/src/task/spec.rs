//! What a task is and how a scheduler is set up: the public configuration, and what a run
//! is given.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::record::{Pause, RunInfo};
use crate::lease::{Durability, LeaseConfig};
use crate::misfire::MisfirePolicy;
use crate::schedule::Schedule;

/// What happens to a run whose process died, or lost its heartbeat, before finishing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunMode {
    /// Never run a period twice; a run cut short by a crash is not repeated (another process
    /// records it as abandoned once its heartbeat has stopped for a whole lease).
    AtMostOnce,
    /// A run whose holder died (its heartbeat stopped for a whole lease, as seen by another
    /// process's monotonic clock) is taken over and run again for the same period, with a
    /// higher token; so a period may run more than once, and its runs must be idempotent or
    /// fenced by the token.
    ///
    /// What holds, and the tests that check it (`tests/tests/coord_runs.rs`):
    ///
    /// * The runner stops a run it may lose **before** anyone can take it over: when no
    ///   heartbeat has succeeded for the lease's `renew_deadline` (counted from the start of
    ///   the last successful one, or of the claim), or a heartbeat finds the run taken over,
    ///   the run's [`RunContext::cancel`] fires at once, and the run's future is dropped
    ///   when it returns or, at the latest, halfway from then to the end of the lease; another
    ///   process takes over only after seeing the record unchanged for a whole lease, which
    ///   cannot begin before that last proof of life (tests
    ///   `redis_a_run_whose_heartbeats_fail_is_cancelled_before_it_is_taken_over` and
    ///   `postgres_…`: heartbeats fail for two leases; the cancellation, then the drop, come
    ///   before the other process starts the period). This assumes, as leases do, that
    ///   pauses and clock drift stay within `lease - renew_deadline`. A run so stopped
    ///   records nothing: it is taken over and run again.
    /// * The end of a run is recorded by [`Scheduler::finish`](crate::Scheduler::finish), retried with backoff for up to
    ///   a lease until it is recorded or the run is found taken over, so a transient failure
    ///   does not leave the finished run `running` to be run again
    ///   (`a_finish_that_fails_once_is_retried_and_the_run_is_not_left_running`).
    /// * Runs that overlap ([`TaskSpec::allow_overlap`]) are tracked one by one, each with its
    ///   own heartbeat, so a dead one is taken over once while the live ones go on
    ///   (`a_dead_overlapping_run_is_taken_over_once_and_the_live_one_is_not`,
    ///   `a_dead_run_is_taken_over_while_later_periods_come_and_go`).
    AtLeastOnce,
}

/// What a run gets.
#[derive(Debug, Clone)]
pub struct RunContext {
    /// The task name, as given to [`TaskSpec::new`].
    pub task: String,
    /// The period being run: its start, in milliseconds since the Unix epoch (UTC), the same
    /// for every process that sees this period (`chrono::DateTime::from_timestamp_millis`
    /// turns it into a date).
    pub period: i64,
    /// The fencing token of this run: pass it to fenced writes. It grows with every claim of
    /// the task, so a later run always carries a larger one.
    pub token: u64,
    /// The id of the run-now request this run answers (`None`: a period of the schedule;
    /// then `period` is the time the request was claimed).
    pub trigger: Option<String>,
    /// Cancelled when this process may lose the run, before anyone else can take it over:
    /// when no heartbeat of the run has succeeded for the lease's `renew_deadline` (from the
    /// start of the last one that did, or of the claim), or a heartbeat finds that another
    /// process took the run over or recorded it as abandoned. Also cancelled, for a scheduler
    /// started with [`Scheduler::spawn`](crate::Scheduler::spawn), when it is stopped.
    ///
    /// After a loss the run is not recorded (it is taken over, or recorded as abandoned). A
    /// run found taken over is dropped at once; otherwise its future is dropped once it
    /// returns or, at the latest, halfway from the renew deadline to the end of the lease
    /// (counted from the same start), before the earliest moment another process may take
    /// it over. Work the job spawned must watch this token itself. Tests:
    /// `coord_runs::redis_a_run_whose_heartbeats_fail_is_cancelled_before_it_is_taken_over`
    /// and `coord_runs::postgres_a_run_whose_heartbeats_fail_is_cancelled_before_it_is_taken_over`
    /// (heartbeats failing for two leases: the token fires, then the run is dropped, before
    /// another process starts the period); see [`RunMode::AtLeastOnce`] for what holds.
    pub cancel: CancellationToken,
}

pub(crate) type Job = Arc<
    dyn Fn(RunContext) -> Pin<Box<dyn Future<Output = std::result::Result<(), String>> + Send>>
        + Send
        + Sync,
>;

/// A periodic task.
#[derive(Clone)]
pub struct TaskSpec {
    pub(crate) name: String,
    pub(crate) schedule: Schedule,
    pub(crate) mode: RunMode,
    pub(crate) misfire: MisfirePolicy,
    pub(crate) allow_overlap: bool,
    pub(crate) pinned_to: Option<Vec<String>>,
    pub(crate) history: usize,
    pub(crate) job: Job,
}

impl fmt::Debug for TaskSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskSpec")
            .field("name", &self.name)
            .field("schedule", &self.schedule)
            .field("mode", &self.mode)
            .field("misfire", &self.misfire)
            .field("allow_overlap", &self.allow_overlap)
            .field("pinned_to", &self.pinned_to)
            .field("history", &self.history)
            .finish()
    }
}

impl TaskSpec {
    /// A task `name` run on `schedule` by `job` (at-most-once, missed periods handled by
    /// [`MisfirePolicy::RunLatest`], no overlapping runs, any process).
    pub fn new<F, Fut>(name: &str, schedule: Schedule, job: F) -> Self
    where
        F: Fn(RunContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<(), String>> + Send + 'static,
    {
        TaskSpec {
            name: name.to_owned(),
            schedule,
            mode: RunMode::AtMostOnce,
            misfire: MisfirePolicy::default(),
            allow_overlap: false,
            pinned_to: None,
            history: super::record::DEFAULT_HISTORY,
            job: Arc::new(move |ctx| Box::pin(job(ctx))),
        }
    }

    /// The run mode.
    pub fn mode(mut self, mode: RunMode) -> Self {
        self.mode = mode;
        self
    }

    /// What to do about periods that started while no process could claim them (see
    /// [`MisfirePolicy`]; default [`RunLatest`](MisfirePolicy::RunLatest)).
    pub fn misfire(mut self, policy: MisfirePolicy) -> Self {
        self.misfire = policy;
        self
    }

    /// Let a new period start while the previous run is still going. Each run in progress is
    /// then tracked in the task's record with its own heartbeat, so a dead one is taken over
    /// (at least once) or recorded as abandoned (at most once) while the live ones go on; no
    /// new period is claimed while [`MAX_RUNS_IN_PROGRESS`](crate::MAX_RUNS_IN_PROGRESS) runs are in progress.
    pub fn allow_overlap(mut self, yes: bool) -> Self {
        self.allow_overlap = yes;
        self
    }

    /// How many ended runs the task's history keeps ([`Scheduler::history`](crate::Scheduler::history);
    /// default [`DEFAULT_HISTORY`](crate::DEFAULT_HISTORY)): 1 to
    /// [`MAX_HISTORY`](crate::MAX_HISTORY), else [`Scheduler::with_task`](crate::Scheduler::with_task)
    /// refuses the task with a `Config` error. The history is a record of its own beside the
    /// task's (so versions that read only the task record keep reading it), appended after
    /// the write that ends a run: one read and one write more per run.
    pub fn history(mut self, runs: usize) -> Self {
        self.history = runs;
        self
    }

    /// Only these processes (by [`SchedulerConfig::process_name`]) may run it.
    pub fn pinned_to<I: IntoIterator<Item = S>, S: Into<String>>(mut self, names: I) -> Self {
        self.pinned_to = Some(names.into_iter().map(Into::into).collect());
        self
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Whether this process takes part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Candidacy {
    /// Runs any task not pinned elsewhere (the zero-configuration default).
    #[default]
    Always,
    /// Never runs tasks (a web-only process, say); it can still read the status.
    Never,
}

/// Settings of a [`Scheduler`](crate::Scheduler).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SchedulerConfig {
    /// This process's name for pinning (default: the host name).
    pub process_name: String,
    /// Whether it runs tasks.
    pub candidacy: Candidacy,
    /// How soon an attempt that failed (the store did not answer) is tried again. It does
    /// not set how often the store is read: a [`spawn`](crate::Scheduler::spawn)ed scheduler
    /// sleeps until each task's next period (see the crate docs, "Cost").
    pub poll: Duration,
    /// The most a claim attempt is delayed past the start of its period, so that processes do
    /// not all reach the store in the same millisecond (default 250 ms; never more than a
    /// tenth of the period). The process that wrote the task's record last (normally the one
    /// that ran the last period) goes at once; the others wait between half of this and all
    /// of it, at random, so they find the period claimed.
    pub jitter: Duration,
    /// Heartbeat and abandonment timing of runs (its `lease`: how long a run's record must
    /// stay unchanged before it counts as abandoned), and the [`Durability`] required of the
    /// store.
    pub lease: LeaseConfig,
    /// How often a [`spawn`](crate::Scheduler::spawn)ed scheduler reads the deployment's
    /// run-now doorbell (default 5 s; `None`: never, and run-now requests wait for the next
    /// period). The delay of a run-now request; it costs one read per process per check,
    /// whatever the number of tasks (20 processes at 5 s: 4 reads a second), and only
    /// processes with a task whose period is longer than the check read it (a task with
    /// shorter periods finds its requests at its next period's claim attempt).
    pub request_check: Option<Duration>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            process_name: std::env::var("HOSTNAME").unwrap_or_else(|_| "process".into()),
            candidacy: Candidacy::Always,
            poll: Duration::from_millis(500),
            jitter: Duration::from_millis(250),
            lease: LeaseConfig::default(),
            request_check: Some(Duration::from_secs(5)),
        }
    }
}

impl SchedulerConfig {
    /// Sets the process name.
    pub fn process_name(mut self, name: impl Into<String>) -> Self {
        self.process_name = name.into();
        self
    }
    /// Sets the candidacy.
    pub fn candidacy(mut self, c: Candidacy) -> Self {
        self.candidacy = c;
        self
    }
    /// Sets how soon a failed attempt is retried.
    pub fn poll(mut self, d: Duration) -> Self {
        self.poll = d;
        self
    }
    /// Sets the most a claim attempt is delayed past the start of its period.
    pub fn jitter(mut self, d: Duration) -> Self {
        self.jitter = d;
        self
    }
    /// Sets the run lease timing (and the [`Durability`] it carries).
    pub fn lease(mut self, l: LeaseConfig) -> Self {
        self.lease = l;
        self
    }
    /// Sets how often the run-now doorbell is read (`None`: never).
    pub fn request_check(mut self, every: Option<Duration>) -> Self {
        self.request_check = every;
        self
    }
    /// Sets the [`Durability`] required of the store (kept in [`lease`](Self::lease)).
    pub fn durability(mut self, d: Durability) -> Self {
        self.lease.durability = d;
        self
    }
}

/// A claimed period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The task.
    pub task: String,
    /// The period.
    pub period: i64,
    /// The run's token.
    pub token: u64,
    /// When it was claimed (this process's clock, ms).
    pub started_at_ms: i64,
    /// The run-now request it answers (`None`: a period of the schedule).
    pub trigger: Option<String>,
}

/// The status of a task, for operators.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TaskStatus {
    /// The task.
    pub name: String,
    /// The highest period claimed.
    pub last_period: Option<i64>,
    /// The current token.
    pub token: u64,
    /// The run in progress (the latest, if several are).
    pub running: Option<RunInfo>,
    /// Earlier runs still in progress (tasks that allow overlap), oldest first.
    pub overlapping: Vec<RunInfo>,
    /// The last run that ended.
    pub last_run: Option<RunInfo>,
    /// When the next period starts (ms since the epoch).
    pub next_due_ms: Option<i64>,
    /// Who paused the task and when, while it is paused.
    pub paused: Option<Pause>,
}
