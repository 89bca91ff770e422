//! Coordination under real process faults: five `coord_node` OS processes share a backend
//! (PostgreSQL's `larder_kv`, or a redis-server with an fsynced append-only file) and run an
//! elector and a periodic task `tick` every second. The test SIGKILLs the leader and measures
//! the failover, SIGSTOPs a node in the middle of a run for two leases, and (Redis) stops and
//! restarts redis-server. Then it checks, from the tables the nodes wrote:
//!
//! * no period is claimed twice;
//! * accepted fenced writes never go back in token order (by insertion id);
//! * the paused node's write with its stale token, made after it resumed, was refused;
//! * no period is missing, except those the guarantee allows: the run of a node killed
//!   between its claim and its first write (at-most-once: not repeated), and, for Redis,
//!   the claim in flight when the server died plus the periods whose whole misfire window
//!   (`MisfirePolicy::RunEach { max: 3 }`) passed before the backend answered again;
//! * the unfenced control counter lost updates (the pause really overlapped runs).
//!
//! `LARDER_SOAK=1` repeats the fault cycle several times.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use larder::coord::{HolderId, Lease, LeaseConfig};
use larder_tests::server::ServerProcess;
use sqlx::PgPool;

/// The nodes' timing (see `coord_node`): lease 2 s, renew deadline 1.2 s, retry 0.3 s, a
/// period of 1 s, missed periods run up to 3 (`MisfirePolicy::RunEach { max: 3 }`).
const LEASE_MS: i64 = 2000;
const RENEW_MS: i64 = 1200;
const RETRY_MS: i64 = 300;
const PERIOD_MS: i64 = 1000;
const CATCH_UP: i64 = 3;
const NODES: usize = 5;

/// The two runs share two cores: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap()
}

async fn sleep_ms(ms: i64) {
    tokio::time::sleep(Duration::from_millis(ms.max(0) as u64)).await;
}

/// `name@host:pid:random` → `name`.
fn name_of(holder: &str) -> &str {
    holder.split('@').next().unwrap()
}

/// `name@host:pid:random` → `pid`.
fn pid_of(holder: &str) -> u32 {
    holder
        .rsplit(':')
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in holder id {holder:?}"))
}

struct Node {
    child: Child,
    _stdin: ChildStdin,
}

/// The node processes of one run; every one is killed on drop, panic or not.
struct Cluster {
    schema: String,
    backend: &'static str,
    redis_url: String,
    nodes: BTreeMap<String, Node>,
    logs: tempfile::TempDir,
    starts: usize,
    /// Start the nodes with `accept-loss` (`Durability::AcceptLoss`).
    accept_loss: bool,
}

impl Cluster {
    fn new(schema: &str, backend: &'static str, redis_url: &str) -> Self {
        Cluster {
            schema: schema.to_owned(),
            backend,
            redis_url: redis_url.to_owned(),
            nodes: BTreeMap::new(),
            logs: tempfile::tempdir().unwrap(),
            starts: 0,
            accept_loss: false,
        }
    }

    /// Starts the nodes named, and waits until each says `ready`.
    fn start(&mut self, names: &[String]) {
        let mut pending = Vec::new();
        for name in names {
            assert!(!self.nodes.contains_key(name), "{name} already running");
            self.starts += 1;
            let log = File::create(self.log_path(name, self.starts)).unwrap();
            let mut child = Command::new(env!("CARGO_BIN_EXE_coord_node"))
                .args([
                    &larder_tests::db::postgres_url(),
                    &self.schema,
                    self.backend,
                    &self.redis_url,
                    name,
                ])
                .args(self.accept_loss.then_some("accept-loss"))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::from(log))
                .spawn()
                .unwrap();
            let stdin = child.stdin.take().unwrap();
            let stdout = child.stdout.take().unwrap();
            self.nodes.insert(
                name.clone(),
                Node {
                    child,
                    _stdin: stdin,
                },
            );
            pending.push((name.clone(), stdout));
        }
        for (name, stdout) in pending {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).unwrap();
            assert_eq!(line.trim(), "ready", "node {name} did not start");
        }
    }

    fn log_path(&self, name: &str, n: usize) -> PathBuf {
        self.logs.path().join(format!("{n:02}-{name}.log"))
    }

    fn pid(&self, name: &str) -> u32 {
        self.nodes
            .get(name)
            .unwrap_or_else(|| panic!("no node {name}"))
            .child
            .id()
    }

    /// SIGKILL, and reap.
    fn kill(&mut self, name: &str) {
        let mut node = self.nodes.remove(name).unwrap();
        node.child.kill().unwrap();
        node.child.wait().unwrap();
    }

    fn signal(&self, name: &str, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.pid(name).to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} {name}");
    }

    fn kill_all(&mut self) {
        let names: Vec<String> = self.nodes.keys().cloned().collect();
        for name in names {
            self.kill(&name);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in self.nodes.values_mut() {
            // SIGKILL ends a stopped process too.
            let _ = node.child.kill();
            let _ = node.child.wait();
        }
        if std::thread::panicking() {
            let mut logs: Vec<_> = std::fs::read_dir(self.logs.path())
                .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
                .unwrap_or_default();
            logs.sort();
            for path in logs {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                eprintln!("--- {} (last 20 lines)", path.display());
                for l in &lines[lines.len().saturating_sub(20)..] {
                    eprintln!("{l}");
                }
            }
        }
    }
}

