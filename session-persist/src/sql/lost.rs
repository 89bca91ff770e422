//! Connections the server ended between two uses: detected, and the statement run again.
//!
//! The PostgreSQL pool hands out a connection used in the last second without a liveness
//! check (see `PgStore::pool_options`). After a restart or a `pg_terminate_backend`, such a
//! connection answers its next statement with an error; the store then checks every
//! connection it takes for a few seconds and runs the statement once more.

use std::future::Future;

#[cfg(feature = "postgres")]
pub(crate) use larder_sql_common::lost::recently;
pub(crate) use larder_sql_common::lost::{is_lost, note};

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
