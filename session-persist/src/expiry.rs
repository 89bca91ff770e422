//! The name of the session-expiry task.

/// The name of the periodic task that sweeps expired sessions, in the scheduler and its
/// status view. The task itself ([`SessionStore::sweep`](crate::SessionStore::sweep) run
/// once per period across all processes) is built where sessions meet coordination:
/// `larder::sessions::expiry_task` in the facade.
pub const EXPIRY_TASK: &str = "larder.session-expiry";
