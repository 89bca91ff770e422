//! What an operator does to tasks across the deployment, through their stored records:
//! pause and resume, run now. Every change is one compare-and-swap on the task's record, so it is
//! ordered with the claims: a claim planned on the record before a pause loses its
//! compare-and-swap to the pause and is planned again on the paused record.

use std::sync::Arc;
use std::time::Duration;

use larder_cache_api::{Cache, DynBackend, Error, ErrorKind, Key, Result};

use super::record::{Pause, RunRequest, TaskRecord, MAX_REMEMBERED_REQUESTS, MAX_WAITING_REQUESTS};
use super::Scheduler;
use crate::clock::{Clock, SystemClock};
use crate::token;

/// The key of the list of task names the schedulers of the deployment have registered
/// (what [`TaskAdmin::known`] reads; never under `larder:task:`, where records live).
const REGISTRY: &str = "larder:tasks";

/// The key of the deployment's doorbell: a counter each run-now request adds one to, which
/// spawned schedulers read every [`request_check`](crate::SchedulerConfig::request_check).
const DOORBELL: &str = "larder:tasks:doorbell";

/// The longest request id accepted (characters).
pub const MAX_REQUEST_ID: usize = 128;

/// The most names the registry keeps (beyond it, the first in order go), so it stays one
/// small record.
const MAX_REGISTERED: usize = 1024;

/// Operates the periodic tasks of a deployment by name, from any process (a CLI, an admin
/// page), without running them: [`pause`](TaskAdmin::pause) and
/// [`resume`](TaskAdmin::resume). [`Scheduler::admin`] gives one that knows the scheduler's
/// own tasks; [`TaskAdmin::new`] one that knows the tasks every spawned scheduler of the
/// deployment registered ([`TaskAdmin::known`]).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> larder_cache_api::Result<()> {
/// use std::sync::Arc;
/// use std::time::Duration;
/// use larder_coord::{Durability, HolderId, Schedule, Scheduler, SchedulerConfig, TaskSpec};
///
/// let backend = Arc::new(larder_backend_memory::MemoryBackend::default());
/// let config = SchedulerConfig::default().durability(Durability::AcceptLoss);
/// let task = TaskSpec::new("report", Schedule::Every(Duration::from_secs(60)), |_| async { Ok(()) });
/// let scheduler = Scheduler::new(backend, HolderId::named("web-1"), config)?.with_task(task)?;
/// let admin = scheduler.admin();
/// admin.pause("report", "alice").await?;
/// assert!(scheduler.tick().await?.is_empty(), "a paused task is not claimed");
/// assert_eq!(admin.resume("report").await?.map(|p| p.by), Some("alice".to_owned()));
/// assert_eq!(scheduler.tick().await?.len(), 1);
/// // A name no scheduler knows is refused, with the known ones.
/// let e = admin.pause("reprot", "alice").await.unwrap_err();
/// assert!(e.message().contains("\"report\""));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct TaskAdmin {
    cache: Cache,
    clock: Arc<dyn Clock>,
    /// The scheduler's own tasks, or `None`: the registry's.
    tasks: Option<Vec<String>>,
}

impl std::fmt::Debug for TaskAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskAdmin")
            .field("tasks", &self.tasks)
            .finish_non_exhaustive()
    }
}

impl TaskAdmin {
    /// Operates the tasks whose records are on `backend` (the store the schedulers use; it
    /// must offer linearizable compare-and-swap). Names are checked against the tasks the
    /// deployment's schedulers registered, and the tasks that have a record.
    pub fn new(backend: DynBackend) -> Result<Self> {
        crate::lease::check_backend(&backend, crate::Durability::AcceptLoss)?;
        Ok(TaskAdmin {
            cache: Cache::new(backend),
            clock: Arc::new(SystemClock),
            tasks: None,
        })
    }

