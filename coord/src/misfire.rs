//! What a periodic task does about periods whose start passed while nobody claimed them.

use std::time::Duration;

use larder_cache_api::{Error, ErrorKind, Result};

use crate::schedule::Schedule;

/// What a task does about **missed periods**: periods that started while no process could
/// claim them (every process was down, or the task's previous run was still going and the
/// task does not [allow overlap](crate::TaskSpec::allow_overlap)). Set per task with
/// [`TaskSpec::misfire`](crate::TaskSpec::misfire); the default is
/// [`RunLatest`](MisfirePolicy::RunLatest).
///
/// Periods are named by their start ([`Schedule::period_at`]); the *current* period is the
/// one that contains now. After a task last claimed period `L`, the periods that have started
/// since are those after `L` up to the current one, and each policy claims, oldest first:
///
/// | policy | claims |
/// |---|---|
/// | `Skip { grace }` | the current period, only if it started at most `grace` ago; else nothing until the next one starts |
/// | `RunLatest` | the current period, however long ago it started (the others are skipped) |
/// | `RunEach { max }` | every period after `L` up to the current one, but only the latest `max` of them |
///
/// A task never claimed before (or whose record was lost) has no missed period: it claims the
/// current one (`Skip`: if within the grace). [`periods_to_claim`](Self::periods_to_claim)
/// computes the list; the scheduler claims its first element, and the next ones as they
/// become first, each by one compare-and-swap.
///
/// ```
/// use std::time::Duration;
/// use larder_coord::{MisfirePolicy, Schedule};
///
/// let hourly = Schedule::every(Duration::from_secs(3600))?;
/// let h = 3_600_000;
/// // Last claimed the period of 10:00; now it is 14:10: 11:00 to 14:00 were missed.
/// let (last, now) = (Some(10 * h), 14 * h + 600_000);
/// let claims = |p: MisfirePolicy| p.periods_to_claim(&hourly, last, now).collect::<Vec<_>>();
/// assert_eq!(claims(MisfirePolicy::Skip { grace: Duration::from_secs(60) }), Vec::<i64>::new());
/// assert_eq!(claims(MisfirePolicy::Skip { grace: Duration::from_secs(900) }), vec![14 * h]);
/// assert_eq!(claims(MisfirePolicy::RunLatest), vec![14 * h]);
/// assert_eq!(claims(MisfirePolicy::RunEach { max: 2 }), vec![13 * h, 14 * h]);
/// assert_eq!(claims(MisfirePolicy::RunEach { max: 10 }), vec![11 * h, 12 * h, 13 * h, 14 * h]);
/// # Ok::<(), larder_cache_api::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MisfirePolicy {
    /// Run a period only on time: within `grace` of its start (which covers the scheduler's
    /// poll interval and the other tasks it runs first). A period claimed later is skipped,
    /// and so is every missed one: the task waits for the next period to start.
    Skip {
        /// How late a period may still be claimed.
        grace: Duration,
    },
    /// Run the latest period that started, once, however late; skip the missed ones before
    /// it. The default.
    #[default]
    RunLatest,
    /// Run each missed period, oldest first, but no more than the latest `max` of them
    /// (which include the current one); earlier ones are skipped. At least 1
    /// ([`Scheduler::with_task`](crate::Scheduler::with_task) refuses 0). `RunEach { max: 1 }`
    /// is `RunLatest`.
    RunEach {
        /// How many periods at most, the current one included.
        max: u32,
    },
}

