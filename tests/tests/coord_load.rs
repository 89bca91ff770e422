//! What the store sees from real processes: 20 `coord_load_node` OS processes, each a
//! spawned `Scheduler` with 2 tasks every second on PostgreSQL's `larder_kv`, in a database
//! of their own (so that nothing else counts), run twice: with a poll setting of 50 ms and of
//! 1 s. The database's commits (`pg_stat_database.xact_commit`; every statement outside a
//! transaction is one) over 20 s of steady running, per second, are compared with
//! `processes × tasks / period`, the one operation per process, task and period that the
//! schedulers are meant to cost.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use larder::coord::{Candidacy, HolderId, Schedule, Scheduler, SchedulerConfig, TaskSpec};
use larder_backend_sql::PgKv;
use sqlx::postgres::{PgPool, PgPoolOptions};

const PROCESSES: usize = 20;
const TASKS: usize = 2;
const PERIOD_MS: u64 = 1000;
/// The steady window measured, after a warm-up.
const WINDOW: Duration = Duration::from_secs(20);
const WARM_UP: Duration = Duration::from_secs(4);

/// A database of its own, dropped at the end (`t_` and 16 hex digits).
struct Database {
    admin: PgPool,
    name: String,
}

impl Database {
    async fn create() -> Self {
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(&larder_tests::db::postgres_url())
            .await
            .unwrap();
        let schema = larder_tests::db::pg_schema().await;
        // The schema name is fresh and has the form a database name needs too.
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema}")))
            .execute(&admin)
            .await
            .unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {schema}")))
            .execute(&admin)
            .await
            .unwrap();
        Database {
            admin,
            name: schema,
        }
    }

    /// The test server's URL, on this database.
    fn url(&self) -> String {
        let base = larder_tests::db::postgres_url();
        let (head, query) = match base.split_once('?') {
            Some((h, q)) => (h.to_owned(), format!("?{q}")),
            None => (base.clone(), String::new()),
        };
        let (server, _db) = head.rsplit_once('/').unwrap();
        format!("{server}/{}{query}", self.name)
    }

    /// Transactions committed in the database so far, as the statistics have them.
    async fn commits(&self) -> i64 {
        let (n,): (i64,) =
            sqlx::query_as("SELECT xact_commit FROM pg_stat_database WHERE datname = $1")
                .bind(&self.name)
                .fetch_one(&self.admin)
                .await
                .unwrap();
        n
    }

    async fn drop_it(self) {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE {} WITH (FORCE)",
            self.name
        )))
        .execute(&self.admin)
        .await
        .unwrap();
        self.admin.close().await;
    }
}

/// The node processes of one round; killed on drop.
struct Nodes(Vec<(Child, ChildStdin)>);

impl Nodes {
    fn start(url: &str, prefix: &str, poll_ms: u64) -> Self {
        let mut nodes = Vec::new();
        let mut outputs = Vec::new();
        for i in 0..PROCESSES {
            let mut child = Command::new(env!("CARGO_BIN_EXE_coord_load_node"))
                .args([
                    url,
                    &format!("n{i}"),
                    prefix,
                    &TASKS.to_string(),
                    &PERIOD_MS.to_string(),
                    &poll_ms.to_string(),
                ])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let stdin = child.stdin.take().unwrap();
            outputs.push(child.stdout.take().unwrap());
            nodes.push((child, stdin));
        }
        let nodes = Nodes(nodes);
        for (i, out) in outputs.into_iter().enumerate() {
            let mut line = String::new();
            BufReader::new(out).read_line(&mut line).unwrap();
            assert_eq!(line.trim(), "ready", "node {i} did not start");
        }
        nodes
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for (child, _) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The sum of the tasks' tokens: each claim adds one.
async fn tokens(kv: &PgKv, prefix: &str) -> u64 {
    let mut observer = Scheduler::new(
        Arc::new(kv.clone()),
        HolderId::named("observer"),
        SchedulerConfig::default().candidacy(Candidacy::Never),
    )
    .unwrap();
    for i in 0..TASKS {
        observer = observer
            .with_task(TaskSpec::new(
                &format!("{prefix}-{i}"),
                Schedule::Every(Duration::from_millis(PERIOD_MS)),
                |_| async { Ok(()) },
            ))
            .unwrap();
    }
    let status = observer.status().await.unwrap();
    status.iter().map(|t| t.token).sum()
}

/// One round at `poll_ms`: commits per second over the window, the claims made in it, and
/// the periods it lasted. (The observer's four reads fall inside the window.)
async fn round(db: &Database, kv: &PgKv, poll_ms: u64) -> (f64, u64, f64) {
    let prefix = format!("poll{poll_ms}");
    let nodes = Nodes::start(&db.url(), &prefix, poll_ms);
    tokio::time::sleep(WARM_UP).await;
    let (c0, t0) = (db.commits().await, Instant::now());
    let k0 = tokens(kv, &prefix).await;
    tokio::time::sleep(WINDOW).await;
    let k1 = tokens(kv, &prefix).await;
    let (c1, elapsed) = (db.commits().await, t0.elapsed());
    drop(nodes);
    let per_s = (c1 - c0) as f64 / elapsed.as_secs_f64();
    let periods = elapsed.as_secs_f64() * 1000.0 / PERIOD_MS as f64;
    (per_s, k1 - k0, periods)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_processes_cost_one_operation_per_process_task_and_period_whatever_the_poll() {
    let db = Database::create().await;
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&db.url())
        .await
        .unwrap();
    let kv = PgKv::from_pool(pool.clone());
    kv.migrate().await.unwrap();
    let target = (PROCESSES * TASKS) as f64 * 1000.0 / PERIOD_MS as f64;
    let mut rates = Vec::new();
    for poll_ms in [50, 1000] {
        let (per_s, claims, periods) = round(&db, &kv, poll_ms).await;
        let ratio = per_s / target;
        println!(
            "coord_load[poll {poll_ms} ms]: {PROCESSES} processes x {TASKS} tasks every \
             {PERIOD_MS} ms: {per_s:.1} commits/s over {:.1} s (processes x tasks / period = \
             {target:.0}/s): ratio {ratio:.3}; {claims} claims in {periods:.1} periods x {TASKS} tasks",
            WINDOW.as_secs_f64()
        );
        assert!(
            ratio <= 1.2,
            "poll {poll_ms} ms: {per_s:.1} commits/s, more than 1.2 × {target:.0}"
        );
        assert!(
            claims as f64 >= 0.5 * periods * TASKS as f64,
            "poll {poll_ms} ms: only {claims} claims in {periods:.1} periods"
        );
        rates.push(per_s);
    }
    let spread = rates[0].max(rates[1]) / rates[0].min(rates[1]);
    println!(
        "coord_load: commits/s at poll 50 ms / at poll 1 s: {:.3}",
        rates[0] / rates[1]
    );
    assert!(
        spread <= 1.2,
        "the poll setting changed the load: {rates:?} commits/s"
    );
    pool.close().await;
    drop(kv);
    db.drop_it().await;
}
