//! Property tests of the claim decision's rules, on records as the scheduler writes them.

use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;
use crate::misfire::MisfirePolicy;
use crate::schedule::Schedule;

const ME: &str = "me";

/// One input of [`plan`].
#[derive(Debug, Clone)]
struct Case {
    task: TaskSpec,
    now: i64,
    rec: TaskRecord,
    version: Option<Version>,
    dead: DeadRuns,
}

fn task(interval_ms: u64, misfire: MisfirePolicy, mode: RunMode, overlap: bool) -> TaskSpec {
    let every = Schedule::every(Duration::from_millis(interval_ms)).expect("a valid interval");
    TaskSpec::new("t", every, |_| async { Ok(()) })
        .misfire(misfire)
        .mode(mode)
        .allow_overlap(overlap)
}

fn misfire() -> impl Strategy<Value = MisfirePolicy> {
    prop_oneof![
        (0u64..5_000).prop_map(|g| MisfirePolicy::Skip {
            grace: Duration::from_millis(g)
        }),
        Just(MisfirePolicy::RunLatest),
        (1u32..4).prop_map(|max| MisfirePolicy::RunEach { max }),
    ]
}

fn mode() -> impl Strategy<Value = RunMode> {
    prop_oneof![Just(RunMode::AtMostOnce), Just(RunMode::AtLeastOnce)]
}

prop_compose! {
    /// A record as the scheduler leaves it: runs in progress of periods up to the last claimed
    /// one, with distinct tokens below the record's, stored through `put_runs`; some of them
    /// reported dead (and now and then a token that is no run at all).
    fn case()(
        interval in 1u64..5_000,
        misfire in misfire(),
        mode in mode(),
        overlap in any::<bool>(),
        now in 0i64..10_000_000,
        absent in prop::bool::weighted(0.1),
        last_back in prop::option::weighted(0.9, -2i64..20),
        token in 100u64..1 << 40,
        runs in prop::collection::vec((0i64..4, 0u64..3, any::<bool>()), 0..=MAX_RUNS_IN_PROGRESS),
        foreign in prop::option::weighted(0.1, any::<u64>()),
        recheck_in in prop::option::of(0u64..20_000),
        version in any::<u64>(),
    ) -> Case {
        let task = task(interval, misfire, mode, overlap);
        let dead = DeadRuns {
            tokens: Vec::new(),
            recheck: recheck_in.map(|ms| Instant::now() + Duration::from_millis(ms)),
        };
        if absent {
            return Case { task, now, rec: TaskRecord::default(), version: None, dead };
        }
        let step = interval as i64;
        let current = task.schedule.period_at(now).expect("a period");
        let last_period = last_back.map(|k| current - k * step);
        let mut rec = TaskRecord {
            last_period,
            token,
            ..TaskRecord::default()
        };
        let mut dead = dead;
        let mut infos = Vec::new();
        for (i, (back, holder, is_dead)) in runs.into_iter().enumerate() {
            let period = last_period.unwrap_or(current) - back * step;
            let token = token - i as u64;
            if is_dead {
                dead.tokens.push(token);
            }
            infos.push(RunInfo {
                period,
                holder: format!("p{holder}"),
                token,
                started_at_ms: period,
                finished_at_ms: None,
                outcome: None,
            });
        }
        // The scheduler reports dead runs oldest first.
        infos.sort_by_key(|r| (r.period, r.token));
        dead.tokens.sort_by_key(|t| infos.iter().position(|r| r.token == *t));
        dead.tokens.extend(foreign.filter(|f| !infos.iter().any(|r| r.token == *f)));
        rec.put_runs(infos);
        Case { task, now, rec, version: Some(Version::from_raw(version)), dead }
    }
}

fn decide(c: &Case) -> Decision {
    plan(&c.task, ME, c.now, c.rec.clone(), c.version, &c.dead)
}

fn is_dead(c: &Case, r: &RunInfo) -> bool {
    c.dead.tokens.contains(&r.token)
}

