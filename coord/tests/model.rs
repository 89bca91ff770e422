//! The lease and period-claim protocols, model-checked with `stateright`.
//!
//! # What is modelled
//!
//! Two models, each of two processes sharing one store of versioned records with
//! compare-and-swap (every write gives a new version, never repeated), and one **fenced
//! store** that accepts a write only if its token is at least the highest it has seen.
//!
//! * Time is discrete. A `Tick` advances global time by one; each process has its own
//!   monotonic clock, which advances with the tick unless the process is **paused** (a GC
//!   pause, a stopped VM: its clock stops while time passes for the others, then it goes on
//!   where it was). A process may also **crash** (it stops for good; the store keeps its
//!   data), and any process may be slow: it need not take a step in a tick (a hung runner
//!   that stops heartbeating while its clock goes on).
//! * Each process's protocol step is one action; a read-and-decide and the
//!   compare-and-swap it prepares are separate actions, so any other process's steps,
//!   pauses and ticks may come between them, as they may in the code.
//! * A fenced effect is two actions too: the holder decides to write (for the lease, only
//!   while its own clock says it is valid), then the write lands at the fenced store, after
//!   whatever pause or takeover came in between.
//!
//! **Lease** (`larder_coord::Lease`, `coord/src/lease.rs`): acquire (read; create if absent;
//! take back at once with token + 1 if the record names this process; otherwise take over
//! with token + 1 only after seeing the record's version **unchanged for a whole lease by
//! its own clock**, or at once if released), renew every retry period by compare-and-swap
//! on the held version (a renewal attempted at or after `valid_until` steps down instead;
//! a failed one drops the lease), `valid_until = start of the acquire or renew + renew
//! deadline`, release by compare-and-swap, and fenced effects with the held token. Timing
//! in ticks: lease 3, renew deadline 2, retry period 1 (valid: `lease > renew deadline >
//! 1.2 × retry`, `lease ≥ renew deadline + retry`).
//!
//! **Periodic task** (`larder_coord::Scheduler`, `coord/src/task/`), one task with a
//! period of 3 ticks by each process's own clock, misfire policy `RunLatest`, no overlap, in
//! both run modes: claim (read; observe whether the running run's record has been seen
//! unchanged for a whole lease, as `Scheduler::dead_runs` does; then the decision is the
//! code's own claim decision, `plan` in `coord/src/task/plan.rs`, called on the record
//! translated to the code's types: a tick is a second of the wall clock the code reads,
//! tokens are the code's; at-least-once takes a dead run over with token + 1 for the same
//! period, at-most-once records it abandoned, otherwise the current period is claimed if it
//! is after the last claimed one, with token + 1, or a time-based first token if the record
//! is absent; one compare-and-swap, or create if the record is absent), heartbeat every retry period
//! (read; rewrite if the run is still ours, stop if the same period runs under another
//! token), finish (read; the bookkeeping of `Scheduler::finish`; compare-and-swap, retried
//! on conflict), fenced effects with the run's token at any time while the run goes on.
//! Where the code decides on the record without reading it first (on the record as this
//! process last wrote it, or on the current record a lost compare-and-swap returned), the
//! model's read stands for it: each is a state the record held, and the compare-and-swap
//! on its version succeeds only if the record still holds it, exactly as after a read (a
//! run is judged dead only after two looks a lease apart found it unchanged, whichever
//! way each look was made).
//!
//! **Bounds** (so that each check is exhaustive and takes seconds in a debug build): the
//! lease over 4 ticks with 1 pause, 1 crash and 2 fenced effects; the task over 3 ticks (two
//! periods) with 1 pause, 1 crash and 2 fenced effects. Release is explored only in the
//! variant with the short takeover (adding it to the main lease check doubles its states).
//! Each correct check explores over 400,000 distinct states (asserted: at least 100,000).
//!
//! # Properties
//!
//! * **no period claimed twice while the store keeps its data**: a claim of a period (not
//!   an at-least-once takeover of a dead run, which re-runs it by design under a higher
//!   token) never succeeds twice for one period;
//! * **fenced effects apply in token order**: every effect the fenced store accepts has a
//!   token at least that of the previous one, and an equal token only from the same
//!   process (a token is never handed to two holders);
//! * for the lease, **one holder at a time while no process pauses**: at no instant do two
//!   processes each believe, by their own clock, that they hold the lease, unless some
//!   process has paused (with pauses this fails, which is why effects are fenced; the model
//!   finds such a state, a `sometimes` property, so the fence property is not vacuous);
//! * **no period claimed once the task is paused**: with an operator's pause (one
//!   compare-and-swap on the record, at any moment, `task_protocol_honours_an_operator_pause`),
//!   no claim of a period succeeds on a record that says the task is paused (a claim decided
//!   before the pause loses its compare-and-swap to it);
//! * **each run-now request is claimed once** (a takeover of its run aside): with an
//!   operator's request (one compare-and-swap adding it to the record, at any moment,
//!   `task_protocol_runs_a_request_once`; a claim without compare-and-swap breaks it);
//! * `sometimes` properties that show the interesting cases are reached (a takeover, an
//!   effect refused by the fence, a claim attempt that finds the task paused, a request
//!   run).
//!
//! Broken variants show the properties can fail: a fence that does not compare tokens, a
//! takeover that waits less than the renew deadline, a claim written without
//! compare-and-swap, and a store that loses its data.
//!
//! # What is not modelled
//!
//! Network delay of a single store operation (each is atomic at one instant: the store is
//! linearizable, as `linearizable_cas` declares and the conformance suite checks), lost
//! replies (an ambiguous write), clocks that run at different rates (only stopping), wall
//! clocks other than each process's own clock, misfire policies that claim more than one
//! period (`MisfirePolicy::RunEach`), overlap,
//! cron schedules, pinning, process restarts (a crashed process does not come back; a
//! restarted one is a new process with no memory, like a third one), eviction (the property
//! is stated for a store that keeps its data; the variant that loses it shows why), and the
//! display timestamps of the records.
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::{Duration, Instant};

