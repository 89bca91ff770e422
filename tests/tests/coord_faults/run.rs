//! One fault run, phase by phase: the store the nodes coordinate through, the warm-up, and
//! the cycle of faults (kill the leader, pause a runner, take the store away).

use std::time::{Duration, Instant};

use larder::coord::{HolderId, Lease, LeaseConfig};
use larder::DynBackend;
use larder_tests::server::ServerProcess;
use larder_tests::{eventually, Patience};
use sqlx::PgPool;

use crate::cluster::Cluster;
use crate::tables::{current_leader, latest_term};
use crate::{name_of, now_ms, pid_of, sleep_ms, LEASE_MS, PERIOD_MS, RENEW_MS, RETRY_MS};

/// What the nodes coordinate through.
pub(crate) enum Store {
    /// PostgreSQL's `larder_kv`, in the run's schema.
    Postgres,
    /// A redis-server with an append-only file fsynced on every write.
    Redis { server: ServerProcess, url: String },
}

impl Store {
    pub(crate) fn postgres() -> Self {
        Store::Postgres
    }

    pub(crate) fn redis_with_aof() -> Self {
        let server = ServerProcess::redis_with(&["--appendonly", "yes", "--appendfsync", "always"]);
        let url = redis_url(&server);
        Store::Redis { server, url }
    }

    /// The backend argument of `coord_node`.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Store::Postgres => "postgres",
            Store::Redis { .. } => "redis",
        }
    }

    /// The URL argument of `coord_node` (`-`: the schema's own `larder_kv`).
    pub(crate) fn url(&self) -> &str {
        match self {
            Store::Postgres => "-",
            Store::Redis { url, .. } => url,
        }
    }

    /// A backend on the same records as the nodes; `kv` is the schema's `larder_kv`.
    pub(crate) async fn backend(&self, kv: DynBackend) -> DynBackend {
        match self {
            Store::Postgres => kv,
            Store::Redis { url, .. } => larder::connect(url).await.unwrap(),
        }
    }

    /// Redis: the server dies and comes back with its append-only file; returns when it was
    /// down and up again. PostgreSQL stays (the nodes' tables live there too).
    pub(crate) async fn outage(&mut self) -> Option<(i64, i64)> {
        let Store::Redis { server, .. } = self else {
            return None;
        };
        let stopped = now_ms();
        server.stop();
        sleep_ms(2000).await;
        server.start();
        let started = now_ms();
        eprintln!("[redis] redis-server down for {} ms", started - stopped);
        Some((stopped, started))
    }
}

/// The URL the nodes use for a redis-server: short timeouts, so an outage shows at once.
pub(crate) fn redis_url(server: &ServerProcess) -> String {
    format!(
        "redis://{}?response_timeout_ms=500&connect_timeout_ms=300",
        server.addr()
    )
}

/// A read-only view of the lease record (it never competes: it only observes).
pub(crate) fn observer(backend: DynBackend) -> Lease {
    Lease::new(
        backend,
        "leader",
        HolderId::named("observer"),
        LeaseConfig::new(
            Duration::from_millis(LEASE_MS as u64),
            Duration::from_millis(RENEW_MS as u64),
            Duration::from_millis(RETRY_MS as u64),
        )
        .unwrap(),
    )
    .unwrap()
}

/// SIGKILLs the leader and times the next term; returns (kill time, failover ms).
pub(crate) async fn kill_the_leader(
    c: &mut Cluster,
    pool: &PgPool,
    observer: &Lease,
    backend: &str,
) -> (i64, i64) {
    let (holder, token) = current_leader(pool, observer).await;
    let name = name_of(&holder).to_owned();
    assert_eq!(c.pid(&name), pid_of(&holder), "the leader is a live node");
    let kill_ms = now_ms();
    c.kill(&name);
    let patience = Patience::new(Duration::from_secs(15)).every(Duration::from_millis(50));
    let won_at = eventually(
        patience,
        "a new leader after the kill",
        async || match latest_term(pool).await {
            Some((_, t, won)) if t > token => Some(won),
            _ => None,
        },
    )
    .await;
    let failover = won_at - kill_ms;
    eprintln!("[{backend}] leader {name} killed; new term after {failover} ms");
    assert!(
        failover >= 0,
        "a new term began before the kill: the killed node was not the leader"
    );
    assert!(
        // Followers look about once per renew deadline: the first look after the kill
        // comes within one, and the takeover a lease after it.
        failover <= LEASE_MS + RENEW_MS + 500,
        "failover took {failover} ms, more than lease + renew deadline + 0.5 s"
    );
    c.start(std::slice::from_ref(&name));
    (kill_ms, failover)
}

/// One SIGSTOP of a node caught in the middle of a run.
#[derive(Debug)]
pub(crate) struct Pause {
    pub(crate) holder: String,
    pub(crate) period: i64,
    pub(crate) token: i64,
    pub(crate) stopped_ms: i64,
    pub(crate) resumed_ms: i64,
}

/// Waits for a new period, finds the node that claimed it (it is then inside its 300 ms
/// sleep, before its fenced write), and stops it for two leases. A node that was caught
/// inside a database statement or transaction is let go at once and another period tried:
/// a stopped client holding a row lock would stall everybody, which is a different fault.
pub(crate) async fn pause_a_runner(c: &Cluster, pool: &PgPool) -> Pause {
    let app_prefix = format!("coord_node {} ", c.schema);
    for _attempt in 0..20 {
        let now = now_ms();
        let period = (now / PERIOD_MS + 1) * PERIOD_MS;
        sleep_ms(period - now + 20).await;
        let deadline = Instant::now() + Duration::from_millis(600);
        let mut found: Option<(String, i64, i64)> = None;
        // Not `eventually`: no claim in time is an answer (try the next period), not a failure.
        while found.is_none() && Instant::now() < deadline {
            found = sqlx::query_as("SELECT holder, token, at_ms FROM claims WHERE period = $1")
                .bind(period)
                .fetch_optional(pool)
                .await
                .unwrap();
            if found.is_none() {
                sleep_ms(10).await;
            }
        }
        let Some((holder, token, at_ms)) = found else {
            continue;
        };
        let name = name_of(&holder).to_owned();
        // Stop it 100 ms into its run: past its control read, well inside its sleep.
        let wait = at_ms + 100 - now_ms();
        if wait < -100 || c.pid(&name) != pid_of(&holder) {
            continue; // too late to catch it before its writes
        }
        sleep_ms(wait).await;
        c.signal(&name, "-STOP");
        let stopped_ms = now_ms();
        sleep_ms(50).await;
        let busy = {
            let app = format!("{app_prefix}{name}");
            let (n,): (i64,) = sqlx::query_as(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND state <> 'idle'",
            )
            .bind(app)
            .fetch_one(pool)
            .await
            .unwrap();
            n
        };
        if busy > 0 {
            c.signal(&name, "-CONT");
            eprintln!("{name} was stopped inside a database transaction; trying another period");
            sleep_ms(1500).await;
            continue;
        }
        sleep_ms(2 * LEASE_MS - 50).await;
        let resumed_ms = now_ms();
        c.signal(&name, "-CONT");
        return Pause {
            holder,
            period,
            token,
            stopped_ms,
            resumed_ms,
        };
    }
    panic!("could not catch a node inside a run in 20 periods");
}
