//! Connections the store keeps between statements, outside sqlx's pool.
//!
//! sqlx checks every connection that comes back to its pool with a round trip to the server
//! (and spawns a task for it), whatever the pool's settings: for a store that runs one
//! statement per operation, that doubles the round trips and costs more CPU than the
//! statement itself. A connection whose statement succeeded is therefore kept here, and the
//! next statement takes it without that check.
//!
//! What keeps this from hurting the pool's other users: at most half of the pool's
//! connections are kept (so sqlx always has connections to hand to its waiters, ours
//! included); a kept connection unused for [`FRESH`] goes back to sqlx (which checks it),
//! within [`REAP_EVERY`] even when the store is idle; a closed pool gets its connections
//! back at once. A statement that failed or was cancelled never comes back here: sqlx's own
//! release (which drains and checks the connection) handles it.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, MutexGuard};
use sqlx::pool::PoolConnection;
use sqlx::{Database, Pool};

/// How long a kept connection may sit unused before it goes back to sqlx: as long as the
/// PostgreSQL pool hands out a connection without a liveness check.
const FRESH: Duration = Duration::from_secs(1);

/// How often an idle store gives stale connections back.
const REAP_EVERY: Duration = Duration::from_millis(250);

pub(crate) struct Held<DB: Database> {
    /// Kept connections with the time each came back, most recent last.
    idle: Mutex<Vec<(PoolConnection<DB>, Instant)>>,
    /// At most this many are kept.
    cap: usize,
    /// Whether the task that gives stale connections back runs.
    reaping: std::sync::atomic::AtomicBool,
}

impl<DB: Database> Held<DB> {
    /// Keeps up to half of `pool`'s connections (none for a pool of one: its only
    /// connection must stay available to others, a statistics probe say).
    pub(crate) fn new(pool: &Pool<DB>) -> Arc<Self> {
        let max = pool.options().get_max_connections() as usize;
        Arc::new(Held {
            idle: Mutex::new(Vec::new()),
            cap: max / 2,
            reaping: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Vec<(PoolConnection<DB>, Instant)>> {
        self.idle.lock()
    }

    /// A connection for one statement: the most recently kept one if it is fresh, else one
    /// from the pool. `checked` (a retry after a lost connection) skips the kept ones.
    pub(crate) async fn take(
        &self,
        pool: &Pool<DB>,
        checked: bool,
    ) -> Result<PoolConnection<DB>, sqlx::Error> {
        if !checked && !pool.is_closed() {
            let mut idle = self.lock();
            if let Some((conn, at)) = idle.pop() {
                if at.elapsed() < FRESH {
                    return Ok(conn);
                }
                // The rest are older still.
                idle.push((conn, at));
            }
        }
        // Stale, or one was found dead (the others may be too), or the pool is closing:
        // back to sqlx, which checks them.
        drop(std::mem::take(&mut *self.lock()));
        pool.acquire().await
    }

    /// Keeps `conn` after a successful statement, or gives it back to sqlx.
    pub(crate) fn give(self: &Arc<Self>, pool: &Pool<DB>, conn: PoolConnection<DB>) {
        if pool.is_closed() {
            return;
        }
        let back = {
            let mut idle = self.lock();
            if idle.len() < self.cap {
                idle.push((conn, Instant::now()));
                None
            } else {
                Some(conn)
            }
        };
        // Dropped outside the lock: sqlx spawns its release.
        drop(back);
        self.start_reaping(pool);
    }

    /// Starts the task that gives stale connections back (once per store, in the runtime
    /// of the first statement).
    fn start_reaping(self: &Arc<Self>, pool: &Pool<DB>) {
        use std::sync::atomic::Ordering;
        if self.reaping.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.reaping.store(false, Ordering::Release);
            return;
        };
        let held: Weak<Self> = Arc::downgrade(self);
        let closed = pool.close_event();
        rt.spawn(async move {
            let mut closed = std::pin::pin!(closed);
            loop {
                let closing = tokio::time::timeout(REAP_EVERY, &mut closed).await.is_ok();
                let Some(held) = held.upgrade() else { return };
                let stale: Vec<_> = {
                    let mut idle = held.lock();
                    if closing {
                        std::mem::take(&mut *idle)
                    } else {
                        // Oldest first: split off those past FRESH.
                        let fresh_from = idle
                            .iter()
                            .position(|(_, at)| at.elapsed() < FRESH)
                            .unwrap_or(idle.len());
                        idle.drain(..fresh_from).collect()
                    }
                };
                drop(stale);
                if closing {
                    return;
                }
            }
        });
    }
}

impl<DB: Database> Drop for Held<DB> {
    fn drop(&mut self) {
        let idle = std::mem::take(self.idle.get_mut());
        if tokio::runtime::Handle::try_current().is_err() {
            // sqlx spawns a task to release a pooled connection, which needs a runtime:
            // without one, close the connections themselves.
            for (conn, _) in idle {
                drop(conn.leak());
            }
        }
    }
}

/// Runs one statement (`$statement`, an sqlx query executed on `$conn`) on a kept connection
/// or one from the pool, keeps the connection after a success, and runs the statement once
/// more on a checked connection if the first one turned out dead (see `lost`). Evaluates to
/// a future of `Result<_, sqlx::Error>`. Only for statements whose repetition is harmless:
/// reads, versioned or conditional writes, and inserts of a fresh id.
macro_rules! statement {
    ($store:expr, |$conn:ident| $statement:expr) => {
        async {
            let mut checked = false;
            loop {
                let mut held = match $store.held.take(&$store.pool, checked).await {
                    Ok(conn) => conn,
                    Err(e) => break Err(e),
                };
                let $conn = &mut *held;
                match $statement.await {
                    Ok(done) => {
                        $store.held.give(&$store.pool, held);
                        break Ok(done);
                    }
                    Err(e) if !checked && $crate::sql::lost::is_lost(&e) => {
                        $crate::sql::lost::note();
                        checked = true;
                    }
                    Err(e) => break Err(e),
                }
            }
        }
    };
}
pub(crate) use statement;
