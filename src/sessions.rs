//! Sessions whose authority is SQL, with write-through caching: everything of
//! [`larder-session-persist`](larder_session_persist) (features `postgres`, `sqlite`,
//! `tower-sessions`, `axum`, `actix`), plus [`expiry_task`], which runs session expiry as a
//! coordinated periodic task of [`coord`](crate::coord).
//!
//! The session crate depends on the cache contract alone; the task that ties its sweep to
//! coordination lives here, where both meet.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[doc(inline)]
pub use larder_session_persist::*;

use crate::coord::{Schedule, TaskSpec};

/// A periodic task that sweeps expired sessions and tombstones every `every`, in batches of
/// `batch` rows, named [`EXPIRY_TASK`]. Add it to every process's
/// [`Scheduler`](crate::coord::Scheduler): each period is claimed by exactly one of them.
/// `removed` counts the rows this process removed (also counted by the
/// `larder_session_swept_total` metric).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> larder::Result<()> {
/// # let dir = std::env::temp_dir().join(format!("larder-expiry-doc-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir).unwrap();
/// use std::{sync::Arc, sync::atomic::AtomicU64, time::Duration};
/// use larder::coord::{HolderId, Scheduler, SchedulerConfig};
/// use larder::sessions::{expiry_task, SqliteStore};
///
/// let sql = SqliteStore::open(&dir.join("s.db")).await?;
/// // Coordination state lives in the same database, in the SQL compare-and-swap store.
/// let kv = larder::connect(&larder::backends::sql::sqlite_url(&dir.join("s.db"))).await?;
/// let removed = Arc::new(AtomicU64::new(0));
/// let scheduler = Scheduler::new(kv, HolderId::generate(), SchedulerConfig::default())?
///     .with_task(expiry_task(Arc::new(sql), Duration::from_secs(60), 1000, removed))?;
/// let claims = scheduler.tick().await?; // spawn() runs this in a loop
/// assert_eq!(claims.len(), 1);
/// # Ok(()) }
/// ```
pub fn expiry_task(
    store: Arc<dyn SessionStore>,
    every: Duration,
    batch: u32,
    removed: Arc<AtomicU64>,
) -> TaskSpec {
    TaskSpec::new(EXPIRY_TASK, Schedule::Every(every), move |ctx| {
        let store = store.clone();
        let removed = removed.clone();
        async move {
            match store.sweep(batch).await {
                Ok(n) => {
                    removed.fetch_add(n, Ordering::Relaxed);
                    metrics::counter!("larder_session_swept_total").increment(n);
                    tracing::info!(
                        period = ctx.period,
                        token = ctx.token,
                        removed = n,
                        "session sweep"
                    );
                    Ok(())
                }
                Err(e) => Err(e.to_string()),
            }
        }
    })
}
