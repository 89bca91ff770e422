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
use crate::lease::{check_backend, LeaseConfig};
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

/// Parses an interval as an operator writes it: a whole number followed by `ms`, `s`, `m`,
/// `h` or `d`, or by nothing for seconds (`500ms`, `30s`, `5m`, `2h`, `1d`, `90`). Anything
/// else, and any interval a [`Schedule::every`] would refuse (zero, beyond 100 years, a
/// number too large to hold), is an [`ErrorKind::Config`] error; no input panics.
///
/// ```
/// use std::time::Duration;
/// use larder_coord::parse_interval;
///
/// assert_eq!(parse_interval("5m")?, Duration::from_secs(300));
/// assert_eq!(parse_interval("250ms")?, Duration::from_millis(250));
/// assert!(parse_interval("0s").is_err());
/// assert!(parse_interval("18446744073709551615d").is_err());
/// # Ok::<(), larder_cache_api::Error>(())
/// ```
pub fn parse_interval(text: &str) -> Result<Duration> {
    let s = text.trim();
    let shown = || {
        // Echo a bounded prefix only: the text may be arbitrarily long.
        let mut end = s.len().min(40);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{:?}{}", &s[..end], if end < s.len() { "…" } else { "" })
    };
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let per_ms: u64 = match unit {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                "{} is not an interval: a whole number with ms, s, m, h or d (e.g. 500ms, 30s, 5m)",
                shown()
            ),
            ))
        }
    };
    let too_long = || {
        Error::new(
            ErrorKind::Config,
            format!("interval {} is longer than 100 years", shown()),
        )
    };
    if num.is_empty() {
        return Err(Error::new(
            ErrorKind::Config,
            format!("{} is not an interval: it has no number", shown()),
        ));
    }
    // All digits: a parse failure can only be a number too large for u64.
    let n: u64 = num.parse().map_err(|_| too_long())?;
    let ms = n.checked_mul(per_ms).ok_or_else(too_long)?;
    let d = Duration::from_millis(ms);
    if d > MAX_INTERVAL {
        return Err(too_long());
    }
    Schedule::every(d)?;
    Ok(d)
}

impl Schedule {
    /// `Schedule::Every(interval)`, checked: an interval shorter than 1 ms or longer than
    /// 100 years is an [`ErrorKind::Config`] error (building the variant directly defers that
    /// check to [`Scheduler::with_task`]).
    ///
    /// ```
    /// use std::time::Duration;
    /// use larder_coord::Schedule;
    /// use larder_cache_api::ErrorKind;
    ///
    /// assert!(Schedule::every(Duration::from_secs(60)).is_ok());
    /// assert_eq!(Schedule::every(Duration::ZERO).unwrap_err().kind(), ErrorKind::Config);
    /// assert_eq!(Schedule::every(Duration::MAX).unwrap_err().kind(), ErrorKind::Config);
    /// ```
    pub fn every(interval: Duration) -> Result<Self> {
        let s = Schedule::Every(interval);
        s.check()?;
        Ok(s)
    }

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
                let now = cron_time(now_ms)?;
                // The iterator starts after `now + 1 ms`; stepping back gives the last fire
                // time at or before `now`.
                let after = now.checked_add_signed(chrono::Duration::milliseconds(1))?;
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
                let at = cron_time(period)?;
                c.after(&at).next().map(|t| t.timestamp_millis())
            }
        }
    }

    /// The period before the one starting at `period`.
    fn prev(&self, period: i64) -> Option<i64> {
        match self {
            Schedule::Every(d) => period.checked_sub(i64::try_from(d.as_millis()).ok()?),
            #[cfg(feature = "cron")]
            Schedule::Cron(c) => {
                let at = cron_time(period)?;
                c.after(&at).next_back().map(|t| t.timestamp_millis())
            }
        }
    }
}

