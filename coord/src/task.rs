//! Periodic tasks claimed once per period by compare-and-swap.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::clock::{Clock, SystemClock};
use crate::holder::HolderId;
use crate::lease::{check_backend, Durability, LeaseConfig};
use crate::misfire::MisfirePolicy;
use crate::schedule::Schedule;
use crate::token;
use larder_cache_api::codec::Postcard;
use larder_cache_api::{envelope, Cache, DynBackend, Error, ErrorKind, Key, Result, Version};

/// The retries of a read-and-compare-and-swap on a task record that lost a race.
fn cas_retries() -> larder_cache_api::retry::Backoff {
    larder_cache_api::retry::Backoff::new(Duration::from_micros(100), Duration::from_millis(20))
        .max_attempts(16)
}

/// The error of a read-and-compare-and-swap that lost every race to other writers.
fn lost_races(task: &str, what: &str) -> Error {
    Error::new(
        ErrorKind::Conflict,
        format!("{what} of task {task:?} lost every compare-and-swap race; its effect is unknown"),
    )
}

/// The heartbeat in flight, if any, with when it started; pending forever without one.
async fn in_flight<F: Future + Unpin>(
    pending: &mut Option<(tokio::time::Instant, F)>,
) -> (tokio::time::Instant, F::Output) {
    match pending {
        Some((started, f)) => (*started, f.await),
        None => std::future::pending().await,
    }
}

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
    /// * The end of a run is recorded by [`Scheduler::finish`], retried with backoff for up to
    ///   a lease until it is recorded or the run is found taken over, so a transient failure
    ///   does not leave the finished run `running` to be run again
    ///   (`a_finish_that_fails_once_is_retried_and_the_run_is_not_left_running`).
    /// * Runs that overlap ([`TaskSpec::allow_overlap`]) are tracked one by one, each with its
    ///   own heartbeat, so a dead one is taken over once while the live ones go on
    ///   (`a_dead_overlapping_run_is_taken_over_once_and_the_live_one_is_not`,
    ///   `a_dead_run_is_taken_over_while_later_periods_come_and_go`).
    AtLeastOnce,
}

/// One run of a task, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunInfo {
    /// The period (its start, ms since the epoch).
    pub period: i64,
    /// Who ran it.
    pub holder: String,
    /// Its fencing token.
    pub token: u64,
    /// Start (the runner's clock, ms).
    pub started_at_ms: i64,
    /// End, if it ended.
    pub finished_at_ms: Option<i64>,
    /// `Ok(())` or the error text, if it ended.
    pub outcome: Option<std::result::Result<(), String>>,
}

/// The heartbeat of one run in progress that has overlapped another: kept from the moment the
/// record first holds it beside another run until the run ends. (A run that never overlapped
/// has none: its heartbeat is any change of its record.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The run's token.
    pub token: u64,
    /// How many heartbeats the run has recorded since it first overlapped; another process
    /// takes it as dead once this has stayed unchanged for a whole lease.
    pub beats: u64,
    /// The runner's clock at its last heartbeat (ms; for display).
    pub at_ms: i64,
}

/// The most runs of one task in progress at once (tasks that allow overlap): no new period
/// is claimed while this many are, so the record stays small.
pub const MAX_RUNS_IN_PROGRESS: usize = 8;

/// The stored state of a task.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StoredTask", into = "StoredTask")]
pub struct TaskRecord {
    /// The highest period ever claimed (`None`: never).
    pub last_period: Option<i64>,
    /// Grows with every claim; never reset.
    pub token: u64,
    /// The latest run in progress (or abandoned by a dead process).
    pub running: Option<RunInfo>,
    /// The last run that ended.
    pub last_run: Option<RunInfo>,
    /// Earlier runs still in progress while `running` runs a later period (tasks that allow
    /// overlap), oldest first; with `running`, at most [`MAX_RUNS_IN_PROGRESS`].
    pub overlapping: Vec<RunInfo>,
    /// The heartbeats of the runs in progress that have overlapped another run (every run in
    /// progress while more than one is).
    pub heartbeats: Vec<Heartbeat>,
}

