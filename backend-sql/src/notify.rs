//! The invalidation channel of a near cache over PostgreSQL: `LISTEN larder_kv`.
//!
//! # How
//!
//! A trigger on `larder_kv` sends `NOTIFY larder_kv, <key>` for every row inserted, updated or
//! deleted; PostgreSQL delivers it to every listening session when the writing transaction
//! commits. [`PgNotify`] keeps one dedicated listening connection.
//!
//! # The trigger is installed on demand
//!
//! A transaction that sends a notification takes a database-wide lock at commit, so with
//! the trigger, writes to `larder_kv` commit one at a time (measured: 8 concurrent writers
//! reach about a fifth of their throughput without it, `benches/RESULTS.md`). The migrations
//! leave it out; the first listener installs it, after its `LISTEN` and before the channel is
//! declared up, and it stays for every later listener (the connecting role needs the right
//! to create triggers on `larder_kv`; without it the channel stays down and the near cache
//! bypasses its local tier). Creating a trigger waits for every write in progress on the
//! table, so each write either committed before the channel came up or notifies.
//!
//! # Sync points
//!
//! Notifications reach listeners in commit order, from one queue. Every quarter of the near
//! cache's staleness bound, `PgNotify` sends a notification of its own (a *ping*, whose
//! payload starts with a space, which no key can) from the pool, noting when it was sent.
//! When the listener receives it, every notification of a transaction that committed before
//! that instant has been received and handled, so the near cache may trust its entries up to
//! it. A ping not received within the timeout (default 1 s), a lost listening connection or a
//! failed ping takes the channel down; it reconnects with a capped back-off.
//!
//! Expired rows are not deleted at expiry, so they send nothing: a local copy of an entry
//! written by another process with a TTL may outlive the expiry by up to the near cache's
//! `max_age`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use larder_cache_api::layer::{resubscribe, InvalidationChannel, InvalidationSink, Subscription};
use larder_cache_api::{Error, ErrorKind, Result};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};

/// The channel the `larder_kv` trigger notifies.
pub const NOTIFY_CHANNEL: &str = "larder_kv";

const BACKEND: &str = "postgres";

/// The invalidation channel of [`PgKv`](crate::PgKv), for
/// `larder_near::Near`: see [`PgKv::notify`](crate::PgKv::notify).
#[derive(Debug, Clone)]
pub struct PgNotify {
    pool: PgPool,
    listen: Option<PgConnectOptions>,
    ping_timeout: Duration,
}

impl PgNotify {
    /// A channel whose pings go through `pool` and whose listening connection (one of its
    /// own, outside the pool) is opened with the pool's options.
    pub fn new(pool: PgPool) -> Self {
        PgNotify {
            pool,
            listen: None,
            ping_timeout: Duration::from_secs(1),
        }
    }

    /// Opens the listening connection with `options` instead of the pool's (another route
    /// to the same database).
    pub fn listen_with(mut self, options: PgConnectOptions) -> Self {
        self.listen = Some(options);
        self
    }

    /// How long a ping may take to come back before the channel is declared down
    /// (default 1 s).
    pub fn ping_timeout(mut self, timeout: Duration) -> Self {
        self.ping_timeout = timeout;
        self
    }
}

impl InvalidationChannel for PgNotify {
    fn subscribe(&self, sink: InvalidationSink) -> Result<Subscription> {
        Subscription::spawn(BACKEND, "PostgreSQL LISTEN", run(self.clone(), sink))
    }

    fn describe(&self) -> String {
        format!("postgres LISTEN {NOTIFY_CHANNEL}")
    }
}

async fn run(notify: PgNotify, sink: InvalidationSink) {
    // Pings of this channel carry this id; other processes' pings are ignored.
    let id = {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.finish()
    };
    resubscribe(&sink, "PostgreSQL LISTEN", || session(&notify, &sink, id)).await;
}

/// The queue of pings in flight (a poisoned lock only means a panic elsewhere; go on).
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn err(what: &'static str, e: sqlx::Error) -> Error {
    crate::error::db_error(BACKEND, what, e)
}

fn down(msg: &'static str) -> Error {
    Error::new(ErrorKind::Unavailable, msg).with_backend(BACKEND)
}

