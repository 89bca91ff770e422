//! Connections a store keeps between statements, outside sqlx's pool (the session store
//! and the compare-and-swap table both run one statement per operation).
//!
//! sqlx checks every connection that comes back to its pool with a round trip to the server
//! (and spawns a task for it), whatever the pool's settings: for a store that runs one
//! statement per operation, that doubles the round trips and costs more CPU than the
//! statement itself. A connection whose statement succeeded therefore stays with the store
//! for its next statement.
//!
//! The store runs at most half as many statements at once as the pool has connections
//! (others wait their turn, first come first served), so the pool's other users always find
//! connections; a kept connection unused for a second goes back to sqlx (which checks it),
//! within a quarter of a second even when the store is idle; a closed pool gets its connections
//! back at once. A statement that failed or was cancelled never comes back here: sqlx's own
//! release (which drains and checks the connection) handles it.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sqlx::pool::PoolConnection;
use sqlx::{Database, Pool};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a kept connection may sit unused before it goes back to sqlx: as long as the
/// PostgreSQL pool hands out a connection without a liveness check.
const FRESH: Duration = Duration::from_secs(1);

/// How often an idle store gives stale connections back.
const REAP_EVERY: Duration = Duration::from_millis(250);

/// A connection lent to one statement, with its turn; dropped, the connection goes back to
/// sqlx.
pub struct Lent<DB: Database> {
    conn: Option<PoolConnection<DB>>,
    _turn: Option<OwnedSemaphorePermit>,
}

impl<DB: Database> std::fmt::Debug for Lent<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lent").finish_non_exhaustive()
    }
}

impl<DB: Database> Deref for Lent<DB> {
    type Target = DB::Connection;
    fn deref(&self) -> &DB::Connection {
        self.conn.as_ref().expect("a lent connection until dropped")
    }
}

impl<DB: Database> DerefMut for Lent<DB> {
    fn deref_mut(&mut self) -> &mut DB::Connection {
        self.conn.as_mut().expect("a lent connection until dropped")
    }
}

impl<DB: Database> Drop for Lent<DB> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            release(conn);
        }
    }
}

/// Gives `conn` back to sqlx.
fn release<DB: Database>(conn: PoolConnection<DB>) {
    if tokio::runtime::Handle::try_current().is_err() {
        // sqlx spawns a task to release a pooled connection, which needs a runtime: without
        // one (the store dropped after its runtime), close the connection itself.
        drop(conn.leak());
    } else {
        drop(conn);
    }
}

/// The connections one store keeps between statements, and the turns of its statements.
pub struct Held<DB: Database> {
    /// Kept connections with the time each came back, most recent last.
    idle: Mutex<Vec<(PoolConnection<DB>, Instant)>>,
    /// Turns: as many as statements may run at once; none for a pool of one connection
    /// (which must stay available to others, a statistics probe say): then every statement
    /// takes its connection from sqlx and gives it back.
    turns: Option<Arc<Semaphore>>,
    /// Whether the task that gives stale connections back runs.
    reaping: AtomicBool,
}

impl<DB: Database> std::fmt::Debug for Held<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held")
            .field("kept", &self.idle.lock().len())
            .finish_non_exhaustive()
    }
}

impl<DB: Database> Drop for Held<DB> {
    fn drop(&mut self) {
        for (conn, _) in std::mem::take(self.idle.get_mut()) {
            release(conn);
        }
    }
}

impl<DB: Database> Held<DB> {
    /// Runs up to half as many statements at once as `pool` has connections.
    pub fn new(pool: &Pool<DB>) -> Arc<Self> {
        let turns = pool.options().get_max_connections() as usize / 2;
        Arc::new(Held {
            idle: Mutex::new(Vec::new()),
            turns: (turns > 0).then(|| Arc::new(Semaphore::new(turns))),
            reaping: AtomicBool::new(false),
        })
    }

    /// A connection for one statement, in turn: a fresh kept one, else one from sqlx's
    /// pool. `checked` (a retry after a lost connection) gives every kept connection back
    /// and takes one from sqlx.
    pub async fn take(&self, pool: &Pool<DB>, checked: bool) -> Result<Lent<DB>, sqlx::Error> {
        let turn = match &self.turns {
            // The semaphore is never closed.
            Some(turns) => Some(
                Arc::clone(turns)
                    .acquire_owned()
                    .await
                    .map_err(|_| sqlx::Error::PoolClosed)?,
            ),
            None => None,
        };
        let stale = {
            let mut idle = self.idle.lock();
            if !checked && !pool.is_closed() {
                if let Some((conn, at)) = idle.pop() {
                    if at.elapsed() < FRESH {
                        return Ok(Lent {
                            conn: Some(conn),
                            _turn: turn,
                        });
                    }
                    // The rest are older still.
                    idle.push((conn, at));
                }
            }
            // Stale, or one was found dead (the others may be too), or the pool is
            // closing: back to sqlx, which checks them.
            std::mem::take(&mut *idle)
        };
        for (conn, _) in stale {
            release(conn);
        }
        let conn = pool.acquire().await?;
        Ok(Lent {
            conn: Some(conn),
            _turn: turn,
        })
    }

    /// Keeps the connection of a successful statement for the next one (which may be
    /// waiting for this turn).
    pub fn give(self: &Arc<Self>, pool: &Pool<DB>, mut lent: Lent<DB>) {
        if self.turns.is_none() || pool.is_closed() {
            return;
        }
        if let Some(conn) = lent.conn.take() {
            self.idle.lock().push((conn, Instant::now()));
        }
        // The turn ends after the connection is kept: the next statement finds it.
        drop(lent);
        self.start_reaping(pool);
    }

    /// Starts the task that gives stale connections back (once per store, in the runtime
    /// of the first statement).
    fn start_reaping(self: &Arc<Self>, pool: &Pool<DB>) {
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
                    let mut idle = held.idle.lock();
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
                for (conn, _) in stale {
                    release(conn);
                }
                if closing {
                    return;
                }
            }
        });
    }
}
