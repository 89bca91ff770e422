//! Schedules through a real [`Scheduler`] on real stores (memory, PostgreSQL), on an injected
//! clock: cron in `Europe/Paris` across both 2026 daylight-saving changes, and what each
//! misfire policy claims after the scheduler was down for some periods.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use larder::coord::{
    Clock, Durability, HolderId, ManualClock, MisfirePolicy, Schedule, Scheduler, SchedulerConfig,
    TaskSpec,
};
use larder::{DynBackend, ErrorKind};
use larder_backend_memory::MemoryBackend;

const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;

fn utc(s: &str) -> i64 {
    s.parse::<DateTime<Utc>>().unwrap().timestamp_millis()
}

/// `ms` on the wall clock of Paris, with the zone's abbreviation (`03:00 CEST`).
fn paris(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .unwrap()
        .with_timezone(&chrono_tz::Europe::Paris)
        .format("%d %H:%M %Z")
        .to_string()
}

/// The scheduler of process `name`.
fn scheduler(
    b: &DynBackend,
    name: &str,
    durable: bool,
    clock: &Arc<ManualClock>,
    tasks: Vec<TaskSpec>,
) -> Scheduler {
    let mut config = SchedulerConfig::default().process_name(name);
    if !durable {
        // The memory store keeps nothing past this process, which is all these tests need.
        config = config.durability(Durability::AcceptLoss);
    }
    let mut s = Scheduler::new(b.clone(), HolderId::named(name), config)
        .unwrap()
        .with_clock(clock.clone());
    for t in tasks {
        s = s.with_task(t).unwrap();
    }
    s
}

fn task(name: &str, schedule: Schedule) -> TaskSpec {
    TaskSpec::new(name, schedule, |_| async { Ok(()) })
}

/// One claim as the test saw it: task, period, and the clock when it was claimed.
type Run = (String, i64, i64);

/// Ticks every 5 minutes of the injected clock through `[from, to)`, the processes in an
/// order that changes from tick to tick (scrambled: periods start on every sixth tick), and
/// checks that each process claimed some of the runs.
async fn run_through(nodes: &[Scheduler], clock: &ManualClock, from: &str, to: &str) -> Vec<Run> {
    let mut runs = Vec::new();
    let mut by_node = vec![0; nodes.len()];
    let (from, to) = (utc(from), utc(to));
    for (i, t) in (from..to).step_by(5 * MIN as usize).enumerate() {
        clock.set(t);
        let first = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60;
        for k in 0..nodes.len() {
            let n = (first as usize + k) % nodes.len();
            for c in nodes[n].tick().await.unwrap() {
                runs.push((c.task, c.period, c.started_at_ms));
                by_node[n] += 1;
            }
        }
    }
    assert!(by_node.iter().all(|n| *n > 0), "{by_node:?}");
    runs
}

fn periods_of(runs: &[Run], task: &str) -> Vec<i64> {
    runs.iter().filter(|r| r.0 == task).map(|r| r.1).collect()
}