/// How a [`TaskRecord`] is stored: the four fields records have always had, then the
/// overlapping runs and their heartbeats only when there are any, so that the record of a
/// task whose runs never overlap keeps the layout that earlier versions read and write.
#[derive(Serialize, Deserialize)]
struct StoredTask {
    last_period: Option<i64>,
    token: u64,
    running: Option<RunInfo>,
    last_run: Option<RunInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    overlap: Option<Overlap>,
}

#[derive(Serialize, Deserialize)]
struct Overlap {
    runs: Vec<RunInfo>,
    heartbeats: Vec<Heartbeat>,
}

/// The layout without overlapping runs: what [`StoredTask`] looks like to a decoder when no
/// run overlaps (and what every earlier version wrote).
#[derive(Deserialize)]
struct StoredTaskV1 {
    last_period: Option<i64>,
    token: u64,
    running: Option<RunInfo>,
    last_run: Option<RunInfo>,
}

impl From<StoredTask> for TaskRecord {
    fn from(s: StoredTask) -> Self {
        let (overlapping, heartbeats) = s
            .overlap
            .map(|o| (o.runs, o.heartbeats))
            .unwrap_or_default();
        TaskRecord {
            last_period: s.last_period,
            token: s.token,
            running: s.running,
            last_run: s.last_run,
            overlapping,
            heartbeats,
        }
    }
}

impl From<StoredTaskV1> for TaskRecord {
    fn from(s: StoredTaskV1) -> Self {
        TaskRecord {
            last_period: s.last_period,
            token: s.token,
            running: s.running,
            last_run: s.last_run,
            overlapping: Vec::new(),
            heartbeats: Vec::new(),
        }
    }
}

impl From<TaskRecord> for StoredTask {
    fn from(r: TaskRecord) -> Self {
        let overlap = (!r.overlapping.is_empty() || !r.heartbeats.is_empty()).then_some(Overlap {
            runs: r.overlapping,
            heartbeats: r.heartbeats,
        });
        StoredTask {
            last_period: r.last_period,
            token: r.token,
            running: r.running,
            last_run: r.last_run,
            overlap,
        }
    }
}

impl TaskRecord {
    /// The runs in progress, oldest period first.
    pub fn runs_in_progress(&self) -> impl Iterator<Item = &RunInfo> {
        self.overlapping.iter().chain(self.running.iter())
    }

    fn take_runs(&mut self) -> Vec<RunInfo> {
        let mut runs = std::mem::take(&mut self.overlapping);
        runs.extend(self.running.take());
        runs
    }

    /// Stores `runs` as the runs in progress: the latest period in `running`, the others in
    /// `overlapping`. Heartbeats are kept for these runs only; while there are two or more,
    /// each has one, so that another run's activity never passes for its own.
    fn put_runs(&mut self, mut runs: Vec<RunInfo>) {
        runs.sort_by_key(|r| (r.period, r.token));
        self.heartbeats
            .retain(|h| runs.iter().any(|r| r.token == h.token));
        if runs.len() > 1 {
            for r in &runs {
                if !self.heartbeats.iter().any(|h| h.token == r.token) {
                    self.heartbeats.push(Heartbeat {
                        token: r.token,
                        beats: 0,
                        at_ms: r.started_at_ms,
                    });
                }
            }
        }
        self.running = runs.pop();
        self.overlapping = runs;
    }

    /// Records `run` as the last run that ended, unless a later period has already ended.
    fn set_last_run(&mut self, run: RunInfo) {
        if self
            .last_run
            .as_ref()
            .is_none_or(|l| l.period <= run.period)
        {
            self.last_run = Some(run);
        }
    }
}

