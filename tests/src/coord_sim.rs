//! Many schedulers in one process over one backend, counted: the periodic-task simulation
//! of `tests/coord_scale.rs` and of the coordination bench.
//!
//! `n` [`Scheduler`]s (each with its own holder id, as separate processes would have) run
//! the same `tasks` tasks, every [`PERIOD`] of one injected [`ManualClock`]. Every store
//! operation of theirs goes through one [`Instrumented`] layer, whose counters say what the
//! store saw; each job logs its run. Two ways to drive them:
//!
//! * [`Drive::Spawned`]: each scheduler is [`spawn`](Scheduler::spawn)ed; the clock moves
//!   through each period's jitter window in steps, and after each step the simulation waits
//!   until every task loop sleeps again and no run is in progress.
//! * [`Drive::Polled`]: the loop of earlier versions, every scheduler calling
//!   [`tick`](Scheduler::tick) once per poll (`polls` times a period), all at once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use larder_cache_api::layer::{CacheStats, Instrumented};
use larder_cache_api::DynBackend;
use larder_coord::{
    Candidacy, Durability, HolderId, LeaseConfig, ManualClock, Schedule, Scheduler,
    SchedulerConfig, TaskSpec,
};
use parking_lot::Mutex;

use crate::{eventually, Patience};

/// A simulated period (on the injected clock).
pub const PERIOD: i64 = 60_000;
/// The schedulers' jitter: claims spread over the first 250 ms of a period.
pub const JITTER_MS: i64 = 250;
/// The spawned schedulers' clock moves through the jitter window in this many steps.
const STEPS: i64 = 10;
/// The first period (a boundary in 2025).
pub const T0: i64 = 29_000_000 * PERIOD;

/// How the schedulers are driven.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drive {
    /// [`Scheduler::spawn`]: a loop per task that sleeps until the task is due.
    Spawned,
    /// [`Scheduler::tick`] by every scheduler, `polls` times per period.
    Polled {
        /// Ticks per period (the period divided by the poll interval).
        polls: i64,
    },
}

/// Store operations, from the [`Instrumented`] counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ops {
    /// Reads (`get`, found or not).
    pub reads: u64,
    /// Writes that succeeded.
    pub writes: u64,
    /// Operations that failed: here, compare-and-swaps that lost.
    pub failed: u64,
}

impl Ops {
    fn of(stats: &CacheStats) -> Self {
        let s = stats.snapshot();
        Ops {
            reads: s.hits + s.misses,
            writes: s.writes,
            failed: s.errors,
        }
    }

    /// All operations.
    pub fn total(&self) -> u64 {
        self.reads + self.writes + self.failed
    }

    fn minus(self, o: Ops) -> Ops {
        Ops {
            reads: self.reads - o.reads,
            writes: self.writes - o.writes,
            failed: self.failed - o.failed,
        }
    }
}

/// What a simulation saw.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Schedulers, tasks and periods simulated.
    pub n: usize,
    /// Tasks per scheduler.
    pub tasks: usize,
    /// Periods.
    pub periods: i64,
    /// Operations in the first period (every scheduler starting at once).
    pub first: Ops,
    /// Operations in the later periods.
    pub steady: Ops,
    /// Runs per (task, period start), as the jobs logged them.
    pub runs: BTreeMap<(usize, i64), usize>,
    /// Wall time of the whole simulation.
    pub took: Duration,
}

impl Outcome {
    /// All operations.
    pub fn all(&self) -> Ops {
        Ops {
            reads: self.first.reads + self.steady.reads,
            writes: self.first.writes + self.steady.writes,
            failed: self.first.failed + self.steady.failed,
        }
    }

    /// Operations per task and period after the first period.
    pub fn steady_per_task_period(&self) -> f64 {
        self.steady.total() as f64 / (self.tasks as f64 * (self.periods - 1) as f64)
    }

    /// (task, period) pairs run more than once.
    pub fn duplicates(&self) -> Vec<(usize, i64)> {
        self.runs
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(k, _)| *k)
            .collect()
    }

    /// (task, period) pairs never run.
    pub fn missing(&self) -> Vec<(usize, i64)> {
        (0..self.tasks)
            .flat_map(|t| (0..self.periods).map(move |k| (t, T0 + k * PERIOD)))
            .filter(|k| !self.runs.contains_key(k))
            .collect()
    }

    /// One line for a log.
    pub fn summary(&self, what: &str) -> String {
        let all = self.all();
        let per = (self.n * self.tasks) as f64 * self.periods as f64;
        let steady = (self.n * self.tasks) as f64 * (self.periods - 1) as f64;
        format!(
            "{what}: {} schedulers x {} tasks x {} periods in {:.1} s: reads {} ({:.3} per \
             scheduler, task and period; {:.3} after the first period), successful writes {} \
             ({:.2} per task and period), failed writes {} ({:.4} per scheduler, task and \
             period); first period {:?}; after it {:.1} operations per task and period; \
             runs {}, duplicates {}, missing {}",
            self.n,
            self.tasks,
            self.periods,
            self.took.as_secs_f64(),
            all.reads,
            all.reads as f64 / per,
            self.steady.reads as f64 / steady,
            all.writes,
            all.writes as f64 / (self.tasks as f64 * self.periods as f64),
            all.failed,
            all.failed as f64 / per,
            self.first,
            self.steady_per_task_period(),
            self.runs.len(),
            self.duplicates().len(),
            self.missing().len(),
        )
    }
}

