//! Coordination across processes, built only on the compare-and-swap contract: leases with
//! fencing tokens, an elector for singleton work, and periodic tasks claimed once per period.
//!
//! It runs on any backend whose [`Capabilities`](crate::Capabilities) declare linearizable
//! compare-and-swap with versions that never repeat: the SQL store of `larder-backend-sql`
//! (recommended: the database enforces it and keeps every record; open it with
//! `larder::connect("postgres://...")` or `connect("sqlite://path")`), single-node Redis,
//! and, within one process, memory and sled. memcached is refused with a clear error (it
//! may evict, and its CAS counter restarts with the server).
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
//!   refused by the store itself; `larder-backend-sql`'s fences (`PgKv::fence`) do this for
//!   SQL effects.
//! * **At-least-once runs** ([`RunMode::AtLeastOnce`]): a run whose holder stopped
//!   heartbeating for a whole lease is taken over with a higher token and run again. Such
//!   runs may therefore execute twice for one period; make them idempotent or fenced.

mod clock;
mod elector;
mod holder;
mod lease;
mod task;

pub use clock::{Clock, ManualClock, SystemClock};
pub use elector::{Elector, Role, Term};
pub use holder::HolderId;
pub use lease::{check_backend, Held, Lease, LeaseConfig, LeaseRecord};
pub use task::{
    Candidacy, Claim, RunContext, RunInfo, RunMode, Schedule, Scheduler, SchedulerConfig,
    TaskRecord, TaskSpec, TaskStatus,
};