/// `ms` as a time for the cron crate, clamped to 1969-12-31 ..= the last millisecond of 2100
/// (UTC). Cron fires only in 1970 to 2100, so the clamp changes no answer, and the crate's own
/// arithmetic (`± 1 s`) overflows, and panics, near the ends of what chrono can hold (and
/// looking back from 2101 it misses 2100's times).
#[cfg(feature = "cron")]
fn cron_time(ms: i64) -> Option<chrono::DateTime<chrono::Utc>> {
    const BEFORE_1970: i64 = -86_400_000;
    const END_OF_2100: i64 = 4_133_980_799_999;
    chrono::DateTime::from_timestamp_millis(ms.clamp(BEFORE_1970, END_OF_2100))
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
    /// stay unchanged before it counts as abandoned).
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
    /// Sets the run lease timing.
    pub fn lease(mut self, l: LeaseConfig) -> Self {
        self.lease = l;
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
    /// A scheduler on `backend` (which must offer linearizable CAS).
    pub fn new(backend: DynBackend, holder: HolderId, config: SchedulerConfig) -> Result<Self> {
        check_backend(&backend)?;
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
                rec.token += 1;
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
        rec.token += 1;
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

#[cfg(test)]
mod interval_props {
    use proptest::prelude::*;

    use super::*;

    fn in_range(d: Duration) -> bool {
        d >= Duration::from_millis(1) && d <= MAX_INTERVAL
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn any_text_is_an_interval_or_a_config_error(s in "\\PC{0,24}|[0-9]{1,25}(ms|s|m|h|d|)") {
            match parse_interval(&s) {
                Ok(d) => {
                    prop_assert!(in_range(d), "{s:?} -> {d:?}");
                    prop_assert!(Schedule::every(d).is_ok());
                }
                Err(e) => prop_assert_eq!(e.kind(), ErrorKind::Config),
            }
        }

        #[test]
        fn numbers_with_units_mean_what_they_say(
            n in prop_oneof![0u64..100_000, any::<u64>()],
            (unit, ms) in prop_oneof![
                Just(("ms", 1u128)), Just(("s", 1_000)), Just(("", 1_000)),
                Just(("m", 60_000)), Just(("h", 3_600_000)), Just(("d", 86_400_000)),
            ],
        ) {
            let want = u128::from(n) * ms;
            let got = parse_interval(&format!("{n}{unit}"));
            if want >= 1 && want <= MAX_INTERVAL.as_millis() {
                prop_assert_eq!(got.unwrap().as_millis(), want);
            } else {
                prop_assert_eq!(got.unwrap_err().kind(), ErrorKind::Config);
            }
        }

        #[test]
        fn schedules_of_any_size(secs in any::<u64>(), nanos in 0u32..1_000_000_000, now in any::<i64>()) {
            let d = Duration::new(secs, nanos);
            match Schedule::every(d) {
                Ok(s) => {
                    prop_assert!(in_range(d));
                    if let Some(p) = s.period_at(now) {
                        prop_assert!(p <= now);
                        let _ = s.next(p);
                        let _ = s.prev(p);
                    }
                }
                Err(e) => {
                    prop_assert!(!in_range(d));
                    prop_assert_eq!(e.kind(), ErrorKind::Config);
                }
            }
            // Built directly, unchecked: the arithmetic must still not panic.
            let s = Schedule::Every(d);
            let _ = (s.period_at(now), s.next(now), s.prev(now));
        }
    }
}

#[cfg(all(test, feature = "cron"))]
mod cron_edges {
    use super::*;

    /// Found by fuzzing schedules: at the last millisecond chrono can hold, `period_at`
    /// panicked with "`DateTime + TimeDelta` overflowed".
    #[test]
    fn cron_arithmetic_at_the_ends_of_time() {
        let s = Schedule::cron("* * * * * *").unwrap();
        let max = chrono::DateTime::<chrono::Utc>::MAX_UTC.timestamp_millis();
        let min = chrono::DateTime::<chrono::Utc>::MIN_UTC.timestamp_millis();
        for now in [max, max - 1, min, min + 1, i64::MAX, i64::MIN, 0] {
            let _ = s.period_at(now);
            let _ = s.next(now);
            let _ = s.prev(now);
        }
        // The clamp changes no answer: cron fires only in 1970 to 2100.
        let last = Schedule::cron("59 59 23 31 12 *").unwrap();
        // The last fire there is, 2100-12-31T23:59:59Z, seen from any later time.
        let final_fire = last.period_at(4_133_980_799_999);
        assert_eq!(final_fire, Some(4_133_980_799_000));
        assert_eq!(last.period_at(max), final_fire);
        assert_eq!(last.period_at(i64::MAX), final_fire);
        assert_eq!(last.next(final_fire.unwrap()), None);
        assert_eq!(last.next(min), Some(31_535_999_000), "1970-12-31T23:59:59Z");
    }
}

#[cfg(test)]
mod interval_edges {
    use super::*;

    #[test]
    fn period_arithmetic_at_the_ends_of_i64() {
        let s = Schedule::Every(Duration::from_secs(1));
        assert_eq!(s.prev(i64::MIN), None);
        assert_eq!(s.next(i64::MAX), None);
        assert_eq!(s.period_at(i64::MIN), None);
        assert_eq!(s.period_at(i64::MAX), Some(i64::MAX - i64::MAX % 1000));
    }
}
