//! Periodic tasks at scale: many schedulers in one process, each a `spawn`ed `Scheduler` with
//! its own holder id, over one real backend (memory: 1,000 schedulers; PostgreSQL's
//! `larder_kv`: 30, to keep the test short), 10 tasks, 100 periods of one injected
//! `ManualClock` (`larder_tests::coord_sim`). Every store operation goes through one
//! `layer::Instrumented`, whose counters say what the store saw; the jobs log every run.
//! Also: a task whose run lasts ten periods does not hold up another task of the same
//! scheduler, a dead at-least-once run is taken over a lease after it is seen (not at the
//! next period), and the followers of an `Elector` read the lease about once per renew
//! deadline.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use larder::coord::{
    Clock, Durability, Elector, HolderId, Lease, LeaseConfig, ManualClock, RunMode, Schedule,
    Scheduler, TaskSpec,
};
use larder::layer::Instrumented;
use larder::DynBackend;
use larder_backend_memory::MemoryBackend;
use larder_tests::coord_sim::{config, simulate, task, Drive, Outcome, PERIOD, T0};
use larder_tests::{eventually, Patience};
use parking_lot::Mutex;

/// Runs per (task, period), as the jobs logged them.
type RunLog = Arc<Mutex<BTreeMap<(usize, i64), usize>>>;

