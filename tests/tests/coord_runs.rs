//! Runs of periodic tasks under faults, on real servers (PostgreSQL's `larder_kv`, a
//! redis-server): a run whose heartbeats fail is cancelled, and its future dropped, before
//! another process takes it over; a finish that fails is retried, so the finished run is not
//! left `running`; overlapping runs are tracked one by one, so a dead one is taken over once
//! while a live one goes on; records in the layout of earlier versions are read.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use larder::coord::{
    HolderId, LeaseConfig, ManualClock, RunContext, RunInfo, RunMode, Schedule, Scheduler,
    SchedulerConfig, TaskSpec,
};
use larder::{Cache, DynBackend, ErrorKind, Key};
use larder_backend_redis::RedisBackend;
use larder_tests::fault::{Fault, Faulty};
use larder_tests::proxy::{FaultProxy, Mode};
use larder_tests::server::ServerProcess;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

const MIN: i64 = 60_000;

/// Lease 800 ms, renew deadline 500 ms, heartbeat every 100 ms.
fn timing() -> LeaseConfig {
    LeaseConfig::new(
        Duration::from_millis(800),
        Duration::from_millis(500),
        Duration::from_millis(100),
    )
    .unwrap()
}

fn scheduler(b: &DynBackend, clock: &Arc<ManualClock>, name: &str, task: TaskSpec) -> Scheduler {
    Scheduler::new(
        b.clone(),
        HolderId::named(name),
        SchedulerConfig::default()
            .process_name(name)
            .lease(timing()),
    )
    .unwrap()
    .with_clock(clock.clone())
    .with_task(task)
    .unwrap()
}

fn every_minute<F, Fut>(name: &str, job: F) -> TaskSpec
where
    F: Fn(RunContext) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
{
    TaskSpec::new(name, Schedule::Every(Duration::from_secs(60)), job).mode(RunMode::AtLeastOnce)
}

/// Sets a flag with the instant it is dropped.
struct DropMark(Arc<Mutex<Option<Instant>>>);

impl Drop for DropMark {
    fn drop(&mut self) {
        *self.0.lock() = Some(Instant::now());
    }
}

/// What the first process's run saw.
#[derive(Default)]
struct FirstRun {
    started: Mutex<Option<(Instant, u64)>>,
    cancelled: Arc<Mutex<Option<Instant>>>,
    dropped: Arc<Mutex<Option<Instant>>>,
    completed: AtomicBool,
}