fn due(c: &Case) -> Option<i64> {
    c.task
        .misfire
        .periods_to_claim(&c.task.schedule, c.rec.last_period, c.now)
        .next()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn a_fresh_claim_is_the_first_due_period_after_the_last_claimed(c in case()) {
        let d = decide(&c);
        let Some(w) = d.write.filter(|w| !w.takeover) else { return Ok(()) };
        prop_assert_eq!(Some(w.claim.period), due(&c));
        if let Some(last) = c.rec.last_period {
            prop_assert!(w.claim.period > last, "period {} after {last}", w.claim.period);
        }
        prop_assert_eq!(w.record.last_period, Some(w.claim.period));
        prop_assert_eq!(w.record.token, w.claim.token);
        match c.version {
            Some(_) => prop_assert_eq!(w.claim.token, c.rec.token + 1),
            None => prop_assert_eq!(w.claim.token, token::first(c.now)),
        }
        let new = w.record.runs_in_progress().find(|r| r.token == w.claim.token);
        prop_assert!(new.is_some_and(|r| r.holder == ME && r.period == w.claim.period));
        prop_assert_eq!(w.claim.started_at_ms, c.now);
    }

    #[test]
    fn only_a_dead_run_is_taken_over_and_only_at_least_once(c in case()) {
        let d = decide(&c);
        let Some(w) = d.write.filter(|w| w.takeover) else { return Ok(()) };
        prop_assert_eq!(c.task.mode, RunMode::AtLeastOnce);
        // The oldest dead run, same period, the next token; nothing else changes.
        let old = c.rec.runs_in_progress().find(|r| is_dead(&c, r));
        prop_assert!(old.is_some());
        let old = old.unwrap_or_else(|| unreachable!());
        prop_assert_eq!(w.claim.period, old.period);
        prop_assert_eq!(w.claim.token, c.rec.token + 1);
        prop_assert_eq!(w.record.last_period, c.rec.last_period);
        let others = |r: &TaskRecord, skip: u64| {
            r.runs_in_progress().filter(|x| x.token != skip).cloned().collect::<Vec<_>>()
        };
        prop_assert_eq!(others(&w.record, w.claim.token), others(&c.rec, old.token));
        prop_assert_eq!(&w.record.last_run, &c.rec.last_run);
    }

    #[test]
    fn at_least_once_always_takes_over_a_dead_run_before_claiming(c in case()) {
        let any_dead = c.rec.runs_in_progress().any(|r| is_dead(&c, r));
        let d = decide(&c);
        if c.task.mode == RunMode::AtLeastOnce && any_dead {
            prop_assert!(d.write.is_some_and(|w| w.takeover));
        }
    }

    #[test]
    fn at_most_once_never_runs_a_dead_run_again(c in case()) {
        let d = decide(&c);
        if c.task.mode != RunMode::AtMostOnce {
            return Ok(());
        }
        let Some(w) = d.write else { return Ok(()) };
        prop_assert!(!w.takeover);
        // Dead runs are gone from the runs in progress; the live ones are kept as they were.
        for r in c.rec.runs_in_progress() {
            let kept = w.record.runs_in_progress().any(|x| x == r);
            prop_assert_eq!(kept, !is_dead(&c, r), "run {:?}", r);
        }
        // The last run ended is the latest of the old one and the abandoned runs.
        let latest = c.rec.last_run.iter()
            .chain(c.rec.runs_in_progress().filter(|r| is_dead(&c, r)))
            .map(|r| r.period)
            .max();
        prop_assert_eq!(w.record.last_run.as_ref().map(|r| r.period), latest);
    }

    #[test]
    fn no_claim_beyond_the_runs_in_progress_allowed(c in case()) {
        let d = decide(&c);
        let live = c.rec.runs_in_progress().filter(|r| !is_dead(&c, r)).count();
        let all = c.rec.runs_in_progress().count();
        let in_progress = if c.task.mode == RunMode::AtMostOnce { live } else { all };
        let room = in_progress < MAX_RUNS_IN_PROGRESS
            && (in_progress == 0 || c.task.allow_overlap);
        if let Some(w) = d.write.as_ref().filter(|w| !w.takeover) {
            prop_assert!(room);
            prop_assert!(w.record.runs_in_progress().count() <= MAX_RUNS_IN_PROGRESS);
        }
        // Nothing written: either nothing is due, or the due period waits (blocked).
        if d.write.is_none() {
            prop_assert_eq!(d.blocked, due(&c).is_some());
            prop_assert_eq!(d.blocked, due(&c).is_some() && !room);
        }
        if d.blocked {
            prop_assert!(d.write.is_none());
            prop_assert_eq!(d.watch, c.dead.recheck);
        }
    }

    #[test]
    fn runs_are_watched_as_their_mode_needs(c in case()) {
        let d = decide(&c);
        match (c.task.mode, d.blocked) {
            (RunMode::AtLeastOnce, _) | (_, true) => prop_assert_eq!(d.watch, c.dead.recheck),
            (RunMode::AtMostOnce, false) => prop_assert_eq!(d.watch, None),
        }
    }

    #[test]
    fn a_paused_task_claims_no_period_and_keeps_its_pause(c in case()) {
        let mut c = c;
        c.rec.paused = Some(crate::task::record::Pause { by: "op".into(), at_ms: 1 });
        let d = decide(&c);
        prop_assert!(d.paused || d.write.as_ref().is_some_and(|w| w.takeover));
        if let Some(w) = d.write {
            // Only the takeover of a dead at-least-once run, claimed before the pause.
            prop_assert!(w.takeover);
            prop_assert_eq!(w.record.last_period, c.rec.last_period);
            prop_assert_eq!(&w.record.paused, &c.rec.paused);
        }
        // Unpaused, the same case decides as before pauses existed.
        c.rec.paused = None;
        prop_assert!(!decide(&c).paused);
    }

    #[test]
    fn records_keep_their_shape(c in case()) {
        let Some(w) = decide(&c).write else { return Ok(()) };
        let runs: Vec<_> = w.record.runs_in_progress().collect();
        prop_assert!(runs.windows(2).all(|p| (p[0].period, p[0].token) < (p[1].period, p[1].token)));
        // While runs overlap, each has a heartbeat, and only runs in progress have one.
        if runs.len() > 1 {
            prop_assert!(runs.iter().all(|r| w.record.heartbeats.iter().any(|h| h.token == r.token)));
        }
        prop_assert!(w.record.heartbeats.iter().all(|h| runs.iter().any(|r| r.token == h.token)));
        prop_assert!(w.record.token > c.rec.token || c.version.is_none());
    }

    #[test]
    fn the_decision_depends_on_its_inputs_alone(c in case(), extra in any::<u64>()) {
        prop_assert_eq!(decide(&c), decide(&c));
        // A token reported dead that is no run in progress changes nothing.
        if c.rec.runs_in_progress().all(|r| r.token != extra) {
            let mut more = c.clone();
            more.dead.tokens.push(extra);
            prop_assert_eq!(decide(&more), decide(&c));
        }
    }
}

