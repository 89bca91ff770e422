//! One process of the operations test (`tests/coord_ops.rs`). Not a user tool.
//!
//! It runs a spawned [`Scheduler`] with one task `<task>` every `<period ms>`, whose job
//! prints `start <token> <period> <ms> <request id or ->` when it begins, sleeps
//! `<run ms>`, and prints `end <token> <ms>` (wall-clock milliseconds since the epoch), on
//! the store at `<url>` (anything `larder::connect` opens; the test prepared it). It reads
//! the run-now doorbell every 200 ms.
//!
//! Arguments: `<url> <node name> <task> <period ms> <run ms> [at-least-once]` (default: at
//! most once). Prints `ready` once started; runs until killed, or until its standard input
//! closes.

use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use larder::coord::{
    HolderId, LeaseConfig, RunMode, Schedule, Scheduler, SchedulerConfig, TaskSpec,
};

/// How often the doorbell is read.
const REQUEST_CHECK_MS: u64 = 200;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One line on stdout, flushed at once (the test reads it as it comes).
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (args, mode) = match &args[..] {
        [head @ .., last] if last == "at-least-once" => (head, RunMode::AtLeastOnce),
        all => (all, RunMode::AtMostOnce),
    };
    let [url, name, task, period_ms, run_ms] = args else {
        eprintln!(
            "usage: coord_ops_node <url> <node name> <task> <period ms> <run ms> [at-least-once]"
        );
        std::process::exit(2);
    };
    let number = |s: &str| -> u64 {
        s.parse().unwrap_or_else(|_| {
            eprintln!("not a number: {s:?}");
            std::process::exit(2)
        })
    };
    let (period, run) = (number(period_ms), number(run_ms));
    larder_tests::child::exit_with_parent();
    larder_tests::child::block_on(async move {
        let backend = larder::connect(url).await.expect("connect");
        // Lease 2 s, renew deadline 1.2 s, heartbeat every 0.3 s.
        let lease = LeaseConfig::new(
            Duration::from_secs(2),
            Duration::from_millis(1200),
            Duration::from_millis(300),
        )
        .expect("lease timing");
        let job = TaskSpec::new(
            task,
            Schedule::Every(Duration::from_millis(period)),
            move |ctx| async move {
                let trigger = ctx.trigger.as_deref().unwrap_or("-");
                say(&format!(
                    "start {} {} {} {trigger}",
                    ctx.token,
                    ctx.period,
                    now_ms()
                ));
                tokio::time::sleep(Duration::from_millis(run)).await;
                say(&format!("end {} {}", ctx.token, now_ms()));
                Ok(())
            },
        )
        .mode(mode);
        let scheduler = Scheduler::new(
            backend,
            HolderId::named(name),
            SchedulerConfig::default()
                .process_name(name.as_str())
                .lease(lease)
                .request_check(Some(Duration::from_millis(REQUEST_CHECK_MS))),
        )
        .expect("scheduler")
        .with_task(job)
        .expect("task");
        let (_stop, _handle) = Arc::new(scheduler).spawn();
        say("ready");
        std::future::pending::<()>().await;
    });
}
