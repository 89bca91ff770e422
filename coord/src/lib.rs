#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]
//!
//! # Which backends qualify
//!
//! Only the backend's declared [`Capabilities`](larder_cache_api::Capabilities) decide
//! ([`check_capabilities`]): coordination needs compare-and-swap that is linearizable, with
//! versions that never repeat for a key. [`Lease::new`] and [`Scheduler::new`] refuse any
//! other backend with [`ErrorKind::Unsupported`](larder_cache_api::ErrorKind::Unsupported),
//! and the message says what the capabilities lack (no CAS, CAS not linearizable) and what
//! else makes the store a poor home for coordination records (it may evict entries, it is
//! not persistent). Qualify: the SQL stores (`larder_kv` in PostgreSQL or SQLite, where the
//! database enforces it), single-node Redis and, within one process, memory and sled.
//! Refused: memcached (CAS counters restart with the server) and Redis Cluster
//! (asynchronous failover). Open the SQL store with `larder::connect("postgres://...")` or
//! `connect("sqlite://path")` (crate `larder-backend-sql`).
//!
//! # Guarantees, and what each one assumes
//!
//! * **At most one claim per period** ([`Scheduler`]): a period is claimed by one CAS on
//!   the task's last claimed period, which only grows. This holds under any process pause,
//!   crash or clock jump (a clock that jumps back claims nothing until it catches up). It
//!   assumes only the backend's linearizable CAS.
//! * **Tokens only grow**: every change of lease holder and every task claim increments a
//!   token stored in a record that is never deleted (release marks it released). It
//!   assumes the backend keeps the record: a backend that declares
//!   [`may_evict`](larder_cache_api::Capabilities::may_evict) is accepted when its CAS is
//!   linearizable (memory, Redis), so size it, or configure Redis with
//!   `maxmemory-policy noeviction` and persistence, so the records are never evicted. Nor
//!   delete them yourself: invalidating a `Namespace` forgets every record in it, so keep
//!   coordination outside namespaces you invalidate.
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
mod random;
mod task;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use clock::{Clock, ManualClock, SystemClock};
pub use elector::{Elector, Role, Term};
pub use holder::HolderId;
pub use lease::{check_backend, check_capabilities, Held, Lease, LeaseConfig, LeaseRecord};
pub use task::{
    parse_interval, Candidacy, Claim, RunContext, RunInfo, RunMode, Schedule, Scheduler,
    SchedulerConfig, TaskRecord, TaskSpec, TaskStatus,
};
