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

use std::collections::BTreeMap;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use larder::coord::Lease;
use larder_tests::server::ServerProcess;

mod cluster;
mod run;
mod tables;
mod verdict;

use cluster::Cluster;
use run::{kill_the_leader, observer, pause_a_runner, redis_url, Store};
use tables::{count, create_tables, drop_schema, warmed_up, Written};
use verdict::{Figures, Verdict};

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

fn node_names() -> Vec<String> {
    (1..=NODES).map(|i| format!("n{i}")).collect()
}

/// Five nodes on `store`; each cycle kills the leader, pauses a runner and (Redis) takes
/// the store away; then judges what the nodes wrote.
async fn fault_run(store: fn() -> Store) {
    let _one_at_a_time = SERIAL.lock().await;
    let soak = std::env::var("LARDER_SOAK").is_ok_and(|v| v == "1");
    let cycles = if soak { 6 } else { 1 };
    let (sessions, schema) = larder_tests::db::pg_store().await;
    // The SQL store's tables (larder_kv for the postgres runs, larder_fences for all).
    let kv = larder_tests::db::pg_kv_beside(&sessions).await;
    let pool = sessions.pool().clone();
    create_tables(&pool).await;
    let mut store = store();
    let backend = store.name();
    let observer = observer(store.backend(Arc::new(kv)).await);
    let mut c = Cluster::new(&schema, backend, store.url());
    c.start(&node_names());
    warmed_up(&pool, "SELECT count(*) FROM claims").await;

    let mut figures = Figures::default();
    let mut kills: Vec<i64> = Vec::new();
    let mut pauses = Vec::new();
    for _cycle in 0..cycles {
        // SIGKILL the leader; time the next term.
        let (kill_ms, failover) = kill_the_leader(&mut c, &pool, &observer, backend).await;
        kills.push(kill_ms);
        figures.failovers_ms.push(failover);
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

        // The store goes away and comes back (Redis: with its append-only file).
        if let Some((down, up)) = store.outage().await {
            figures.outages.push((down, up, 0));
            sleep_ms(5000).await;
        }
    }
    sleep_ms(if soak { 10_000 } else { 3000 }).await;
    c.kill_all();

    let written = Written::read(&pool).await;
    let verdict = Verdict::judge(figures, &written, &pauses, kills);
    verdict.report(backend, &schema);
    verdict.assert_holds();

    pool.close().await;
    drop_schema(&schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_coordination_survives_kill_and_pause() {
    fault_run(Store::postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_coordination_survives_kill_pause_and_restart() {
    fault_run(Store::redis_with_aof).await;
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
    let mut c = Cluster::new(&schema, "redis", &redis_url(&redis));
    c.accept_loss = true;
    c.start(&node_names());
    warmed_up(&pool, "SELECT count(*) FROM fenced").await;
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
