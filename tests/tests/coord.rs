//! Periodic tasks with an injected clock, and the elector, on a real memory backend. (The
//! lease cases of the conformance suite run on every backend, in its own test file.)
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use larder::coord::{
    Candidacy, Durability, Elector, HolderId, Lease, LeaseConfig, ManualClock, MisfirePolicy, Role,
    RunMode, Schedule, Scheduler, SchedulerConfig, TaskSpec,
};
use larder::{DynBackend, ErrorKind};
use larder_backend_memory::MemoryBackend;

const MIN: i64 = 60_000;

/// Short timings. The memory backend keeps nothing past this process, which is all these
/// tests need: they accept that explicitly (`memory_is_refused_unless_loss_is_accepted`
/// checks the refusal without it).
fn fast_lease() -> LeaseConfig {
    LeaseConfig::new(
        Duration::from_millis(600),
        Duration::from_millis(400),
        Duration::from_millis(100),
    )
    .unwrap()
    .with_durability(Durability::AcceptLoss)
}

fn counting_task(name: &str, runs: Arc<AtomicUsize>) -> TaskSpec {
    TaskSpec::new(
        name,
        Schedule::Every(Duration::from_secs(60)),
        move |_ctx| {
            let runs = runs.clone();
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        },
    )
}

fn scheduler(b: &DynBackend, clock: &Arc<ManualClock>, name: &str, task: TaskSpec) -> Scheduler {
    Scheduler::new(
        b.clone(),
        HolderId::named(name),
        SchedulerConfig::default()
            .process_name(name)
            .lease(fast_lease()),
    )
    .unwrap()
    .with_clock(clock.clone())
    .with_task(task)
    .unwrap()
}

#[tokio::test]
async fn each_period_is_claimed_once_across_processes() {
    let b: DynBackend = Arc::new(MemoryBackend::default());
    let clock = Arc::new(ManualClock::new(1_000 * MIN));
    let runs = Arc::new(AtomicUsize::new(0));
    let nodes: Vec<Scheduler> = (0..5)
        .map(|i| {
            scheduler(
                &b,
                &clock,
                &format!("n{i}"),
                counting_task("sweep", runs.clone()),
            )
        })
        .collect();
    let mut tokens = Vec::new();
    for period in 0..10 {
        for n in &nodes {
            tokens.extend(n.tick().await.unwrap().into_iter().map(|c| c.token));
        }
        assert_eq!(
            runs.load(Ordering::SeqCst),
            period + 1,
            "one run per period"
        );
        clock.advance(MIN);
    }
    // The first claim created the record: its token is time-based (the injected clock's
    // milliseconds << 20); every later claim adds one.
    assert!(tokens[0] >= ((1_000 * MIN) as u64) << 20, "{tokens:?}");
    assert!(tokens.windows(2).all(|w| w[1] == w[0] + 1), "{tokens:?}");
    let status = nodes[0].status().await.unwrap();
    assert_eq!(status[0].token, *tokens.last().unwrap());
    assert_eq!(status[0].last_run.as_ref().unwrap().outcome, Some(Ok(())));
}