async fn create_tables(pool: &PgPool) {
    for sql in [
        "CREATE TABLE terms (holder TEXT NOT NULL, token BIGINT NOT NULL, won_at_ms BIGINT NOT NULL)",
        "CREATE TABLE claims (period BIGINT NOT NULL, holder TEXT NOT NULL, token BIGINT NOT NULL, at_ms BIGINT NOT NULL)",
        "CREATE TABLE control (id INT PRIMARY KEY, value BIGINT NOT NULL)",
        "INSERT INTO control (id, value) VALUES (1, 0)",
        "CREATE TABLE control_attempts (holder TEXT NOT NULL, period BIGINT NOT NULL, at_ms BIGINT NOT NULL)",
        "CREATE TABLE fenced (id BIGSERIAL PRIMARY KEY, token BIGINT NOT NULL, holder TEXT NOT NULL, period BIGINT NOT NULL, at_ms BIGINT NOT NULL)",
        "CREATE TABLE fenced_refused (token BIGINT NOT NULL, holder TEXT NOT NULL, period BIGINT NOT NULL, at_ms BIGINT NOT NULL)",
    ] {
        sqlx::query(sql).execute(pool).await.unwrap();
    }
}

async fn latest_term(pool: &PgPool) -> Option<(String, i64, i64)> {
    sqlx::query_as("SELECT holder, token, won_at_ms FROM terms ORDER BY token DESC LIMIT 1")
        .fetch_optional(pool)
        .await
        .unwrap()
}

/// The leader now: the latest recorded term, once the lease record confirms that its holder
/// still holds it (a term whose holder stepped down without a successor yet is no target).
async fn current_leader(pool: &PgPool, observer: &Lease) -> (String, i64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let (Some((holder, token, _)), Ok(Some(rec))) =
            (latest_term(pool).await, observer.observe().await)
        {
            if rec.holder == holder && rec.token as i64 == token && !rec.released {
                return (holder, token);
            }
        }
        assert!(Instant::now() < deadline, "no settled leader within 15 s");
        sleep_ms(100).await;
    }
}

async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    let (n,): (i64,) = sqlx::query_as(sql).fetch_one(pool).await.unwrap();
    n
}

/// One SIGSTOP of a node caught in the middle of a run.
#[derive(Debug)]
struct Pause {
    holder: String,
    period: i64,
    token: i64,
    stopped_ms: i64,
    resumed_ms: i64,
}

