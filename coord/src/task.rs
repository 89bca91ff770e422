//! Periodic tasks claimed once per period by compare-and-swap.

use std::collections::{HashMap, HashSet};
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
use crate::random::random_u64;
use crate::schedule::Schedule;
use crate::token;
use larder_cache_api::codec::Postcard;
use larder_cache_api::{
    envelope, Cache, DynBackend, Entry, Error, ErrorKind, Key, Result, Version,
};

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
///
/// Its serde impls are each other's inverse on every codec, self-describing (JSON) or not
/// (postcard, bincode), and read every layout earlier versions wrote (see [`StoredTask`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(into = "StoredTask")]
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
///
/// A codec that is not self-describing (postcard, bincode) cannot tell a missing last field
/// from a truncated record, so the record is read by [`TaskRecord`]'s own `Deserialize`: it
/// takes the fifth field as absent when the input ends where it would start.
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

const STORED_TASK_FIELDS: &[&str] = &["last_period", "token", "running", "last_run", "overlap"];

impl<'de> Deserialize<'de> for TaskRecord {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_struct("StoredTask", STORED_TASK_FIELDS, StoredTaskVisitor)
    }
}

struct StoredTaskVisitor;

impl<'de> serde::de::Visitor<'de> for StoredTaskVisitor {
    type Value = TaskRecord;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a stored task record")
    }

    // Self-describing formats: the derived map reading, with `overlap` defaulted.
    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        map: A,
    ) -> std::result::Result<TaskRecord, A::Error> {
        StoredTask::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Into::into)
    }

    // Positional formats: four fields, then `overlap` if the input goes on.
    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<TaskRecord, A::Error> {
        use serde::de::Error as _;
        let missing = |i| A::Error::invalid_length(i, &"a task record of 4 or 5 fields");
        let last_period = seq.next_element()?.ok_or_else(|| missing(0))?;
        let token = seq.next_element()?.ok_or_else(|| missing(1))?;
        let running = seq.next_element()?.ok_or_else(|| missing(2))?;
        let last_run = seq.next_element()?.ok_or_else(|| missing(3))?;
        let overlap = seq.next_element_seed(TrailingOverlap)?.flatten();
        Ok(StoredTask {
            last_period,
            token,
            running,
            last_run,
            overlap,
        }
        .into())
    }
}

/// The optional last field of a positional record. Reading it fails before its `Option` tag
/// is seen only when no tag is there: the input ended (a four-field record) or the next byte
/// is no tag at all (which the codec then reports as trailing input, or takes as the end).
/// Once the tag is read, every error is the record's.
struct TrailingOverlap;

impl<'de> serde::de::DeserializeSeed<'de> for TrailingOverlap {
    type Value = Option<Overlap>;

    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<Option<Overlap>, D::Error> {
        let seen = std::cell::Cell::new(false);
        match d.deserialize_option(OverlapTag { seen: &seen }) {
            Ok(v) => Ok(v),
            Err(_) if !seen.get() => Ok(None),
            Err(e) => Err(e),
        }
    }
}

struct OverlapTag<'a> {
    seen: &'a std::cell::Cell<bool>,
}

impl<'de> serde::de::Visitor<'de> for OverlapTag<'_> {
    type Value = Option<Overlap>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the overlapping runs of a task record, or none")
    }

    fn visit_none<E: serde::de::Error>(self) -> std::result::Result<Self::Value, E> {
        self.seen.set(true);
        Ok(None)
    }

    fn visit_unit<E: serde::de::Error>(self) -> std::result::Result<Self::Value, E> {
        self.seen.set(true);
        Ok(None)
    }

    fn visit_some<D: serde::Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<Self::Value, D::Error> {
        self.seen.set(true);
        Overlap::deserialize(d).map(Some)
    }
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
    /// How soon an attempt that failed (the store did not answer) is tried again. It does
    /// not set how often the store is read: a [`spawn`](Scheduler::spawn)ed scheduler
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
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            process_name: std::env::var("HOSTNAME").unwrap_or_else(|_| "process".into()),
            candidacy: Candidacy::Always,
            poll: Duration::from_millis(500),
            jitter: Duration::from_millis(250),
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