#[tokio::test]
async fn a_clock_that_jumps_back_never_claims_a_period_twice() {
    let b: DynBackend = Arc::new(MemoryBackend::default());
    let clock = Arc::new(ManualClock::new(500 * MIN + 10));
    let runs = Arc::new(AtomicUsize::new(0));
    let s = scheduler(&b, &clock, "a", counting_task("t", runs.clone()));
    assert_eq!(s.tick().await.unwrap().len(), 1);
    clock.advance(-5 * MIN);
    for _ in 0..5 {
        assert!(
            s.tick().await.unwrap().is_empty(),
            "earlier periods are never claimed"
        );
        clock.advance(MIN);
    }
    assert!(
        s.tick().await.unwrap().is_empty(),
        "the same period again: no"
    );
    clock.advance(MIN);
    assert_eq!(s.tick().await.unwrap().len(), 1, "the next one: yes");
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn missed_periods_run_each_up_to_max_after_downtime() {
    let b: DynBackend = Arc::new(MemoryBackend::default());
    let clock = Arc::new(ManualClock::new(100 * MIN));
    let runs = Arc::new(AtomicUsize::new(0));
    let s = scheduler(
        &b,
        &clock,
        "a",
        counting_task("t", runs.clone()).misfire(MisfirePolicy::RunEach { max: 3 }),
    );
    assert_eq!(s.tick().await.unwrap().len(), 1);
    clock.advance(10 * MIN); // down for ten periods
    let claims = s.tick().await.unwrap();
    let periods: Vec<i64> = claims.iter().map(|c| c.period).collect();
    assert_eq!(
        periods,
        vec![108 * MIN, 109 * MIN, 110 * MIN],
        "only the last three"
    );
    assert!(s.tick().await.unwrap().is_empty());
    assert_eq!(runs.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn pinned_and_never_processes() {
    let b: DynBackend = Arc::new(MemoryBackend::default());
    let clock = Arc::new(ManualClock::new(7 * MIN));
    let runs = Arc::new(AtomicUsize::new(0));
    let pinned = counting_task("report", runs.clone()).pinned_to(["worker-2"]);
    let w1 = scheduler(&b, &clock, "worker-1", pinned.clone());
    let web = Scheduler::new(
        b.clone(),
        HolderId::named("web"),
        SchedulerConfig::default()
            .process_name("worker-2")
            .candidacy(Candidacy::Never)
            .lease(fast_lease()),
    )
    .unwrap()
    .with_clock(clock.clone())
    .with_task(pinned.clone())
    .unwrap();
    assert!(w1.tick().await.unwrap().is_empty(), "not pinned here");
    assert!(web.tick().await.unwrap().is_empty(), "never a candidate");
    let w2 = scheduler(&b, &clock, "worker-2", pinned);
    let c = w2.tick().await.unwrap();
    assert_eq!(c.len(), 1);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    // Everyone can read the status.
    assert_eq!(web.status().await.unwrap()[0].last_period, Some(7 * MIN));
}

#[tokio::test]
async fn at_least_once_takes_over_a_dead_run_with_a_higher_token() {
    let b: DynBackend = Arc::new(MemoryBackend::default());
    let clock = Arc::new(ManualClock::new(3 * MIN));
    let task = |runs: Arc<AtomicUsize>| counting_task("idem", runs).mode(RunMode::AtLeastOnce);
    let runs = Arc::new(AtomicUsize::new(0));
    let dead = scheduler(&b, &clock, "dead", task(runs.clone()));
    let alive = scheduler(&b, &clock, "alive", task(runs.clone()));
    // "dead" claims and dies before running (no heartbeat, no finish).
    let spec = task(runs.clone());
    let claim = dead.claim(&spec).await.unwrap().unwrap();
    assert!(
        alive.tick().await.unwrap().is_empty(),
        "the run is in progress"
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    let taken = alive.tick().await.unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].period, claim.period, "same period again");
    assert!(taken[0].token > claim.token);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    // The dead process's late finish changes nothing.
    assert!(!dead.finish(&claim, Ok(())).await.unwrap());
}

#[tokio::test]
async fn at_most_once_never_repeats_a_dead_run_and_moves_on() {
    let b: DynBackend = Arc::new(MemoryBackend::default());
    let clock = Arc::new(ManualClock::new(3 * MIN));
    let runs = Arc::new(AtomicUsize::new(0));
    let dead = scheduler(&b, &clock, "dead", counting_task("once", runs.clone()));
    let alive = scheduler(&b, &clock, "alive", counting_task("once", runs.clone()));
    let spec = counting_task("once", runs.clone());
    dead.claim(&spec).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    alive.tick().await.unwrap(); // observes
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        alive.tick().await.unwrap().is_empty(),
        "same period is not re-run"
    );
    clock.advance(MIN);
    assert_eq!(alive.tick().await.unwrap().len(), 1, "the next period runs");
    let st = alive.status().await.unwrap();
    let last = st[0].last_run.as_ref().unwrap();
    assert_eq!(last.outcome, Some(Ok(())));
}

#[tokio::test]
async fn runs_do_not_overlap_unless_asked() {
    let b: DynBackend = Arc::new(MemoryBackend::default());
    let clock = Arc::new(ManualClock::new(3 * MIN));
    let runs = Arc::new(AtomicUsize::new(0));
    let a = scheduler(&b, &clock, "a", counting_task("slow", runs.clone()));
    let spec = counting_task("slow", runs.clone());
    let first = a.claim(&spec).await.unwrap().unwrap();
    clock.advance(MIN);
    assert!(
        a.claim(&spec).await.unwrap().is_none(),
        "previous run still going"
    );
    assert!(a.finish(&first, Ok(())).await.unwrap());
    assert!(a.claim(&spec).await.unwrap().is_some());
    let overlapping = counting_task("fast", runs).allow_overlap(true);
    let c1 = a.claim(&overlapping).await.unwrap().unwrap();
    clock.advance(MIN);
    let c2 = a.claim(&overlapping).await.unwrap().unwrap();
    assert!(c2.period > c1.period);
}

#[tokio::test]
async fn cron_schedules_name_their_periods() {
    let s = Schedule::cron("0 */5 * * * *").unwrap();
    // 12:07:30 UTC falls in the period that began at 12:05.
    let t = 1_700_000_000_000i64 - 1_700_000_000_000i64 % (5 * MIN) + 2 * MIN + 30_000;
    let p = s.period_at(t).unwrap();
    assert_eq!(p % (5 * MIN), 0);
    assert!(p <= t && t - p < 5 * MIN);
    assert_eq!(s.next(p).unwrap(), p + 5 * MIN);
    assert_eq!(
        Schedule::cron("not cron").err().unwrap().kind(),
        ErrorKind::Config
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elector_fails_over_and_cancels_the_old_term() {
    let b: DynBackend = Arc::new(MemoryBackend::default());
    let l1 =
        Arc::new(Lease::new(b.clone(), "singleton", HolderId::named("p1"), fast_lease()).unwrap());
    let l2 =
        Arc::new(Lease::new(b.clone(), "singleton", HolderId::named("p2"), fast_lease()).unwrap());
    let mut e1 = Elector::spawn(l1);
    let t1 = tokio::time::timeout(Duration::from_secs(5), e1.leader())
        .await
        .unwrap();
    let mut e2 = Elector::spawn(l2.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(matches!(e2.role(), Role::Follower));
    // A clean stop releases: the other takes over at once, with a higher token.
    e1.stop().await;
    assert!(t1.cancel.is_cancelled(), "the old term is cancelled");
    let t2 = tokio::time::timeout(Duration::from_secs(5), e2.leader())
        .await
        .unwrap();
    assert!(t2.token > t1.token);
    let rec = l2.observe().await.unwrap().unwrap();
    assert_eq!(rec.holder, l2.holder().as_str());
    e2.stop().await;
}

#[tokio::test]
async fn memcached_like_backends_are_refused() {
    let mem: DynBackend = Arc::new(MemoryBackend::default());
    let mut caps = mem.capabilities().clone();
    caps.linearizable_cas = false;
    let weak: DynBackend = Arc::new(larder::layer::Restrict::new(mem, caps).unwrap());
    // Refused even when the loss of records is accepted.
    let e = Scheduler::new(
        weak,
        HolderId::generate(),
        SchedulerConfig::default().durability(Durability::AcceptLoss),
    )
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert!(e.message().contains("not linearizable"), "{e}");
}

#[tokio::test]
async fn memory_is_refused_unless_loss_is_accepted() {
    let mem: DynBackend = Arc::new(MemoryBackend::default());
    for e in [
        Scheduler::new(
            mem.clone(),
            HolderId::generate(),
            SchedulerConfig::default(),
        )
        .unwrap_err(),
        Lease::new(
            mem.clone(),
            "l",
            HolderId::generate(),
            LeaseConfig::default(),
        )
        .unwrap_err(),
    ] {
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        let m = e.message();
        assert!(
            m.contains("not persistent (entries live in this process's memory only)"),
            "{e}"
        );
        assert!(
            m.contains("may evict entries (it evicts least-recently-used"),
            "{e}"
        );
        assert!(m.contains("Durability::AcceptLoss"), "{e}");
    }
    // Accepted in the scheduler's configuration (one setting, carried by its lease config).
    let s = Scheduler::new(
        mem.clone(),
        HolderId::generate(),
        SchedulerConfig::default().durability(Durability::AcceptLoss),
    );
    assert!(s.is_ok());
    let l = Lease::new(mem, "l", HolderId::generate(), fast_lease()).unwrap();
    assert!(l.try_acquire().await.unwrap().is_some());
}

/// What accepting the loss gives up, and what it keeps: the store loses the task record
/// (deleted here), so the period is claimed again (it runs twice), but with a token above
/// every earlier one.
#[tokio::test]
async fn a_lost_task_record_runs_the_period_again_with_a_higher_token() {
    let b: DynBackend = Arc::new(MemoryBackend::default());
    let clock = Arc::new(ManualClock::new(2_000 * MIN));
    let runs = Arc::new(AtomicUsize::new(0));
    let n = scheduler(&b, &clock, "n", counting_task("lost", runs.clone()));
    let mut before = Vec::new();
    for _ in 0..3 {
        before.extend(n.tick().await.unwrap());
        clock.advance(MIN);
    }
    clock.advance(-MIN);
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    assert!(n.tick().await.unwrap().is_empty(), "claimed already");
    // The store loses its data; the clock moved on by one millisecond.
    let key = larder::Key::new("larder:task:lost").unwrap();
    assert!(b.delete(&key, larder::DeleteMode::Any).await.unwrap());
    clock.advance(1);
    let again = n.tick().await.unwrap();
    assert_eq!(again.len(), 1, "the period is claimed again");
    assert_eq!(
        again[0].period, before[2].period,
        "the same period runs twice"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 4);
    let highest = before.iter().map(|c| c.token).max().unwrap();
    assert!(
        again[0].token > highest,
        "token after the loss {} above every earlier one ({highest})",
        again[0].token
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_of_one_period_have_one_winner() {
    // Each call into the store pauses a little, so the racers' reads and writes interleave.
    let faulty = larder_tests::fault::Faulty::new(Arc::new(MemoryBackend::default()));
    faulty.set(larder_tests::fault::Fault::Stall(Duration::from_millis(1)));
    let b: DynBackend = faulty;
    let clock = Arc::new(ManualClock::new(1_000 * MIN));
    let runs = Arc::new(AtomicUsize::new(0));
    let nodes: Vec<Arc<Scheduler>> = (0..8)
        .map(|i| {
            Arc::new(scheduler(
                &b,
                &clock,
                &format!("n{i}"),
                counting_task("race", runs.clone()),
            ))
        })
        .collect();
    for period in 0..20 {
        let barrier = Arc::new(tokio::sync::Barrier::new(nodes.len()));
        let mut tasks = Vec::new();
        for n in &nodes {
            let (n, barrier) = (n.clone(), barrier.clone());
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                n.tick().await.unwrap().len()
            }));
        }
        let mut claimed = 0;
        for t in tasks {
            claimed += t.await.unwrap();
        }
        assert_eq!(claimed, 1, "period {period}: exactly one claim");
        clock.advance(MIN);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 20);
}

/// Session expiry runs as a coordinated task: three processes, one sweep per period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_expiry_sweeps_once_per_period_across_processes() {
    use larder::sessions::{expiry_task, SessionData, SessionStore, Timestamp};
    let (store, _schema) = larder_tests::db::pg_store().await;
    let kv: DynBackend = Arc::new(larder_tests::db::pg_kv_beside(&store).await);
    for _ in 0..25 {
        store
            .create(
                SessionData::new(),
                None,
                Timestamp::now().plus(Duration::from_millis(1)),
            )
            .await
            .unwrap();
    }
    let live = store
        .create(
            SessionData::new(),
            None,
            Timestamp::now().plus(Duration::from_secs(600)),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let clock = Arc::new(ManualClock::new(42 * MIN));
    let store: Arc<dyn SessionStore> = Arc::new(store);
    let removed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let nodes: Vec<Scheduler> = (0..3)
        .map(|i| {
            Scheduler::new(
                kv.clone(),
                HolderId::named(&format!("n{i}")),
                SchedulerConfig::default().lease(fast_lease()),
            )
            .unwrap()
            .with_clock(clock.clone())
            .with_task(expiry_task(
                store.clone(),
                Duration::from_secs(60),
                10,
                removed.clone(),
            ))
            .unwrap()
        })
        .collect();
    let mut claims = 0;
    for n in &nodes {
        claims += n.tick().await.unwrap().len();
    }
    assert_eq!(claims, 1, "one sweep per period");
    assert_eq!(
        removed.load(Ordering::SeqCst),
        25,
        "in batches of 10, all expired rows"
    );
    assert!(store.load(&live.id).await.unwrap().is_some());
    let status = nodes[2].status().await.unwrap();
    assert_eq!(status[0].name, larder::sessions::EXPIRY_TASK);
    assert_eq!(status[0].last_run.as_ref().unwrap().outcome, Some(Ok(())));
    assert!(status[0].next_due_ms.unwrap() > 42 * MIN);
}

#[tokio::test]
async fn overlapping_runs_both_finish_and_neither_is_cancelled() {
    let b: DynBackend = Arc::new(MemoryBackend::default());
    let clock = Arc::new(ManualClock::new(3 * MIN));
    let runs = Arc::new(AtomicUsize::new(0));
    let a = scheduler(
        &b,
        &clock,
        "a",
        counting_task("o", runs.clone()).allow_overlap(true),
    );
    let c = scheduler(
        &b,
        &clock,
        "c",
        counting_task("o", runs.clone()).allow_overlap(true),
    );
    let spec = counting_task("o", runs).allow_overlap(true);
    let first = a.claim(&spec).await.unwrap().unwrap();
    clock.advance(MIN);
    let second = c.claim(&spec).await.unwrap().unwrap();
    assert!(second.token > first.token);
    assert!(
        a.heartbeat(&first).await.unwrap(),
        "a later period does not end the earlier run"
    );
    assert!(c.heartbeat(&second).await.unwrap());
    assert!(c.finish(&second, Ok(())).await.unwrap());
    assert!(a.finish(&first, Err("slow".into())).await.unwrap());
    let st = a.status().await.unwrap();
    let last = st[0].last_run.as_ref().unwrap();
    assert_eq!(
        (last.period, last.token),
        (second.period, second.token),
        "the later run stays the last one"
    );
    assert!(st[0].running.is_none());
}

#[tokio::test]
async fn a_holder_that_takes_its_lease_back_starts_a_new_term() {
    let b: DynBackend = Arc::new(MemoryBackend::default());
    let l = Lease::new(b, "again", HolderId::generate(), fast_lease()).unwrap();
    let first = l.try_acquire().await.unwrap().unwrap();
    // Lost its `Held` (stepped down after an ambiguous renewal), takes it back at once.
    let second = l.try_acquire().await.unwrap().unwrap();
    assert!(
        second.token > first.token,
        "leftovers of the old term are fenced off"
    );
}
