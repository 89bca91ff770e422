//! What a fault run's tables prove: the figures of the summary line, and the assertions.

use std::collections::{BTreeMap, BTreeSet};

use crate::run::Pause;
use crate::tables::Written;
use crate::{CATCH_UP, PERIOD_MS};

/// What the run measured, for the summary line.
#[derive(Debug, Default)]
pub(crate) struct Figures {
    pub(crate) runs: usize,
    pub(crate) duplicate_claims: usize,
    pub(crate) out_of_order_fenced: usize,
    pub(crate) failovers_ms: Vec<i64>,
    pub(crate) lost_control_updates: i64,
    pub(crate) stale_writes_refused: usize,
    pub(crate) refused_total: i64,
    pub(crate) missing_periods: Vec<i64>,
    pub(crate) missing_tokens: usize,
    pub(crate) terms: i64,
    /// (down, up, first run after up) per store outage.
    pub(crate) outages: Vec<(i64, i64, i64)>,
}

/// The figures, and what breaks (or is allowed by) the guarantees.
pub(crate) struct Verdict {
    pub(crate) figures: Figures,
    duplicates: Vec<i64>,
    pause_failures: Vec<String>,
    by_kill: usize,
    unexplained: Vec<i64>,
    control: i64,
    attempts: i64,
    kills: Vec<i64>,
    pauses: usize,
}

impl Verdict {
    /// Judges what the nodes wrote, given the faults: `figures` holds the failovers and the
    /// outages measured during the run.
    pub(crate) fn judge(
        mut figures: Figures,
        w: &Written,
        pauses: &[Pause],
        kills: Vec<i64>,
    ) -> Self {
        let claims = &w.claims;
        figures.runs = claims.len();
        let mut per_period: BTreeMap<i64, usize> = BTreeMap::new();
        for (period, ..) in claims {
            *per_period.entry(*period).or_default() += 1;
        }
        let duplicates: Vec<i64> = per_period
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(p, _)| *p)
            .collect();
        figures.duplicate_claims = duplicates.len();

        // Fenced writes, in commit (id) order: tokens never go back.
        let mut highest = i64::MIN;
        for (_, token, ..) in &w.fenced {
            if *token < highest {
                figures.out_of_order_fenced += 1;
            }
            highest = highest.max(*token);
        }
        figures.refused_total = w.refused.len() as i64;

        let pause_failures = pause_failures(&mut figures, w, pauses);

        // Missing periods between the first and the last claim.
        let (first, last) = (
            *per_period.keys().next().unwrap(),
            *per_period.keys().next_back().unwrap(),
        );
        figures.missing_periods = (0..)
            .map(|i| first + i * PERIOD_MS)
            .take_while(|p| *p <= last)
            .filter(|p| !per_period.contains_key(p))
            .collect();
        let tokens: BTreeSet<i64> = claims.iter().map(|c| c.2).collect();
        let (tmin, tmax) = (
            *tokens.iter().next().unwrap(),
            *tokens.iter().next_back().unwrap(),
        );
        figures.missing_tokens = (tmin..=tmax).filter(|t| !tokens.contains(t)).count();
        // When the backend answered again after each outage: the first run started after it.
        for o in &mut figures.outages {
            o.2 = claims
                .iter()
                .map(|c| c.3)
                .filter(|at| *at >= o.1)
                .min()
                .unwrap_or(i64::MAX);
        }
        // What the guarantee allows to be missing:
        // * at most once: a node killed after claiming a period and before recording it takes
        //   that run with it (the period in which it was killed; it leaves a token gap);
        // * Redis: the claim in flight when the server died may have landed with its reply
        //   lost, and a period whose whole misfire window [p, p + 3 s) ended before the
        //   backend answered again can no longer be claimed.
        let mut by_kill = 0usize;
        let mut unexplained = Vec::new();
        for &p in &figures.missing_periods {
            if kills.iter().any(|&k| p <= k && k < p + PERIOD_MS) {
                by_kill += 1;
            } else if figures.outages.iter().any(|&(down, _, back)| {
                (p <= down && down < p + PERIOD_MS)
                    || (p >= down - PERIOD_MS && p + CATCH_UP * PERIOD_MS <= back)
            }) {
                // allowed for Redis
            } else {
                unexplained.push(p);
            }
        }