/// Asserts one run per task and period, at most one read per scheduler, task and period on
/// average, and three successful writes per task and period (the claim, the end of the run,
/// its history entry). On top: each run's history entry reads the history once (and again
/// after a lost race), and each scheduler registers its task names once at start (a read,
/// and a write by the first; at most 16 attempts when a thousand start at once).
fn check(what: &str, o: &Outcome) {
    println!("{}", o.summary(&format!("coord_scale[{what}]")));
    assert!(
        o.duplicates().is_empty(),
        "periods run twice: {:?}",
        o.duplicates()
    );
    assert!(
        o.missing().is_empty(),
        "periods never run: {:?}",
        o.missing()
    );
    assert_eq!(
        o.runs.len(),
        o.tasks * o.periods as usize,
        "runs of periods never due"
    );
    let all = o.all();
    let task_periods = o.tasks as u64 * o.periods as u64;
    let per = o.n as u64 * task_periods + 3 * task_periods + 16 * o.n as u64;
    assert!(
        all.reads <= per,
        "{} reads: more than one per scheduler, task and period, plus history and registration ({per})",
        all.reads
    );
    assert_eq!(
        all.writes,
        3 * task_periods + 1,
        "one claim, one end and one history entry per task and period, and one registration"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_schedulers_on_memory_read_once_per_period_and_claim_once() {
    let b: DynBackend = Arc::new(MemoryBackend::default());
    let o = simulate(b, 1_000, 10, 100, Drive::Spawned).await;
    check("memory", &o);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedulers_on_postgres_read_once_per_period_and_claim_once() {
    let (kv, _schema) = larder_tests::db::pg_kv().await;
    // 30 schedulers, not 1,000: each read is a round trip to the server, and the test must
    // stay short; the memory case has the thousand.
    let o = simulate(Arc::new(kv), 30, 10, 100, Drive::Spawned).await;
    check("postgres", &o);
}

/// One scheduler, two tasks: `slow`, whose run lasts ten periods (it sleeps on the injected
/// clock), and `fast`. `fast` is claimed and run in every period while `slow`'s run goes
/// on; `slow` is claimed again as soon as its run ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_ten_periods_long_does_not_delay_another_tasks_claims() {
    let b: DynBackend = Arc::new(MemoryBackend::default());
    let t0 = T0;
    let clock = Arc::new(ManualClock::new(t0 + 1));
    let log: RunLog = Arc::default();
    let (c, l) = (clock.clone(), log.clone());
    let slow = TaskSpec::new(
        "slow",
        Schedule::Every(Duration::from_millis(PERIOD as u64)),
        move |ctx| {
            *l.lock().entry((0, ctx.period)).or_default() += 1;
            let c = c.clone();
            async move {
                // Stopping the scheduler cancels the run, and waits for it to end.
                tokio::select! {
                    _ = c.sleep_until(ctx.period + 10 * PERIOD) => {}
                    _ = ctx.cancel.cancelled() => {}
                }
                Ok(())
            }
        },
    );
    let s = Scheduler::new(b.clone(), HolderId::named("one"), config("one"))
        .unwrap()
        .with_clock(clock.clone())
        .with_task(slow)
        .unwrap()
        .with_task(task(1, log.clone()))
        .unwrap();
    let (stop, handle) = Arc::new(s).spawn();
    // Two loops and the slow run sleep on the clock once everything due has been claimed.
    let settled = |k: i64| {
        let (clock, log) = (clock.clone(), log.clone());
        async move {
            let patience = Patience::new(Duration::from_secs(20)).every(Duration::from_millis(1));
            eventually(
                patience,
                format_args!("period {k} is claimed"),
                async || clock.waiting() == 3 && log.lock().contains_key(&(1, t0 + k * PERIOD)),
            )
            .await;
        }
    };
    settled(0).await;
    for k in 1..=12 {
        clock.set(t0 + k * PERIOD + PERIOD / 2);
        settled(k).await;
    }
    stop.cancel();
    handle.await.unwrap();
    let log = log.lock().clone();
    let fast: Vec<i64> = log
        .iter()
        .filter(|((t, _), _)| *t == 1)
        .map(|((_, p), n)| {
            assert_eq!(*n, 1, "period {p} of fast run once");
            (p - t0) / PERIOD
        })
        .collect();
    assert_eq!(
        fast,
        (0..=12).collect::<Vec<_>>(),
        "fast ran in every period"
    );
    let slow: Vec<i64> = log
        .iter()
        .filter(|((t, _), _)| *t == 0)
        .map(|((_, p), _)| (p - t0) / PERIOD)
        .collect();
    assert_eq!(
        slow,
        vec![0, 10],
        "slow ran once, then again in the period its run ended"
    );
}

/// One holder and nine followers of one lease (lease 600 ms, renew deadline 400 ms, retry
/// period 100 ms) on memory, counted for 3 s: each follower reads the lease about once per
/// renew deadline (at most 3 s / 400 ms + 2 times), where looking every retry period would
/// be about 25 times; the holder renews without reading, and stays the one leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elector_followers_look_about_once_per_renew_deadline() {
    let counted = Arc::new(Instrumented::new(Arc::new(MemoryBackend::default())));
    let stats = counted.stats();
    let b: DynBackend = counted;
    let cfg = LeaseConfig::new(
        Duration::from_millis(600),
        Duration::from_millis(400),
        Duration::from_millis(100),
    )
    .unwrap()
    .with_durability(Durability::AcceptLoss);
    let elector = |i: usize| {
        let lease = Lease::new(b.clone(), "one", HolderId::named(&format!("e{i}")), cfg);
        Elector::spawn(Arc::new(lease.unwrap()))
    };
    let mut leader = elector(0);
    let term = tokio::time::timeout(Duration::from_secs(5), leader.leader())
        .await
        .unwrap();
    let followers: Vec<Elector> = (1..10).map(elector).collect();
    let window = Duration::from_secs(3);
    let reads = |s: larder::layer::StatsSnapshot| s.hits + s.misses;
    let before = stats.snapshot();
    tokio::time::sleep(window).await;
    let after = stats.snapshot();
    let follower_reads = reads(after) - reads(before);
    let bound = 9 * (window.as_millis() as u64 / 400 + 2);
    println!(
        "coord_scale[elector]: 9 followers read the lease {follower_reads} times in {window:?} \
         (at most {bound}); the holder renewed {} times",
        after.writes - before.writes
    );
    assert!(
        follower_reads <= bound,
        "{follower_reads} reads by 9 followers in {window:?}"
    );
    assert!(follower_reads >= 9, "every follower looked");
    assert_eq!(leader.role().term().map(|t| t.token), Some(term.token));
    assert!(followers.iter().all(|f| f.role().term().is_none()));
    for f in followers {
        f.stop().await;
    }
    leader.stop().await;
}

/// An at-least-once run whose process died just after claiming it: a spawned scheduler that
/// sees it in progress looks again a lease later, without waiting for the next period (the
/// clock does not move), takes it over with a higher token and runs it; two reads for that,
/// plus one to register the task's name at start and one per history entry (the dead run's,
/// "taken over", and the run's own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spawned_scheduler_takes_a_dead_run_over_a_lease_after_seeing_it() {
    let memory: DynBackend = Arc::new(MemoryBackend::default());
    let counted = Arc::new(Instrumented::new(memory.clone()));
    let stats = counted.stats();
    let b: DynBackend = counted;
    let clock = Arc::new(ManualClock::new(T0 + 1));
    let lease = LeaseConfig::new(
        Duration::from_millis(600),
        Duration::from_millis(400),
        Duration::from_millis(100),
    )
    .unwrap()
    .with_durability(Durability::AcceptLoss);
    let log: RunLog = Arc::default();
    let spec = || task(0, log.clone()).mode(RunMode::AtLeastOnce);
    let scheduler = |b: &DynBackend, name: &str| {
        Scheduler::new(b.clone(), HolderId::named(name), config(name).lease(lease))
            .unwrap()
            .with_clock(clock.clone())
            .with_task(spec())
            .unwrap()
    };
    // Claims the period, then its process dies: no heartbeat, no end.
    let dead = scheduler(&b, "dead").claim(&spec()).await.unwrap().unwrap();
    let reads = |s: larder::layer::StatsSnapshot| s.hits + s.misses;
    let before = stats.snapshot();
    let (stop, handle) = Arc::new(scheduler(&b, "alive")).spawn();
    let patience = Patience::new(Duration::from_secs(10)).every(Duration::from_millis(5));
    eventually(patience, "the dead run is taken over", async || {
        log.lock().contains_key(&(0, T0))
    })
    .await;
    // Reads the record past the counting layer.
    let observer = scheduler(&memory, "observer");
    eventually(patience, "the run's end is recorded", async || {
        observer.status().await.unwrap()[0].last_run.is_some()
    })
    .await;
    let after = stats.snapshot();
    stop.cancel();
    handle.await.unwrap();
    let st = observer.status().await.unwrap();
    let last = st[0].last_run.as_ref().unwrap();
    assert_eq!(last.period, dead.period, "the same period");
    assert!(last.token > dead.token, "with a higher token");
    assert_eq!(log.lock().get(&(0, T0)), Some(&1), "run once");
    // The first look and the look a lease later (one more if the timer fired a hair early),
    // the registration and the two history entries.
    let looked = reads(after) - reads(before);
    println!("coord_scale[takeover]: the dead run was taken over after {looked} reads");
    assert!(looked <= 6, "{looked} reads");
}