/// The task `index` of the simulation: every [`PERIOD`], its job logs the run.
pub fn task(index: usize, log: Arc<Mutex<BTreeMap<(usize, i64), usize>>>) -> TaskSpec {
    TaskSpec::new(
        &format!("task-{index}"),
        Schedule::Every(Duration::from_millis(PERIOD as u64)),
        move |ctx| {
            *log.lock().entry((index, ctx.period)).or_default() += 1;
            async { Ok(()) }
        },
    )
}

/// The configuration of the scheduler `name`: the default, with [`JITTER_MS`], accepting a
/// store that may lose its records (the memory backend; it changes nothing on PostgreSQL).
pub fn config(name: &str) -> SchedulerConfig {
    SchedulerConfig::default()
        .process_name(name)
        .jitter(Duration::from_millis(JITTER_MS as u64))
        .lease(LeaseConfig::default().with_durability(Durability::AcceptLoss))
}

/// Waits until every task loop sleeps again (`loops` sleepers for a later time on the clock)
/// and no run is in progress (read through `observer`, which is not counted).
async fn settle(clock: &ManualClock, loops: usize, observer: &Scheduler) {
    let patience = Patience::new(Duration::from_secs(60)).every(Duration::from_millis(1));
    eventually(patience, "the schedulers settle", async || {
        if clock.waiting() == loops {
            let status = observer.status().await.expect("status");
            if status.iter().all(|t| t.running.is_none()) && clock.waiting() == loops {
                return Ok(());
            }
        }
        Err(format!("{} of {loops} task loops asleep", clock.waiting()))
    })
    .await
}

/// Runs `n` schedulers with `tasks` tasks each over `backend` for `periods` periods.
pub async fn simulate(
    backend: DynBackend,
    n: usize,
    tasks: usize,
    periods: i64,
    drive: Drive,
) -> Outcome {
    let counted = Arc::new(Instrumented::new(backend.clone()));
    let stats = counted.stats();
    let counted: DynBackend = counted;
    let clock = Arc::new(ManualClock::new(T0));
    let log: Arc<Mutex<BTreeMap<(usize, i64), usize>>> = Arc::default();
    let mut observer = Scheduler::new(
        backend,
        HolderId::named("observer"),
        config("observer").candidacy(Candidacy::Never),
    )
    .expect("observer");
    for t in 0..tasks {
        observer = observer.with_task(task(t, log.clone())).expect("task");
    }
    let started = Instant::now();
    let schedulers: Vec<Arc<Scheduler>> = (0..n)
        .map(|i| {
            let name = format!("p{i}");
            let mut s = Scheduler::new(counted.clone(), HolderId::named(&name), config(&name))
                .expect("scheduler")
                .with_clock(clock.clone());
            for t in 0..tasks {
                s = s.with_task(task(t, log.clone())).expect("task");
            }
            Arc::new(s)
        })
        .collect();
    let (first, total) = match drive {
        Drive::Spawned => {
            let stops: Vec<_> = schedulers.iter().map(|s| s.clone().spawn()).collect();
            let loops = n * tasks;
            // The first period: every loop looks at once when it starts.
            settle(&clock, loops, &observer).await;
            let first = Ops::of(&stats);
            for k in 1..periods {
                for step in 1..=STEPS {
                    clock.set(T0 + k * PERIOD + step * JITTER_MS / STEPS);
                    settle(&clock, loops, &observer).await;
                }
            }
            let total = Ops::of(&stats);
            for (stop, handle) in stops {
                stop.cancel();
                handle.await.expect("scheduler loop");
            }
            (first, total)
        }
        Drive::Polled { polls } => {
            let mut first = Ops::default();
            for k in 0..periods {
                for p in 0..polls {
                    clock.set(T0 + k * PERIOD + p * PERIOD / polls);
                    let ticks: Vec<_> = schedulers
                        .iter()
                        .map(|s| {
                            let s = s.clone();
                            tokio::spawn(async move { s.tick().await.expect("tick") })
                        })
                        .collect();
                    for t in ticks {
                        t.await.expect("tick task");
                    }
                }
                if k == 0 {
                    first = Ops::of(&stats);
                }
            }
            (first, Ops::of(&stats))
        }
    };
    let runs = log.lock().clone();
    Outcome {
        n,
        tasks,
        periods,
        first,
        steady: total.minus(first),
        runs,
        took: started.elapsed(),
    }
}