        figures.lost_control_updates = w.attempts - w.control;
        figures.terms = w.terms;
        Verdict {
            figures,
            duplicates,
            pause_failures,
            by_kill,
            unexplained,
            control: w.control,
            attempts: w.attempts,
            kills,
            pauses: pauses.len(),
        }
    }

    /// The summary line.
    pub(crate) fn report(&self, backend: &str, schema: &str) {
        let figures = &self.figures;
        println!(
            "coord_faults[{backend}]: schema={schema} runs={} duplicate_claims={} out_of_order_fenced={} \
             worst_failover_ms={} failovers_ms={:?} lost_control_updates={} (control {} of {} attempts) \
             stale_writes_refused={} refused_total={} missing_periods={} (kill {}, outage {}) \
             missing_tokens={} terms={} pauses={} outages_ms={:?}",
            figures.runs,
            figures.duplicate_claims,
            figures.out_of_order_fenced,
            figures.failovers_ms.iter().max().unwrap(),
            figures.failovers_ms,
            figures.lost_control_updates,
            self.control,
            self.attempts,
            figures.stale_writes_refused,
            figures.refused_total,
            figures.missing_periods.len(),
            self.by_kill,
            figures.missing_periods.len() - self.by_kill - self.unexplained.len(),
            figures.missing_tokens,
            figures.terms,
            self.pauses,
            figures
                .outages
                .iter()
                .map(|(d, u, b)| (u - d, b - u))
                .collect::<Vec<_>>(),
        );
    }

    /// Every guarantee held, and the faults really happened.
    pub(crate) fn assert_holds(&self) {
        let figures = &self.figures;
        let Verdict {
            duplicates,
            pause_failures,
            by_kill,
            unexplained,
            control,
            attempts,
            kills,
            ..
        } = self;
        assert!(figures.runs >= 15, "too few runs: {}", figures.runs);
        assert!(
            duplicates.is_empty(),
            "periods claimed twice: {duplicates:?}"
        );
        assert_eq!(
            figures.out_of_order_fenced, 0,
            "accepted fenced writes went back in token order"
        );
        assert!(pause_failures.is_empty(), "{pause_failures:?}");
        assert!(
            unexplained.is_empty(),
            "periods never claimed although a node could reach the backend: {unexplained:?} \
             (kills at {kills:?}, outages {:?})",
            figures.outages
        );
        assert!(
            *by_kill <= kills.len() && *by_kill <= figures.missing_tokens,
            "{by_kill} periods lost to {} kills with {} token gaps",
            kills.len(),
            figures.missing_tokens
        );
        for (down, up, back) in &figures.outages {
            assert!(
                back - up <= 5000,
                "no run for {} ms after redis-server came back (down at {down})",
                back - up
            );
        }
        assert!(
            control < attempts,
            "the unfenced control lost no update ({control} of {attempts}): the pause did not \
             overlap runs, so the test proved nothing"
        );
    }
}

/// The paused nodes: every write one made after resuming with a token it held before the
/// pause was refused, and it made at least one. It was stopped inside its sleep, before its
/// fenced write, so any such write stamped after the stop was made after resuming (the node
/// may stamp it a few ms before the test's own `kill -CONT` returns).
fn pause_failures(figures: &mut Figures, w: &Written, pauses: &[Pause]) -> Vec<String> {
    let mut failures = Vec::new();
    for p in pauses {
        let stale: BTreeSet<i64> = w
            .claims
            .iter()
            .filter(|(_, h, _, at)| *h == p.holder && *at < p.stopped_ms)
            .map(|(_, _, t, _)| *t)
            .collect();
        let accepted: Vec<i64> = w
            .fenced
            .iter()
            .filter(|(_, t, h, at)| *h == p.holder && *at >= p.stopped_ms && stale.contains(t))
            .map(|(_, t, ..)| *t)
            .collect();
        let refused_here = w
            .refused
            .iter()
            .filter(|(t, h, at)| *h == p.holder && *at >= p.stopped_ms && stale.contains(t))
            .count();
        if !accepted.is_empty() {
            failures.push(format!(
                "{}: stale tokens {accepted:?} written after resuming",
                p.holder
            ));
        }
        if refused_here == 0 {
            failures.push(format!(
                "{}: no stale write attempted after resuming (token {})",
                p.holder, p.token
            ));
        }
        figures.stale_writes_refused += refused_here;
    }
    failures
}