#[test]
fn a_taken_over_run_keeps_its_period_and_the_live_one_goes_on() {
    let t = task(1000, MisfirePolicy::RunLatest, RunMode::AtLeastOnce, true);
    let run = |period, token| RunInfo {
        period,
        holder: "other".into(),
        token,
        started_at_ms: period,
        finished_at_ms: None,
        outcome: None,
    };
    let mut rec = TaskRecord {
        last_period: Some(2000),
        token: 11,
        ..TaskRecord::default()
    };
    rec.put_runs(vec![run(1000, 10), run(2000, 11)]);
    let dead = DeadRuns {
        tokens: vec![10],
        recheck: None,
    };
    let d = plan(&t, ME, 2500, rec, Some(Version::from_raw(1)), &dead);
    let w = d.write.expect("a takeover");
    assert!(w.takeover);
    assert_eq!((w.claim.period, w.claim.token), (1000, 12));
    let runs: Vec<_> = w
        .record
        .runs_in_progress()
        .map(|r| (r.period, r.token))
        .collect();
    assert_eq!(runs, vec![(1000, 12), (2000, 11)]);
}

/// A run-now request waiting on a record whose period is claimed.
fn requested(forced: bool, paused: bool) -> TaskRecord {
    TaskRecord {
        last_period: Some(2000),
        token: 11,
        paused: paused.then(|| crate::task::record::Pause {
            by: "op".into(),
            at_ms: 1,
        }),
        requests: vec![crate::task::record::RunRequest {
            id: "r1".into(),
            by: "op".into(),
            at_ms: 2100,
            forced,
            token: None,
        }],
        ..TaskRecord::default()
    }
}

