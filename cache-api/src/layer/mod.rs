//! Wrappers that implement [`CacheBackend`](crate::CacheBackend) over another backend, so
//! they stack in any order and work for every backend.
//!
//! * [`Namespace`]: key prefix with O(1) invalidation of the whole namespace.
//! * [`Timeout`]: a deadline per operation and, if chosen, fail-open reads.
//! * [`Instrumented`]: `tracing` spans and `metrics` counters, plus an in-process snapshot.
//! * [`Restrict`]: declares fewer capabilities than the backend has, and enforces them.
//! * [`Near`]: an in-process cache in front of a shared backend, kept coherent by the
//!   backend's [`InvalidationChannel`].

mod instrument;
mod invalidation;
mod namespace;
mod near;
mod restrict;
mod timeout;

pub use instrument::{CacheStats, Instrumented, StatsSnapshot};
pub use invalidation::{resubscribe, InvalidationChannel, InvalidationSink, Subscription};
pub use namespace::Namespace;
pub use near::{
    ChannelState, Near, NearBuilder, NearStats, DEFAULT_CAPACITY, DEFAULT_MAX_AGE,
    DEFAULT_MAX_STALENESS,
};
pub use restrict::Restrict;
pub use timeout::{Timeout, TimeoutStats};
