#![doc = include_str!("../README.md")]
//!
//! # Guarantees, and what each one assumes
//!
//! * **At most one claim per period** ([`Scheduler`]): a period is claimed by one CAS on
//!   the task's last claimed period, which only grows. This holds under any process pause,
//!   crash or clock jump (a clock that jumps back claims nothing until it catches up). It
//!   assumes only the backend's linearizable CAS.
//! * **Tokens only grow**: every change of lease holder and every task claim increments a
//!   token stored in a record that is never deleted (release marks it released). It
//!   assumes the backend keeps the record: do not put coordination on a cache that evicts
//!   under memory pressure.
//! * **One holder at a time** ([`Lease`], [`Elector`]): a candidate takes over only after
//!   seeing the record unchanged for a whole lease by its own monotonic clock, and a holder
//!   stops acting once its renew deadline passes without a renewal (which is shorter than
//!   the lease). This holds only if processes are not paused, and clocks do not drift, by
//!   more than the margin `lease - renew_deadline`. A holder paused longer may still act
//!   after a successor took over: that is why **fenced writes** exist. Make every effect
//!   conditional on the token (`... WHERE fence <= $token`), so a stale holder's write is
//!   refused by the store itself.
//! * **At-least-once runs** ([`RunMode::AtLeastOnce`]): a run whose holder stopped
//!   heartbeating for a whole lease is taken over with a higher token and run again. Such
//!   runs may therefore execute twice for one period; make them idempotent or fenced.

mod clock;
mod elector;
mod holder;
mod lease;
mod random;
mod task;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use clock::{Clock, ManualClock, SystemClock};
pub use elector::{Elector, Role, Term};
pub use holder::HolderId;
pub use lease::{check_backend, check_capabilities, Held, Lease, LeaseConfig, LeaseRecord};
pub use task::{
    Candidacy, Claim, RunContext, RunInfo, RunMode, Schedule, Scheduler, SchedulerConfig,
    TaskRecord, TaskSpec, TaskStatus,
};