/// The record of one task as this process last wrote it, kept while no one else is known to
/// have written it since: the next write of this process is tried on it directly, without a
/// read (the compare-and-swap on its version still decides). Cleared as soon as a conflict
/// or an unknown outcome shows it may be out of date.
#[derive(Debug, Default)]
struct LastWrite(Mutex<Option<(TaskRecord, Version)>>);

impl LastWrite {
    fn get(&self) -> Option<(TaskRecord, Version)> {
        self.0.lock().clone()
    }
    fn set(&self, rec: TaskRecord, version: Version) {
        *self.0.lock() = Some((rec, version));
    }
    fn clear(&self) {
        *self.0.lock() = None;
    }
}

/// A record as stored, or `None` (absent) with no version.
type Stored = (TaskRecord, Option<Version>);

/// What an edit of a task record does on the record it is given.
enum Edit<T> {
    /// Write the edited record, then answer this.
    Write(T),
    /// Answer this without writing.
    Answer(T),
}

/// The decision about one task on one view of its record.
#[derive(Default)]
struct Plan {
    /// The record to write, with the claim it makes.
    write: Option<(TaskRecord, Claim)>,
    /// When a run in progress (another process's) that matters here would have been seen
    /// unchanged for a whole lease: look at it again then.
    watch: Option<Instant>,
    /// A due period waits for runs in progress to end.
    blocked: bool,
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

/// When a task loop wakes next: the wall-clock time of its next claim attempt, or a monotonic
/// instant (a run to look at again, a failed attempt to retry), whichever comes first.
#[derive(Debug, Clone, Copy, Default)]
struct Wake {
    at_ms: Option<i64>,
    watch: Option<Instant>,
    /// A due period waits for runs in progress: try again when one of ours ends.
    blocked: bool,
}

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
    seen: Mutex<HashMap<(String, u64), Seen>>,
    /// The runs going on in this process (task, token): never judged dead by it.
    here: Mutex<HashSet<(String, u64)>>,
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

/// Marks a run as going on in this process while it lives.
struct RunHere<'a> {
    here: &'a Mutex<HashSet<(String, u64)>>,
    id: (String, u64),
}