/// Three days around one change of the clock, and the runs expected in them.
struct ChangeDays {
    /// The days, in UTC.
    from: &'static str,
    to: &'static str,
    /// The 02:30 job's periods: the first one current at the first tick (run late, once),
    /// then one per day.
    nightly: [&'static str; 4],
    /// The same three days' runs on the wall clock of Paris.
    nightly_in_paris: [&'static str; 3],
    /// The half-hourly job's runs in the two hours of real time around the change, in Paris.
    night_in_paris: [&'static str; 4],
}

const SPRING: ChangeDays = ChangeDays {
    // Sunday 29 March 2026: 02:00 CET is followed by 03:00 CEST.
    from: "2026-03-28T00:00:00Z",
    to: "2026-03-31T00:00:00Z",
    nightly: [
        "2026-03-27T01:30:00Z",
        "2026-03-28T01:30:00Z", // 02:30 CET
        "2026-03-29T01:00:00Z", // 02:30 does not exist: the first instant after the gap
        "2026-03-30T00:30:00Z", // 02:30 CEST
    ],
    nightly_in_paris: ["28 02:30 CET", "29 03:00 CEST", "30 02:30 CEST"],
    night_in_paris: [
        "29 01:00 CET",
        "29 01:30 CET",
        "29 03:00 CEST",
        "29 03:30 CEST",
    ],
};

const AUTUMN: ChangeDays = ChangeDays {
    // Sunday 25 October 2026: 03:00 CEST is followed by 02:00 CET.
    from: "2026-10-24T00:00:00Z",
    to: "2026-10-27T00:00:00Z",
    nightly: [
        "2026-10-23T00:30:00Z",
        "2026-10-24T00:30:00Z", // 02:30 CEST
        "2026-10-25T00:30:00Z", // 02:30 CEST, the first of two 02:30s: once only
        "2026-10-26T01:30:00Z", // 02:30 CET
    ],
    nightly_in_paris: ["24 02:30 CEST", "25 02:30 CEST", "26 02:30 CET"],
    night_in_paris: [
        "25 02:00 CEST",
        "25 02:30 CEST",
        "25 02:00 CET",
        "25 02:30 CET",
    ],
};

/// A 02:30 job, an hourly one and a half-hourly one in `Europe/Paris`, run by two processes
/// that share the store, ticked every 5 minutes from the day before to the day after each
/// 2026 change: the exact list of runs (so both processes named every period alike, and
/// none ran twice).
async fn paris_2026(b: DynBackend, durable: bool) {
    let clock = Arc::new(ManualClock::new(0));
    let zone = |expr| Schedule::cron_in(expr, "Europe/Paris").unwrap();
    let tasks = || {
        vec![
            task("nightly", zone("0 30 2 * * *")),
            task("hourly", zone("0 0 * * * *")),
            task("half-hourly", zone("0 */30 * * * *")),
        ]
    };
    let nodes = [
        scheduler(&b, "a", durable, &clock, tasks()),
        scheduler(&b, "b", durable, &clock, tasks()),
    ];
    let s = &nodes[0];
    for days in [SPRING, AUTUMN] {
        let runs = run_through(&nodes, &clock, days.from, days.to).await;
        let nightly = periods_of(&runs, "nightly");
        assert_eq!(nightly, days.nightly.map(utc));
        let in_paris: Vec<String> = nightly[1..].iter().map(|p| paris(*p)).collect();
        assert_eq!(in_paris, days.nightly_in_paris);
        // Every hour and every half hour of real time, none twice, none left out.
        let (from, to) = (utc(days.from), utc(days.to));
        let every = |step: i64| (from..to).step_by(step as usize).collect::<Vec<_>>();
        assert_eq!(periods_of(&runs, "hourly"), every(HOUR));
        assert_eq!(periods_of(&runs, "half-hourly"), every(HOUR / 2));
        // The change is at 01:00 UTC on the Sunday, the second day.
        let change = from + 24 * HOUR + HOUR;
        let night: Vec<String> = periods_of(&runs, "half-hourly")
            .into_iter()
            .filter(|p| (change - HOUR..change + HOUR).contains(p))
            .map(paris)
            .collect();
        assert_eq!(night, days.night_in_paris);
        // Each run was claimed at its period's start (a tick falls on every period start),
        // except the late first one of the nightly task.
        let late: Vec<&Run> = runs.iter().filter(|r| r.1 != r.2).collect();
        assert_eq!(late, [&("nightly".to_owned(), utc(days.nightly[0]), from)]);
    }

    // What the store holds agrees: the last claimed periods, and nothing running.
    let status = s.status().await.unwrap();
    let last: Vec<(String, Option<i64>)> = status
        .iter()
        .map(|t| (t.name.clone(), t.last_period))
        .collect();
    assert_eq!(
        last,
        [
            ("nightly".to_owned(), Some(utc("2026-10-26T01:30:00Z"))),
            ("hourly".to_owned(), Some(utc("2026-10-26T23:00:00Z"))),
            ("half-hourly".to_owned(), Some(utc("2026-10-26T23:30:00Z"))),
        ]
    );
    assert!(status.iter().all(|t| t.running.is_none()));
}

#[tokio::test]
async fn memory_paris_2026_runs() {
    paris_2026(Arc::new(MemoryBackend::default()), false).await;
}

#[tokio::test]
async fn postgres_paris_2026_runs() {
    let (kv, _schema) = larder_tests::db::pg_kv().await;
    paris_2026(Arc::new(kv), true).await;
}

/// Four hourly tasks, one per policy. Up at 100:00, down until 105:10 (the periods of 101:00
/// to 105:00 missed, the current one started 10 minutes ago), up at 106:00, down until
/// 109:00:30 (107:00 to 109:00 missed, the current one 30 seconds old): each claims exactly
/// what `MisfirePolicy` documents.
async fn misfire_policies(b: DynBackend, durable: bool) {
    let h = HOUR;
    let clock = Arc::new(ManualClock::new(100 * h));
    let hourly = || Schedule::every(Duration::from_secs(3600)).unwrap();
    let policies = [
        (
            "skip",
            MisfirePolicy::Skip {
                grace: Duration::from_secs(60),
            },
        ),
        ("latest", MisfirePolicy::RunLatest),
        ("each-3", MisfirePolicy::RunEach { max: 3 }),
        ("each-10", MisfirePolicy::RunEach { max: 10 }),
    ];
    let s = scheduler(
        &b,
        "a",
        durable,
        &clock,
        policies
            .iter()
            .map(|(name, p)| task(name, hourly()).misfire(*p))
            .collect(),
    );
    let tick = || async {
        let claims = s.tick().await.unwrap();
        policies
            .iter()
            .map(|(name, _)| {
                claims
                    .iter()
                    .filter(|c| c.task == *name)
                    .map(|c| c.period / h)
                    .collect::<Vec<i64>>()
            })
            .collect::<Vec<_>>()
    };

    assert_eq!(tick().await, [vec![100], vec![100], vec![100], vec![100]]);

    clock.set(105 * h + 10 * MIN);
    // Before any process is back: the status says which tasks are due now.
    let due: Vec<Option<i64>> = s
        .status()
        .await
        .unwrap()
        .iter()
        .map(|t| t.next_due_ms)
        .collect();
    let now = Some(clock.now_ms());
    assert_eq!(due, [Some(106 * h), now, now, now]);
    assert_eq!(
        tick().await,
        [
            vec![],
            vec![105],
            vec![103, 104, 105],
            vec![101, 102, 103, 104, 105]
        ]
    );
    assert_eq!(
        tick().await,
        vec![Vec::<i64>::new(); 4],
        "nothing more is due"
    );

    clock.set(106 * h);
    assert_eq!(tick().await, [vec![106], vec![106], vec![106], vec![106]]);

    clock.set(109 * h + 30_000);
    assert_eq!(
        tick().await,
        [
            vec![109],
            vec![109],
            vec![107, 108, 109],
            vec![107, 108, 109]
        ]
    );
    assert_eq!(tick().await, vec![Vec::<i64>::new(); 4]);
}

#[tokio::test]
async fn memory_misfire_policies_after_downtime() {
    misfire_policies(Arc::new(MemoryBackend::default()), false).await;
}

#[tokio::test]
async fn postgres_misfire_policies_after_downtime() {
    let (kv, _schema) = larder_tests::db::pg_kv().await;
    misfire_policies(Arc::new(kv), true).await;
}

/// Unknown zones, fields out of range, a zone without an expression, a policy that could
/// never run: typed `Config` errors that say what is wrong, no panic.
#[tokio::test]
async fn bad_schedules_and_policies_are_config_errors() {
    for (result, says) in [
        (
            Schedule::cron_in("0 30 2 * * *", "Europe/Pariss"),
            "unknown time zone \"Europe/Pariss\"",
        ),
        (
            Schedule::cron_in("0 30 2 * * *", "CET+1"),
            "unknown time zone",
        ),
        (
            Schedule::cron_in("60 30 2 * * *", "Europe/Paris"),
            "invalid cron expression \"60 30 2 * * *\"",
        ),
        (Schedule::cron("99 * * * * *"), "invalid cron expression"),
        (
            Schedule::parse("CRON_TZ=Mars/Olympus_Mons 0 0 * * * *"),
            "unknown time zone \"Mars/Olympus_Mons\"",
        ),
        (
            Schedule::parse("CRON_TZ=Europe/Paris 75 0 * * * *"),
            "invalid cron expression",
        ),
        (
            Schedule::parse("CRON_TZ=Europe/Paris"),
            "invalid cron expression",
        ),
        (Schedule::parse("0s"), "at least 1 ms"),
    ] {
        let e = result.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config, "{e}");
        assert!(
            e.message().contains(says),
            "{:?} lacks {says:?}",
            e.message()
        );
    }
    let b: DynBackend = Arc::new(MemoryBackend::default());
    let clock = Arc::new(ManualClock::new(0));
    let e = Scheduler::new(
        b,
        HolderId::named("a"),
        SchedulerConfig::default().durability(Durability::AcceptLoss),
    )
    .unwrap()
    .with_clock(clock)
    .with_task(
        task("never", Schedule::every(Duration::from_secs(60)).unwrap())
            .misfire(MisfirePolicy::RunEach { max: 0 }),
    )
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(e.message().contains("max >= 1"), "{}", e.message());
}