impl MisfirePolicy {
    /// The periods to claim now, oldest first, for a task on `schedule` that last claimed
    /// `last_claimed` (`None`: never), at `now_ms`. Empty when nothing is due. Pure: it reads
    /// neither clock nor store. Costs one step of schedule arithmetic per period it yields or
    /// looks back over (at most `max` for `RunEach`, one otherwise).
    pub fn periods_to_claim<'a>(
        &self,
        schedule: &'a Schedule,
        last_claimed: Option<i64>,
        now_ms: i64,
    ) -> DuePeriods<'a> {
        let none = DuePeriods {
            schedule,
            next: None,
            current: 0,
        };
        let Some(current) = schedule.period_at(now_ms) else {
            return none;
        };
        if last_claimed.is_some_and(|last| last >= current) {
            return none;
        }
        let first = match *self {
            MisfirePolicy::Skip { grace } => {
                let grace = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
                if now_ms.saturating_sub(current) > grace {
                    return none;
                }
                current
            }
            MisfirePolicy::RunLatest => current,
            MisfirePolicy::RunEach { max } => {
                // Look back from the current period over at most `max - 1` periods, and not
                // to the last claimed one.
                let mut first = current;
                if let Some(last) = last_claimed {
                    for _ in 1..max {
                        match schedule.prev(first) {
                            Some(p) if p > last => first = p,
                            _ => break,
                        }
                    }
                }
                first
            }
        };
        DuePeriods {
            schedule,
            next: Some(first),
            current,
        }
    }

    /// How many periods one pass of the scheduler may claim for the task.
    pub(crate) fn claims_per_pass(&self) -> u32 {
        match *self {
            MisfirePolicy::RunEach { max } => max.max(1),
            _ => 1,
        }
    }

    pub(crate) fn check(&self) -> Result<()> {
        match self {
            MisfirePolicy::RunEach { max: 0 } => Err(Error::new(
                ErrorKind::Config,
                "MisfirePolicy::RunEach needs max >= 1 (the current period counts)",
            )),
            _ => Ok(()),
        }
    }
}

/// The periods a [`MisfirePolicy`] claims now, oldest first
/// ([`MisfirePolicy::periods_to_claim`]).
#[derive(Debug, Clone)]
pub struct DuePeriods<'a> {
    schedule: &'a Schedule,
    next: Option<i64>,
    current: i64,
}

impl Iterator for DuePeriods<'_> {
    type Item = i64;

    fn next(&mut self) -> Option<i64> {
        let p = self.next?;
        self.next = self.schedule.next(p).filter(|n| *n <= self.current);
        Some(p)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use proptest::prelude::*;

    use super::*;

    fn schedules() -> Vec<Schedule> {
        let every = [
            Schedule::every(Duration::from_secs(60)).unwrap(),
            Schedule::every(Duration::from_millis(7)).unwrap(),
        ];
        #[cfg(feature = "cron")]
        let cron = [
            Schedule::cron_in("0 */30 * * * *", "Europe/Paris").unwrap(),
            Schedule::cron_in("0 30 2 * * *", "Europe/Paris").unwrap(),
        ];
        #[cfg(not(feature = "cron"))]
        let cron = [];
        every.into_iter().chain(cron).collect()
    }

    fn policy() -> impl Strategy<Value = MisfirePolicy> {
        prop_oneof![
            (0u64..7_200_000).prop_map(|ms| MisfirePolicy::Skip {
                grace: Duration::from_millis(ms)
            }),
            Just(MisfirePolicy::RunLatest),
            (1u32..20).prop_map(|max| MisfirePolicy::RunEach { max }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Whatever the policy, the last claim and the clock (around the 2026 changes in
        /// Paris): the periods claimed are consecutive periods after the last claimed one,
        /// ending with the current one, as many as the policy says.
        #[test]
        fn claims_are_the_latest_periods_since_the_last_claim(
            which in 0usize..4,
            policy in policy(),
            now in prop_oneof![
                1_774_656_000_000i64..1_774_915_200_000, // 28-30 March 2026
                1_792_800_000_000i64..1_793_059_200_000, // 24-26 October 2026
            ],
            back in prop_oneof![Just(None), (0i64..200_000_000).prop_map(Some)],
        ) {
            let all = schedules();
            let s = &all[which % all.len()];
            let current = s.period_at(now).unwrap();
            let last = back.map(|b| s.period_at(now - b).unwrap());
            let got: Vec<i64> = policy.periods_to_claim(s, last, now).collect();
            // The periods that started since the last claim, oldest first.
            let mut since = vec![current];
            if let Some(last) = last {
                while let Some(p) = s.prev(since[0]).filter(|p| *p > last) {
                    since.insert(0, p);
                    if since.len() > 25 {
                        break;
                    }
                }
                if last >= current {
                    since.clear();
                }
            }
            let want: Vec<i64> = match policy {
                MisfirePolicy::Skip { grace } if now - current <= grace.as_millis() as i64 => {
                    since.last().copied().into_iter().collect()
                }
                MisfirePolicy::Skip { .. } => vec![],
                MisfirePolicy::RunLatest => since.last().copied().into_iter().collect(),
                MisfirePolicy::RunEach { max } => {
                    let max = if last.is_some() { max as usize } else { 1 };
                    since[since.len().saturating_sub(max)..].to_vec()
                }
            };
            prop_assert_eq!(got, want);
        }
    }
}
