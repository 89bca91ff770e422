#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]
//!
//! # Which backends qualify
//!
//! Only the backend's declared [`Capabilities`](larder_cache_api::Capabilities) decide
//! ([`check_capabilities`]), and two properties are needed:
//!
//! 1. **Compare-and-swap that is linearizable**, with versions that never repeat for a key.
//!    Without it coordination is refused, always: memcached (CAS counters restart with the
//!    server), Redis Cluster and Redis Sentinel (asynchronous replication: a failover can
//!    lose an acknowledged CAS).
//! 2. **A store that keeps its records**: [`persistent`](larder_cache_api::Capabilities::persistent)
//!    and not [`may_evict`](larder_cache_api::Capabilities::may_evict). Where that depends on
//!    the server, the backend measures it: the Redis backend reads `INFO` at connect and is
//!    persistent only with an append-only file (`appendonly yes`), non-evicting only with
//!    `maxmemory-policy noeviction` (and neither when it may not read `INFO`). A store that
//!    may lose its records is refused unless the configuration accepts it with
//!    [`Durability::AcceptLoss`] (see below for what that gives up).
//!
//! [`Lease::new`] and [`Scheduler::new`] (and so an [`Elector`], which runs a `Lease`)
//! refuse with [`ErrorKind::Unsupported`](larder_cache_api::ErrorKind::Unsupported); the
//! message names the missing property, quotes the backend's reason ("no append-only file
//! (appendonly no)", "maxmemory-policy allkeys-lru evicts") and says how to opt in.
//!
//! | store | as measured | coordination |
//! |---|---|---|
//! | PostgreSQL, SQLite (`larder_kv`, crate `larder-backend-sql`) | persistent, no eviction | yes: the recommended store |
//! | sled | persistent, no eviction | yes, within one process |
//! | Redis with `appendonly yes` and `maxmemory-policy noeviction` | persistent, no eviction | yes |
//! | Redis without an append-only file (its default), or `INFO` not permitted | not persistent | only with `Durability::AcceptLoss` |
//! | Redis with an evicting `maxmemory-policy` (`allkeys-lru`, `volatile-*`, ...) | may evict | only with `Durability::AcceptLoss` |
//! | memory | not persistent, may evict | only with `Durability::AcceptLoss` (one process: tests, a single-process app) |
//! | memcached, Redis Cluster, Redis Sentinel | CAS not linearizable | no |
//!
//! Open the SQL store with `larder::connect("postgres://...")` or
//! `connect("sqlite://path")`.
//!
//! # Guarantees, and what each one assumes
//!
//! Each guarantee below names its assumptions and the tests that show it (paths from the
//! repository root; `conformance` cases run on every backend, see
//! [`conformance_suite!`](crate::conformance_suite)).
//!
//! * **At most one claim per period** ([`Scheduler`]): a period is claimed by one CAS on
//!   the task's last claimed period, which only grows. This holds under any process pause,
//!   crash or clock jump (a clock that jumps back claims nothing until it catches up). It
//!   assumes the backend's linearizable CAS **and that the store keeps the task record**.
//!   Tests: `tests/tests/coord.rs` (`each_period_is_claimed_once_across_processes`, with an
//!   injected clock), `tests/tests/coord_faults.rs` (five OS processes on PostgreSQL and on
//!   Redis with an fsynced append-only file, leader SIGKILLed, a runner SIGSTOPped, Redis
//!   restarted: no period claimed twice).
//! * **Tokens only grow**, even across the loss of a record: every change of lease holder,
//!   every task claim and every take-over adds one to the token stored in the record (never
//!   deleted: release marks it released); a record that is created (absent: never written,
//!   or lost) starts at a time-based token, the creator's wall clock in milliseconds shifted
//!   left by 20 bits (today about 1.9 × 10^18, below the `i64` of SQL fences until the year
//!   2248). Assumption, for the loss case only: the wall clock of the process that re-creates
//!   the record reads later than the clock of the process that created the lost record did
//!   at its creation, by more than `n / 2^20` ms for the `n` tokens the lost record handed out
//!   (1 ms per million). In practice: clocks disagree by less than the lost record lived. Not
//!   covered: a store that rolls back to an older copy of the record (restored RDB snapshot,
//!   replica promoted after asynchronous replication) instead of losing it; its tokens go on
//!   from the old copy and repeat. Tests: `conformance`
//!   (`lease_tokens_grow_across_loss_of_the_record`, record deleted between two holders),
//!   `tests/tests/coord_faults.rs`
//!   (`redis_without_persistence_keeps_tokens_growing_across_a_restart`: Redis restarted
//!   empty under five processes that accept the loss; every lease and task token after the
//!   restart is above every one before it, and the new runs' fenced writes are accepted at
//!   once), `coord/src/token.rs` (unit tests of the arithmetic).
//! * **One holder at a time** ([`Lease`], [`Elector`]): a candidate takes over only after
//!   seeing the record unchanged for a whole lease by its own monotonic clock, and a holder
//!   stops acting once its renew deadline passes without a renewal (which is shorter than
//!   the lease). This holds only if processes are not paused, and clocks do not drift, by
//!   more than the margin `lease - renew_deadline`, and while the store keeps the lease
//!   record. A holder paused longer may still act after a successor took over: that is why
//!   **fenced writes** exist. Make every effect conditional on the token (`... WHERE fence
//!   <= $token`), so a stale holder's write is refused by the store itself;
//!   `larder-backend-sql`'s fences (`PgKv::fence`) do this for SQL effects. Tests:
//!   `conformance` (`lease_guarded_increments_8_tasks_100_each`, the lease cases),
//!   `tests/tests/coord_faults.rs` (failover within lease + renew deadline + 0.5 s; the
//!   paused node's stale fenced write refused), `tests/tests/fence.rs`.
//! * **At-least-once runs** ([`RunMode::AtLeastOnce`]): a run whose holder stopped
//!   heartbeating for a whole lease (by the monotonic clock of the process that looks) is
//!   taken over with a higher token and run again. Such runs may therefore execute twice for
//!   one period; make them idempotent or fenced. Test: `tests/tests/coord.rs`
//!   (`at_least_once_takes_over_a_dead_run_with_a_higher_token`).
//! * **A run stops before it is taken over** ([`RunContext::cancel`]): a runner whose
//!   heartbeats have not succeeded for the renew deadline, or that finds its run taken over,
//!   cancels the run's token at once and drops the run by halfway to the end of the lease,
//!   and records nothing; others take over only after a whole lease. Like the lease
//!   guarantee, this assumes pauses and clock drift within `lease - renew_deadline`, and it
//!   reaches only what the job does through its future or watches the token for: fence the
//!   effects anyway. Tests: `coord_runs::*_a_run_whose_heartbeats_fail_is_cancelled_before_it_is_taken_over`.
//! * **A finished run is recorded** ([`Scheduler`]): the end of a run is retried with
//!   backoff for up to a lease until it is recorded or the run is found taken over, so one
//!   failed write does not leave it `running` to be run again (test
//!   `coord_runs::a_finish_that_fails_once_is_retried_and_the_run_is_not_left_running`); if
//!   every attempt fails, the run is treated as dead (taken over, or recorded as abandoned).
//! * **Overlapping runs are tracked one by one** ([`TaskSpec::allow_overlap`]): each run in
//!   progress is in the task's record with its own heartbeat (at most
//!   [`MAX_RUNS_IN_PROGRESS`]), so a dead one is taken over, once, while live ones go on, and
//!   the activity of other runs never passes for its own (tests
//!   `coord_runs::a_dead_overlapping_run_is_taken_over_once_and_the_live_one_is_not`,
//!   `coord_runs::a_dead_run_is_taken_over_while_later_periods_come_and_go`). The record of a
//!   task whose runs never overlap keeps the layout earlier versions wrote, and records in
//!   that layout are read (`coord_runs::records_keep_the_earlier_layout_unless_runs_overlap`).
//! * **Missed periods are handled as the task's [`MisfirePolicy`] says** (skip them, run the
//!   latest once, or run each up to a bound), decided by a pure function of the schedule,
//!   the last claimed period and the clock
//!   ([`MisfirePolicy::periods_to_claim`]), so every process decides alike. Test:
//!   `tests/tests/coord_schedules.rs` (`*_misfire_policies_after_downtime`, memory and
//!   PostgreSQL: the exact claims of each policy after downtime).
//! * **Cron in a time zone names the same periods in every process** (`CronSchedule`,
//!   feature `cron`): a period is the UTC instant it starts, computed from the expression, the
//!   zone and the built-in zone database, with documented rules for daylight-saving gaps and
//!   overlaps; assumes every process is built with the same zone database release. Tests:
//!   `tests/tests/coord_schedules.rs` (`*_paris_2026_runs`: the exact runs of a daily, an
//!   hourly and a half-hourly task across both 2026 changes in `Europe/Paris`, memory and
//!   PostgreSQL), the property tests in `coord/src/zoned_cron.rs`.
//! * **A paused task is claimed nowhere** ([`TaskAdmin::pause`]): the pause is one
//!   compare-and-swap on the task's record and every claim decision reads it, so once it is
//!   written no process claims a period of the task until [`TaskAdmin::resume`] (a claim
//!   decided on the record before the pause loses its compare-and-swap). Assumes the store
//!   keeps the record. Tests: `coord/tests/model.rs`
//!   (`task_protocol_honours_an_operator_pause`), `tests/tests/coord_ops.rs` (five OS
//!   processes on PostgreSQL and on Redis: no run in the three periods after a pause, a run
//!   within a period of the resume).
//! * **Refusal of stores that can lose records**, unless accepted: `conformance`
//!   (`coordination_requires_durability_or_opt_in`), `tests/tests/redis.rs`
//!   (`durability_is_measured_at_connect`: default, AOF + noeviction, allkeys-lru, INFO
//!   forbidden), `tests/tests/coord_faults.rs`
//!   (`five_processes_refuse_a_redis_without_persistence`: five processes on a default Redis
//!   refuse to start, with the documented message, and write nothing), `tests/tests/coord.rs`
//!   (`memory_is_refused_unless_loss_is_accepted`,
//!   `a_lost_task_record_runs_the_period_again_with_a_higher_token`: what the opt-in gives
//!   up and what it keeps).
//!
//! Do not delete the records yourself either: invalidating a `Namespace` forgets every
//! record in it, so keep coordination outside namespaces you invalidate.
//!
//! # Cost: what the store sees
//!
//! For `P` processes, each running a [`spawn`](Scheduler::spawn)ed [`Scheduler`] with the
//! same `T` tasks, the store sees per task and period:
//!
//! * **`P - 1` reads**: every process but one reads the task's record once, after a random
//!   jitter past the start of the period ([`SchedulerConfig::jitter`], 125 to 250 ms by
//!   default, at most a tenth of the period);
//! * **one compare-and-swap that claims the period**, made at once, without a read, by the
//!   process that wrote the record last (normally the one that ran the last period); if it
//!   is gone, the first process to read finds the period free and claims it;
//! * **one write that records the end of the run**, plus one heartbeat write per retry
//!   period while the run lasts ([`LeaseConfig::retry_period`], 2 s by default), and one
//!   write of the task's run history ([`TaskSpec::history`]; a read too when another
//!   process wrote it last);
//! * failed compare-and-swaps only where processes look at the same instant; each loser
//!   learns the new record from the conflict and does not try that period again (on
//!   PostgreSQL a failed compare-and-swap is two statements: the refused `UPDATE` and the
//!   read of the current row).
//!
//! That is about `P × T` operations per period, `P × T / period` per second, **whatever the
//! poll setting** ([`SchedulerConfig::poll`] only paces retries after errors); earlier
//! versions read every record at every poll, `P × T × period / poll`. Between periods a
//! process reads a task's record only to look again at another process's run in progress
//! that it may have to take over: an at-least-once run (once per lease,
//! [`LeaseConfig::lease`], 15 s by default, while it lasts), or an at-most-once run that
//! holds up a due period. An [`Elector`]'s holder writes once per retry period; each
//! follower reads once per renew deadline (10 s by default).
//!
//! Measured (operations counted by a `layer::Instrumented` below the schedulers, or
//! PostgreSQL's committed transactions):
//!
//! | what | measured |
//! |---|---|
//! | 1,000 schedulers × 10 tasks × 100 periods on memory, one `ManualClock` (`tests/tests/coord_scale.rs`) | 0.999 reads per scheduler, task and period (999 per task and period), 2 successful writes and no failed one per task and period after the first; every period run once |
//! | 30 schedulers × 10 tasks × 100 periods on PostgreSQL (same test) | 29 reads and 2 writes per task and period after the first (`P - 1 + 2`); every period run once |
//! | 20 OS processes × 2 tasks every second on PostgreSQL (`tests/tests/coord_load.rs`), poll 50 ms and 1 s | 43.2 and 42.7 commits/s for `P × T / period` = 40/s (1.08×, 1.07×); earlier versions: about 10 per process per second at a poll of 100 ms. With the run history (one more write per run) and run-now requests: 45.2 and 44.1 commits/s (1.13×, 1.10× of 40/s; 1.05×, 1.03× of the figures before) |
//! | 9 `Elector` followers, renew deadline 400 ms, 3 s (`coord_scale.rs`) | 72 reads (looking every retry period: about 245) |
//! | N = 10, 100, 1,000 schedulers × 10 tasks on memory, simulated (bench `benches/benches/coord.rs`) | 11, 101, 1,001 operations per task and period; the poll-driven loop of earlier versions, 10 polls a period: 102, 1,002, 10,002 (9.3×, 9.9×, 10.0×); 2 polls: 22, 202, 2,002 |
//!
//! The first period after all processes start at once costs more: every process reads, and
//! each record is created by a race of all of them (on PostgreSQL 30 schedulers × 10 tasks:
//! 300 reads, 290 failed creates).
//!
//! # Accepting the loss of records: what [`Durability::AcceptLoss`] gives up
//!
//! With `LeaseConfig::default().with_durability(Durability::AcceptLoss)` (given to
//! [`SchedulerConfig::lease`], or [`SchedulerConfig::durability`]; and to the [`Lease`] an
//! [`Elector`] runs), coordination runs on memory, on a Redis without an append-only file or
//! with an evicting policy. While the store keeps its data, every guarantee above holds. After
//! it lost data (a restart without persistence, an eviction):
//!
//! * **a period may run twice**: the record that said it was claimed is gone, so the current
//!   period is claimed again (under [`MisfirePolicy::Skip`], only within its grace). At most
//!   once per period holds only while the store keeps its data;
//! * **a lease may have two holders** until the old holder's next renewal, which fails (the
//!   record is gone or changed) and makes it step down: at most its renew deadline.
//!   Fenced writes still refuse the old holder once the new one has written;
//! * tokens still only grow, under the clock assumption above, so fenced writes of the
//!   new holder are accepted at once (without it, tokens restarting at 1 would have every
//!   fenced write refused until they caught up).
//!
//! Choose it for one process (tests, a single-process app on memory, where the records go
//! with the process anyway) or when running a period twice is harmless; otherwise use a
//! store that keeps its records.

