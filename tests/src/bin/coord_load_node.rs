//! One process of the store-load test (`tests/coord_load.rs`). Not a user tool.
//!
//! It runs a spawned [`Scheduler`] on PostgreSQL's `larder_kv` with `<tasks>` tasks
//! (`<prefix>-0`, `<prefix>-1`, ...) every `<period ms>`, whose jobs do nothing, with the
//! poll setting `<poll ms>`; nothing else touches the database.
//!
//! Arguments: `<postgres url> <node name> <prefix> <tasks> <period ms> <poll ms>`. Prints
//! `ready` once started; runs until its standard input closes.

use std::sync::Arc;
use std::time::Duration;

use larder::coord::{HolderId, Schedule, Scheduler, SchedulerConfig, TaskSpec};
use larder_backend_sql::PgKv;
use sqlx::postgres::PgPoolOptions;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, name, prefix, tasks, period_ms, poll_ms] = &args[..] else {
        eprintln!(
            "usage: coord_load_node <postgres url> <node name> <prefix> <tasks> <period ms> <poll ms>"
        );
        std::process::exit(2);
    };
    let number = |s: &str| -> u64 {
        s.parse().unwrap_or_else(|_| {
            eprintln!("not a number: {s:?}");
            std::process::exit(2)
        })
    };
    let (tasks, period, poll) = (number(tasks), number(period_ms), number(poll_ms));
    larder_tests::child::exit_with_parent();
    larder_tests::child::block_on(async move {
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .connect(url)
            .await
            .expect("connect postgres");
        let mut scheduler = Scheduler::new(
            Arc::new(PgKv::from_pool(pool)),
            HolderId::named(name),
            SchedulerConfig::default()
                .process_name(name.as_str())
                .poll(Duration::from_millis(poll)),
        )
        .expect("scheduler");
        for i in 0..tasks {
            let task = TaskSpec::new(
                &format!("{prefix}-{i}"),
                Schedule::Every(Duration::from_millis(period)),
                |_ctx| async { Ok(()) },
            );
            scheduler = scheduler.with_task(task).expect("task");
        }
        let (_stop, _handle) = Arc::new(scheduler).spawn();
        println!("ready");
        std::future::pending::<()>().await;
    });
}