#[test]
fn a_run_now_request_is_claimed_as_a_run_of_its_own_unless_paused() {
    let t = task(1000, MisfirePolicy::RunLatest, RunMode::AtMostOnce, false);
    let v = Some(Version::from_raw(1));
    let none = DeadRuns::default();
    let d = plan(&t, ME, 2500, requested(false, false), v, &none);
    let w = d.write.expect("the request is claimed");
    assert_eq!(w.claim.trigger.as_deref(), Some("r1"));
    assert_eq!((w.claim.period, w.claim.token), (2500, 12));
    assert_eq!(
        w.record.last_period,
        Some(2000),
        "the schedule is untouched"
    );
    assert_eq!(w.record.requests[0].token, Some(12));
    assert_eq!(w.record.running.as_ref().map(|r| r.token), Some(12));
    // Claimed: nothing more is due until the next period.
    let mut ended = w.record;
    ended.running = None;
    assert!(plan(&t, ME, 2600, ended, v, &none).write.is_none());
    // A due period goes first; the request waits for its run (no overlap).
    let d = plan(&t, ME, 3100, requested(false, false), v, &none);
    let w = d.write.expect("the period");
    assert_eq!((w.claim.period, w.claim.trigger), (3000, None));
    let d = plan(&t, ME, 3200, w.record, v, &none);
    assert!(d.write.is_none() && d.blocked, "{d:?}");
    // Paused: only a forced request runs.
    let d = plan(&t, ME, 2500, requested(false, true), v, &none);
    assert!(d.write.is_none() && d.paused);
    let d = plan(&t, ME, 3100, requested(true, true), v, &none);
    let w = d.write.expect("the forced request");
    assert_eq!(w.claim.trigger.as_deref(), Some("r1"));
    assert_eq!(w.record.last_period, Some(2000), "no period while paused");
}

#[test]
fn a_dead_requested_run_is_taken_over_as_its_request() {
    let t = task(1000, MisfirePolicy::RunLatest, RunMode::AtLeastOnce, false);
    let v = Some(Version::from_raw(1));
    let w = plan(
        &t,
        "other",
        2500,
        requested(false, false),
        v,
        &DeadRuns::default(),
    )
    .write
    .expect("claimed");
    let dead = DeadRuns {
        tokens: vec![12],
        recheck: None,
    };
    let w = plan(&t, ME, 2600, w.record, v, &dead)
        .write
        .expect("taken over");
    assert!(w.takeover);
    assert_eq!((w.claim.period, w.claim.token), (2500, 13));
    assert_eq!(w.claim.trigger.as_deref(), Some("r1"));
    assert_eq!(w.record.requests[0].token, Some(13));
    // For the history: the first run was taken over, for its request.
    let h = &w.ended;
    assert_eq!(h.len(), 1);
    assert_eq!(
        (h[0].token, &h[0].outcome),
        (12, &crate::task::record::Outcome::TakenOver)
    );
    assert_eq!(
        (h[0].holder.as_str(), h[0].trigger.as_deref()),
        ("other", Some("r1"))
    );
    assert_eq!(h[0].finished_at_ms, 2600);
}