mod clock;
mod elector;
mod holder;
mod lease;
mod liveness;
mod misfire;
mod quote;
/// The workspace's one non-cryptographic random helper lives in the contract crate.
mod random {
    pub(crate) use larder_cache_api::random::random_u64;
}
mod schedule;
mod task;
mod token;
#[cfg(feature = "cron")]
mod zoned_cron;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use clock::{Clock, ManualClock, SystemClock};
pub use elector::{Elector, Role, Term};
pub use holder::HolderId;
pub use lease::{
    check_backend, check_capabilities, Durability, Held, Lease, LeaseConfig, LeaseRecord,
};
pub use misfire::{DuePeriods, MisfirePolicy};
pub use schedule::{parse_interval, Schedule};
pub use task::{
    Candidacy, Claim, Heartbeat, HistoryEntry, Outcome, Pause, RunContext, RunInfo, RunMode,
    RunRequest, Scheduler, SchedulerConfig, TaskAdmin, TaskRecord, TaskSpec, TaskStatus,
    DEFAULT_HISTORY, MAX_ERROR_CHARS, MAX_HISTORY, MAX_REMEMBERED_REQUESTS, MAX_REQUEST_ID,
    MAX_RUNS_IN_PROGRESS, MAX_WAITING_REQUESTS,
};
#[cfg(feature = "cron")]
pub use zoned_cron::CronSchedule;

/// The claim decision of periodic tasks, for the protocol model (`tests/model.rs`), which
/// checks this function rather than a copy of it. Not a stable API.
#[doc(hidden)]
pub mod claim_decision {
    pub use crate::task::plan::{plan, DeadRuns, Decision, Write};
}