/// Installs the `larder_kv_notify` trigger unless it is there (see the module docs). Two
/// listeners may race to create it; the loser's error is swallowed.
async fn install_trigger(pool: &PgPool) -> Result<()> {
    sqlx::query(INSTALL_TRIGGER)
        .execute(pool)
        .await
        .map(drop)
        .map_err(|e| err("CREATE TRIGGER larder_kv_notify", e))
}

const INSTALL_TRIGGER: &str = "DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger
                   WHERE tgrelid = 'larder_kv'::regclass AND tgname = 'larder_kv_notify') THEN
        CREATE TRIGGER larder_kv_notify
            AFTER INSERT OR UPDATE OR DELETE ON larder_kv
            FOR EACH ROW EXECUTE FUNCTION larder_kv_notify();
    END IF;
EXCEPTION WHEN duplicate_object THEN NULL;
END $$";

/// One listening connection, until it fails; `Ok` when the near cache is gone.
async fn session(notify: &PgNotify, sink: &InvalidationSink, id: u64) -> Result<()> {
    let deadline = notify.ping_timeout * 5;
    // A connection of its own, not one of the application's pool.
    let options = match &notify.listen {
        Some(o) => o.clone(),
        None => PgConnectOptions::clone(&notify.pool.connect_options()),
    };
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(deadline)
        .connect_lazy_with(options);
    let mut listener = tokio::time::timeout(deadline, async {
        let mut l = PgListener::connect_with(&pool).await?;
        // A lost connection is reported (try_recv returns None), never silently replaced.
        l.eager_reconnect(false);
        l.listen(NOTIFY_CHANNEL).await?;
        Ok::<_, sqlx::Error>(l)
    })
    .await
    .map_err(|_| down("LISTEN timed out"))?
    .map_err(|e| err("LISTEN", e))?;
    tokio::time::timeout(deadline, install_trigger(&notify.pool))
        .await
        .map_err(|_| down("installing the larder_kv_notify trigger timed out"))??;
    sink.up();

    let pending: Arc<std::sync::Mutex<VecDeque<(u64, Instant)>>> = Arc::default();
    let last_seq = Arc::new(AtomicU64::new(0));
    let prefix = format!(" ping {id:016x} ");

    let reader = async {
        loop {
            match listener.try_recv().await {
                Ok(Some(n)) => {
                    let payload = n.payload();
                    if let Some(seq) = payload.strip_prefix(&prefix) {
                        let Ok(seq) = seq.parse::<u64>() else {
                            continue;
                        };
                        let mut p = lock(&pending);
                        let mut sent = None;
                        while let Some(&(s, at)) = p.front() {
                            if s > seq {
                                break;
                            }
                            sent = Some(at);
                            p.pop_front();
                        }
                        drop(p);
                        if let Some(at) = sent {
                            sink.synced(at);
                        }
                    } else if payload.starts_with(' ') {
                        // Another process's ping.
                    } else {
                        sink.invalidate(payload.as_bytes());
                    }
                }
                Ok(None) => return Err(down("listening connection lost")),
                Err(e) => return Err(err("LISTEN", e)),
            }
        }
    };

    let pinger = async {
        let mut tick = tokio::time::interval(sink.sync_interval().max(Duration::from_millis(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if sink.is_closed() {
                return Ok(());
            }
            let oldest = lock(&pending).front().map(|&(_, at)| at);
            if oldest.is_some_and(|at| at.elapsed() > notify.ping_timeout) {
                return Err(down("a ping did not come back in time"));
            }
            let seq = last_seq.fetch_add(1, Ordering::Relaxed) + 1;
            let sent = Instant::now();
            lock(&pending).push_back((seq, sent));
            let q = sqlx::query("SELECT pg_notify($1, $2)")
                .bind(NOTIFY_CHANNEL)
                .bind(format!("{prefix}{seq}"))
                .execute(&notify.pool);
            tokio::time::timeout(notify.ping_timeout, q)
                .await
                .map_err(|_| down("ping timed out"))?
                .map_err(|e| err("NOTIFY", e))?;
        }
    };

    tokio::select! {
        r = reader => r,
        r = pinger => r,
    }
}
