//! The stored state of a task: its record, the runs in it, and the layout it is stored in.
//!
//! The layout is a compatibility promise: every layout an earlier version wrote is read
//! (`tests/stored_records.rs` checks it on every codec).

use std::fmt;

use serde::{Deserialize, Serialize};

use larder_cache_api::codec::Postcard;
use larder_cache_api::{envelope, Entry, Result};

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

/// Who paused a task, and when: while a task's record holds one, no scheduler claims a
/// period of it (see [`Scheduler::pause`](crate::Scheduler::pause)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pause {
    /// Who paused it, as the operator named themself (a CLI user, an admin account).
    pub by: String,
    /// When (the pausing process's clock, ms since the epoch).
    pub at_ms: i64,
}

/// A request to run a task now, once across the deployment
/// ([`TaskAdmin::run_now`](crate::TaskAdmin::run_now)), kept in the task's record from the
/// moment it is made: waiting until a process claims it, then remembered (by its id) so
/// that a retried request does not run again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRequest {
    /// The id the requester gave it: a request with the same id is the same request.
    pub id: String,
    /// Who asked.
    pub by: String,
    /// When (the requesting process's clock, ms since the epoch).
    pub at_ms: i64,
    /// Run even while the task is paused.
    pub forced: bool,
    /// The token of its run once a process claimed it (`None`: waiting).
    pub token: Option<u64>,
}

/// How a run ended, as its history keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The job returned `Ok`.
    Ok,
    /// The job returned an error: its text, cut to [`MAX_ERROR_CHARS`] characters.
    Error(String),
    /// The job returned after its run was cancelled (its scheduler was stopped).
    Cancelled,
    /// Its process stopped heartbeating and another took the run over (at least once).
    TakenOver,
    /// Its process stopped heartbeating and another recorded it as abandoned, not to be run
    /// again (at most once).
    Abandoned,
}

impl Outcome {
    /// A short name: `ok`, `error`, `cancelled`, `taken over`, `abandoned`.
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error(_) => "error",
            Outcome::Cancelled => "cancelled",
            Outcome::TakenOver => "taken over",
            Outcome::Abandoned => "abandoned",
        }
    }
}

/// One ended run of a task, in its bounded history ([`TaskAdmin::history`](crate::TaskAdmin::history)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The run-now request it answered (`None`: a period of the schedule).
    pub trigger: Option<String>,
    /// The period (its start, ms; a requested run: when it was claimed).
    pub period: i64,
    /// Who ran it.
    pub holder: String,
    /// Its fencing token.
    pub token: u64,
    /// Start (the runner's clock, ms).
    pub started_at_ms: i64,
    /// End (the clock of the process that recorded it, ms); for a run taken over or
    /// abandoned, when another process found it dead.
    pub finished_at_ms: i64,
    /// How it ended.
    pub outcome: Outcome,
}

/// The most characters of an error kept in a history entry.
pub const MAX_ERROR_CHARS: usize = 200;

/// The default bound of a task's history ([`TaskSpec::history`](crate::TaskSpec::history)).
pub const DEFAULT_HISTORY: usize = 50;

/// The largest bound of a task's history: every write of it carries all of it (about 80
/// bytes a run, more with long errors), so it stays well under the stores' value limits.
pub const MAX_HISTORY: usize = 500;

/// The most run-now requests of one task waiting at once; more are refused.
pub const MAX_WAITING_REQUESTS: usize = 16;

/// How many run-now requests of one task are remembered, waiting or claimed: a retry of one
/// of them is recognised, never run again (the oldest claimed ones are forgotten first).
pub const MAX_REMEMBERED_REQUESTS: usize = 64;

/// The most runs of one task in progress at once (tasks that allow overlap): no new period
/// is claimed while this many are, so the record stays small.
pub const MAX_RUNS_IN_PROGRESS: usize = 8;

