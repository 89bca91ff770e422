//! Connections the server ended between two uses: how they are recognised, and the few
//! seconds after one during which every connection is checked before use.
//!
//! A pool that hands out a recently used connection without a liveness check (as the session
//! store's and the compare-and-swap table's do) meets a connection ended by a restart or a
//! `pg_terminate_backend` only when a statement fails on it; the store then runs the
//! statement once more on a checked connection. The first run may have committed with its
//! reply lost: only statements that recognise their own committed write (by a write id) are
//! run again.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// For how long after a lost connection every connection is checked before use (ms).
const CHECK_ALL_FOR_MS: i64 = 5_000;

/// When a lost connection was last seen (ms since the epoch; 0 = never). One per process:
/// a restarted server ends the connections of every pool on it.
static LOST_AT: AtomicI64 = AtomicI64::new(0);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Whether `e` says the connection was gone: the socket failed, or the server ended the
/// session (SQLSTATE class 57P: shutdown, crash, `pg_terminate_backend`). The statement may
/// still have committed if the connection died after the commit, before its reply.
///
/// ```
/// use larder_sql_common::lost::is_lost;
///
/// let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
/// assert!(is_lost(&sqlx::Error::Io(reset)));
/// assert!(!is_lost(&sqlx::Error::RowNotFound));
/// ```
pub fn is_lost(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) => true,
        sqlx::Error::Database(d) => d.code().is_some_and(|c| c.starts_with("57P")),
        _ => false,
    }
}

/// Whether a connection was lost in the last few seconds: then every connection is checked
/// before use.
pub fn recently() -> bool {
    let at = LOST_AT.load(Ordering::Relaxed);
    at != 0 && now_ms().saturating_sub(at) < CHECK_ALL_FOR_MS
}

/// Records that a connection was found dead: every connection is checked for a while.
pub fn note() {
    LOST_AT.store(now_ms().max(1), Ordering::Relaxed);
    tracing::info!("a pooled database connection was closed by the server; retrying once");
}
