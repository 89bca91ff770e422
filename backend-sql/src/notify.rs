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
//! table, so each write either committed before the channel came up or notifies. Once a
//! channel has been up it never installs the trigger again: a trigger dropped later (a
//! migration, a restore) may have been dropped on purpose, so it is reported instead.
//!
//! # Sync points go the way writes go
//!
//! Notifications reach listeners in commit order, from one queue. Every quarter of the near
//! cache's staleness bound, `PgNotify` *writes* a reserved row of `larder_kv` (an upsert from
//! the pool; its key starts with a space, which no [`Key`](larder_cache_api::Key) can, so no
//! reader ever sees it), noting when it was sent. The trigger's notification of that row is
//! the confirmation: when the listener receives it, every notification of a transaction that
//! committed before that instant has been received and handled, so the near cache may trust
//! its entries up to it. The channel is declared up at the first confirmation. Because the
//! confirmation travels through the trigger, a trigger that is dropped or disabled (`ALTER
//! TABLE … DISABLE TRIGGER`) stops the confirmations as it stops the invalidations: within
//! the ping timeout (default 1 s) the channel goes down, the near cache flushes and bypasses
//! its local tier (and never serves past the staleness bound meanwhile), and its stats say
//! why ([`ChannelFault::TriggerMissing`], [`ChannelFault::TriggerDisabled`]). A lost
//! listening connection or a failed sync also takes the channel down; it reconnects with a
//! capped back-off. The cost is one single-row upsert per sync interval per near cache (80
//! a second at the default 50 ms bound); each session's row is deleted by the next session
//! and expires 10 minutes after its last sync, for `purge_expired` to remove.
//!
//! Expired rows are not deleted at expiry, so they send nothing: a local copy of an entry
//! written by another process with a TTL may outlive the expiry by up to the near cache's
//! `max_age`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use larder_cache_api::layer::{
    resubscribe, ChannelFault, InvalidationChannel, InvalidationSink, Subscription,
};
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
    // This channel's sync rows carry this id; other processes' are ignored.
    let id = {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.finish()
    };
    let state = Runs::default();
    resubscribe(&sink, "PostgreSQL LISTEN", || {
        session(&notify, &sink, id, &state)
    })
    .await;
}

/// What one listening session leaves to the next.
#[derive(Default)]
struct Runs {
    /// A session of this channel has come up: the trigger was there then, so from now on
    /// a missing one was removed on purpose and is reported, never installed again.
    ever_up: AtomicBool,
    /// The sync row of the previous session, deleted by the next one.
    last_key: std::sync::Mutex<Option<String>>,
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

/// The sync: an upsert of this session's reserved row, whose trigger notification is the
/// confirmation. Its expiry (10 minutes ahead, moved on by every sync) lets
/// `purge_expired` remove the row of a process that is gone.
const SYNC: &str = "INSERT INTO larder_kv (key, value, version, expires_at) \
     VALUES ($1, ''::bytea, 0, CEIL(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT + 600000) \
     ON CONFLICT (key) DO UPDATE SET expires_at = EXCLUDED.expires_at";

/// Why a sync did not come back: the trigger is gone or disabled, or something else.
async fn diagnose(pool: &PgPool, timeout: Duration) -> ChannelFault {
    let q = sqlx::query_scalar::<_, String>(
        "SELECT tgenabled::text FROM pg_trigger \
         WHERE tgrelid = 'larder_kv'::regclass AND tgname = 'larder_kv_notify'",
    )
    .fetch_optional(pool);
    match tokio::time::timeout(timeout, q).await {
        Ok(Ok(None)) => ChannelFault::TriggerMissing,
        // 'O' fires in ordinary sessions, 'A' always; 'D' never, 'R' only on replicas.
        Ok(Ok(Some(s))) if s != "O" && s != "A" => ChannelFault::TriggerDisabled,
        _ => ChannelFault::Unconfirmed,
    }
}

/// One listening connection, until it fails; `Ok` when the near cache is gone.
async fn session(notify: &PgNotify, sink: &InvalidationSink, id: u64, runs: &Runs) -> Result<()> {
    let deadline = notify.ping_timeout * 5;
    let sink = &sink.next_generation();
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
    if !runs.ever_up.load(Ordering::Acquire) {
        tokio::time::timeout(deadline, install_trigger(&notify.pool))
            .await
            .map_err(|_| down("installing the larder_kv_notify trigger timed out"))??;
    }
    // A key no `Key` can be (it starts with a space), fresh per session so that a sync of
    // an earlier session committed late is never taken for one of this session.
    let key = format!(" larder-near-sync {id:016x} {}", sink.generation());
    let previous = lock(&runs.last_key).replace(key.clone());
    if let Some(previous) = previous {
        // Best effort: a row left behind expires and is purged.
        let q = sqlx::query("DELETE FROM larder_kv WHERE key = $1")
            .bind(previous)
            .execute(&notify.pool);
        let _ = tokio::time::timeout(notify.ping_timeout, q).await;
    }

    let pending: Arc<std::sync::Mutex<VecDeque<Instant>>> = Arc::default();

    let reader = async {
        let mut up = false;
        loop {
            match listener.try_recv().await {
                Ok(Some(n)) => {
                    let payload = n.payload();
                    if payload == key {
                        // Syncs commit one after another, each notifying once, so this
                        // confirms the oldest in flight (an earlier one if a notification
                        // was lost: an older sync point, never a newer one).
                        let sent = lock(&pending).pop_front();
                        if let Some(at) = sent {
                            if !up {
                                // The trigger carried a write to us: the channel is up.
                                up = true;
                                runs.ever_up.store(true, Ordering::Release);
                                sink.up();
                            }
                            sink.synced(at);
                        }
                    } else if payload.starts_with(' ') {
                        // Another session's or process's sync row.
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
            let oldest = lock(&pending).front().copied();
            if oldest.is_some_and(|at| at.elapsed() > notify.ping_timeout) {
                let fault = diagnose(&notify.pool, notify.ping_timeout).await;
                tracing::warn!(
                    %fault,
                    "PostgreSQL LISTEN: a sync written to larder_kv was not notified in time"
                );
                sink.down_because(fault);
                return Err(down("a sync did not come back in time"));
            }
            let sent = Instant::now();
            lock(&pending).push_back(sent);
            let q = sqlx::query(SYNC).bind(key.as_str()).execute(&notify.pool);
            tokio::time::timeout(notify.ping_timeout, q)
                .await
                .map_err(|_| down("sync timed out"))?
                .map_err(|e| err("sync", e))?;
        }
    };

    tokio::select! {
        r = reader => r,
        r = pinger => r,
    }
}