/// Waits for a new period, finds the node that claimed it (it is then inside its 300 ms
/// sleep, before its fenced write), and stops it for two leases. A node that was caught
/// inside a database statement or transaction is let go at once and another period tried:
/// a stopped client holding a row lock would stall everybody, which is a different fault.
async fn pause_a_runner(c: &Cluster, pool: &PgPool) -> Pause {
    let app_prefix = format!("coord_node {} ", c.schema);
    for _attempt in 0..20 {
        let now = now_ms();
        let period = (now / PERIOD_MS + 1) * PERIOD_MS;
        sleep_ms(period - now + 20).await;
        let deadline = Instant::now() + Duration::from_millis(600);
        let mut found: Option<(String, i64, i64)> = None;
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

/// What the run measured, for the summary line.
#[derive(Debug, Default)]
struct Figures {
    runs: usize,
    duplicate_claims: usize,
    out_of_order_fenced: usize,
    failovers_ms: Vec<i64>,
    lost_control_updates: i64,
    stale_writes_refused: usize,
    refused_total: i64,
    missing_periods: Vec<i64>,
    missing_tokens: usize,
    terms: i64,
    outages: Vec<(i64, i64, i64)>,
}

async fn fault_run(backend: &'static str) {
    let _one_at_a_time = SERIAL.lock().await;
    let soak = std::env::var("LARDER_SOAK").is_ok_and(|v| v == "1");
    let cycles = if soak { 6 } else { 1 };
    let (store, schema) = larder_tests::db::pg_store().await;
    // The SQL store's tables (larder_kv for the postgres runs, larder_fences for all).
    let kv = larder_tests::db::pg_kv_beside(&store).await;
    let pool = store.pool().clone();
    create_tables(&pool).await;
    let mut redis = (backend == "redis")
        .then(|| ServerProcess::redis_with(&["--appendonly", "yes", "--appendfsync", "always"]));
    let redis_url = redis
        .as_ref()
        .map(|r| {
            format!(
                "redis://{}?response_timeout_ms=500&connect_timeout_ms=300",
                r.addr()
            )
        })
        .unwrap_or_else(|| "-".into());
    // A read-only view of the lease record (it never competes: it only observes).
    let coord: larder::DynBackend = match backend {
        "postgres" => std::sync::Arc::new(kv),
        _ => larder::connect(&redis_url).await.unwrap(),
    };
    let observer = Lease::new(
        coord,
        "leader",
        HolderId::named("observer"),
        LeaseConfig::new(
            Duration::from_millis(LEASE_MS as u64),
            Duration::from_millis(RENEW_MS as u64),
            Duration::from_millis(RETRY_MS as u64),
        )
        .unwrap(),
    )
    .unwrap();
    let mut c = Cluster::new(&schema, backend, &redis_url);
    let names: Vec<String> = (1..=NODES).map(|i| format!("n{i}")).collect();
    c.start(&names);

    // Warm up: a leader, and periods being run.
    let deadline = Instant::now() + Duration::from_secs(15);
    while latest_term(&pool).await.is_none()
        || count(&pool, "SELECT count(*) FROM claims").await < 3
    {
        assert!(
            Instant::now() < deadline,
            "no leader or no runs within 15 s"
        );
        sleep_ms(100).await;
    }

    let mut figures = Figures::default();
    let mut kills: Vec<i64> = Vec::new();
    let mut pauses: Vec<Pause> = Vec::new();
    for _cycle in 0..cycles {
        // SIGKILL the leader; time the next term.
        let (holder, token) = current_leader(&pool, &observer).await;
        let name = name_of(&holder).to_owned();
        assert_eq!(c.pid(&name), pid_of(&holder), "the leader is a live node");
        let kill_ms = now_ms();
        c.kill(&name);
        kills.push(kill_ms);
        let deadline = Instant::now() + Duration::from_secs(15);
        let won_at = loop {
            match latest_term(&pool).await {
                Some((_, t, won)) if t > token => break won,
                _ => {}
            }
            assert!(
                Instant::now() < deadline,
                "no new leader 15 s after the kill"
            );
            sleep_ms(50).await;
        };
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
        figures.failovers_ms.push(failover);
        c.start(std::slice::from_ref(&name));
        sleep_ms(3000).await;

        // SIGSTOP a node in the middle of a run, for two leases.
        let p = pause_a_runner(&c, &pool).await;
        eprintln!(
            "[{backend}] {} paused in period {} (token {}) for {} ms",
            name_of(&p.holder),
            p.period,
            p.token,
            p.resumed_ms - p.stopped_ms
        );
        pauses.push(p);
        sleep_ms(3000).await;

        // Redis: the server dies and comes back with its append-only file.
        if let Some(r) = redis.as_mut() {
            let stopped = now_ms();
            r.stop();
            sleep_ms(2000).await;
            r.start();
            let started = now_ms();
            eprintln!("[{backend}] redis-server down for {} ms", started - stopped);
            figures.outages.push((stopped, started, 0));
            sleep_ms(5000).await;
        }
    }
    sleep_ms(if soak { 10_000 } else { 3000 }).await;
    c.kill_all();

    // ---- What the tables say.
    let claims: Vec<(i64, String, i64, i64)> =
        sqlx::query_as("SELECT period, holder, token, at_ms FROM claims ORDER BY period")
            .fetch_all(&pool)
            .await
            .unwrap();
    figures.runs = claims.len();
    let mut per_period: BTreeMap<i64, usize> = BTreeMap::new();
    for (period, ..) in &claims {
        *per_period.entry(*period).or_default() += 1;
    }
    let duplicates: Vec<i64> = per_period
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(p, _)| *p)
        .collect();
    figures.duplicate_claims = duplicates.len();

    // Fenced writes, in commit (id) order: tokens never go back.
    let fenced: Vec<(i64, i64, String, i64)> =
        sqlx::query_as("SELECT id, token, holder, at_ms FROM fenced ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    let mut highest = i64::MIN;
    for (_, token, ..) in &fenced {
        if *token < highest {
            figures.out_of_order_fenced += 1;
        }
        highest = highest.max(*token);
    }
    let refused: Vec<(i64, String, i64)> =
        sqlx::query_as("SELECT token, holder, at_ms FROM fenced_refused")
            .fetch_all(&pool)
            .await
            .unwrap();
    figures.refused_total = refused.len() as i64;

    // The paused node: every write it made after resuming with a token it held before the
    // pause was refused, and it made at least one. It was stopped inside its sleep, before
    // its fenced write, so any such write stamped after the stop was made after resuming
    // (the node may stamp it a few ms before the test's own `kill -CONT` returns).
    let mut pause_failures = Vec::new();
    for p in &pauses {
        let stale: BTreeSet<i64> = claims
            .iter()
            .filter(|(_, h, _, at)| *h == p.holder && *at < p.stopped_ms)
            .map(|(_, _, t, _)| *t)
            .collect();
        let accepted: Vec<i64> = fenced
            .iter()
            .filter(|(_, t, h, at)| *h == p.holder && *at >= p.stopped_ms && stale.contains(t))
            .map(|(_, t, ..)| *t)
            .collect();
        let refused_here = refused
            .iter()
            .filter(|(t, h, at)| *h == p.holder && *at >= p.stopped_ms && stale.contains(t))
            .count();
        if !accepted.is_empty() {
            pause_failures.push(format!(
                "{}: stale tokens {accepted:?} written after resuming",
                p.holder
            ));
        }
        if refused_here == 0 {
            pause_failures.push(format!(
                "{}: no stale write attempted after resuming (token {})",
                p.holder, p.token
            ));
        }
        figures.stale_writes_refused += refused_here;
    }

    // Missing periods between the first and the last claim.
    let (first, last) = (
        *per_period.keys().next().unwrap(),
        *per_period.keys().next_back().unwrap(),
    );
    figures.missing_periods = (0..)
        .map(|i| first + i * PERIOD_MS)
        .take_while(|p| *p <= last)
        .filter(|p| !per_period.contains_key(p))
        .collect();
    let tokens: BTreeSet<i64> = claims.iter().map(|c| c.2).collect();
    let (tmin, tmax) = (
        *tokens.iter().next().unwrap(),
        *tokens.iter().next_back().unwrap(),
    );
    figures.missing_tokens = (tmin..=tmax).filter(|t| !tokens.contains(t)).count();
    // When the backend answered again after each outage: the first run started after it.
    for o in &mut figures.outages {
        o.2 = claims
            .iter()
            .map(|c| c.3)
            .filter(|at| *at >= o.1)
            .min()
            .unwrap_or(i64::MAX);
    }
    // What the guarantee allows to be missing:
    // * at most once: a node killed after claiming a period and before recording it takes
    //   that run with it (the period in which it was killed; it leaves a token gap);
    // * Redis: the claim in flight when the server died may have landed with its reply lost,
    //   and a period whose whole misfire window [p, p + 3 s) ended before the backend
    //   answered again can no longer be claimed.
    let mut by_kill = 0usize;
    let mut unexplained = Vec::new();
    for &p in &figures.missing_periods {
        if kills.iter().any(|&k| p <= k && k < p + PERIOD_MS) {
            by_kill += 1;
        } else if figures.outages.iter().any(|&(down, _, back)| {
            (p <= down && down < p + PERIOD_MS)
                || (p >= down - PERIOD_MS && p + CATCH_UP * PERIOD_MS <= back)
        }) {
            // allowed for Redis
        } else {
            unexplained.push(p);
        }
    }

    let control = count(&pool, "SELECT value FROM control WHERE id = 1").await;
    let attempts = count(&pool, "SELECT count(*) FROM control_attempts").await;
    figures.lost_control_updates = attempts - control;
    figures.terms = count(&pool, "SELECT count(*) FROM terms").await;

    println!(
        "coord_faults[{backend}]: schema={schema} runs={} duplicate_claims={} out_of_order_fenced={} \
         worst_failover_ms={} failovers_ms={:?} lost_control_updates={} (control {} of {} attempts) \
         stale_writes_refused={} refused_total={} missing_periods={} (kill {}, outage {}) \
         missing_tokens={} terms={} pauses={} outages_ms={:?}",
        figures.runs,
        figures.duplicate_claims,
        figures.out_of_order_fenced,
        figures.failovers_ms.iter().max().unwrap(),
        figures.failovers_ms,
        figures.lost_control_updates,
        control,
        attempts,
        figures.stale_writes_refused,
        figures.refused_total,
        figures.missing_periods.len(),
        by_kill,
        figures.missing_periods.len() - by_kill - unexplained.len(),
        figures.missing_tokens,
        figures.terms,
        pauses.len(),
        figures
            .outages
            .iter()
            .map(|(d, u, b)| (u - d, b - u))
            .collect::<Vec<_>>(),
    );

    assert!(figures.runs >= 15, "too few runs: {}", figures.runs);
    assert!(
        duplicates.is_empty(),
        "periods claimed twice: {duplicates:?}"
    );
    assert_eq!(
        figures.out_of_order_fenced, 0,
        "accepted fenced writes went back in token order"
    );
    assert!(pause_failures.is_empty(), "{pause_failures:?}");
    assert!(
        unexplained.is_empty(),
        "periods never claimed although a node could reach the backend: {unexplained:?} \
         (kills at {kills:?}, outages {:?})",
        figures.outages
    );
    assert!(
        by_kill <= kills.len() && by_kill <= figures.missing_tokens,
        "{by_kill} periods lost to {} kills with {} token gaps",
        kills.len(),
        figures.missing_tokens
    );
    for (down, up, back) in &figures.outages {
        assert!(
            back - up <= 5000,
            "no run for {} ms after redis-server came back (down at {down})",
            back - up
        );
    }
    assert!(
        control < attempts,
        "the unfenced control lost no update ({control} of {attempts}): the pause did not \
         overlap runs, so the test proved nothing"
    );

    pool.close().await;
    drop_schema(&schema).await;
}

async fn drop_schema(schema: &str) {
    let admin = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&larder_tests::db::postgres_url())
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_coordination_survives_kill_and_pause() {
    fault_run("postgres").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_coordination_survives_kill_pause_and_restart() {
    fault_run("redis").await;
}

/// The nodes as the outside test ran them, on a default Redis (no append-only file): each of
/// the five processes refuses to start, with the documented message, and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_processes_refuse_a_redis_without_persistence() {
    let _one_at_a_time = SERIAL.lock().await;
    let (store, schema) = larder_tests::db::pg_store().await;
    let pool = store.pool().clone();
    create_tables(&pool).await;
    let redis = ServerProcess::redis_with(&["--save", "", "--appendonly", "no"]);
    let url = format!("redis://{}", redis.addr());
    let mut children = Vec::new();
    for i in 1..=NODES {
        let child = Command::new(env!("CARGO_BIN_EXE_coord_node"))
            .args([
                &larder_tests::db::postgres_url(),
                &schema,
                "redis",
                &url,
                &format!("n{i}"),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        children.push(child);
    }
    // Their standard input stays open (a node exits when it closes): they must end by
    // themselves, refused.
    let stdins: Vec<ChildStdin> = children
        .iter_mut()
        .map(|c| c.stdin.take().unwrap())
        .collect();
    let waited = tokio::task::spawn_blocking(move || {
        children
            .into_iter()
            .map(|c| c.wait_with_output().unwrap())
            .collect::<Vec<_>>()
    });
    let outputs = tokio::time::timeout(Duration::from_secs(30), waited)
        .await
        .expect("every node ends within 30 s (a node that started would run on)")
        .unwrap();
    drop(stdins);
    for out in &outputs {
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(3),
            "refused at start: {stdout} {stderr}"
        );
        assert!(
            stdout.starts_with(
                "refused: redis may lose coordination records: it is not persistent (no \
                 append-only file (appendonly no))"
            ),
            "{stdout}"
        );
        assert!(stdout.contains("a period be claimed twice"), "{stdout}");
        assert!(
            stdout.contains("LeaseConfig::with_durability(Durability::AcceptLoss)"),
            "says how to opt in: {stdout}"
        );
        assert!(!stdout.contains("ready"), "{stdout}");
    }
    eprintln!(
        "[redis, no persistence] {} of {NODES} nodes refused: {}",
        outputs.len(),
        String::from_utf8_lossy(&outputs[0].stdout).trim()
    );
    // Nothing was written, to Redis or to the tables.
    let cache = larder::Cache::new(larder::connect(&url).await.unwrap());
    assert!(cache
        .get::<larder::coord::LeaseRecord>(&Lease::key_for("leader").unwrap())
        .await
        .unwrap()
        .is_none());
    assert!(cache
        .get::<larder::coord::TaskRecord>(&larder::Key::new("larder:task:tick").unwrap())
        .await
        .unwrap()
        .is_none());
    assert_eq!(count(&pool, "SELECT count(*) FROM claims").await, 0);
    assert_eq!(count(&pool, "SELECT count(*) FROM terms").await, 0);
    pool.close().await;
    drop_schema(&schema).await;
}

/// The same five processes on a Redis without persistence, with the loss of records
/// accepted (`Durability::AcceptLoss`): Redis is killed and restarted empty mid-run. The
/// records come back with time-based tokens, so every token after the restart is above every
/// token before it (leases and tasks), and the new runs' fenced writes are accepted at once,
/// not refused until the tokens catch up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_without_persistence_keeps_tokens_growing_across_a_restart() {
    let _one_at_a_time = SERIAL.lock().await;
    let (store, schema) = larder_tests::db::pg_store().await;
    let _kv = larder_tests::db::pg_kv_beside(&store).await;
    let pool = store.pool().clone();
    create_tables(&pool).await;
    let mut redis = ServerProcess::redis_with(&["--save", "", "--appendonly", "no"]);
    let redis_url = format!(
        "redis://{}?response_timeout_ms=500&connect_timeout_ms=300",
        redis.addr()
    );
    let mut c = Cluster::new(&schema, "redis", &redis_url);
    c.accept_loss = true;
    let names: Vec<String> = (1..=NODES).map(|i| format!("n{i}")).collect();
    c.start(&names);
    let deadline = Instant::now() + Duration::from_secs(15);
    while latest_term(&pool).await.is_none()
        || count(&pool, "SELECT count(*) FROM fenced").await < 3
    {
        assert!(
            Instant::now() < deadline,
            "no leader or no runs within 15 s"
        );
        sleep_ms(100).await;
    }
    sleep_ms(1000).await;

    // Redis dies and comes back empty.
    let stopped = now_ms();
    redis.stop();
    sleep_ms(1000).await;
    redis.start();
    let up = now_ms();
    // Long enough for a new leader (a lost lease record is free at once) and several runs;
    // then, on a machine the whole suite shares, until both are recorded (bounded).
    sleep_ms(3 * LEASE_MS).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (terms, claims): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM terms WHERE won_at_ms >= $1), \
                    (SELECT count(*) FROM claims WHERE at_ms >= $1)",
        )
        .bind(up)
        .fetch_one(&pool)
        .await
        .unwrap();
        if (terms >= 1 && claims >= 3) || Instant::now() >= deadline {
            break;
        }
        sleep_ms(200).await;
    }
    c.kill_all();

    let claims: Vec<(i64, String, i64, i64)> =
        sqlx::query_as("SELECT period, holder, token, at_ms FROM claims ORDER BY at_ms")
            .fetch_all(&pool)
            .await
            .unwrap();
    let terms: Vec<(String, i64, i64)> =
        sqlx::query_as("SELECT holder, token, won_at_ms FROM terms ORDER BY won_at_ms")
            .fetch_all(&pool)
            .await
            .unwrap();
    let fenced: Vec<(i64, i64, String, i64)> =
        sqlx::query_as("SELECT id, token, holder, at_ms FROM fenced ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    let refused: Vec<(i64, String, i64)> =
        sqlx::query_as("SELECT token, holder, at_ms FROM fenced_refused ORDER BY at_ms")
            .fetch_all(&pool)
            .await
            .unwrap();

    let split = |rows: Vec<(i64, i64)>| {
        let before: Vec<i64> = rows.iter().filter(|r| r.1 < stopped).map(|r| r.0).collect();
        let after: Vec<i64> = rows.iter().filter(|r| r.1 >= up).map(|r| r.0).collect();
        (before, after)
    };
    let (claims_before, claims_after) = split(claims.iter().map(|c| (c.2, c.3)).collect());
    let (terms_before, terms_after) = split(terms.iter().map(|t| (t.1, t.2)).collect());
    let max = |v: &[i64]| v.iter().copied().max().unwrap();
    let min = |v: &[i64]| v.iter().copied().min().unwrap();
    assert!(claims_before.len() >= 3 && !terms_before.is_empty());
    assert!(
        claims_after.len() >= 3 && !terms_after.is_empty(),
        "runs and a leader after the restart: {} claims, {} terms",
        claims_after.len(),
        terms_after.len()
    );

    // Fenced writes after the restart: accepted at once, no run of refusals.
    let first_accepted = fenced
        .iter()
        .map(|f| f.3)
        .filter(|at| *at >= up)
        .min()
        .expect("a fenced write accepted after the restart");
    let refused_after: Vec<&(i64, String, i64)> = refused.iter().filter(|r| r.2 >= up).collect();
    let mut out_of_order = 0;
    let mut highest = i64::MIN;
    for (_, token, ..) in &fenced {
        if *token < highest {
            out_of_order += 1;
        }
        highest = highest.max(*token);
    }
    let mut per_period: BTreeMap<i64, usize> = BTreeMap::new();
    for (period, ..) in &claims {
        *per_period.entry(*period).or_default() += 1;
    }
    let duplicates = per_period.values().filter(|n| **n > 1).count();
    println!(
        "coord_faults[redis, no persistence, loss accepted]: schema={schema} down_ms={} \
         task tokens before {}..={} after {}..={} (first after - last before = {}); \
         lease tokens before max {} after min {}; first fenced write accepted {} ms after \
         redis came back; fenced refused after the restart {}; out_of_order_fenced {}; \
         duplicate_claims {} (allowed: the loss was accepted)",
        up - stopped,
        min(&claims_before),
        max(&claims_before),
        min(&claims_after),
        max(&claims_after),
        min(&claims_after) - max(&claims_before),
        max(&terms_before),
        min(&terms_after),
        first_accepted - up,
        refused_after.len(),
        out_of_order,
        duplicates,
    );
    assert!(
        min(&claims_after) > max(&claims_before),
        "task tokens went back across the restart: {claims_before:?} then {claims_after:?}"
    );
    assert!(
        min(&terms_after) > max(&terms_before),
        "lease tokens went back across the restart: {terms_before:?} then {terms_after:?}"
    );
    assert!(
        first_accepted - up <= LEASE_MS,
        "the first fenced write after the restart came {} ms after it, more than a lease",
        first_accepted - up
    );
    assert!(
        refused_after.is_empty(),
        "fenced writes refused after the restart: {refused_after:?}"
    );
    assert_eq!(
        out_of_order, 0,
        "accepted fenced writes went back in token order"
    );
    // The tokens fit the fences' BIGINT and are time-based (above 2^40).
    assert!(claims.iter().all(|c| c.2 > 1 << 40));

    pool.close().await;
    drop_schema(&schema).await;
}