/// What a run gets.
#[derive(Debug, Clone)]
pub struct RunContext {
    /// The task name.
    pub task: String,
    /// The period being run.
    pub period: i64,
    /// The fencing token of this run: pass it to fenced writes.
    pub token: u64,
    /// Cancelled when this process may lose the run, before anyone else can take it over:
    /// when no heartbeat of the run has succeeded for the lease's `renew_deadline` (from the
    /// start of the last one that did, or of the claim), or a heartbeat finds that another
    /// process took the run over or recorded it as abandoned. Also cancelled, for a scheduler
    /// started with [`Scheduler::spawn`], when it is stopped.
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

type Job = Arc<
    dyn Fn(RunContext) -> Pin<Box<dyn Future<Output = std::result::Result<(), String>> + Send>>
        + Send
        + Sync,
>;

/// A periodic task.
#[derive(Clone)]
pub struct TaskSpec {
    name: String,
    schedule: Schedule,
    mode: RunMode,
    misfire: MisfirePolicy,
    allow_overlap: bool,
    pinned_to: Option<Vec<String>>,
    job: Job,
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
    /// new period is claimed while [`MAX_RUNS_IN_PROGRESS`] runs are in progress.
    pub fn allow_overlap(mut self, yes: bool) -> Self {
        self.allow_overlap = yes;
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

/// Settings of a [`Scheduler`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SchedulerConfig {
    /// This process's name for pinning (default: the host name).
    pub process_name: String,
    /// Whether it runs tasks.
    pub candidacy: Candidacy,
    /// How often due periods are checked.
    pub poll: Duration,
    /// Heartbeat and abandonment timing of runs (its `lease`: how long a run's record must
    /// stay unchanged before it counts as abandoned), and the [`Durability`] required of the
    /// store.
    pub lease: LeaseConfig,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            process_name: std::env::var("HOSTNAME").unwrap_or_else(|_| "process".into()),
            candidacy: Candidacy::Always,
            poll: Duration::from_millis(500),
            lease: LeaseConfig::default(),
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
    /// Sets the poll interval.
    pub fn poll(mut self, d: Duration) -> Self {
        self.poll = d;
        self
    }
    /// Sets the run lease timing (and the [`Durability`] it carries).
    pub fn lease(mut self, l: LeaseConfig) -> Self {
        self.lease = l;
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
}

/// What shows that a run in progress is alive: for a run that never overlapped another any
/// change of its record (its version), for one that did its own heartbeat count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sign {
    Record(Version),
    Beats(u64),
}

#[derive(Debug)]
struct Seen {
    sign: Sign,
    since: Instant,
}

/// Runs periodic tasks across every process that shares the backend: each period is
/// claimed by one compare-and-swap on the task's last claimed period, so at most one
/// process claims a given period, and no leader is needed.
pub struct Scheduler {
    cache: Cache,
    holder: HolderId,
    config: SchedulerConfig,
    clock: Arc<dyn Clock>,
    tasks: Vec<TaskSpec>,
    /// Per task and run token: the sign of life last seen, and since when.
    seen: Mutex<HashMap<(String, u64), Seen>>,
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
            seen: Mutex::new(HashMap::new()),
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

    /// This process's holder id.
    pub fn holder(&self) -> &HolderId {
        &self.holder
    }

    fn key(name: &str) -> Result<Key> {
        Key::new(format!("larder:task:{name}"))
    }

    fn eligible(&self, task: &TaskSpec) -> bool {
        self.config.candidacy == Candidacy::Always
            && task
                .pinned_to
                .as_ref()
                .is_none_or(|names| names.contains(&self.config.process_name))
    }

    /// The record of a task with its version. Records written before runs could overlap in
    /// them (and records of tasks whose runs do not overlap) have four fields; they are read
    /// as such when the longer layout does not fit.
    async fn load(&self, key: &Key) -> Result<Option<(TaskRecord, Version)>> {
        let Some(entry) = self.cache.backend().get(key).await? else {
            return Ok(None);
        };
        let rec = match envelope::open::<_, TaskRecord>(&Postcard, &entry.value) {
            Ok(rec) => rec,
            Err(e) => match envelope::open::<_, StoredTaskV1>(&Postcard, &entry.value) {
                Ok(old) => old.into(),
                Err(_) => return Err(e),
            },
        };
        Ok(Some((rec, entry.version)))
    }

    /// The tokens of the runs in progress in `rec` whose sign of life this process has seen
    /// unchanged for a whole lease (by its own monotonic clock), oldest period first. Forgets
    /// what it saw of runs no longer in progress.
    fn dead_runs(&self, task: &str, rec: &TaskRecord, version: Version) -> Vec<u64> {
        let tokens: Vec<u64> = rec.runs_in_progress().map(|r| r.token).collect();
        let mut seen = self.seen.lock();
        seen.retain(|(t, token), _| t.as_str() != task || tokens.contains(token));
        let mut dead = Vec::new();
        for token in tokens {
            // A run switches from the first sign to the second at most once (when it first
            // overlaps another), which only restarts the wait.
            let sign = match rec.heartbeats.iter().find(|h| h.token == token) {
                Some(h) => Sign::Beats(h.beats),
                None => Sign::Record(version),
            };
            match seen.get(&(task.to_owned(), token)) {
                Some(s) if s.sign == sign => {
                    if s.since.elapsed() >= self.config.lease.lease {
                        dead.push(token);
                    }
                }
                _ => {
                    seen.insert(
                        (task.to_owned(), token),
                        Seen {
                            sign,
                            since: Instant::now(),
                        },
                    );
                }
            }
        }
        dead
    }