    /// Replaces the wall clock that dates pauses (tests).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    pub(super) fn of(scheduler: &Scheduler) -> Self {
        TaskAdmin {
            cache: scheduler.cache.clone(),
            clock: scheduler.clock.clone(),
            tasks: Some(scheduler.tasks.iter().map(|t| t.name.clone()).collect()),
        }
    }

    /// The names of the tasks this handle knows: the scheduler's, or those the spawned
    /// schedulers of the deployment registered (sorted).
    pub async fn known(&self) -> Result<Vec<String>> {
        if let Some(tasks) = &self.tasks {
            return Ok(tasks.clone());
        }
        Ok(self
            .cache
            .get::<Vec<String>>(&registry_key()?)
            .await?
            .unwrap_or_default())
    }

    /// The stored record of task `name` (`None`: the task never ran), after checking the
    /// name is known.
    pub async fn record(&self, name: &str) -> Result<Option<TaskRecord>> {
        let key = Scheduler::key(name)?;
        let found = Scheduler::load_from(&self.cache, &key).await?;
        self.check_known(name, found.is_some()).await?;
        Ok(found.map(|(rec, _)| rec))
    }

    /// The last runs of task `name` that ended, oldest first (at most its
    /// [`history`](crate::TaskSpec::history) bound): two reads (the task's record, to check
    /// the name, and its history).
    pub async fn history(&self, name: &str) -> Result<Vec<super::record::HistoryEntry>> {
        self.record(name).await?;
        super::history::read(&self.cache, name).await
    }

    /// Pauses task `name` everywhere: from this write on, no scheduler claims a period of it
    /// (runs in progress go on; a dead at-least-once run is still taken over, since its
    /// period was claimed before). Periods that start while it is paused are missed periods
    /// for the task's [`MisfirePolicy`](crate::MisfirePolicy) once it is resumed. Returns the
    /// pause in force and whether this call made it (`false`: the task was already paused,
    /// and the earlier pause stays; the call is idempotent, so a retried request changes
    /// nothing). One read and one compare-and-swap (more if it races with claims).
    ///
    /// An unknown name is an [`ErrorKind::NotFound`] error listing the known ones.
    pub async fn pause(&self, name: &str, by: &str) -> Result<(Pause, bool)> {
        let pause = Pause {
            by: by.to_owned(),
            at_ms: self.clock.now_ms(),
        };
        self.edit(name, |rec| match &rec.paused {
            Some(p) => (false, (p.clone(), false)),
            None => {
                rec.paused = Some(pause.clone());
                (true, (pause.clone(), true))
            }
        })
        .await
    }

    /// Resumes task `name` everywhere: each scheduler claims its next period as usual (at
    /// the latest the period after this call; the current one too if the task's
    /// [`MisfirePolicy`](crate::MisfirePolicy) still runs it). Returns the pause it lifted,
    /// `None` if the task was not paused (idempotent).
    pub async fn resume(&self, name: &str) -> Result<Option<Pause>> {
        self.edit(name, |rec| match rec.paused.take() {
            Some(p) => (true, Some(p)),
            None => (false, None),
        })
        .await
    }

    /// Requests one run of task `name` now, across the deployment, under `request_id`: a
    /// request with an id already made (a retry, from any process) is the same request and
    /// never runs twice; requests with distinct ids each run once, one after another unless
    /// the task allows overlap ([`TaskSpec::allow_overlap`](crate::TaskSpec::allow_overlap)).
    /// The run is fenced like a period's (a token above every earlier one; at most or at
    /// least once per the task's [`RunMode`](crate::RunMode)); its
    /// [`RunContext::trigger`](crate::RunContext::trigger) is the id.
    ///
    /// When: each spawned scheduler reads the deployment's doorbell every
    /// [`request_check`](crate::SchedulerConfig::request_check) (5 s by default), so a
    /// process claims the request within that (plus the end of a run in progress, if the
    /// task does not allow overlap); a scheduler's [`tick`](Scheduler::tick) claims it too.
    ///
    /// Refused: a paused task unless `force` ([`ErrorKind::InvalidInput`], saying it is
    /// paused, by whom and since when); an id empty, over [`MAX_REQUEST_ID`] characters or
    /// with control characters ([`ErrorKind::InvalidInput`]); more than
    /// [`MAX_WAITING_REQUESTS`] waiting ([`ErrorKind::Unavailable`]). Returns the request as
    /// stored and whether this call made it (`false`: a retry of a request already made;
    /// `token` says whether it has been claimed). Ids are remembered for the last
    /// [`MAX_REMEMBERED_REQUESTS`] requests of the task.
    pub async fn run_now(
        &self,
        name: &str,
        request_id: &str,
        by: &str,
        force: bool,
    ) -> Result<(RunRequest, bool)> {
        if request_id.is_empty()
            || request_id.chars().count() > MAX_REQUEST_ID
            || request_id.chars().any(char::is_control)
        {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "a request id is 1 to {MAX_REQUEST_ID} characters without control characters"
                ),
            ));
        }
        let request = RunRequest {
            id: request_id.to_owned(),
            by: by.to_owned(),
            at_ms: self.clock.now_ms(),
            forced: force,
            token: None,
        };
        let made = self
            .edit(name, |rec| {
                if let Some(r) = rec.requests.iter().find(|r| r.id == request_id) {
                    return (false, Ok((r.clone(), false)));
                }
                if let (Some(p), false) = (&rec.paused, force) {
                    return (
                        false,
                        Err(Error::new(
                            ErrorKind::InvalidInput,
                            format!(
                                "task {name:?} is paused (by {} at {} ms): resume it, or force the run",
                                p.by, p.at_ms
                            ),
                        )),
                    );
                }
                let waiting = rec.requests.iter().filter(|r| r.token.is_none()).count();
                if waiting >= MAX_WAITING_REQUESTS {
                    return (
                        false,
                        Err(Error::new(
                            ErrorKind::Unavailable,
                            format!(
                                "task {name:?} has {waiting} run-now requests waiting already; try again after they ran"
                            ),
                        )),
                    );
                }
                rec.requests.push(request.clone());
                // Forget the oldest claimed requests beyond the bound.
                while rec.requests.len() > MAX_REMEMBERED_REQUESTS {
                    match rec.requests.iter().position(|r| r.token.is_some()) {
                        Some(i) => {
                            rec.requests.remove(i);
                        }
                        None => break,
                    }
                }
                (true, Ok((request.clone(), true)))
            })
            .await??;
        // Rung again by a retry too (the first ring may be what failed).
        if made.0.token.is_none() {
            ring(&self.cache).await?;
        }
        Ok(made)
    }

    /// Reads the record of `name` and applies `change` (`true`: write the changed record)
    /// by compare-and-swap, retried on conflict. A record created here starts at a
    /// time-based token, as one created by a claim would (tokens only grow across the loss
    /// of a record).
    async fn edit<T>(
        &self,
        name: &str,
        mut change: impl FnMut(&mut TaskRecord) -> (bool, T),
    ) -> Result<T> {
        let key = Scheduler::key(name)?;
        let mut found = Scheduler::load_from(&self.cache, &key).await?;
        self.check_known(name, found.is_some()).await?;
        let mut tries = larder_cache_api::retry::Backoff::new(
            Duration::from_millis(1),
            Duration::from_millis(50),
        )
        .max_attempts(32);
        while tries.next_attempt().await {
            let (mut rec, version) = match found.take() {
                Some((rec, v)) => (rec, Some(v)),
                None => (
                    TaskRecord {
                        token: token::first(self.clock.now_ms()),
                        ..TaskRecord::default()
                    },
                    None,
                ),
            };
            let (write, answer) = change(&mut rec);
            if !write {
                return Ok(answer);
            }
            match Scheduler::put_to(&self.cache, &key, &rec, version).await? {
                Ok(_) => return Ok(answer),
                Err((current, v)) => found = v.map(|v| (current, v)),
            }
        }
        Err(super::store::lost_races(name, "an operator's change"))
    }

    /// Refuses a name that is neither known nor has a record, listing the known ones.
    async fn check_known(&self, name: &str, has_record: bool) -> Result<()> {
        let known = self.known().await?;
        if known.iter().any(|k| k == name) || (self.tasks.is_none() && has_record) {
            return Ok(());
        }
        let list = if known.is_empty() {
            "none registered yet".to_owned()
        } else {
            known
                .iter()
                .map(|k| format!("{k:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        Err(Error::new(
            ErrorKind::NotFound,
            format!("no task {name:?}; known tasks: {list}"),
        ))
    }
}