/// The stored state of a task.
///
/// Its serde impls are each other's inverse on every codec, self-describing (JSON) or not
/// (postcard, bincode), and read every layout earlier versions wrote (four fields, or five
/// when runs overlap). A sixth field, the operators' part ([`paused`](Self::paused)), is
/// written only while it holds something, so a task nobody operates keeps the earlier
/// layouts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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
    /// Set while the task is paused: no period is claimed until it is resumed.
    pub paused: Option<Pause>,
    /// Run-now requests: those waiting, then the last ones claimed (at most
    /// [`MAX_REMEMBERED_REQUESTS`]), oldest first.
    pub requests: Vec<RunRequest>,
}

/// How a [`TaskRecord`] is stored: the four fields records have always had, then the
/// overlapping runs and their heartbeats only when there are any or a sixth field follows,
/// then the operators' part only when it holds something, so that the record of a task whose
/// runs never overlap and that nobody operates keeps the layout earlier versions read and
/// write.
///
/// A codec that is not self-describing (postcard, bincode) cannot tell a missing last field
/// from a truncated record, so the record is read by [`TaskRecord`]'s own `Deserialize`: it
/// takes the fifth and the sixth field as absent when the input ends where they would start.
#[derive(Deserialize)]
struct StoredTask {
    last_period: Option<i64>,
    token: u64,
    running: Option<RunInfo>,
    last_run: Option<RunInfo>,
    #[serde(default)]
    overlap: Option<Overlap>,
    #[serde(default)]
    ops: Option<Ops>,
}

/// The operators' part of a record.
#[derive(Serialize, Deserialize)]
struct Ops {
    paused: Option<Pause>,
    requests: Vec<RunRequest>,
}

impl Serialize for TaskRecord {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let overlap =
            (!self.overlapping.is_empty() || !self.heartbeats.is_empty()).then(|| Overlap {
                runs: self.overlapping.clone(),
                heartbeats: self.heartbeats.clone(),
            });
        let ops = (self.paused.is_some() || !self.requests.is_empty()).then(|| Ops {
            paused: self.paused.clone(),
            requests: self.requests.clone(),
        });
        let fields = match (&overlap, &ops) {
            (_, Some(_)) => 6,
            (Some(_), None) => 5,
            (None, None) => 4,
        };
        let mut st = s.serialize_struct("StoredTask", fields)?;
        st.serialize_field("last_period", &self.last_period)?;
        st.serialize_field("token", &self.token)?;
        st.serialize_field("running", &self.running)?;
        st.serialize_field("last_run", &self.last_run)?;
        if fields >= 5 {
            // Positional codecs need the fifth field (as "none") before a sixth.
            st.serialize_field("overlap", &overlap)?;
        }
        if fields == 6 {
            st.serialize_field("ops", &ops)?;
        }
        st.end()
    }
}

#[derive(Serialize, Deserialize)]
struct Overlap {
    runs: Vec<RunInfo>,
    heartbeats: Vec<Heartbeat>,
}

const STORED_TASK_FIELDS: &[&str] = &[
    "last_period",
    "token",
    "running",
    "last_run",
    "overlap",
    "ops",
];

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

    // Positional formats: four fields, then `overlap` and `ops` if the input goes on.
    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<TaskRecord, A::Error> {
        use serde::de::Error as _;
        let missing = |i| A::Error::invalid_length(i, &"a task record of 4 to 6 fields");
        let last_period = seq.next_element()?.ok_or_else(|| missing(0))?;
        let token = seq.next_element()?.ok_or_else(|| missing(1))?;
        let running = seq.next_element()?.ok_or_else(|| missing(2))?;
        let last_run = seq.next_element()?.ok_or_else(|| missing(3))?;
        let overlap = seq
            .next_element_seed(Trailing(std::marker::PhantomData))?
            .flatten();
        let ops = seq
            .next_element_seed(Trailing(std::marker::PhantomData))?
            .flatten();
        Ok(StoredTask {
            last_period,
            token,
            running,
            last_run,
            overlap,
            ops,
        }
        .into())
    }
}