impl Drop for RunHere<'_> {
    fn drop(&mut self) {
        self.here.lock().remove(&self.id);
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
            here: Mutex::new(HashSet::new()),
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

    /// A stored task record, in any layout a version of larder wrote.
    fn decode(entry: &Entry) -> Result<TaskRecord> {
        envelope::open::<_, TaskRecord>(&Postcard, &entry.value)
    }

    /// The record of a task with its version.
    async fn load(&self, key: &Key) -> Result<Option<(TaskRecord, Version)>> {
        let Some(entry) = self.cache.backend().get(key).await? else {
            return Ok(None);
        };
        Ok(Some((Self::decode(&entry)?, entry.version)))
    }

    /// Writes `rec` by compare-and-swap on `version` (`None`: create it): its new version,
    /// or, if another write came first, the record stored instead, as the conflict carries
    /// it (no read).
    async fn put(
        &self,
        key: &Key,
        rec: &TaskRecord,
        version: Option<Version>,
    ) -> Result<std::result::Result<Version, Stored>> {
        let res = match version {
            None => self.cache.create(key, rec, None).await,
            Some(v) => self.cache.replace(key, rec, None, v).await,
        };
        match res {
            Ok(v) => Ok(Ok(v)),
            Err(e) if e.kind() == ErrorKind::Conflict => Ok(Err(match e.into_current() {
                Some(entry) => (Self::decode(&entry)?, Some(entry.version)),
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

    /// The tokens of the runs in progress in `rec` whose sign of life this process has seen
    /// unchanged for a whole lease (by its own monotonic clock), oldest period first, and
    /// when the first of the others would have been (runs of this process are neither).
    /// Forgets what it saw of runs no longer in progress.
    fn dead_runs(
        &self,
        task: &str,
        rec: &TaskRecord,
        version: Version,
    ) -> (Vec<u64>, Option<Instant>) {
        let tokens: Vec<u64> = rec.runs_in_progress().map(|r| r.token).collect();
        let here = self.here.lock();
        let mut seen = self.seen.lock();
        seen.retain(|(t, token), _| t.as_str() != task || tokens.contains(token));
        let mut dead = Vec::new();
        let mut recheck: Option<Instant> = None;
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
            let since = match seen.get(&id) {
                Some(s) if s.sign == sign => s.since,
                _ => {
                    let now = Instant::now();
                    seen.insert(id, Seen { sign, since: now });
                    now
                }
            };
            if since.elapsed() >= self.config.lease.lease {
                dead.push(token);
            } else {
                let at = since + self.config.lease.lease;
                recheck = Some(recheck.map_or(at, |r| r.min(at)));
            }
        }
        (dead, recheck)
    }

    /// The decision about `task` at `now` on the record `rec`
    /// (with `version`; `None`: absent): the claim of the next due period, or the takeover of
    /// a run whose process died (at-least-once), and when to look again at runs in progress.
    fn plan(
        &self,
        task: &TaskSpec,
        now: i64,
        mut rec: TaskRecord,
        version: Option<Version>,
    ) -> Plan {
        let me = self.holder.as_str().to_owned();
        let (dead, recheck) =
            version.map_or((Vec::new(), None), |v| self.dead_runs(&task.name, &rec, v));
        // An at-least-once run is watched for as long as it goes on; an at-most-once run only
        // while it holds up a due period (below).
        let mut plan = Plan {
            watch: recheck.filter(|_| task.mode == RunMode::AtLeastOnce),
            ..Plan::default()
        };
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
                plan.write = Some((rec, claim));
                return plan;
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
        // The oldest period the task's misfire policy still runs.
        let Some(period) = task
            .misfire
            .periods_to_claim(&task.schedule, rec.last_period, now)
            .next()
        else {
            return plan;
        };
        let in_progress = rec.runs_in_progress().count();
        // (Dead runs recorded as abandoned above are written only with a claim; until then
        // every process sees them as they are.)
        if (in_progress > 0 && !task.allow_overlap) || in_progress >= MAX_RUNS_IN_PROGRESS {
            plan.blocked = true;
            plan.watch = recheck;
            return plan;
        }
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
        plan.write = Some((rec, claim));
        plan
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
            let plan = self.plan(task, now, rec, version);
            step.watch = plan.watch;
            step.blocked = plan.blocked;
            let Some((next, claim)) = plan.write else {
                break;
            };
            // Before the claim's write: nobody takes the run over within a lease of it.
            let claimed_at = tokio::time::Instant::now();
            match self.put(&key, &next, version).await {
                Ok(Ok(v)) => {
                    last.set(next, v);
                    self.here.lock().insert((claim.task.clone(), claim.token));
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
        self.record_end(claim, outcome, &LastWrite::default()).await
    }

    async fn record_end(
        &self,
        claim: &Claim,
        outcome: std::result::Result<(), String>,
        last: &LastWrite,
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
                    rec.set_last_run(mine.clone());
                    Edit::Write(true)
                },
            )
            .await?;
        Ok(recorded.unwrap_or(false))
    }

    /// Proves a run is alive (changes its record; while runs overlap, counts a heartbeat of
    /// this run in it) if it is still in progress as ours; `false` if another process has
    /// taken it over or recorded it as abandoned. An error leaves it unknown whether the
    /// heartbeat was recorded.
    pub async fn heartbeat(&self, claim: &Claim) -> Result<bool> {
        self.beat(claim, &LastWrite::default()).await
    }

    async fn beat(&self, claim: &Claim, last: &LastWrite) -> Result<bool> {
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

    /// One pass: claims every due period of every task and runs it here, to completion,
    /// heartbeating meanwhile, one task after another. Returns the claims run. Tests call it
    /// to step a scheduler by hand; [`spawn`](Scheduler::spawn) runs the tasks on their own.
    pub async fn tick(&self) -> Result<Vec<Claim>> {
        self.tick_until(&CancellationToken::new()).await
    }

    /// [`tick`](Scheduler::tick), with runs cancelled when `stop` is.
    async fn tick_until(&self, stop: &CancellationToken) -> Result<Vec<Claim>> {
        let mut done = Vec::new();
        for task in &self.tasks {
            let last = LastWrite::default();
            // The misfire policy may leave several due periods: claim them one by one.
            for _ in 0..task.misfire.claims_per_pass() {
                let Some((claim, claimed_at)) = self.step(task, &last).await?.claim else {
                    break;
                };
                let ended = self
                    .run(task, &claim, claimed_at, stop.child_token(), &last)
                    .await?;
                done.push(claim);
                if !ended {
                    // Lost (taken over, or its heartbeats failed): claim no more here.
                    break;
                }
            }
        }
        Ok(done)
    }

    /// Runs a claimed period: heartbeats every retry period, concurrently with the job; stops
    /// the job (cancels it) as soon as the run may be lost; records its end. `false`: the
    /// run was lost (stopped, or found taken over).
    async fn run(
        &self,
        task: &TaskSpec,
        claim: &Claim,
        claimed_at: tokio::time::Instant,
        cancel: CancellationToken,
        last: &LastWrite,
    ) -> Result<bool> {
        let id = (claim.task.clone(), claim.token);
        self.here.lock().insert(id.clone());
        let _here = RunHere {
            here: &self.here,
            id,
        };
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
                    pending = Some((tokio::time::Instant::now(), Box::pin(self.beat(claim, last))));
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
                            return Ok(false);
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
                    return Ok(false);
                }
            }
        };
        // A heartbeat still in flight is abandoned: the end is recorded by compare-and-swap.
        drop(pending);
        if let Err(e) = &outcome {
            tracing::warn!(task = %claim.task, period = claim.period, error = %e, "task run failed");
        }
        self.finish_retrying(claim, outcome, last).await
    }

    /// [`finish`](Scheduler::finish), retried with backoff until the end is recorded (`true`),
    /// the run is found taken over (`false`), or a lease has passed (the last error).
    async fn finish_retrying(
        &self,
        claim: &Claim,
        outcome: std::result::Result<(), String>,
        last: &LastWrite,
    ) -> Result<bool> {
        let timing = self.config.lease;
        let mut tries =
            larder_cache_api::retry::Backoff::new(Duration::from_millis(10), timing.retry_period)
                .deadline(timing.lease);
        let mut failure = None;
        while tries.next_attempt().await {
            match self.record_end(claim, outcome.clone(), last).await {
                Ok(true) => return Ok(true),
                Ok(false) => {
                    tracing::warn!(task = %claim.task, period = claim.period, token = claim.token,
                        "run taken over before its end was recorded");
                    return Ok(false);
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
            let mut loops = tokio::task::JoinSet::new();
            for index in 0..self.tasks.len() {
                if self.eligible(&self.tasks[index]) {
                    loops.spawn(self.clone().task_loop(index, s2.clone()));
                }
            }
            while loops.join_next().await.is_some() {}
        });
        (stop, handle)
    }

    /// The loop of the task at `index`.
    async fn task_loop(self: Arc<Self>, index: usize, stop: CancellationToken) {
        let task = &self.tasks[index];
        let last = Arc::new(LastWrite::default());
        let mut runs = tokio::task::JoinSet::new();
        let mut wake = Wake::default();
        let mut attempt_now = true;
        loop {
            if !attempt_now {
                tokio::select! {
                    // A stopped scheduler claims nothing more, whatever else is ready.
                    biased;
                    _ = stop.cancelled() => break,
                    _ = self.until(wake) => {}
                    ended = runs.join_next(), if !runs.is_empty() => {
                        if let Some(Err(e)) = ended {
                            tracing::warn!(task = %task.name, error = %e, "a run panicked");
                        }
                        // A due period that waited for this run may be claimed now.
                        if !wake.blocked {
                            continue;
                        }
                    }
                }
            }
            attempt_now = false;
            wake = match self.claim_due(index, &last, &mut runs, &stop).await {
                Ok(step) => self.next_wake(task, &step, last.get().is_some()),
                Err(e) => {
                    tracing::warn!(task = %task.name, error = %e, "claim attempt failed; retrying");
                    Wake {
                        watch: Some(Instant::now() + self.config.poll),
                        ..Wake::default()
                    }
                }
            };
        }
        while runs.join_next().await.is_some() {}
    }

    /// Claims what is due for the task at `index` and starts each run beside the loop; the
    /// last step (the one that claimed nothing).
    async fn claim_due(
        self: &Arc<Self>,
        index: usize,
        last: &Arc<LastWrite>,
        runs: &mut tokio::task::JoinSet<()>,
        stop: &CancellationToken,
    ) -> Result<Step> {
        let task = &self.tasks[index];
        loop {
            let mut step = self.step(task, last).await?;
            let Some((claim, claimed_at)) = step.claim.take() else {
                return Ok(step);
            };
            let (me, last, cancel) = (self.clone(), last.clone(), stop.child_token());
            runs.spawn(async move {
                let task = &me.tasks[index];
                if let Err(e) = me.run(task, &claim, claimed_at, cancel, &last).await {
                    tracing::warn!(task = %claim.task, period = claim.period, error = %e,
                        "the end of a run could not be recorded");
                }
            });
        }
    }

    /// When the loop of `task` wakes after `step`: at the start of the next period plus
    /// jitter, or sooner to look again at a run in progress. The last writer of the record
    /// (`wrote_last`: normally the process that ran the last period) goes first, without
    /// jitter: its compare-and-swap needs no read and, made before the others look, wins,
    /// so they find the period claimed with one read each and no failed write.
    fn next_wake(&self, task: &TaskSpec, step: &Step, wrote_last: bool) -> Wake {
        let now = self.clock.now_ms();
        let at_ms = task
            .schedule
            .period_at(now)
            .and_then(|p| task.schedule.next(p))
            .map(|start| {
                let jitter = if wrote_last {
                    0
                } else {
                    self.jitter_ms(task, start)
                };
                start.saturating_add(jitter)
            });
        Wake {
            at_ms,
            watch: step.watch,
            blocked: step.blocked,
        }
    }

    /// A random delay for the claim of the period starting at `start`, between half of the
    /// jitter and all of it ([`jitter`](SchedulerConfig::jitter), at most a tenth of the
    /// period): the first half is left to the last writer, which goes at once.
    fn jitter_ms(&self, task: &TaskSpec, start: i64) -> i64 {
        let period = task
            .schedule
            .next(start)
            .map_or(0, |n| n.saturating_sub(start));
        let cap = (self.config.jitter.as_millis() as i64).min(period / 10);
        if cap <= 0 {
            return 0;
        }
        let half = cap / 2;
        half + (random_u64() % ((cap - half) as u64 + 1)) as i64
    }

    /// Waits until `wake`: the wall clock reaching its time, or the monotonic instant,
    /// whichever comes first (neither: forever).
    async fn until(&self, wake: Wake) {
        let clock = async {
            match wake.at_ms {
                Some(ms) => self.clock.sleep_until(ms).await,
                None => std::future::pending().await,
            }
        };
        let watch = async {
            match wake.watch {
                Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = clock => {}
            _ = watch => {}
        }
    }
}