fn registry_key() -> Result<Key> {
    Key::new(REGISTRY)
}

pub(super) fn doorbell_key() -> Result<Key> {
    Key::new(DOORBELL)
}

/// Adds one to the doorbell (created at 1), by compare-and-swap.
async fn ring(cache: &Cache) -> Result<()> {
    let key = doorbell_key()?;
    let mut tries =
        larder_cache_api::retry::Backoff::new(Duration::from_millis(1), Duration::from_millis(50))
            .max_attempts(32);
    while tries.next_attempt().await {
        let res = match cache.get_versioned::<u64>(&key).await? {
            Some((n, v)) => cache.replace(&key, &n.wrapping_add(1), None, v).await,
            None => cache.create(&key, &1u64, None).await,
        };
        match res {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Conflict => continue,
            Err(e) => return Err(e),
        }
    }
    Err(super::store::lost_races(
        "*",
        "ringing the run-now doorbell",
    ))
}

/// Adds `names` to the deployment's registry of task names, if any is missing: one read,
/// and a compare-and-swap only when something is added.
pub(super) async fn register(cache: &Cache, names: &[String]) -> Result<()> {
    let key = registry_key()?;
    let mut tries =
        larder_cache_api::retry::Backoff::new(Duration::from_millis(5), Duration::from_millis(200))
            .max_attempts(16);
    while tries.next_attempt().await {
        let (mut list, version) = match cache.get_versioned::<Vec<String>>(&key).await? {
            Some((l, v)) => (l, Some(v)),
            None => (Vec::new(), None),
        };
        if names.iter().all(|n| list.contains(n)) {
            return Ok(());
        }
        for n in names {
            if !list.contains(n) {
                list.push(n.clone());
            }
        }
        if list.len() > MAX_REGISTERED {
            let extra = list.len() - MAX_REGISTERED;
            list.drain(..extra);
        }
        list.sort();
        let res = match version {
            None => cache.create(&key, &list, None).await,
            Some(v) => cache.replace(&key, &list, None, v).await,
        };
        match res {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Conflict => continue,
            Err(e) => return Err(e),
        }
    }
    Err(super::store::lost_races("*", "registering task names"))
}
