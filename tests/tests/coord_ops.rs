//! What an operator does to periodic tasks across a deployment, with five `coord_ops_node`
//! OS processes on PostgreSQL's `larder_kv` and on a redis-server with an append-only file
//! fsynced on every write, driven through the `larder` command line (in-process): pause
//! (no run starts in the next three periods on any process), resume (runs start again
//! within one period), an unknown task name (an error listing the known ones), and run now
//! (ten concurrent requests with one id run once; with ten ids, ten runs one after another;
//! a paused task's request refused unless forced).
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use larder::ErrorKind;
use larder_tests::db;
use larder_tests::server::ServerProcess;
use parking_lot::Mutex;

const NODES: usize = 5;
const TASK: &str = "ops-tick";
const PERIOD_MS: i64 = 1000;
/// The most a claim waits past the start of its period: the scheduler's jitter, at most a
/// tenth of the period.
const JITTER_MS: i64 = PERIOD_MS / 10;
/// Time between a claim's compare-and-swap and the job's first line, and the clocks'
/// reading of it (one machine).
const SLACK_MS: i64 = 300;
const RUN_MS: u64 = 100;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

async fn cli(args: &[&str]) -> larder::Result<String> {
    larder::cli::run(std::iter::once("larder").chain(args.iter().copied())).await
}

/// A run start a node printed.
#[derive(Debug, Clone)]
struct Start {
    node: usize,
    token: u64,
    at_ms: i64,
    /// The run-now request it answers.
    trigger: Option<String>,
}

/// The nodes, and the run starts and ends (token, ms) they printed so far.
struct Nodes {
    children: Vec<(Child, ChildStdin)>,
    starts: Arc<Mutex<Vec<Start>>>,
    ends: Arc<Mutex<Vec<(u64, i64)>>>,
}

impl Nodes {
    fn start(url: &str, period_ms: i64) -> Self {
        Self::start_with(url, TASK, period_ms, RUN_MS, None)
    }

    /// Five nodes of `task` whose runs last `run_ms`, with an extra argument (the run mode).
    fn start_with(url: &str, task: &str, period_ms: i64, run_ms: u64, extra: Option<&str>) -> Self {
        let starts = Arc::new(Mutex::new(Vec::new()));
        let ends = Arc::new(Mutex::new(Vec::new()));
        let mut children = Vec::new();
        for node in 0..NODES {
            let mut child = Command::new(env!("CARGO_BIN_EXE_coord_ops_node"))
                .args([
                    url,
                    &format!("ops-{node}"),
                    task,
                    &period_ms.to_string(),
                    &run_ms.to_string(),
                ])
                .args(extra)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let stdin = child.stdin.take().unwrap();
            let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
            let first = lines.next().unwrap().unwrap();
            assert_eq!(first, "ready", "node {node}");
            let (starts, ends) = (starts.clone(), ends.clone());
            std::thread::spawn(move || {
                for line in lines.map_while(|l| l.ok()) {
                    let words: Vec<&str> = line.split_whitespace().collect();
                    match words[..] {
                        ["start", token, _period, at, trigger] => starts.lock().push(Start {
                            node,
                            token: token.parse().unwrap(),
                            at_ms: at.parse().unwrap(),
                            trigger: (trigger != "-").then(|| trigger.to_owned()),
                        }),
                        ["end", token, at] => ends
                            .lock()
                            .push((token.parse().unwrap(), at.parse().unwrap())),
                        _ => {}
                    }
                }
            });
            children.push((child, stdin));
        }
        Nodes {
            children,
            starts,
            ends,
        }
    }

    /// The starts of runs that answer run-now requests.
    fn triggered(&self) -> Vec<Start> {
        self.starts
            .lock()
            .iter()
            .filter(|s| s.trigger.is_some())
            .cloned()
            .collect()
    }

