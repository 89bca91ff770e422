//! Wrappers that implement [`CacheBackend`](crate::CacheBackend) over another backend, so
//! they stack in any order and work for every backend.
//!
//! * [`Namespace`]: key prefix with O(1) invalidation of the whole namespace.
//! * [`Timeout`]: a deadline per operation and, if chosen, fail-open reads.
//! * [`Instrumented`]: `tracing` spans and `metrics` counters, plus an in-process snapshot.
//! * [`Restrict`]: declares fewer capabilities than the backend has, and enforces them.
//!
//! The near cache, an in-process tier in front of a shared backend, is the `larder-near`
//! crate (`larder::layer::Near` in the facade); what it needs from a backend, the
//! [`InvalidationChannel`], is defined here so that a backend offers one while depending on
//! this crate alone.

mod instrument;
mod invalidation;
mod namespace;
mod restrict;
mod timeout;

pub use instrument::{CacheStats, Instrumented, StatsSnapshot};
pub use invalidation::{
    resubscribe, ChannelFault, InvalidationChannel, InvalidationSink, InvalidationTarget,
    Subscription,
};
pub use namespace::Namespace;
pub use restrict::Restrict;
pub use timeout::{Timeout, TimeoutStats};
