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
use crate::token;
use larder_cache_api::{Cache, DynBackend, Error, ErrorKind, Key, Result, Version};

/// When a task is due.
#[derive(Clone)]
pub enum Schedule {
    /// Every interval, aligned on the Unix epoch (period `n` starts at `n × interval`).
    Every(Duration),
    /// At the times of a cron expression (with seconds: `"0 */5 * * * *"`), UTC. Feature
    /// `cron`.
    #[cfg(feature = "cron")]
    Cron(Box<cron::Schedule>),
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Every(d) => write!(f, "Every({d:?})"),
            #[cfg(feature = "cron")]
            Schedule::Cron(c) => write!(f, "Cron({c})"),
        }
    }
}

/// The retries of a read-and-compare-and-swap on a task record that lost a race.
fn cas_retries() -> larder_cache_api::retry::Backoff {
    larder_cache_api::retry::Backoff::new(Duration::from_micros(100), Duration::from_millis(20))
        .max_attempts(16)
}

/// The longest interval a schedule accepts.
const MAX_INTERVAL: Duration = Duration::from_secs(100 * 366 * 24 * 3600);

impl Schedule {
    /// A cron schedule (seconds field included), checked.
    #[cfg(feature = "cron")]
    pub fn cron(expr: &str) -> Result<Self> {
        use std::str::FromStr;
        cron::Schedule::from_str(expr)
            .map(|s| Schedule::Cron(Box::new(s)))
            .map_err(|e| {
                Error::new(
                    ErrorKind::Config,
                    format!("invalid cron expression {expr:?}"),
                )
                .with_source(e)
            })
    }

    pub(crate) fn check(&self) -> Result<()> {
        match self {
            Schedule::Every(d) if d.as_millis() == 0 => Err(Error::new(
                ErrorKind::Config,
                "a task interval must be at least 1 ms",
            )),
            // Periods are milliseconds since the epoch in an i64: beyond a century the
            // arithmetic has no room, and no deployment waits that long.
            Schedule::Every(d) if *d > MAX_INTERVAL => Err(Error::new(
                ErrorKind::Config,
                format!("a task interval must be at most 100 years, not {d:?}"),
            )),
            _ => Ok(()),
        }
    }

    /// The period that contains `now_ms`, named by its start (ms since the epoch).
    pub fn period_at(&self, now_ms: i64) -> Option<i64> {
        match self {
            Schedule::Every(d) => {
                let i = i64::try_from(d.as_millis()).ok().filter(|i| *i > 0)?;
                now_ms.div_euclid(i).checked_mul(i)
            }
            #[cfg(feature = "cron")]
            Schedule::Cron(c) => {
                let now = chrono::DateTime::from_timestamp_millis(now_ms)?;
                // The iterator starts after `now + 1 ms`; stepping back gives the last fire
                // time at or before `now`.
                let after = now + chrono::Duration::milliseconds(1);
                c.after(&after).next_back().map(|t| t.timestamp_millis())
            }
        }
    }

    /// The period after the one starting at `period`.
    pub fn next(&self, period: i64) -> Option<i64> {
        match self {
            Schedule::Every(d) => period.checked_add(i64::try_from(d.as_millis()).ok()?),
            #[cfg(feature = "cron")]
            Schedule::Cron(c) => {
                let at = chrono::DateTime::from_timestamp_millis(period)?;
                c.after(&at).next().map(|t| t.timestamp_millis())
            }
        }
    }

    /// The period before the one starting at `period`.
    fn prev(&self, period: i64) -> Option<i64> {
        match self {
            Schedule::Every(d) => Some(period - d.as_millis() as i64),
            #[cfg(feature = "cron")]
            Schedule::Cron(c) => {
                let at = chrono::DateTime::from_timestamp_millis(period)?;
                c.after(&at).next_back().map(|t| t.timestamp_millis())
            }
        }
    }
}

/// What happens to a run whose process died before finishing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunMode {
    /// Never run a period twice; a run cut short by a crash is not repeated.
    AtMostOnce,
    /// A run whose holder died (its heartbeat stopped for a whole lease) is taken over and
    /// run again, with a higher token.
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

/// The stored state of a task.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// The highest period ever claimed (`None`: never).
    pub last_period: Option<i64>,
    /// Grows with every claim; never reset.
    pub token: u64,
    /// The run in progress (or abandoned by a dead process).
    pub running: Option<RunInfo>,
    /// The last run that ended.
    pub last_run: Option<RunInfo>,
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
    /// Cancelled if this process loses the run (at-least-once: another process took it
    /// over) or, for a scheduler started with [`Scheduler::spawn`], when it is stopped.
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
    catch_up: u32,
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
            .field("catch_up", &self.catch_up)
            .field("allow_overlap", &self.allow_overlap)
            .field("pinned_to", &self.pinned_to)
            .finish()
    }
}