/// An optional last field of a positional record (`overlap`, `ops`). Reading it fails
/// before its `Option` tag is seen only when no tag is there: the input ended (a record
/// without the field) or the next byte is no tag at all (which the codec then reports as
/// trailing input, or takes as the end). Once the tag is read, every error is the record's.
struct Trailing<T>(std::marker::PhantomData<T>);

impl<'de, T: Deserialize<'de>> serde::de::DeserializeSeed<'de> for Trailing<T> {
    type Value = Option<T>;

    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<Option<T>, D::Error> {
        let seen = std::cell::Cell::new(false);
        match d.deserialize_option(TrailingTag {
            seen: &seen,
            field: std::marker::PhantomData,
        }) {
            Ok(v) => Ok(v),
            Err(_) if !seen.get() => Ok(None),
            Err(e) => Err(e),
        }
    }
}

struct TrailingTag<'a, T> {
    seen: &'a std::cell::Cell<bool>,
    field: std::marker::PhantomData<T>,
}

impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for TrailingTag<'_, T> {
    type Value = Option<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an optional last field of a task record")
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
        T::deserialize(d).map(Some)
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
            paused: s.ops.as_ref().and_then(|o| o.paused.clone()),
            requests: s.ops.map(|o| o.requests).unwrap_or_default(),
        }
    }
}

impl TaskRecord {
    /// The runs in progress, oldest period first.
    pub fn runs_in_progress(&self) -> impl Iterator<Item = &RunInfo> {
        self.overlapping.iter().chain(self.running.iter())
    }

    pub(super) fn take_runs(&mut self) -> Vec<RunInfo> {
        let mut runs = std::mem::take(&mut self.overlapping);
        runs.extend(self.running.take());
        runs
    }

    /// Stores `runs` as the runs in progress: the latest period in `running`, the others in
    /// `overlapping`. Heartbeats are kept for these runs only; while there are two or more,
    /// each has one, so that another run's activity never passes for its own.
    pub(super) fn put_runs(&mut self, mut runs: Vec<RunInfo>) {
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

    /// The history entry of `run`, one of this record's runs, ended at `at_ms` with
    /// `outcome` (an error cut to [`MAX_ERROR_CHARS`]).
    pub(super) fn history_entry(
        &self,
        run: &RunInfo,
        outcome: Outcome,
        at_ms: i64,
    ) -> HistoryEntry {
        let outcome = match outcome {
            Outcome::Error(e) if e.chars().count() > MAX_ERROR_CHARS => {
                Outcome::Error(e.chars().take(MAX_ERROR_CHARS).collect())
            }
            o => o,
        };
        let trigger = self
            .requests
            .iter()
            .find(|r| r.token == Some(run.token))
            .map(|r| r.id.clone());
        HistoryEntry {
            trigger,
            period: run.period,
            holder: run.holder.clone(),
            token: run.token,
            started_at_ms: run.started_at_ms,
            finished_at_ms: at_ms,
            outcome,
        }
    }

    /// Records `run` as the last run that ended, unless a later period has already ended.
    pub(super) fn set_last_run(&mut self, run: RunInfo) {
        if self
            .last_run
            .as_ref()
            .is_none_or(|l| l.period <= run.period)
        {
            self.last_run = Some(run);
        }
    }
}

/// A stored task record, in any layout a version of larder wrote.
pub(super) fn decode(entry: &Entry) -> Result<TaskRecord> {
    envelope::open::<_, TaskRecord>(&Postcard, &entry.value)
}

/// Adds `entries` to a task's stored history (oldest first), keeping the last `bound`; an
/// entry for a run already in it replaces its entry (a run recorded as abandoned that did
/// end after all says how, once).
pub(super) fn append_history(
    history: &mut Vec<HistoryEntry>,
    entries: &[HistoryEntry],
    bound: usize,
) {
    for entry in entries {
        match history.iter_mut().find(|h| h.token == entry.token) {
            Some(h) => *h = entry.clone(),
            None => history.push(entry.clone()),
        }
    }
    if history.len() > bound {
        let extra = history.len() - bound;
        history.drain(..extra);
    }
}