/// Scheduler `a` (on `first`) runs a period of an at-least-once task whose job ignores its
/// cancellation; then `fault(true)` makes every heartbeat of `a` fail for two leases, while
/// scheduler `b` (on `second`, the same server, reached directly) polls every 20 ms. The
/// run of `a` must be cancelled, then dropped, before `b` starts the same period.
async fn heartbeats_fail(
    backend: &str,
    first: DynBackend,
    second: DynBackend,
    fault: impl Fn(bool),
) {
    let clock = Arc::new(ManualClock::new(1_000 * MIN + 5));
    let first_run = Arc::new(FirstRun::default());
    let seen = first_run.clone();
    let a = Arc::new(scheduler(
        &first,
        &clock,
        "a",
        every_minute("report", move |ctx| {
            let seen = seen.clone();
            async move {
                *seen.started.lock() = Some((Instant::now(), ctx.token));
                let cancelled = seen.cancelled.clone();
                let token = ctx.cancel.clone();
                tokio::spawn(async move {
                    token.cancelled().await;
                    *cancelled.lock() = Some(Instant::now());
                });
                let _mark = DropMark(seen.dropped.clone());
                // Ignores the cancellation: only dropping the run stops it.
                tokio::time::sleep(Duration::from_secs(30)).await;
                seen.completed.store(true, Ordering::SeqCst);
                Ok(())
            }
        }),
    ));
    let second_runs: Arc<Mutex<Vec<(Instant, i64, u64)>>> = Arc::default();
    let log = second_runs.clone();
    let b = scheduler(
        &second,
        &clock,
        "b",
        every_minute("report", move |ctx| {
            log.lock().push((Instant::now(), ctx.period, ctx.token));
            async { Ok(()) }
        }),
    );

    let runner = {
        let a = a.clone();
        tokio::spawn(async move { a.tick().await })
    };
    while first_run.started.lock().is_none() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (_, first_token) = first_run.started.lock().unwrap();
    // Heartbeating: a whole lease and more, and nobody takes the run over.
    let healthy_until = Instant::now() + Duration::from_millis(1200);
    while Instant::now() < healthy_until {
        assert!(
            b.tick().await.unwrap().is_empty(),
            "a live run is not taken over"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(first_run.cancelled.lock().is_none());

    fault(true);
    let fault_at = Instant::now();
    let lease = timing().lease;
    while fault_at.elapsed() < 2 * lease {
        b.tick().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    fault(false);
    let first_tick = tokio::time::timeout(Duration::from_secs(10), runner)
        .await
        .expect("the first run returns once dropped")
        .unwrap()
        .unwrap();
    assert_eq!(first_tick.len(), 1);

    let runs = second_runs.lock().clone();
    assert_eq!(runs.len(), 1, "taken over once: {runs:?}");
    let (b_started, b_period, b_token) = runs[0];
    assert_eq!(b_period, 1_000 * MIN, "the same period");
    assert!(b_token > first_token);
    let cancelled = first_run
        .cancelled
        .lock()
        .expect("the first run was cancelled");
    let dropped = first_run.dropped.lock().expect("the first run was dropped");
    assert!(
        !first_run.completed.load(Ordering::SeqCst),
        "the first job never ran to its end"
    );
    assert!(cancelled > fault_at);
    assert!(
        cancelled < b_started,
        "cancelled {:?} after the heartbeats failed, but the second process started the \
         period {:?} after",
        cancelled - fault_at,
        b_started - fault_at
    );
    assert!(cancelled <= dropped && dropped < b_started);
    println!(
        "coord_runs[{backend}]: heartbeats failing from 0 ms: first run cancelled at {} ms, \
         dropped at {} ms, taken over at {} ms: cancelled {} ms and dropped {} ms before the \
         takeover",
        (cancelled - fault_at).as_millis(),
        (dropped - fault_at).as_millis(),
        (b_started - fault_at).as_millis(),
        (b_started - cancelled).as_millis(),
        (b_started - dropped).as_millis(),
    );
    // The first run recorded nothing; the second one's end is the record.
    let st = b.status().await.unwrap();
    assert!(st[0].running.is_none() && st[0].overlapping.is_empty());
    let last = st[0].last_run.as_ref().unwrap();
    assert_eq!((last.token, last.outcome.clone()), (b_token, Some(Ok(()))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_run_whose_heartbeats_fail_is_cancelled_before_it_is_taken_over() {
    let srv = ServerProcess::redis();
    let proxy = FaultProxy::start(&srv.addr()).await;
    let fast = "response_timeout_ms=200&connect_timeout_ms=200";
    let first: DynBackend = Arc::new(
        RedisBackend::connect(&format!("redis://{}/?{fast}", proxy.addr()))
            .await
            .unwrap(),
    );
    let second: DynBackend = Arc::new(
        RedisBackend::connect(&format!("redis://{}/?{fast}", srv.addr()))
            .await
            .unwrap(),
    );
    heartbeats_fail("redis", first, second, |on| {
        proxy.set(if on { Mode::Cut } else { Mode::Pass })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_run_whose_heartbeats_fail_is_cancelled_before_it_is_taken_over() {
    let (kv, _schema) = larder_tests::db::pg_kv().await;
    let kv: DynBackend = Arc::new(kv);
    let faulty = Faulty::new(kv.clone());
    let first: DynBackend = faulty.clone();
    heartbeats_fail("postgres", first, kv, |on| {
        faulty.set(if on {
            Fault::Fail(ErrorKind::Unavailable)
        } else {
            Fault::None
        })
    })
    .await;
}

/// A run ends, and the write that records its end fails once: before reaching PostgreSQL,
/// then (another task) after being applied with its answer lost. The scheduler retries;
/// the record is left not running, with the run's outcome, and another process does not
/// run the period again, even after a lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finish_that_fails_once_is_retried_and_the_run_is_not_left_running() {
    let (kv, _schema) = larder_tests::db::pg_kv().await;
    let kv: DynBackend = Arc::new(kv);
    let faulty = Faulty::new(kv.clone());
    let flaky: DynBackend = faulty.clone();
    let clock = Arc::new(ManualClock::new(2_000 * MIN));
    for (task, lose_reply) in [("fails-before", false), ("reply-lost", true)] {
        let runs = Arc::new(AtomicUsize::new(0));
        let (counted, f) = (runs.clone(), faulty.clone());
        let a = scheduler(
            &flaky,
            &clock,
            "a",
            every_minute(task, move |_ctx| {
                counted.fetch_add(1, Ordering::SeqCst);
                // The next write is the one that records the end of this run.
                if lose_reply {
                    f.lose_next_put_replies(1);
                } else {
                    f.fail_next_puts(1);
                }
                async { Ok(()) }
            }),
        );
        let counted = runs.clone();
        let b = scheduler(
            &kv,
            &clock,
            "b",
            every_minute(task, move |_ctx| {
                counted.fetch_add(1, Ordering::SeqCst);
                async { Ok(()) }
            }),
        );
        let injected = faulty.injected();
        let claims = a.tick().await.unwrap();
        assert_eq!(claims.len(), 1);
        assert_eq!(
            faulty.injected(),
            injected + 1,
            "{task}: the finish failed once"
        );
        let st = b.status().await.unwrap();
        assert!(st[0].running.is_none(), "{task}: not left running");
        let last = st[0].last_run.as_ref().unwrap();
        assert_eq!(
            (
                last.token,
                last.outcome.clone(),
                last.holder.starts_with("a@")
            ),
            (claims[0].token, Some(Ok(())), true),
            "{task}"
        );
        assert!(b.tick().await.unwrap().is_empty());
        tokio::time::sleep(timing().lease + Duration::from_millis(200)).await;
        assert!(
            b.tick().await.unwrap().is_empty(),
            "{task}: a finished run is not taken over"
        );
        assert_eq!(runs.load(Ordering::SeqCst), 1, "{task}: ran once");
    }
}

/// Two runs of an overlapping task on PostgreSQL: `a` runs the first period and keeps
/// heartbeating; `d` claims the next period and its process dies (its scheduler is dropped
/// mid-run, no finish). `c` polls: it takes the dead run over once, and never the live one,
/// which is never cancelled and finishes normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_overlapping_run_is_taken_over_once_and_the_live_one_is_not() {
    let (kv, _schema) = larder_tests::db::pg_kv().await;
    let kv: DynBackend = Arc::new(kv);
    let p1 = 3_000 * MIN;
    let clock = Arc::new(ManualClock::new(p1 + 7));
    let overlapping = |job: TaskSpec| job.allow_overlap(true);

    // a: runs until released, and notes whether it was ever cancelled.
    let (release, released) = tokio::sync::watch::channel(false);
    let a_runs: Arc<Mutex<Vec<(i64, u64)>>> = Arc::default();
    let a_cancelled = Arc::new(AtomicBool::new(false));
    let (log, rel, flag) = (a_runs.clone(), released, a_cancelled.clone());
    let a = Arc::new(scheduler(
        &kv,
        &clock,
        "a",
        overlapping(every_minute("sweep", move |ctx| {
            log.lock().push((ctx.period, ctx.token));
            let (mut rel, flag) = (rel.clone(), flag.clone());
            async move {
                tokio::select! {
                    _ = rel.wait_for(|r| *r) => Ok(()),
                    _ = ctx.cancel.cancelled() => {
                        flag.store(true, Ordering::SeqCst);
                        Err("cancelled".into())
                    }
                }
            }
        })),
    ));
    let a_tick = {
        let a = a.clone();
        tokio::spawn(async move { a.tick().await })
    };
    while a_runs.lock().is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // d: claims the next period, then its process dies.
    clock.advance(MIN);
    let d_runs: Arc<Mutex<Vec<(i64, u64)>>> = Arc::default();
    let log = d_runs.clone();
    let d = Arc::new(scheduler(
        &kv,
        &clock,
        "d",
        overlapping(every_minute("sweep", move |ctx| {
            log.lock().push((ctx.period, ctx.token));
            std::future::pending::<Result<(), String>>()
        })),
    ));
    let d_tick = {
        let d = d.clone();
        tokio::spawn(async move { d.tick().await })
    };
    while d_runs.lock().is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    d_tick.abort();
    assert!(d_tick.await.unwrap_err().is_cancelled());
    drop(d);
    let st = a.status().await.unwrap();
    assert_eq!(st[0].overlapping.len(), 1, "two runs in progress");
    assert_eq!(st[0].running.as_ref().unwrap().period, p1 + MIN);

    // c: polls for four leases.
    let c_runs: Arc<Mutex<Vec<(i64, u64)>>> = Arc::default();
    let log = c_runs.clone();
    let c = scheduler(
        &kv,
        &clock,
        "c",
        overlapping(every_minute("sweep", move |ctx| {
            log.lock().push((ctx.period, ctx.token));
            async { Ok(()) }
        })),
    );
    let until = Instant::now() + 4 * timing().lease;
    while Instant::now() < until {
        c.tick().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (a_period, a_token) = a_runs.lock()[0];
    let (d_period, d_token) = d_runs.lock()[0];
    let taken = c_runs.lock().clone();
    assert_eq!(taken.len(), 1, "the dead run is taken over once: {taken:?}");
    assert_eq!(taken[0].0, d_period, "the dead run's period");
    assert!(taken[0].1 > d_token);
    assert!(!a_cancelled.load(Ordering::SeqCst), "the live run goes on");
    assert!(!a_tick.is_finished());
    let st = c.status().await.unwrap();
    assert_eq!(
        st[0].running.as_ref().map(|r| (r.period, r.token)),
        Some((a_period, a_token)),
        "only the live run is in progress"
    );
    assert!(st[0].overlapping.is_empty());
    assert_eq!(st[0].last_run.as_ref().unwrap().token, taken[0].1);

    release.send_replace(true);
    assert_eq!(a_tick.await.unwrap().unwrap().len(), 1);
    let st = c.status().await.unwrap();
    assert!(st[0].running.is_none() && st[0].overlapping.is_empty());
    assert_eq!(
        st[0].last_run.as_ref().unwrap().period,
        d_period,
        "the later period stays the last run"
    );
    assert_eq!(a_runs.lock().len(), 1);
    assert_eq!(d_runs.lock().len(), 1);
}

/// A run whose process died right after claiming it, while later periods keep coming and
/// going on another process (runs that overlap it for a moment, then end): their activity
/// on the record does not pass for the dead run's, which is taken over once, on PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_run_is_taken_over_while_later_periods_come_and_go() {
    let (kv, _schema) = larder_tests::db::pg_kv().await;
    let kv: DynBackend = Arc::new(kv);
    let p1 = 5_000 * MIN;
    let clock = Arc::new(ManualClock::new(p1 + 3));
    let runs: Arc<Mutex<Vec<(i64, u64)>>> = Arc::default();
    let log = runs.clone();
    let spec = every_minute("roll", move |ctx| {
        log.lock().push((ctx.period, ctx.token));
        async { Ok(()) }
    })
    .allow_overlap(true);
    let d = scheduler(&kv, &clock, "d", spec.clone());
    let dead = d.claim(&spec).await.unwrap().unwrap();
    drop(d);
    let c = scheduler(&kv, &clock, "c", spec);
    let until = Instant::now() + 4 * timing().lease;
    while Instant::now() < until {
        clock.advance(MIN);
        c.tick().await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        c.tick().await.unwrap();
    }
    let runs = runs.lock().clone();
    let again: Vec<&(i64, u64)> = runs.iter().filter(|r| r.0 == p1).collect();
    assert_eq!(again.len(), 1, "the dead run is taken over once: {runs:?}");
    assert!(again[0].1 > dead.token);
    let mut periods: Vec<i64> = runs.iter().map(|r| r.0).collect();
    periods.sort();
    periods.dedup();
    assert_eq!(periods.len(), runs.len(), "every period runs once");
    assert!(
        runs.len() > 10,
        "later periods came and went: {}",
        runs.len()
    );
    let st = c.status().await.unwrap();
    assert!(st[0].running.is_none() && st[0].overlapping.is_empty());
}

/// A task record as every earlier version stored it (four fields).
#[derive(Debug, Serialize, Deserialize)]
struct OldTaskRecord {
    last_period: Option<i64>,
    token: u64,
    running: Option<RunInfo>,
    last_run: Option<RunInfo>,
}

/// Records written by earlier versions are read (and taken over), and a task whose runs do
/// not overlap keeps a record that earlier versions can read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_keep_the_earlier_layout_unless_runs_overlap() {
    let (kv, _schema) = larder_tests::db::pg_kv().await;
    let kv: DynBackend = Arc::new(kv);
    let cache = Cache::new(kv.clone());
    let key = Key::new("larder:task:legacy").unwrap();
    let period = 4_000 * MIN;
    let dead = RunInfo {
        period,
        holder: "old@host:1:0".into(),
        token: 41,
        started_at_ms: period,
        finished_at_ms: None,
        outcome: None,
    };
    cache
        .set(
            &key,
            &OldTaskRecord {
                last_period: Some(period),
                token: 41,
                running: Some(dead),
                last_run: None,
            },
            None,
        )
        .await
        .unwrap();
    let clock = Arc::new(ManualClock::new(period + 1));
    let s = scheduler(
        &kv,
        &clock,
        "new",
        every_minute("legacy", |_| async { Ok(()) }),
    );
    let st = s.status().await.unwrap();
    assert_eq!(st[0].running.as_ref().unwrap().token, 41);
    assert!(s.tick().await.unwrap().is_empty(), "not before a lease");
    tokio::time::sleep(timing().lease + Duration::from_millis(100)).await;
    let taken = s.tick().await.unwrap();
    assert_eq!((taken[0].period, taken[0].token), (period, 42));
    let old: OldTaskRecord = cache.get(&key).await.unwrap().unwrap();
    assert!(old.running.is_none());
    assert_eq!(old.last_run.unwrap().token, 42);
}