use larder_cache_api::Version;
use larder_coord::claim_decision::{plan, DeadRuns};
use larder_coord::{MisfirePolicy, Pause, RunInfo, RunMode, RunRequest, Schedule, TaskSpec};
use stateright::{Checker, HasDiscoveries, Model, Property};

/// Timing in ticks.
const LEASE: u8 = 3;
const RENEW_DEADLINE: u8 = 2;
const RETRY: u8 = 1;
/// The task's period in ticks.
const PERIOD: u8 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Fence {
    /// Accepts a write iff its token ≥ the highest seen (the real contract).
    Compare,
    /// Broken: accepts every write.
    Blind,
}

/// The fenced store: the highest token seen, the last accepted write (token, process), and
/// whether an accepted write ever went against token order.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
struct FencedStore {
    highest: u64,
    last: Option<(u64, u8)>,
    refused: bool,
    disorder: bool,
}

impl FencedStore {
    fn write(&mut self, fence: Fence, token: u64, pid: u8) {
        if fence == Fence::Compare && token < self.highest {
            self.refused = true;
            return;
        }
        if let Some((t, p)) = self.last {
            if token < t || (token == t && pid != p) {
                self.disorder = true;
            }
        }
        self.highest = self.highest.max(token);
        self.last = Some((token, pid));
    }
}

/// What every process has: a clock that stops while it is paused, and how long it has seen
/// a record's version unchanged (`unchanged_for` in the code).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Clock {
    clk: u8,
    up: bool,
    paused: bool,
    /// (version, local time first seen).
    observed: Option<(u8, u8)>,
}

impl Clock {
    fn new() -> Self {
        Clock {
            clk: 0,
            up: true,
            paused: false,
            observed: None,
        }
    }

    fn runs(&self) -> bool {
        self.up && !self.paused
    }

    fn unchanged_for(&mut self, version: u8) -> u8 {
        match self.observed {
            Some((v, since)) if v == version => self.clk - since,
            _ => {
                self.observed = Some((version, self.clk));
                0
            }
        }
    }
}

/// Faults and time, common to both models.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct World {
    now: u8,
    pauses_left: u8,
    crashes_left: u8,
    ever_paused: bool,
    effects_left: u8,
    version: u8,
    fence: FencedStore,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Fault {
    Tick,
    Pause(u8),
    Resume(u8),
    Crash(u8),
}

fn fault_actions(w: &World, clocks: &[&Clock], horizon: u8, out: &mut Vec<Fault>) {
    if w.now < horizon {
        out.push(Fault::Tick);
    }
    for (i, c) in clocks.iter().enumerate() {
        let i = i as u8;
        if c.runs() && w.pauses_left > 0 {
            out.push(Fault::Pause(i));
        }
        if c.up && c.paused {
            out.push(Fault::Resume(i));
        }
        if c.up && w.crashes_left > 0 {
            out.push(Fault::Crash(i));
        }
    }
}

/// Applies a fault; returns the process that crashed, if one did.
fn apply_fault(w: &mut World, clocks: &mut [&mut Clock], f: Fault) -> Option<usize> {
    match f {
        Fault::Tick => {
            w.now += 1;
            for c in clocks.iter_mut() {
                if c.runs() {
                    c.clk += 1;
                }
            }
        }
        Fault::Pause(i) => {
            clocks[i as usize].paused = true;
            w.pauses_left -= 1;
            w.ever_paused = true;
        }
        Fault::Resume(i) => clocks[i as usize].paused = false,
        Fault::Crash(i) => {
            clocks[i as usize].up = false;
            w.crashes_left -= 1;
            return Some(i as usize);
        }
    }
    None
}