    /// Tries to claim the next due period of `task`, or to take over a run of it whose
    /// process died (at-least-once).
    pub async fn claim(&self, task: &TaskSpec) -> Result<Option<Claim>> {
        if !self.eligible(task) {
            return Ok(None);
        }
        let key = Self::key(&task.name)?;
        let now = self.clock.now_ms();
        if task.schedule.period_at(now).is_none() {
            return Ok(None);
        }
        let (mut rec, version) = match self.load(&key).await? {
            Some((r, v)) => (r, Some(v)),
            None => (TaskRecord::default(), None),
        };
        let me = self.holder.as_str().to_owned();
        let dead = version.map_or_else(Vec::new, |v| self.dead_runs(&task.name, &rec, v));
        if !dead.is_empty() {
            let mut runs = rec.take_runs();
            if task.mode == RunMode::AtLeastOnce {
                // Take the oldest dead run over: same period, higher token. The live runs go
                // on untouched.
                let i = runs
                    .iter()
                    .position(|r| r.token == dead[0])
                    .unwrap_or_default();
                rec.token = token::after(rec.token);
                let claim = Claim {
                    task: task.name.clone(),
                    period: runs[i].period,
                    token: rec.token,
                    started_at_ms: now,
                };
                runs[i] = RunInfo {
                    period: claim.period,
                    holder: me,
                    token: claim.token,
                    started_at_ms: now,
                    finished_at_ms: None,
                    outcome: None,
                };
                rec.put_runs(runs);
                return self.write_claim(&key, rec, version, claim).await;
            }
            // At most once: a dead run is recorded as abandoned, never repeated.
            let (gone, alive): (Vec<RunInfo>, Vec<RunInfo>) =
                runs.into_iter().partition(|r| dead.contains(&r.token));
            for run in gone {
                rec.set_last_run(RunInfo {
                    finished_at_ms: None,
                    outcome: Some(Err("abandoned: its process stopped heartbeating".into())),
                    ..run
                });
            }
            rec.put_runs(alive);
        }
        let in_progress = rec.runs_in_progress().count();
        // (Dead runs recorded as abandoned above are written only with a claim; until then
        // every process sees them as they are.)
        if (in_progress > 0 && !task.allow_overlap) || in_progress >= MAX_RUNS_IN_PROGRESS {
            return Ok(None);
        }
        // The oldest period the task's misfire policy still runs.
        let Some(period) = task
            .misfire
            .periods_to_claim(&task.schedule, rec.last_period, now)
            .next()
        else {
            return Ok(None);
        };
        rec.last_period = Some(period);
        // A record created now (first claim, or the store lost it) starts at a time-based
        // token, above every token of a lost record (see `token`).
        rec.token = token::next(version.map(|_| rec.token), now);
        let claim = Claim {
            task: task.name.clone(),
            period,
            token: rec.token,
            started_at_ms: now,
        };
        let mut runs = rec.take_runs();
        runs.push(RunInfo {
            period,
            holder: me,
            token: claim.token,
            started_at_ms: now,
            finished_at_ms: None,
            outcome: None,
        });
        rec.put_runs(runs);
        self.write_claim(&key, rec, version, claim).await
    }