impl TaskSpec {
    /// A task `name` run on `schedule` by `job` (at-most-once, catch-up of one period, no
    /// overlapping runs, any process).
    pub fn new<F, Fut>(name: &str, schedule: Schedule, job: F) -> Self
    where
        F: Fn(RunContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<(), String>> + Send + 'static,
    {
        TaskSpec {
            name: name.to_owned(),
            schedule,
            mode: RunMode::AtMostOnce,
            catch_up: 1,
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

    /// After downtime, run at most this many of the missed periods (oldest first; at least
    /// 1: the current one).
    pub fn catch_up(mut self, periods: u32) -> Self {
        self.catch_up = periods.max(1);
        self
    }

    /// Let a new period start while the previous run is still going.
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
    /// The run in progress.
    pub running: Option<RunInfo>,
    /// The last run that ended.
    pub last_run: Option<RunInfo>,
    /// When the next period starts (ms since the epoch).
    pub next_due_ms: Option<i64>,
}

#[derive(Debug)]
struct Seen {
    version: Version,
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
    seen: Mutex<HashMap<String, Seen>>,
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

    /// How long this process has seen `task`'s record unchanged.
    fn unchanged_for(&self, task: &str, version: Version) -> Duration {
        let mut seen = self.seen.lock();
        match seen.get(task) {
            Some(s) if s.version == version => s.since.elapsed(),
            _ => {
                seen.insert(
                    task.to_owned(),
                    Seen {
                        version,
                        since: Instant::now(),
                    },
                );
                Duration::ZERO
            }
        }
    }

    /// Tries to claim the next due period of `task`.
    pub async fn claim(&self, task: &TaskSpec) -> Result<Option<Claim>> {
        if !self.eligible(task) {
            return Ok(None);
        }
        let key = Self::key(&task.name)?;
        let now = self.clock.now_ms();
        let Some(current) = task.schedule.period_at(now) else {
            return Ok(None);
        };
        let stored = self.cache.get_versioned::<TaskRecord>(&key).await?;
        let (mut rec, version) = match stored {
            Some((r, v)) => (r, Some(v)),
            None => (TaskRecord::default(), None),
        };
        let me = self.holder.as_str().to_owned();
        if let Some(run) = rec.running.clone() {
            let abandoned = version
                .map(|v| self.unchanged_for(&task.name, v) >= self.config.lease.lease)
                .unwrap_or(false);
            if abandoned && task.mode == RunMode::AtLeastOnce {
                // Take the dead run over, same period, higher token.
                rec.token = token::after(rec.token);
                rec.running = Some(RunInfo {
                    period: run.period,
                    holder: me,
                    token: rec.token,
                    started_at_ms: now,
                    finished_at_ms: None,
                    outcome: None,
                });
                return self.write_claim(task, &key, rec, version, run.period).await;
            }
            if !abandoned && !task.allow_overlap {
                return Ok(None);
            }
            if abandoned {
                rec.last_run = Some(RunInfo {
                    finished_at_ms: None,
                    outcome: Some(Err("abandoned: its process stopped heartbeating".into())),
                    ..run
                });
                rec.running = None;
            }
        }
        // The oldest period still inside the catch-up window.
        let mut earliest = current;
        for _ in 1..task.catch_up {
            match task.schedule.prev(earliest) {
                Some(p) => earliest = p,
                None => break,
            }
        }
        let period = match rec.last_period {
            None => current,
            Some(last) if last >= current => return Ok(None),
            Some(last) => match task.schedule.next(last) {
                Some(n) => n.max(earliest),
                None => return Ok(None),
            },
        };
        if period > current {
            return Ok(None);
        }
        rec.last_period = Some(period);
        // A record created now (first claim, or the store lost it) starts at a time-based
        // token, above every token of a lost record (see `token`).
        rec.token = token::next(version.map(|_| rec.token), now);
        rec.running = Some(RunInfo {
            period,
            holder: me,
            token: rec.token,
            started_at_ms: now,
            finished_at_ms: None,
            outcome: None,
        });
        self.write_claim(task, &key, rec, version, period).await
    }

    async fn write_claim(
        &self,
        task: &TaskSpec,
        key: &Key,
        rec: TaskRecord,
        version: Option<Version>,
        period: i64,
    ) -> Result<Option<Claim>> {
        let token = rec.token;
        let started_at_ms = rec.running.as_ref().map_or(0, |r| r.started_at_ms);
        let res = match version {
            None => self.cache.create(key, &rec, None).await,
            Some(v) => self.cache.replace(key, &rec, None, v).await,
        };
        match res {
            Ok(_) => Ok(Some(Claim {
                task: task.name.clone(),
                period,
                token,
                started_at_ms,
            })),
            Err(e) if e.kind() == ErrorKind::Conflict => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Records the end of a claimed run. Returns `false` (and records nothing) if the run
    /// was taken over by another process (at-least-once); a run that overlapped a later
    /// period's run is recorded as the last run only if no later run has ended.
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
            let Some((mut rec, v)) = self.cache.get_versioned::<TaskRecord>(&key).await? else {
                return Ok(false);
            };
            match &rec.running {
                Some(r) if r.token == claim.token => rec.running = None,
                // Same period, another token: taken over; the new holder records it.
                Some(r) if r.period == claim.period => return Ok(false),
                _ => match &rec.last_run {
                    // The same period ended under another token: it was taken over.
                    Some(l) if l.period == claim.period && l.token != claim.token => {
                        return Ok(false)
                    }
                    // A later period has already ended: keep it as the last run.
                    Some(l) if l.period > claim.period => return Ok(true),
                    _ => {}
                },
            }
            rec.last_run = Some(mine.clone());
            match self.cache.replace(&key, &rec, None, v).await {
                Ok(_) => return Ok(true),
                Err(e) if e.kind() == ErrorKind::Conflict => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }

    /// Proves a run is alive (changes its record) if it is still ours; `false` if another
    /// process has taken it over.
    pub async fn heartbeat(&self, claim: &Claim) -> Result<bool> {
        let key = Self::key(&claim.task)?;
        let mut tries = cas_retries();
        while tries.next_attempt().await {
            let Some((mut rec, v)) = self.cache.get_versioned::<TaskRecord>(&key).await? else {
                return Ok(false);
            };
            match rec.running.as_mut() {
                Some(run) if run.token == claim.token => {
                    run.started_at_ms = run.started_at_ms.max(0)
                }
                // Same period, another token: another process took this run over.
                Some(run) if run.period == claim.period => return Ok(false),
                // A later period has been claimed (overlap allowed): this run goes on, but
                // the record now tracks the later one, so there is nothing to beat.
                _ => return Ok(true),
            }
            // Rewriting the same record gives it a new version: that is the heartbeat.
            match self.cache.replace(&key, &rec, None, v).await {
                Ok(_) => return Ok(true),
                Err(e) if e.kind() == ErrorKind::Conflict => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(false)
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
            // Catch-up may leave several due periods: claim them one by one.
            for _ in 0..task.catch_up.max(1) {
                let Some(claim) = self.claim(task).await? else {
                    break;
                };
                self.run(task, &claim, stop.child_token()).await?;
                done.push(claim);
            }
        }
        Ok(done)
    }

    async fn run(&self, task: &TaskSpec, claim: &Claim, cancel: CancellationToken) -> Result<()> {
        let ctx = RunContext {
            task: claim.task.clone(),
            period: claim.period,
            token: claim.token,
            cancel: cancel.clone(),
        };
        let mut job = (task.job)(ctx);
        let mut beat = tokio::time::interval(self.config.lease.retry_period);
        beat.tick().await;
        let outcome = loop {
            tokio::select! {
                out = &mut job => break out,
                _ = beat.tick() => {
                    match self.heartbeat(claim).await {
                        Ok(true) => {}
                        Ok(false) => {
                            // Someone else owns this run now: stop ours.
                            cancel.cancel();
                            return Ok(());
                        }
                        Err(e) => tracing::warn!(task = %claim.task, error = %e, "heartbeat failed"),
                    }
                }
            }
        };
        if let Err(e) = &outcome {
            tracing::warn!(task = %claim.task, period = claim.period, error = %e, "task run failed");
        }
        self.finish(claim, outcome).await?;
        Ok(())
    }

    /// The status of every task.
    pub async fn status(&self) -> Result<Vec<TaskStatus>> {
        let now = self.clock.now_ms();
        let mut out = Vec::new();
        for task in &self.tasks {
            let rec = self
                .cache
                .get::<TaskRecord>(&Self::key(&task.name)?)
                .await?
                .unwrap_or_default();
            let current = task.schedule.period_at(now);
            let next_due_ms = match (rec.last_period, current) {
                (Some(last), Some(cur)) if last >= cur => task.schedule.next(cur),
                (_, Some(_)) => Some(now),
                _ => None,
            };
            out.push(TaskStatus {
                name: task.name.clone(),
                last_period: rec.last_period,
                token: rec.token,
                running: rec.running,
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