// ---------------------------------------------------------------------------------------
// The lease.

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct LeaseRecord {
    holder: u8,
    token: u8,
    released: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Held {
    token: u8,
    version: u8,
    valid_until: u8,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum LeaseStep {
    Idle,
    /// Acquire decided: compare-and-swap (create if `expect` is `None`).
    AcquireCas {
        expect: Option<u8>,
        token: u8,
        start: u8,
    },
    RenewCas {
        start: u8,
    },
    ReleaseCas,
    /// A fenced write on its way to the fenced store.
    Effect {
        token: u8,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct LeaseProc {
    clock: Clock,
    held: Option<Held>,
    step: LeaseStep,
    /// Local time of the next acquire or renew attempt.
    next_at: u8,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct LeaseState {
    world: World,
    record: Option<(LeaseRecord, u8)>,
    procs: Vec<LeaseProc>,
    releases_left: u8,
    takeovers: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum LeaseAction {
    Fault(Fault),
    /// The next protocol step of a process (acquire, renew, or finishing a step begun).
    Step(u8),
    BeginEffect(u8),
    Release(u8),
}

#[derive(Clone, Debug)]
struct LeaseModel {
    procs: u8,
    horizon: u8,
    pauses: u8,
    crashes: u8,
    effects: u8,
    releases: u8,
    fence: Fence,
    /// How long a candidate waits with the record unchanged before taking over (the code:
    /// a whole lease).
    takeover_wait: u8,
}

impl LeaseModel {
    fn correct() -> Self {
        LeaseModel {
            procs: 2,
            horizon: 4,
            pauses: 1,
            crashes: 1,
            effects: 2,
            releases: 0,
            fence: Fence::Compare,
            takeover_wait: LEASE,
        }
    }

    fn valid_believers(s: &LeaseState) -> usize {
        s.procs
            .iter()
            .filter(|p| p.clock.up && p.held.as_ref().is_some_and(|h| p.clock.clk < h.valid_until))
            .count()
    }
}

impl Model for LeaseModel {
    type State = LeaseState;
    type Action = LeaseAction;

    fn init_states(&self) -> Vec<LeaseState> {
        vec![LeaseState {
            world: World {
                now: 0,
                pauses_left: self.pauses,
                crashes_left: self.crashes,
                ever_paused: false,
                effects_left: self.effects,
                version: 0,
                fence: FencedStore::default(),
            },
            record: None,
            procs: (0..self.procs)
                .map(|_| LeaseProc {
                    clock: Clock::new(),
                    held: None,
                    step: LeaseStep::Idle,
                    next_at: 0,
                })
                .collect(),
            releases_left: self.releases,
            takeovers: 0,
        }]
    }

    fn actions(&self, s: &LeaseState, out: &mut Vec<LeaseAction>) {
        let clocks: Vec<&Clock> = s.procs.iter().map(|p| &p.clock).collect();
        let mut faults = Vec::new();
        fault_actions(&s.world, &clocks, self.horizon, &mut faults);
        out.extend(faults.into_iter().map(LeaseAction::Fault));
        for (i, p) in s.procs.iter().enumerate() {
            let i = i as u8;
            if !p.clock.runs() {
                continue;
            }
            match (&p.step, &p.held) {
                (LeaseStep::Idle, _) if p.clock.clk >= p.next_at => out.push(LeaseAction::Step(i)),
                (LeaseStep::Idle, _) => {}
                _ => out.push(LeaseAction::Step(i)),
            }
            if let (LeaseStep::Idle, Some(h)) = (&p.step, &p.held) {
                if p.clock.clk < h.valid_until && s.world.effects_left > 0 {
                    out.push(LeaseAction::BeginEffect(i));
                }
                if s.releases_left > 0 {
                    out.push(LeaseAction::Release(i));
                }
            }
        }
    }

    fn next_state(&self, s: &LeaseState, a: LeaseAction) -> Option<LeaseState> {
        let mut s = s.clone();
        match a {
            LeaseAction::Fault(f) => {
                let mut clocks: Vec<&mut Clock> =
                    s.procs.iter_mut().map(|p| &mut p.clock).collect();
                if let Some(i) = apply_fault(&mut s.world, &mut clocks, f) {
                    s.procs[i].held = None;
                    s.procs[i].step = LeaseStep::Idle;
                }
            }
            LeaseAction::BeginEffect(i) => {
                let p = &mut s.procs[i as usize];
                let token = p.held.as_ref()?.token;
                p.step = LeaseStep::Effect { token };
                s.world.effects_left -= 1;
            }
            LeaseAction::Release(i) => {
                s.procs[i as usize].step = LeaseStep::ReleaseCas;
                s.releases_left -= 1;
            }
            LeaseAction::Step(i) => {
                let me = i;
                let p = &mut s.procs[i as usize];
                let clk = p.clock.clk;
                match std::mem::replace(&mut p.step, LeaseStep::Idle) {
                    LeaseStep::Idle => match &p.held {
                        None => {
                            // try_acquire: read and decide.
                            p.next_at = clk + RETRY;
                            match &s.record {
                                None => {
                                    p.step = LeaseStep::AcquireCas {
                                        expect: None,
                                        token: 1,
                                        start: clk,
                                    }
                                }
                                Some((rec, version)) => {
                                    let ours = rec.holder == me && !rec.released;
                                    let waited = if ours {
                                        0
                                    } else {
                                        p.clock.unchanged_for(*version)
                                    };
                                    if ours || rec.released || waited >= self.takeover_wait {
                                        p.step = LeaseStep::AcquireCas {
                                            expect: Some(*version),
                                            token: rec.token + 1,
                                            start: clk,
                                        };
                                    }
                                }
                            }
                        }
                        Some(h) => {
                            // renew: lapsed locally, or compare-and-swap.
                            if clk >= h.valid_until {
                                p.held = None;
                                p.next_at = clk + RETRY;
                            } else {
                                p.step = LeaseStep::RenewCas { start: clk };
                            }
                        }
                    },
                    LeaseStep::AcquireCas {
                        expect,
                        token,
                        start,
                    } => {
                        p.next_at = clk + RETRY;
                        if s.record.as_ref().map(|r| r.1) == expect {
                            if let Some((rec, _)) = &s.record {
                                if rec.holder != me && !rec.released {
                                    s.takeovers += 1;
                                }
                            }
                            s.world.version += 1;
                            s.record = Some((
                                LeaseRecord {
                                    holder: me,
                                    token,
                                    released: false,
                                },
                                s.world.version,
                            ));
                            p.held = Some(Held {
                                token,
                                version: s.world.version,
                                valid_until: start + RENEW_DEADLINE,
                            });
                        }
                    }
                    LeaseStep::RenewCas { start } => {
                        p.next_at = clk + RETRY;
                        let h = p.held.as_mut()?;
                        match &mut s.record {
                            Some((rec, v)) if *v == h.version => {
                                s.world.version += 1;
                                *v = s.world.version;
                                rec.released = false;
                                h.version = s.world.version;
                                h.valid_until = start + RENEW_DEADLINE;
                            }
                            _ => p.held = None,
                        }
                    }
                    LeaseStep::ReleaseCas => {
                        let h = p.held.take()?;
                        if let Some((rec, v)) = &mut s.record {
                            if *v == h.version {
                                s.world.version += 1;
                                *v = s.world.version;
                                rec.released = true;
                            }
                        }
                    }
                    LeaseStep::Effect { token } => {
                        s.world.fence.write(self.fence, u64::from(token), me)
                    }
                }
            }
        }
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(
                "fenced effects apply in token order",
                |_, s: &LeaseState| !s.world.fence.disorder,
            ),
            Property::always(
                "one holder at a time while no process pauses",
                |_, s: &LeaseState| s.world.ever_paused || Self::valid_believers(s) <= 1,
            ),
            Property::sometimes(
                "two believe they hold after a pause",
                |_, s: &LeaseState| Self::valid_believers(s) >= 2,
            ),
            Property::sometimes("a takeover by observation", |_, s: &LeaseState| {
                s.takeovers > 0
            }),
            Property::sometimes("the fence refuses a stale holder", |_, s: &LeaseState| {
                s.world.fence.refused
            }),
        ]
    }
}

// ---------------------------------------------------------------------------------------
// The periodic task.

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Run {
    period: u8,
    holder: u8,
    token: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
struct TaskRecord {
    last_period: Option<u8>,
    token: u64,
    running: Option<Run>,
    /// (period, token) of the last run that ended (or was abandoned).
    last_run: Option<(u8, u64)>,
    /// Paused by an operator.
    paused: bool,
    /// Run-now requests: their id and, once claimed, their run's token.
    requests: Vec<(u8, Option<u64>)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Claim {
    period: u8,
    token: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum TaskStep {
    Idle,
    /// A claim decided: compare-and-swap (create if `expect` is `None`). `fresh`: a new
    /// period (not a takeover).
    ClaimCas {
        expect: Option<u8>,
        record: TaskRecord,
        claim: Claim,
        fresh: bool,
        /// The claim answers a run-now request.
        trigger: bool,
    },
    BeatCas {
        expect: u8,
    },
    FinishCas {
        expect: u8,
        record: TaskRecord,
    },
    Effect {
        token: u64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct TaskProc {
    clock: Clock,
    run: Option<Claim>,
    /// The job has returned: finishing (retried on conflict).
    finishing: bool,
    step: TaskStep,
    next_poll: u8,
    next_beat: u8,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct TaskState {
    world: World,
    record: Option<(TaskRecord, u8)>,
    procs: Vec<TaskProc>,
    /// Periods claimed (bit per period) and whether one was claimed twice.
    claimed: u32,
    claimed_twice: bool,
    takeovers: u8,
    wipes_left: u8,
    /// Operator pauses left to make.
    op_pauses_left: u8,
    /// A period was claimed while the stored record said the task was paused.
    claimed_while_paused: bool,
    /// A claim attempt decided on a paused record.
    pause_seen: bool,
    /// Operator run-now requests left to make (each with a new id).
    op_requests_left: u8,
    /// Successful claims of a run-now request that were not takeovers.
    request_claims: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum TaskAction {
    Fault(Fault),
    /// Poll: read the record and decide on a claim.
    Claim(u8),
    Heartbeat(u8),
    /// The job returns: start finishing.
    JobDone(u8),
    BeginEffect(u8),
    /// Complete the step begun (a compare-and-swap, a fenced write, a finish).
    Step(u8),
    /// Broken store: the task record is lost.
    Wipe,
    /// An operator pauses the task (`TaskAdmin::pause`: one compare-and-swap, retried on
    /// conflict, so it lands atomically on whatever record is stored).
    OperatorPause,
    /// An operator requests a run now (`TaskAdmin::run_now`, likewise).
    OperatorRequest,
}

#[derive(Clone, Debug)]
struct TaskModel {
    procs: u8,
    horizon: u8,
    pauses: u8,
    crashes: u8,
    effects: u8,
    mode: RunMode,
    /// The task as the code is given it (its period in milliseconds, `RunLatest`, `mode`).
    spec: TaskSpec,
    fence: Fence,
    /// Broken: the claim overwrites the record without comparing versions.
    blind_claim: bool,
    /// Broken store: it may lose the record this many times.
    wipes: u8,
    /// How many times an operator may pause the task.
    op_pauses: u8,
    /// How many run-now requests an operator may make.
    op_requests: u8,
}

impl TaskModel {
    fn correct(mode: RunMode) -> Self {
        let every = Schedule::every(Duration::from_millis(PERIOD_MS as u64)).unwrap();
        TaskModel {
            procs: 2,
            horizon: 3,
            pauses: 1,
            crashes: 1,
            effects: 2,
            mode,
            spec: TaskSpec::new("task", every, |_| async { Ok(()) })
                .mode(mode)
                .misfire(MisfirePolicy::RunLatest),
            fence: Fence::Compare,
            blind_claim: false,
            wipes: 0,
            op_pauses: 0,
            op_requests: 0,
        }
    }

    /// `Scheduler::claim`, read and decide: the step to take, if any. The decision is the
    /// code's own (`plan`); the model only observes the run's sign of life as the scheduler
    /// does before it decides (`Scheduler::dead_runs`: the record's version, unchanged for
    /// a whole lease by this process's clock), and translates the record both ways.
    fn decide_claim(
        &self,
        p: &mut TaskProc,
        me: u8,
        stored: &Option<(TaskRecord, u8)>,
    ) -> Option<TaskStep> {
        let (rec, version) = match stored {
            Some((r, v)) => (r.clone(), Some(*v)),
            None => (TaskRecord::default(), None),
        };
        let mut dead = DeadRuns::default();
        if let (Some(run), Some(v)) = (rec.running, version) {
            if p.clock.unchanged_for(v) >= LEASE {
                dead.tokens.push(run.token);
            }
        }
        let decision = plan(
            &self.spec,
            &holder_name(me),
            i64::from(p.clock.clk) * MS_PER_TICK,
            rec.to_code(),
            version.map(|v| Version::from_raw(u64::from(v))),
            &dead,
        );
        let write = decision.write?;
        Some(TaskStep::ClaimCas {
            expect: version,
            record: TaskRecord::from_code(&write.record),
            claim: Claim {
                period: period_index(write.claim.period),
                token: write.claim.token,
            },
            fresh: !write.takeover,
            trigger: write.claim.trigger.is_some(),
        })
    }
}

// The translation between the model's record and the code's: a tick is a second of the
// wall clock the code reads, periods are named by their index and holders by their number
// (tokens are the code's, `u64`); the fields the decision does not read (display times,
// outcomes) are left empty.

/// Milliseconds of the code's wall clock per tick.
const MS_PER_TICK: i64 = 1000;
/// The task's period in the code's milliseconds.
const PERIOD_MS: i64 = PERIOD as i64 * MS_PER_TICK;

fn holder_name(p: u8) -> String {
    format!("p{p}")
}

fn period_index(ms: i64) -> u8 {
    u8::try_from(ms / PERIOD_MS).unwrap()
}

fn run_info(period: u8, holder: String, token: u64) -> RunInfo {
    RunInfo {
        period: i64::from(period) * PERIOD_MS,
        holder,
        token,
        started_at_ms: 0,
        finished_at_ms: None,
        outcome: None,
    }
}

impl TaskRecord {
    fn to_code(&self) -> larder_coord::TaskRecord {
        larder_coord::TaskRecord {
            last_period: self.last_period.map(|p| i64::from(p) * PERIOD_MS),
            token: self.token,
            running: self
                .running
                .map(|r| run_info(r.period, holder_name(r.holder), r.token)),
            last_run: self
                .last_run
                .map(|(period, token)| run_info(period, String::new(), token)),
            paused: self.paused.then(|| Pause {
                by: "operator".into(),
                at_ms: 0,
            }),
            requests: self
                .requests
                .iter()
                .map(|&(id, token)| RunRequest {
                    id: format!("r{id}"),
                    by: "operator".into(),
                    at_ms: 0,
                    forced: false,
                    token,
                })
                .collect(),
            ..Default::default()
        }
    }

    fn from_code(r: &larder_coord::TaskRecord) -> Self {
        // No overlap in the model: one run in progress at most, no per-run heartbeats.
        assert!(r.overlapping.is_empty() && r.heartbeats.is_empty());
        TaskRecord {
            last_period: r.last_period.map(period_index),
            token: r.token,
            running: r.running.as_ref().map(|run| Run {
                period: period_index(run.period),
                holder: run.holder[1..].parse().unwrap(),
                token: run.token,
            }),
            last_run: r
                .last_run
                .as_ref()
                .map(|run| (period_index(run.period), run.token)),
            paused: r.paused.is_some(),
            requests: r
                .requests
                .iter()
                .map(|q| (q.id[1..].parse().unwrap(), q.token))
                .collect(),
        }
    }
}

impl Model for TaskModel {
    type State = TaskState;
    type Action = TaskAction;

    fn init_states(&self) -> Vec<TaskState> {
        vec![TaskState {
            world: World {
                now: 0,
                pauses_left: self.pauses,
                crashes_left: self.crashes,
                ever_paused: false,
                effects_left: self.effects,
                version: 0,
                fence: FencedStore::default(),
            },
            record: None,
            procs: (0..self.procs)
                .map(|_| TaskProc {
                    clock: Clock::new(),
                    run: None,
                    finishing: false,
                    step: TaskStep::Idle,
                    next_poll: 0,
                    next_beat: 0,
                })
                .collect(),
            claimed: 0,
            claimed_twice: false,
            takeovers: 0,
            wipes_left: self.wipes,
            op_pauses_left: self.op_pauses,
            claimed_while_paused: false,
            pause_seen: false,
            op_requests_left: self.op_requests,
            request_claims: 0,
        }]
    }

    fn actions(&self, s: &TaskState, out: &mut Vec<TaskAction>) {
        let clocks: Vec<&Clock> = s.procs.iter().map(|p| &p.clock).collect();
        let mut faults = Vec::new();
        fault_actions(&s.world, &clocks, self.horizon, &mut faults);
        out.extend(faults.into_iter().map(TaskAction::Fault));
        if s.wipes_left > 0 && s.record.is_some() {
            out.push(TaskAction::Wipe);
        }
        if s.op_pauses_left > 0 && s.record.is_some() {
            out.push(TaskAction::OperatorPause);
        }
        if s.op_requests_left > 0 && s.record.is_some() {
            out.push(TaskAction::OperatorRequest);
        }
        for (i, p) in s.procs.iter().enumerate() {
            let i = i as u8;
            if !p.clock.runs() {
                continue;
            }
            if p.step != TaskStep::Idle {
                out.push(TaskAction::Step(i));
                continue;
            }
            match p.run {
                None if p.clock.clk >= p.next_poll => out.push(TaskAction::Claim(i)),
                None => {}
                Some(_) if p.finishing => out.push(TaskAction::JobDone(i)),
                Some(_) => {
                    out.push(TaskAction::JobDone(i));
                    if p.clock.clk >= p.next_beat {
                        out.push(TaskAction::Heartbeat(i));
                    }
                    if s.world.effects_left > 0 {
                        out.push(TaskAction::BeginEffect(i));
                    }
                }
            }
        }
    }

    fn next_state(&self, s: &TaskState, a: TaskAction) -> Option<TaskState> {
        let mut s = s.clone();
        match a {
            TaskAction::Fault(f) => {
                let mut clocks: Vec<&mut Clock> =
                    s.procs.iter_mut().map(|p| &mut p.clock).collect();
                if let Some(i) = apply_fault(&mut s.world, &mut clocks, f) {
                    let p = &mut s.procs[i];
                    p.run = None;
                    p.finishing = false;
                    p.step = TaskStep::Idle;
                }
            }
            TaskAction::Wipe => {
                s.record = None;
                s.wipes_left -= 1;
            }
            TaskAction::OperatorPause => {
                let (rec, v) = s.record.as_mut()?;
                rec.paused = true;
                s.world.version += 1;
                *v = s.world.version;
                s.op_pauses_left -= 1;
            }
            TaskAction::OperatorRequest => {
                let (rec, v) = s.record.as_mut()?;
                rec.requests.push((s.op_requests_left, None));
                s.world.version += 1;
                *v = s.world.version;
                s.op_requests_left -= 1;
            }
            TaskAction::Claim(i) => {
                let p = &mut s.procs[i as usize];
                p.next_poll = p.clock.clk + 1;
                if s.record.as_ref().is_some_and(|(r, _)| r.paused) {
                    s.pause_seen = true;
                }
                if let Some(step) = self.decide_claim(p, i, &s.record) {
                    p.step = step;
                }
            }
            TaskAction::Heartbeat(i) => {
                let p = &mut s.procs[i as usize];
                let claim = p.run?;
                match &s.record {
                    None => p.run = None,
                    Some((rec, v)) => match rec.running {
                        Some(r) if r.token == claim.token => {
                            p.step = TaskStep::BeatCas { expect: *v }
                        }
                        // Taken over: stop the run.
                        Some(r) if r.period == claim.period => p.run = None,
                        _ => p.next_beat = p.clock.clk + RETRY,
                    },
                }
            }
            TaskAction::JobDone(i) => {
                // `Scheduler::finish`, read and decide.
                let p = &mut s.procs[i as usize];
                let claim = p.run?;
                p.finishing = true;
                let Some((rec, v)) = &s.record else {
                    p.run = None;
                    p.finishing = false;
                    return Some(s);
                };
                let mut rec = rec.clone();
                let done = match rec.running {
                    Some(r) if r.token == claim.token => {
                        rec.running = None;
                        false
                    }
                    Some(r) if r.period == claim.period => true,
                    _ => match rec.last_run {
                        Some((period, token)) if period == claim.period && token != claim.token => {
                            true
                        }
                        Some((period, _)) if period > claim.period => true,
                        _ => false,
                    },
                };
                if done {
                    p.run = None;
                    p.finishing = false;
                } else {
                    rec.last_run = Some((claim.period, claim.token));
                    p.step = TaskStep::FinishCas {
                        expect: *v,
                        record: rec,
                    };
                }
            }
            TaskAction::BeginEffect(i) => {
                let p = &mut s.procs[i as usize];
                p.step = TaskStep::Effect {
                    token: p.run?.token,
                };
                s.world.effects_left -= 1;
            }
            TaskAction::Step(i) => {
                let p = &mut s.procs[i as usize];
                let current = s.record.as_ref().map(|r| r.1);
                match std::mem::replace(&mut p.step, TaskStep::Idle) {
                    TaskStep::Idle => return None,
                    TaskStep::ClaimCas {
                        expect,
                        record,
                        claim,
                        fresh,
                        trigger,
                    } => {
                        if self.blind_claim || current == expect {
                            if fresh && s.record.as_ref().is_some_and(|(r, _)| r.paused) {
                                s.claimed_while_paused = true;
                            }
                            s.world.version += 1;
                            s.record = Some((record, s.world.version));
                            p.run = Some(claim);
                            p.next_beat = p.clock.clk + RETRY;
                            if fresh && trigger {
                                s.request_claims += 1;
                            } else if fresh {
                                let bit = 1u32 << claim.period;
                                if s.claimed & bit != 0 {
                                    s.claimed_twice = true;
                                }
                                s.claimed |= bit;
                            } else {
                                s.takeovers += 1;
                            }
                        }
                    }
                    TaskStep::BeatCas { expect } => {
                        if current == Some(expect) {
                            s.world.version += 1;
                            s.record.as_mut()?.1 = s.world.version;
                            p.next_beat = p.clock.clk + RETRY;
                        }
                        // On conflict: read again at once (next_beat has passed).
                    }
                    TaskStep::FinishCas { expect, record } => {
                        if current == Some(expect) {
                            s.world.version += 1;
                            s.record = Some((record, s.world.version));
                            p.run = None;
                            p.finishing = false;
                        }
                        // On conflict: `finishing` stays, the finish is read again.
                    }
                    TaskStep::Effect { token } => s.world.fence.write(self.fence, token, i),
                }
            }
        }
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        let mut props = vec![
            Property::always(
                "no period claimed twice while the store keeps its data",
                |_, s: &TaskState| !s.claimed_twice,
            ),
            Property::always("fenced effects apply in token order", |_, s: &TaskState| {
                !s.world.fence.disorder
            }),
            Property::always(
                "no period claimed once the task is paused",
                |_, s: &TaskState| !s.claimed_while_paused,
            ),
        ];
        if self.op_requests > 0 {
            props.push(Property::always(
                "each run-now request is claimed once (takeovers aside)",
                |m: &TaskModel, s: &TaskState| {
                    s.request_claims <= m.op_requests - s.op_requests_left
                },
            ));
            props.push(Property::sometimes(
                "a run-now request runs",
                |_, s: &TaskState| s.request_claims > 0,
            ));
        }
        if self.op_pauses > 0 {
            props.push(Property::sometimes(
                "a claim attempt finds the task paused",
                |_, s: &TaskState| s.pause_seen,
            ));
        }
        if self.mode == RunMode::AtLeastOnce
            && self.fence == Fence::Compare
            && !self.blind_claim
            && self.effects > 0
        {
            props.push(Property::sometimes(
                "an abandoned run is taken over",
                |_, s: &TaskState| s.takeovers > 0,
            ));
            props.push(Property::sometimes(
                "the fence refuses a taken-over run",
                |_, s: &TaskState| s.world.fence.refused,
            ));
        }
        props
    }
}

// ---------------------------------------------------------------------------------------
// The checks.

const MIN_STATES: usize = 100_000;

fn check_correct<M>(name: &str, model: M)
where
    M: Model + Send + Sync + 'static,
    M::State: std::fmt::Debug + Clone + PartialEq + std::hash::Hash + Send + Sync,
    M::Action: std::fmt::Debug + Clone + PartialEq + Send + Sync,
{
    let start = Instant::now();
    let checker = model.checker().threads(2).spawn_bfs().join();
    let states = checker.unique_state_count();
    eprintln!(
        "{name}: {states} distinct states ({} generated, depth {}) in {:?}",
        checker.state_count(),
        checker.max_depth(),
        start.elapsed()
    );
    checker.assert_properties();
    assert!(
        states >= MIN_STATES,
        "{name}: explored {states} states, fewer than {MIN_STATES}"
    );
}

/// Checks a broken variant until `property` is violated, prints the counterexample and
/// returns its length.
fn check_broken<M>(name: &str, model: M, property: &'static str) -> usize
where
    M: Model + Send + Sync + 'static,
    M::State: std::fmt::Debug + Clone + PartialEq + std::hash::Hash + Send + Sync,
    M::Action: std::fmt::Debug + Clone + PartialEq + Send + Sync,
{
    let start = Instant::now();
    let checker = model
        .checker()
        .threads(2)
        .finish_when(HasDiscoveries::AnyOf([property].into()))
        .spawn_bfs()
        .join();
    let path = checker.discovery(property).unwrap_or_else(|| {
        panic!(
            "{name}: no counterexample to {property:?} in {} states",
            checker.unique_state_count()
        )
    });
    let actions = path.clone().into_actions();
    eprintln!(
        "{name}: counterexample to {property:?} after {} states in {:?}: {actions:?}",
        checker.unique_state_count(),
        start.elapsed()
    );
    actions.len()
}

#[test]
fn lease_protocol_is_safe() {
    check_correct("lease", LeaseModel::correct());
}

#[test]
fn task_protocol_at_least_once_is_safe() {
    check_correct(
        "task at-least-once",
        TaskModel::correct(RunMode::AtLeastOnce),
    );
}

#[test]
fn task_protocol_at_most_once_is_safe() {
    check_correct("task at-most-once", TaskModel::correct(RunMode::AtMostOnce));
}

#[test]
fn task_protocol_honours_an_operator_pause() {
    for mode in [RunMode::AtLeastOnce, RunMode::AtMostOnce] {
        check_correct(
            "task paused by an operator",
            // Without fenced effects (checked above), so the check stays quick.
            TaskModel {
                op_pauses: 1,
                effects: 0,
                ..TaskModel::correct(mode)
            },
        );
    }
}

#[test]
fn task_protocol_runs_a_request_once() {
    for mode in [RunMode::AtLeastOnce, RunMode::AtMostOnce] {
        check_correct(
            "task with a run-now request",
            TaskModel {
                op_requests: 1,
                effects: 0,
                ..TaskModel::correct(mode)
            },
        );
    }
}

#[test]
fn a_fence_that_does_not_compare_tokens_is_caught() {
    let n = check_broken(
        "lease, blind fence",
        LeaseModel {
            fence: Fence::Blind,
            ..LeaseModel::correct()
        },
        "fenced effects apply in token order",
    );
    assert!(n > 0);
    let n = check_broken(
        "task, blind fence",
        TaskModel {
            fence: Fence::Blind,
            ..TaskModel::correct(RunMode::AtLeastOnce)
        },
        "fenced effects apply in token order",
    );
    assert!(n > 0);
}

#[test]
fn a_takeover_before_the_lease_ends_is_caught() {
    let n = check_broken(
        "lease, takeover after one tick",
        LeaseModel {
            takeover_wait: RENEW_DEADLINE - 1,
            pauses: 0,
            releases: 1,
            ..LeaseModel::correct()
        },
        "one holder at a time while no process pauses",
    );
    assert!(n > 0);
}

#[test]
fn a_claim_without_compare_and_swap_is_caught() {
    let n = check_broken(
        "task, claim without compare-and-swap",
        TaskModel {
            blind_claim: true,
            ..TaskModel::correct(RunMode::AtMostOnce)
        },
        "no period claimed twice while the store keeps its data",
    );
    assert!(n > 0);
}

#[test]
fn a_request_claimed_without_compare_and_swap_runs_twice() {
    let n = check_broken(
        "task with a run-now request, claim without compare-and-swap",
        TaskModel {
            blind_claim: true,
            op_requests: 1,
            effects: 0,
            ..TaskModel::correct(RunMode::AtMostOnce)
        },
        "each run-now request is claimed once (takeovers aside)",
    );
    assert!(n > 0);
}

#[test]
fn a_store_that_loses_its_data_breaks_once_per_period() {
    let n = check_broken(
        "task, store loses the record",
        TaskModel {
            wipes: 1,
            ..TaskModel::correct(RunMode::AtMostOnce)
        },
        "no period claimed twice while the store keeps its data",
    );
    assert!(n > 0);
}