    async fn write_claim(
        &self,
        key: &Key,
        rec: TaskRecord,
        version: Option<Version>,
        claim: Claim,
    ) -> Result<Option<Claim>> {
        let res = match version {
            None => self.cache.create(key, &rec, None).await,
            Some(v) => self.cache.replace(key, &rec, None, v).await,
        };
        match res {
            Ok(_) => Ok(Some(claim)),
            Err(e) if e.kind() == ErrorKind::Conflict => Ok(None),
            Err(e) => Err(e),
        }
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
        let key = Self::key(&claim.task)?;
        let mine = RunInfo {
            period: claim.period,
            holder: self.holder.as_str().to_owned(),
            token: claim.token,
            started_at_ms: claim.started_at_ms,
            finished_at_ms: Some(self.clock.now_ms()),
            outcome: Some(outcome),
        };
        let mut tries = cas_retries();
        while tries.next_attempt().await {
            let Some((mut rec, v)) = self.load(&key).await? else {
                return Ok(false);
            };
            let mut runs = rec.take_runs();
            let found = runs.iter().position(|r| r.token == claim.token);
            if let Some(i) = found {
                runs.remove(i);
            }
            rec.put_runs(runs);
            if found.is_none() {
                // Same period in progress under another token: taken over; the new holder
                // records it.
                if rec.runs_in_progress().any(|r| r.period == claim.period) {
                    return Ok(false);
                }
                match &rec.last_run {
                    // Already recorded (an earlier attempt whose answer was lost).
                    Some(l) if l.token == claim.token && l.finished_at_ms.is_some() => {
                        return Ok(true)
                    }
                    // The same period ended under another token: it was taken over.
                    Some(l) if l.period == claim.period && l.token != claim.token => {
                        return Ok(false)
                    }
                    // A later period has already ended: keep it as the last run.
                    Some(l) if l.period > claim.period => return Ok(true),
                    // Recorded as abandoned by another process (at most once): it did end.
                    _ => {}
                }
            }
            rec.set_last_run(mine.clone());
            match self.cache.replace(&key, &rec, None, v).await {
                Ok(_) => return Ok(true),
                Err(e) if e.kind() == ErrorKind::Conflict => continue,
                Err(e) => return Err(e),
            }
        }
        Err(lost_races(&claim.task, "recording the end of a run"))
    }