    /// Waits (up to `limit_ms`) until the run with `token` printed its end.
    async fn wait_ended(&self, token: u64, limit_ms: i64) {
        let give_up = now_ms() + limit_ms;
        while !self.ends.lock().iter().any(|(t, _)| *t == token) {
            assert!(now_ms() < give_up, "run {token} did not end");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (up to `limit_ms`) until `n` runs answered run-now requests.
    async fn wait_triggered(&self, n: usize, limit_ms: i64) -> Vec<Start> {
        let give_up = now_ms() + limit_ms;
        while self.triggered().len() < n && now_ms() < give_up {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.triggered()
    }

    fn starts_since(&self, ms: i64) -> Vec<Start> {
        self.starts
            .lock()
            .iter()
            .filter(|s| s.at_ms >= ms)
            .cloned()
            .collect()
    }

    /// Waits (up to `limit_ms`) for a run that starts at or after `ms`.
    async fn first_start_since(&self, ms: i64, limit_ms: i64) -> Option<Start> {
        let give_up = now_ms() + limit_ms;
        while now_ms() < give_up {
            if let Some(s) = self.starts_since(ms).into_iter().next() {
                return Some(s);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for (child, _) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Pause, then resume, the task of five nodes through the command line with `store`
/// (`--database-url URL` or `--cache-url URL`).
async fn pause_and_resume(node_url: &str, store: &[&str]) {
    let nodes = Nodes::start(node_url, PERIOD_MS);
    // Running: a few periods run, each once.
    let warm = now_ms();
    let first = nodes
        .first_start_since(warm, 5 * PERIOD_MS)
        .await
        .expect("the task runs");
    eprintln!("first run: {first:?}");
    tokio::time::sleep(Duration::from_millis(2 * PERIOD_MS as u64)).await;
    let before = nodes.starts_since(warm);
    assert!(before.len() >= 2, "{before:?}");

    // An unknown name lists the known ones (the nodes registered theirs).
    let e = cli(&[store, &["tasks", "pause", "ops-tock"]].concat())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(
        e.message().contains("no task \"ops-tock\"") && e.message().contains("\"ops-tick\""),
        "{e}"
    );

    let out = cli(&[store, &["tasks", "pause", TASK, "--by", "ops-test"]].concat())
        .await
        .unwrap();
    let paused_at = now_ms();
    assert!(out.starts_with("paused ops-tick by ops-test at "), "{out}");
    // Again: idempotent, the first pause stays.
    let again = cli(&[store, &["tasks", "pause", TASK, "--by", "someone-else"]].concat())
        .await
        .unwrap();
    assert!(
        again.starts_with("ops-tick was already paused by ops-test"),
        "{again}"
    );
    let status = cli(&[store, &["tasks", "status", "--task", TASK]].concat())
        .await
        .unwrap();
    assert!(status.contains("by ops-test at "), "{status}");

    // Three periods and their claims' jitter: no run starts on any process.
    tokio::time::sleep(Duration::from_millis((3 * PERIOD_MS + JITTER_MS) as u64)).await;
    let during = nodes.starts_since(paused_at);
    assert!(during.is_empty(), "runs started while paused: {during:?}");

    let resumed_at = now_ms();
    let out = cli(&[store, &["tasks", "resume", TASK]].concat())
        .await
        .unwrap();
    assert!(
        out.starts_with("resumed ops-tick (paused by ops-test at "),
        "{out}"
    );
    let next = nodes
        .first_start_since(resumed_at, 3 * PERIOD_MS)
        .await
        .expect("runs start again after resume");
    assert!(
        next.at_ms - resumed_at <= PERIOD_MS + JITTER_MS + SLACK_MS,
        "first run {} ms after resume: {next:?}",
        next.at_ms - resumed_at
    );
    // And go on, once per period: distinct tokens.
    tokio::time::sleep(Duration::from_millis(2 * PERIOD_MS as u64)).await;
    let after = nodes.starts_since(resumed_at);
    let mut tokens: Vec<u64> = after.iter().map(|s| s.token).collect();
    tokens.dedup();
    assert!(after.len() >= 2, "{after:?}");
    assert_eq!(tokens.len(), after.len(), "a token ran twice: {after:?}");
    let out = cli(&[store, &["tasks", "resume", TASK]].concat())
        .await
        .unwrap();
    assert_eq!(out, "ops-tick was not paused\n");
    let nodes_seen: std::collections::HashSet<usize> =
        nodes.starts.lock().iter().map(|s| s.node).collect();
    eprintln!("runs by nodes {nodes_seen:?}");
}

/// `n` concurrent `larder tasks run` calls, the i-th with the request id `id(i)`; their
/// outputs.
async fn run_concurrently(store: &[&str], n: usize, id: impl Fn(usize) -> String) -> Vec<String> {
    let calls: Vec<_> = (0..n)
        .map(|i| {
            let args: Vec<String> = store
                .iter()
                .map(|s| s.to_string())
                .chain(["tasks", "run", TASK, "--request-id", &id(i)].map(String::from))
                .collect();
            tokio::spawn(async move {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                cli(&args).await.unwrap()
            })
        })
        .collect();
    let mut outs = Vec::new();
    for c in calls {
        outs.push(c.await.unwrap());
    }
    outs
}

/// Run now on five nodes whose task's period (a minute) leaves the runs to the requests.
async fn run_now(node_url: &str, store: &[&str]) {
    let nodes = Nodes::start(node_url, 60_000);
    nodes
        .first_start_since(0, 5 * PERIOD_MS)
        .await
        .expect("the current period runs at start");

    // Ten concurrent requests with one id: one request, one run.
    let asked = now_ms();
    let outs = run_concurrently(store, 10, |_| "same".to_owned()).await;
    let made = outs
        .iter()
        .filter(|o| o.starts_with("requested a run"))
        .count();
    assert_eq!(made, 1, "{outs:#?}");
    let ran = nodes.wait_triggered(1, 10 * PERIOD_MS).await;
    assert_eq!(ran.len(), 1, "{ran:?}");
    eprintln!(
        "run-now delay: {} ms (doorbell read every 200 ms)",
        ran[0].at_ms - asked
    );
    // Retried later, still one run.
    let again = run_concurrently(store, 3, |_| "same".to_owned()).await;
    assert!(
        again.iter().all(|o| o.contains("was already made")),
        "{again:#?}"
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(nodes.triggered().len(), 1, "{:?}", nodes.triggered());

    // Ten distinct ids: ten runs, each once, never two at once (no overlap).
    let outs = run_concurrently(store, 10, |i| format!("id-{i}")).await;
    assert!(
        outs.iter().all(|o| o.starts_with("requested a run")),
        "{outs:#?}"
    );
    let ran = nodes.wait_triggered(11, 30 * PERIOD_MS).await;
    assert_eq!(ran.len(), 11, "{ran:?}");
    let mut ids: Vec<&str> = ran.iter().filter_map(|s| s.trigger.as_deref()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 11, "a request ran twice: {ran:?}");
    tokio::time::sleep(Duration::from_millis(RUN_MS + 200)).await;
    let ends = nodes.ends.lock().clone();
    let mut spans: Vec<(i64, i64)> = nodes
        .starts
        .lock()
        .iter()
        .map(|s| {
            let end = ends.iter().find(|(t, _)| *t == s.token).map(|e| e.1);
            (s.at_ms, end.expect("every run ended"))
        })
        .collect();
    spans.sort_unstable();
    for w in spans.windows(2) {
        assert!(w[0].1 <= w[1].0, "two runs at once: {w:?}");
    }
    let tokens: Vec<u64> = {
        let mut by_start = nodes.triggered();
        by_start.sort_by_key(|s| s.at_ms);
        by_start.iter().map(|s| s.token).collect()
    };
    assert!(tokens.windows(2).all(|t| t[0] < t[1]), "{tokens:?}");

    // Paused: refused, unless forced.
    cli(&[store, &["tasks", "pause", TASK]].concat())
        .await
        .unwrap();
    let e = cli(&[store, &["tasks", "run", TASK, "--request-id", "late"]].concat())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(e.message().contains("is paused"), "{e}");
    let out = cli(&[
        store,
        &["tasks", "run", TASK, "--request-id", "late", "--force"],
    ]
    .concat())
    .await
    .unwrap();
    assert!(out.starts_with("requested a run"), "{out}");
    let ran = nodes.wait_triggered(12, 10 * PERIOD_MS).await;
    assert_eq!(
        ran.iter()
            .filter(|s| s.trigger.as_deref() == Some("late"))
            .count(),
        1,
        "{ran:?}"
    );

    // The history has every run the nodes printed, once, with its trigger and outcome.
    tokio::time::sleep(Duration::from_millis(RUN_MS + 500)).await;
    let json = cli(&[store, &["tasks", "history", TASK, "--json"]].concat())
        .await
        .unwrap();
    let history: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    let ends = nodes.ends.lock().clone();
    let starts: Vec<Start> = nodes
        .starts
        .lock()
        .iter()
        .filter(|s| ends.iter().any(|(t, _)| *t == s.token))
        .cloned()
        .collect();
    // (A period may start at the minute meanwhile: counted once it ended.)
    assert!(history.len() >= starts.len(), "{json}\n{starts:?}");
    for s in &starts {
        let entry: Vec<&serde_json::Value> = history
            .iter()
            .filter(|h| h["token"].as_u64() == Some(s.token))
            .collect();
        assert_eq!(entry.len(), 1, "run {s:?} in {json}");
        let h = entry[0];
        assert_eq!(h["outcome"], "ok", "{h}");
        assert_eq!(
            h["holder"].as_str().map(|x| x.starts_with("ops-")),
            Some(true),
            "{h}"
        );
        match &s.trigger {
            Some(id) => {
                assert_eq!(h["trigger"], "request", "{h}");
                assert_eq!(h["request_id"].as_str(), Some(id.as_str()), "{h}");
            }
            None => assert_eq!(h["trigger"], "period", "{h}"),
        }
        assert!(
            h["finished_at_ms"].as_i64() >= h["started_at_ms"].as_i64(),
            "{h}"
        );
    }
    let table = cli(&[store, &["tasks", "history", TASK]].concat())
        .await
        .unwrap();
    assert!(table.contains("request late"), "{table}");
}

/// A requested run whose process is SIGKILLed mid-run: taken over and run again (at least
/// once) or recorded abandoned and not repeated (at most once), and the history says so.
async fn killed_runner(node_url: &str, store: &[&str], at_least_once: bool) {
    let task = if at_least_once {
        "kill-alo"
    } else {
        "kill-amo"
    };
    let mut nodes = Nodes::start_with(
        node_url,
        task,
        60_000,
        1500,
        at_least_once.then_some("at-least-once"),
    );
    let first = nodes
        .first_start_since(0, 5 * PERIOD_MS)
        .await
        .expect("the current period runs at start");
    nodes.wait_ended(first.token, 10 * PERIOD_MS).await;
    let out = cli(&[store, &["tasks", "run", task, "--request-id", "victim"]].concat())
        .await
        .unwrap();
    assert!(out.starts_with("requested a run"), "{out}");
    let victim = nodes.wait_triggered(1, 10 * PERIOD_MS).await[0].clone();
    // Mid-run: the node that runs it dies.
    nodes.children[victim.node].0.kill().unwrap();
    let killed_at = now_ms();
    if at_least_once {
        // Another node takes it over after a lease (2 s), for the same request.
        let again = nodes.wait_triggered(2, 15 * PERIOD_MS).await;
        assert_eq!(again.len(), 2, "{again:?}");
        assert_ne!(again[1].node, victim.node);
        assert_eq!(again[1].trigger.as_deref(), Some("victim"));
        assert!(again[1].token > victim.token);
        assert!(again[1].at_ms - killed_at >= 1000, "{again:?}");
        nodes.wait_ended(again[1].token, 10 * PERIOD_MS).await;
    } else {
        // Not repeated; the next claim (another request) records it abandoned.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        cli(&[store, &["tasks", "run", task, "--request-id", "after"]].concat())
            .await
            .unwrap();
        let next = nodes.wait_triggered(2, 15 * PERIOD_MS).await;
        assert_eq!(next.len(), 2, "{next:?}");
        assert_eq!(next[1].trigger.as_deref(), Some("after"), "not run again");
        nodes.wait_ended(next[1].token, 10 * PERIOD_MS).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let json = cli(&[store, &["tasks", "history", task, "--json"]].concat())
        .await
        .unwrap();
    let history: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    let dead: Vec<&serde_json::Value> = history
        .iter()
        .filter(|h| h["token"].as_u64() == Some(victim.token))
        .collect();
    assert_eq!(dead.len(), 1, "{json}");
    let expected = if at_least_once {
        "taken over"
    } else {
        "abandoned"
    };
    assert_eq!(dead[0]["outcome"], expected, "{json}");
    assert_eq!(dead[0]["request_id"], "victim", "{json}");
    let victim_holder = format!("ops-{}@", victim.node);
    assert_eq!(
        dead[0]["holder"]
            .as_str()
            .map(|h| h.starts_with(&victim_holder)),
        Some(true),
        "{json}"
    );
    // Every run that ended, and the dead one, is in the history once; nothing else is (a
    // period may start meanwhile, at the minute: in once it ends).
    let ends = nodes.ends.lock().clone();
    let starts = nodes.starts.lock().clone();
    for s in &starts {
        let ended = ends.iter().any(|(t, _)| *t == s.token);
        let n = history
            .iter()
            .filter(|h| h["token"].as_u64() == Some(s.token))
            .count();
        if ended || s.token == victim.token {
            assert_eq!(n, 1, "{s:?} in {json}");
        }
    }
    assert!(
        history
            .iter()
            .all(|h| starts.iter().any(|s| h["token"].as_u64() == Some(s.token))),
        "{json}\n{starts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_killed_runner_is_taken_over_or_abandoned_as_its_history_says() {
    let (store, schema) = db::pg_store().await;
    db::pg_kv_beside(&store).await;
    let url = db::schema_url(&schema);
    killed_runner(&url, &["--database-url", &url], true).await;
    killed_runner(&url, &["--database-url", &url], false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_killed_runner_is_taken_over_or_abandoned_as_its_history_says() {
    let server = ServerProcess::redis_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let url = format!("redis://{}", server.addr());
    killed_runner(&url, &["--cache-url", &url], true).await;
    killed_runner(&url, &["--cache-url", &url], false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_run_now_runs_once_per_request_id() {
    let (store, schema) = db::pg_store().await;
    db::pg_kv_beside(&store).await;
    let url = db::schema_url(&schema);
    run_now(&url, &["--database-url", &url]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_run_now_runs_once_per_request_id() {
    let server = ServerProcess::redis_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let url = format!("redis://{}", server.addr());
    run_now(&url, &["--cache-url", &url]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_pause_stops_every_process_and_resume_restarts_them() {
    // The command line's --database-url wants larder's tables: the session store's, and
    // the compare-and-swap store's beside them.
    let (store, schema) = db::pg_store().await;
    db::pg_kv_beside(&store).await;
    let url = db::schema_url(&schema);
    pause_and_resume(&url, &["--database-url", &url]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_pause_stops_every_process_and_resume_restarts_them() {
    let server = ServerProcess::redis_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let url = format!("redis://{}", server.addr());
    pause_and_resume(&url, &["--cache-url", &url]).await;
}

/// The history keeps the task's bound, cuts errors, and its bound is checked.
#[tokio::test]
async fn history_is_bounded_and_its_bound_checked() {
    use larder::coord::{
        Durability, HolderId, ManualClock, Outcome, Schedule, Scheduler, SchedulerConfig, TaskSpec,
        MAX_ERROR_CHARS, MAX_HISTORY,
    };
    let backend: larder::DynBackend = Arc::new(larder::backends::memory::MemoryBackend::default());
    let config = SchedulerConfig::default().durability(Durability::AcceptLoss);
    let every = Schedule::Every(Duration::from_secs(60));
    let failing = |bound: usize| {
        TaskSpec::new("failing", every.clone(), |ctx| async move {
            Err(format!("{} {}", ctx.token, "x".repeat(1000)))
        })
        .history(bound)
    };
    for bad in [0, MAX_HISTORY + 1] {
        let e = Scheduler::new(backend.clone(), HolderId::named("a"), config.clone())
            .unwrap()
            .with_task(failing(bad))
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config, "{bad}");
        assert!(e.message().contains(&format!("1 to {MAX_HISTORY}")), "{e}");
    }
    let clock = Arc::new(ManualClock::new(60_000));
    let s = Scheduler::new(backend, HolderId::named("a"), config)
        .unwrap()
        .with_clock(clock.clone())
        .with_task(failing(3))
        .unwrap();
    let mut tokens = Vec::new();
    for _ in 0..5 {
        let claims = s.tick().await.unwrap();
        assert_eq!(claims.len(), 1);
        tokens.push(claims[0].token);
        clock.advance(60_000);
    }
    let history = s.history("failing").await.unwrap();
    let kept: Vec<u64> = history.iter().map(|h| h.token).collect();
    assert_eq!(kept, tokens[2..], "the last three, oldest first");
    for h in &history {
        match &h.outcome {
            Outcome::Error(e) => {
                assert_eq!(e.chars().count(), MAX_ERROR_CHARS);
                assert!(e.starts_with(&h.token.to_string()));
            }
            o => panic!("{o:?}"),
        }
    }
    let e = s.history("nope").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
}
