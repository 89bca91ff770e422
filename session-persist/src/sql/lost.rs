//! Connections the server ended between two uses: detected, and the statement run again.
//!
//! The PostgreSQL pool hands out a connection used in the last second without a liveness
//! check (see `PgStore::pool_options`). After a restart or a `pg_terminate_backend`, such a
//! connection answers its next statement with an error; the store then checks every
//! connection it takes for a few seconds and runs the statement once more.

use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};

use crate::record::Timestamp;

/// For how long after a lost connection every connection is checked before use (ms).
const CHECK_ALL_FOR_MS: i64 = 5_000;

/// When a lost connection was last seen (ms since the epoch; 0 = never). One per process:
/// a restarted server ends the connections of every pool on it.
static LOST_AT: AtomicI64 = AtomicI64::new(0);

/// Whether `e` says the connection was gone: the socket failed, or the server ended the
/// session (SQLSTATE class 57P: shutdown, crash, `pg_terminate_backend`). Either way the
/// statement was not committed by this connection, except when the reply of a commit was
/// lost, which every statement retried here tolerates.
pub(crate) fn is_lost(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) => true,
        sqlx::Error::Database(d) => d.code().is_some_and(|c| c.starts_with("57P")),
        _ => false,
    }
}

/// Whether a connection was lost in the last few seconds: then every connection is checked
/// before use.
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) fn recently() -> bool {
    let at = LOST_AT.load(Ordering::Relaxed);
    at != 0 && Timestamp::now().0.saturating_sub(at) < CHECK_ALL_FOR_MS
}

/// Runs `statement` (one that takes its connection from the pool itself: the start of a
/// transaction), and once more if its connection turned out to be dead (the second run takes
/// a checked connection).
pub(crate) async fn retried<T, F, Fut>(statement: F) -> Result<T, sqlx::Error>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    match statement().await {
        Err(e) if is_lost(&e) => {
            note();
            statement().await
        }
        done => done,
    }
}

/// Records that a connection was found dead: every connection is checked for a while.
pub(crate) fn note() {
    LOST_AT.store(Timestamp::now().0.max(1), Ordering::Relaxed);
    tracing::info!("a pooled database connection was closed by the server; retrying once");
}