    /// Proves a run is alive (changes its record; while runs overlap, counts a heartbeat of
    /// this run in it) if it is still in progress as ours; `false` if another process has
    /// taken it over or recorded it as abandoned. An error leaves it unknown whether the
    /// heartbeat was recorded.
    pub async fn heartbeat(&self, claim: &Claim) -> Result<bool> {
        let key = Self::key(&claim.task)?;
        let mut tries = cas_retries();
        while tries.next_attempt().await {
            let Some((mut rec, v)) = self.load(&key).await? else {
                return Ok(false);
            };
            if !rec.runs_in_progress().any(|r| r.token == claim.token) {
                // Taken over (same period, another token), or abandoned: not ours any more.
                return Ok(false);
            }
            if !rec.overlapping.is_empty() || rec.heartbeats.iter().any(|h| h.token == claim.token)
            {
                let at_ms = self.clock.now_ms();
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
            match self.cache.replace(&key, &rec, None, v).await {
                Ok(_) => return Ok(true),
                Err(e) if e.kind() == ErrorKind::Conflict => continue,
                Err(e) => return Err(e),
            }
        }
        Err(lost_races(&claim.task, "a heartbeat"))
    }

    /// One pass: claims every due period of every task and runs it here, to completion,
    /// heartbeating meanwhile. Returns the claims run. [`spawn`](Scheduler::spawn) calls it
    /// in a loop; tests call it directly.
    pub async fn tick(&self) -> Result<Vec<Claim>> {
        self.tick_until(&CancellationToken::new()).await
    }

    /// [`tick`](Scheduler::tick), with runs cancelled when `stop` is.
    async fn tick_until(&self, stop: &CancellationToken) -> Result<Vec<Claim>> {
        let mut done = Vec::new();
        for task in &self.tasks {
            // The misfire policy may leave several due periods: claim them one by one.
            for _ in 0..task.misfire.claims_per_pass() {
                // Before the claim's write: nobody takes the run over within a lease of it.
                let claimed_at = tokio::time::Instant::now();
                let Some(claim) = self.claim(task).await? else {
                    break;
                };
                self.run(task, &claim, claimed_at, stop.child_token())
                    .await?;
                done.push(claim);
            }
        }
        Ok(done)
    }

    /// Runs a claimed period: heartbeats every retry period, concurrently with the job; stops
    /// the job (cancels it) as soon as the run may be lost; records its end.
    async fn run(
        &self,
        task: &TaskSpec,
        claim: &Claim,
        claimed_at: tokio::time::Instant,
        cancel: CancellationToken,
    ) -> Result<()> {
        let ctx = RunContext {
            task: claim.task.clone(),
            period: claim.period,
            token: claim.token,
            cancel: cancel.clone(),
        };
        let timing = self.config.lease;
        let mut job = (task.job)(ctx);
        let mut beat =
            tokio::time::interval_at(claimed_at + timing.retry_period, timing.retry_period);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // When the last write that proved the run alive began (the claim, then each heartbeat
        // that succeeded): nobody takes the run over within a lease of it.
        let mut proven = claimed_at;
        let mut pending = None;
        let outcome = loop {
            let lost_at = proven + timing.renew_deadline;
            let beat_due = pending.is_none();
            tokio::select! {
                out = &mut job => break out,
                _ = beat.tick(), if beat_due => {
                    pending = Some((tokio::time::Instant::now(), Box::pin(self.heartbeat(claim))));
                }
                (started, res) = in_flight(&mut pending) => {
                    pending = None;
                    match res {
                        Ok(true) => proven = proven.max(started),
                        Ok(false) => {
                            // Someone else owns this run now: stop ours at once.
                            tracing::warn!(task = %claim.task, period = claim.period, token = claim.token,
                                "run taken over by another process; cancelling it");
                            cancel.cancel();
                            return Ok(());
                        }
                        Err(e) => tracing::warn!(task = %claim.task, error = %e, "heartbeat failed"),
                    }
                }
                _ = tokio::time::sleep_until(lost_at) => {
                    // No heartbeat for the renew deadline: others may take the run over a
                    // lease after the last one. Stop now, and record nothing.
                    tracing::warn!(task = %claim.task, period = claim.period, token = claim.token,
                        "no heartbeat succeeded within the renew deadline; cancelling the run");
                    cancel.cancel();
                    drop(pending);
                    // The job may return by itself until halfway to the moment others may
                    // take over; then it is dropped, with half the margin still to spare.
                    let deadline = lost_at + (timing.lease - timing.renew_deadline) / 2;
                    if tokio::time::timeout_at(deadline, &mut job).await.is_err() {
                        tracing::warn!(task = %claim.task, period = claim.period,
                            "the cancelled run did not return before it could be taken over; dropped");
                    }
                    return Ok(());
                }
            }
        };
        // A heartbeat still in flight is abandoned: the end is recorded by compare-and-swap.
        drop(pending);
        if let Err(e) = &outcome {
            tracing::warn!(task = %claim.task, period = claim.period, error = %e, "task run failed");
        }
        self.finish_retrying(claim, outcome).await
    }

    /// [`finish`](Scheduler::finish), retried with backoff until the end is recorded, the run
    /// is found taken over, or a lease has passed.
    async fn finish_retrying(
        &self,
        claim: &Claim,
        outcome: std::result::Result<(), String>,
    ) -> Result<()> {
        let timing = self.config.lease;
        let mut tries =
            larder_cache_api::retry::Backoff::new(Duration::from_millis(10), timing.retry_period)
                .deadline(timing.lease);
        let mut failure = None;
        while tries.next_attempt().await {
            match self.finish(claim, outcome.clone()).await {
                Ok(true) => return Ok(()),
                Ok(false) => {
                    tracing::warn!(task = %claim.task, period = claim.period, token = claim.token,
                        "run taken over before its end was recorded");
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(task = %claim.task, period = claim.period, attempt = tries.attempts(),
                        error = %e, "recording the end of a run failed; retrying");
                    failure = Some(e);
                }
            }
        }
        Err(failure.unwrap_or_else(|| lost_races(&claim.task, "recording the end of a run")))
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
            });
        }
        Ok(out)
    }

    /// Runs [`tick`](Scheduler::tick) every poll interval on the current runtime until the
    /// returned token is cancelled. Errors are logged and retried, never fatal.
    pub fn spawn(self: Arc<Self>) -> (CancellationToken, tokio::task::JoinHandle<()>) {
        let stop = CancellationToken::new();
        let s2 = stop.clone();
        let handle = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = s2.cancelled() => return,
                    _ = tokio::time::sleep(self.config.poll) => {}
                }
                if let Err(e) = self.tick_until(&s2).await {
                    tracing::warn!(error = %e, "scheduler pass failed; retrying");
                }
            }
        });
        (stop, handle)
    }
}
