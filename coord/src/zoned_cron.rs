//! Cron expressions read on the wall clock of an IANA time zone, and the instants they fire
//! at across daylight-saving changes. Feature `cron`.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, LocalResult, NaiveDateTime, Offset, TimeZone};
use chrono_tz::{GapInfo, Tz};
use cron::TimeUnitSpec;
use larder_cache_api::{Error, ErrorKind, Result};

use crate::quote::quoted;

/// A cron expression (with a seconds field) read on the wall clock of a time zone: the
/// schedule of a [`Schedule::Cron`](crate::Schedule::Cron). Build it with
/// [`Schedule::cron`](crate::Schedule::cron) (UTC), [`Schedule::cron_in`](crate::Schedule::cron_in)
/// or [`Schedule::parse`](crate::Schedule::parse).
///
/// Each period is named by the instant it starts (ms since the Unix epoch, UTC), computed
/// from the expression, the zone and the zone database built into this crate (`chrono-tz`,
/// IANA release [`chrono_tz::IANA_TZDB_VERSION`]); processes that share a task must agree on
/// all three, so build them from the same release (a later release may move a transition that
/// a government changed, and with it the periods around it).
///
/// # Daylight-saving changes
///
/// The expression matches wall-clock times of the zone. Where the wall clock is not one-to-one
/// with real time:
///
/// * **A gap** (the clock jumps forward: in `Europe/Paris` on 29 March 2026, 02:00 CET is
///   followed by 03:00 CEST, and 02:00–02:59:59 never happens): the matching times of the
///   gap fire **once, all together, at the first instant after the gap** (03:00 CEST,
///   01:00 UTC; one run also when 03:00 itself matches). A daily `0 30 2 * * *` runs at
///   03:00 CEST that day; `0 0 * * * *` runs at 01:00 CET then 03:00 CEST, one hour of real
///   time apart.
/// * **An overlap** (the clock goes back: on 25 October 2026, 03:00 CEST is followed by 02:00
///   CET, and 02:00–02:59:59 happens twice): a matching time fires **once, at its first
///   occurrence** (CEST), so a daily `0 30 2 * * *` runs at 02:30 CEST (00:30 UTC) and not
///   again an hour later. **Except when the hour field matches every hour** (`*`, `*/1`,
///   `0-23`): such an expression means "every hour", and it also fires at the second
///   occurrence, so `0 0 * * * *` and `0 */30 * * * *` keep running every hour and every half
///   hour of real time through the change. ISC (Vixie) cron treats the repeated hour much
///   the same way: jobs at fixed times once, jobs with a wildcard on the new clock.
///
/// Both are tested on a real scheduler in `tests/tests/coord_schedules.rs` (the exact runs of a
/// daily, an hourly and a half-hourly task across both 2026 changes in `Europe/Paris`), and
/// the arithmetic on many zones and instants by the property tests of this module.
#[derive(Clone)]
pub struct CronSchedule {
    expr: cron::Schedule,
    tz: Tz,
    /// The hour field matches every hour: repeated wall times fire twice (see above).
    every_hour: bool,
}

impl fmt::Debug for CronSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} in {}", self.expr, self.tz.name())
    }
}

impl CronSchedule {
    /// `expr` in the IANA zone named `zone` (`"Europe/Paris"`, `"UTC"`); a
    /// [`ErrorKind::Config`] error names what is wrong with either.
    pub(crate) fn new(expr: &str, zone: &str) -> Result<Self> {
        let tz = Tz::from_str(zone.trim()).map_err(|_| {
            Error::new(
                ErrorKind::Config,
                format!(
                    "unknown time zone {}: an IANA name such as Europe/Paris, America/New_York or UTC",
                    quoted(zone)
                ),
            )
        })?;
        let expr = cron::Schedule::from_str(expr).map_err(|e| {
            Error::new(
                ErrorKind::Config,
                format!(
                    "invalid cron expression {}: {e} (six or seven fields: sec min hour \
                     day-of-month month day-of-week [year], e.g. \"0 30 2 * * *\")",
                    quoted(expr)
                ),
            )
            .with_source(e)
        })?;
        let every_hour = expr.hours().is_all();
        Ok(CronSchedule {
            expr,
            tz,
            every_hour,
        })
    }

    /// The expression as written.
    pub fn expression(&self) -> &str {
        self.expr.source()
    }

    /// The IANA name of the zone.
    pub fn time_zone(&self) -> &str {
        self.tz.name()
    }

    /// The cron crate's schedule.
    pub fn as_cron(&self) -> &cron::Schedule {
        &self.expr
    }

    /// The zone's offset at instant `t` (ms).
    fn offset(&self, t: i64) -> i64 {
        let t = instant(t);
        let utc = DateTime::from_timestamp_millis(t).unwrap_or_default();
        i64::from(
            self.tz
                .offset_from_utc_datetime(&utc.naive_utc())
                .fix()
                .local_minus_utc(),
        ) * 1000
    }

    /// The wall-clock time of instant `t`, as ms on a clock without changes.
    fn wall(&self, t: i64) -> i64 {
        let t = instant(t);
        t + self.offset(t)
    }

    /// The instants a wall-clock time names: one, two (an overlap) or none (a gap).
    fn resolve(&self, wall: i64) -> LocalResult<i64> {
        self.tz
            .from_local_datetime(&naive(wall))
            .map(|t| t.timestamp_millis())
    }

    /// The first matching wall-clock time after `wall`.
    fn wall_after(&self, wall: i64) -> Option<i64> {
        let at = cron_time(wall)?;
        self.expr.after(&at).next().map(|t| t.timestamp_millis())
    }

    /// The last matching wall-clock time at or before `wall`.
    fn wall_at_or_before(&self, wall: i64) -> Option<i64> {
        // The iterator starts after `wall + 1 ms`; stepping back gives the last time at or
        // before `wall`.
        let at = cron_time(wall.checked_add(1)?)?;
        self.expr
            .after(&at)
            .next_back()
            .map(|t| t.timestamp_millis())
    }

    /// The instant a matching wall-clock time fires at first: itself, its first occurrence,
    /// or the first instant after the gap it falls in.
    fn first_fire(&self, wall: i64) -> Option<i64> {
        match self.resolve(wall) {
            LocalResult::Single(t) => Some(t),
            LocalResult::Ambiguous(first, _) => Some(first),
            LocalResult::None => GapInfo::new(&naive(wall), &self.tz)
                .and_then(|g| g.end)
                .map(|t| t.timestamp_millis()),
        }
    }

    /// The overlap that the two occurrences `first < second` of one wall-clock time fall in.
    fn overlap(&self, first: i64, second: i64) -> Overlap {
        let before = self.offset(first);
        let after = self.offset(second);
        // The change is the first instant with the later offset: halve until found.
        let (mut lo, mut hi) = (first, second);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if self.offset(mid) == before {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Overlap {
            change: hi,
            start_wall: hi + after,
            end_wall: hi + before,
            after,
        }
    }

    /// The first instant the schedule fires at after `t`.
    pub(crate) fn next(&self, t: i64) -> Option<i64> {
        let t = instant(t);
        let wall = self.wall(t);
        let (first, second) = match self.resolve(wall) {
            LocalResult::Ambiguous(a, b) => (a, b),
            // Outside any overlap, first occurrences come in the order of their wall times,
            // and no repeat can come before the next one (see `latest`).
            _ => return self.wall_after(wall).and_then(|w| self.first_fire(w)),
        };
        let ov = self.overlap(first, second);
        let (primary, repeat) = if t >= ov.change {
            // `t` is in the repeated hour: every first occurrence before its end has passed,
            // and the repeats still to come follow `t`'s wall time.
            (self.wall_after(ov.end_wall - 1), self.wall_after(wall))
        } else {
            // Before the change: the repeats of the overlap all come after `t`.
            (self.wall_after(wall), self.wall_after(ov.start_wall - 1))
        };
        let primary = primary.and_then(|w| self.first_fire(w));
        let repeat = repeat
            .filter(|w| self.every_hour && *w < ov.end_wall)
            .map(|w| w - ov.after);
        primary.into_iter().chain(repeat).min()
    }

    /// The last instant the schedule fires at, at or before `t`.
    pub(crate) fn latest(&self, t: i64) -> Option<i64> {
        let t = instant(t);
        let wall = self.wall(t);
        // In the repeated hour, wall times up to the end of the overlap fired first before
        // the change; only their repeats may fire after it.
        let in_repeat = match self.resolve(wall) {
            LocalResult::Ambiguous(first, second) => {
                Some(self.overlap(first, second)).filter(|ov| t >= ov.change)
            }
            _ => None,
        };
        let bound = in_repeat.as_ref().map_or(wall, |ov| ov.end_wall - 1);
        let w = self.wall_at_or_before(bound)?;
        let mut best = self.first_fire(w)?;
        if self.every_hour {
            // The latest wall time fired again after an earlier change...
            if let LocalResult::Ambiguous(_, second) = self.resolve(w) {
                if second <= t {
                    best = best.max(second);
                }
            }
            // ...or in the repeated hour `t` is in.
            if let Some(ov) = in_repeat {
                if let Some(w) = self.wall_at_or_before(wall).filter(|w| *w >= ov.start_wall) {
                    best = best.max(w - ov.after);
                }
            }
        }
        Some(best)
    }
}

/// A span of wall-clock time that happens twice.
struct Overlap {
    /// The instant the clock goes back.
    change: i64,
    /// The first and last-plus-one wall times that repeat.
    start_wall: i64,
    end_wall: i64,
    /// The offset after the change (ms).
    after: i64,
}

/// Instants are clamped to two days around the years cron fires in (1970 to 2100), so that
/// any offset (at most a day) keeps wall times within what chrono holds; the clamp changes no
/// answer.
fn instant(ms: i64) -> i64 {
    const TWO_DAYS: i64 = 2 * 86_400_000;
    ms.clamp(BEFORE_1970 - TWO_DAYS, END_OF_2100 + TWO_DAYS)
}

fn naive(wall: i64) -> NaiveDateTime {
    DateTime::from_timestamp_millis(instant(wall))
        .unwrap_or_default()
        .naive_utc()
}

const BEFORE_1970: i64 = -86_400_000;
const END_OF_2100: i64 = 4_133_980_799_999;

/// `ms` as a time for the cron crate, clamped to 1969-12-31 ..= the last millisecond of 2100
/// (UTC). Cron fires only in 1970 to 2100, so the clamp changes no answer, and the crate's own
/// arithmetic (`± 1 s`) overflows, and panics, near the ends of what chrono can hold (and
/// looking back from 2101 it misses 2100's times).
fn cron_time(ms: i64) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp_millis(ms.clamp(BEFORE_1970, END_OF_2100))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    fn utc(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
    }

    fn fires(c: &CronSchedule, from: i64, to: i64) -> Vec<i64> {
        let mut out = Vec::new();
        let mut t = from - 1;
        while let Some(n) = c.next(t).filter(|n| *n < to) {
            out.push(n);
            t = n;
        }
        out
    }

    const HOUR: i64 = 3_600_000;

    /// The runs of the example: a 02:30 job on both 2026 change days in Paris runs
    /// once each day; hourly and half-hourly jobs keep to real time.
    #[test]
    fn paris_2026() {
        let nightly = CronSchedule::new("0 30 2 * * *", "Europe/Paris").unwrap();
        let hourly = CronSchedule::new("0 0 * * * *", "Europe/Paris").unwrap();
        let half = CronSchedule::new("0 */30 * * * *", "Europe/Paris").unwrap();
        for (from, to, want) in [
            (
                "2026-03-28T00:00:00Z",
                "2026-03-31T00:00:00Z",
                [
                    "2026-03-28T01:30:00Z", // 02:30 CET
                    "2026-03-29T01:00:00Z", // 02:30 does not exist: 03:00 CEST
                    "2026-03-30T00:30:00Z", // 02:30 CEST
                ],
            ),
            (
                "2026-10-24T00:00:00Z",
                "2026-10-27T00:00:00Z",
                [
                    "2026-10-24T00:30:00Z", // 02:30 CEST
                    "2026-10-25T00:30:00Z", // 02:30 CEST, the first of two
                    "2026-10-26T01:30:00Z", // 02:30 CET
                ],
            ),
        ] {
            let (from, to) = (utc(from), utc(to));
            let want: Vec<i64> = want.iter().map(|s| utc(s)).collect();
            assert_eq!(fires(&nightly, from, to), want);
            let every_hour: Vec<i64> = (from..to).step_by(HOUR as usize).collect();
            assert_eq!(fires(&hourly, from, to), every_hour);
            let every_half: Vec<i64> = (from..to).step_by(HOUR as usize / 2).collect();
            assert_eq!(fires(&half, from, to), every_half);
            // The period containing each minute is the last fire at or before it.
            for c in [&nightly, &hourly, &half] {
                let all = fires(c, from - 2 * 86_400_000, to);
                for t in (from..to).step_by(60_000) {
                    let last = all.iter().copied().filter(|f| *f <= t).max();
                    assert_eq!(c.latest(t), last, "{c:?} at {t}");
                }
            }
        }
    }

    /// The zone database holds changes past 2037 (where some stop): Paris still changes in
    /// 2090, on the last Sundays of March and October.
    #[test]
    fn changes_continue_past_2037() {
        let paris = CronSchedule::new("0 30 2 * * *", "Europe/Paris").unwrap();
        assert_eq!(
            paris.next(utc("2090-03-25T12:00:00Z")),
            Some(utc("2090-03-26T01:00:00Z"))
        );
        assert_eq!(
            paris.next(utc("2090-10-28T12:00:00Z")),
            Some(utc("2090-10-29T00:30:00Z"))
        );
        assert_eq!(
            paris.next(utc("2090-10-29T00:30:00Z")),
            Some(utc("2090-10-30T01:30:00Z"))
        );
    }

    #[test]
    fn bad_zones_and_expressions_are_config_errors() {
        for (expr, zone, says) in [
            (
                "0 30 2 * * *",
                "Europe/Pariss",
                "unknown time zone \"Europe/Pariss\"",
            ),
            ("0 30 2 * * *", "", "unknown time zone"),
            ("0 30 2 * * *", "+01:00", "unknown time zone"),
            (
                "60 * * * * *",
                "UTC",
                "invalid cron expression \"60 * * * * *\"",
            ),
            ("0 60 * * * *", "UTC", "invalid cron expression"),
            ("0 0 24 * * *", "UTC", "invalid cron expression"),
            ("", "UTC", "invalid cron expression"),
        ] {
            let e = CronSchedule::new(expr, zone).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Config);
            assert!(e.message().contains(says), "{}", e.message());
        }
        let long = "x".repeat(10_000);
        let e = CronSchedule::new("0 * * * * *", &long).unwrap_err();
        assert!(e.message().len() < 200, "the echo is bounded");
    }

    /// Zones with every kind of change: summer time (north and south), 30-minute summer time
    /// (Lord Howe), 45-minute offsets (Chatham), two-hour summer time (Troll), negative summer
    /// time (Dublin's winter), changes at midnight (São Paulo until 2019), a skipped day
    /// (Apia, 30 December 2011).
    const ZONES: &[&str] = &[
        "Europe/Paris",
        "America/New_York",
        "Australia/Sydney",
        "Australia/Lord_Howe",
        "Pacific/Chatham",
        "Antarctica/Troll",
        "Europe/Dublin",
        "America/Sao_Paulo",
        "Pacific/Apia",
    ];

    /// With how many days of wall time around an instant they surely fire.
    const EXPRS: &[(&str, i64)] = &[
        ("0 30 2 * * *", 2),
        ("0 0 * * * *", 2),
        ("0 */30 * * * *", 2),
        ("0 15 1-3 * * *", 2),
        ("0 0 0 * * *", 2),
        ("0 */20 * * * *", 2),
        ("0 30 1 * * Sun", 9),
        ("30 59 23 * * *", 2),
    ];

    /// Every change of offset of each of [`ZONES`] in 1995–2040, computed once.
    fn changes_of(zone: usize) -> &'static [i64] {
        static ALL: std::sync::OnceLock<Vec<Vec<i64>>> = std::sync::OnceLock::new();
        &ALL.get_or_init(|| {
            ZONES
                .iter()
                .map(|z| changes(&CronSchedule::new("0 0 0 * * *", z).unwrap()))
                .collect()
        })[zone]
    }

    fn changes(tz: &CronSchedule) -> Vec<i64> {
        let mut out = Vec::new();
        let (mut t, end) = (utc("1995-01-01T00:00:00Z"), utc("2040-01-01T00:00:00Z"));
        while t < end {
            let next = t + 86_400_000 / 4;
            if tz.offset(t) != tz.offset(next) {
                let (mut lo, mut hi) = (t, next);
                while hi - lo > 1 {
                    let mid = lo + (hi - lo) / 2;
                    if tz.offset(mid) == tz.offset(t) {
                        lo = mid;
                    } else {
                        hi = mid;
                    }
                }
                out.push(hi);
            }
            t = next;
        }
        out
    }

    /// The fire instants by their definition: every matching wall time in a window, mapped
    /// one by one (single: itself; twice: the first, and the second too when the hour field
    /// is `*`; in a gap: the end of the gap).
    fn by_definition(c: &CronSchedule, around: i64, days: i64) -> BTreeSet<i64> {
        let wall = c.wall(around);
        let from = DateTime::from_timestamp_millis(wall - days * 86_400_000).unwrap();
        let to = wall + days * 86_400_000;
        let mut out = BTreeSet::new();
        for w in c.expr.after(&from).map(|t| t.timestamp_millis()) {
            if w > to {
                break;
            }
            match c.resolve(w) {
                LocalResult::Single(t) => {
                    out.insert(t);
                }
                LocalResult::Ambiguous(a, b) => {
                    out.insert(a);
                    if c.every_hour {
                        out.insert(b);
                    }
                }
                LocalResult::None => {
                    let end = GapInfo::new(&naive(w), &c.tz).unwrap().end.unwrap();
                    out.insert(end.timestamp_millis());
                }
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Near every change of offset of every zone, `next` and `latest` give the fires of
        /// the definition, for expressions of every kind.
        #[test]
        fn next_and_latest_agree_with_the_definition(
            zone in 0..ZONES.len(),
            expr in 0..EXPRS.len(),
            pick in any::<prop::sample::Index>(),
            shift in -4 * HOUR..4 * HOUR,
        ) {
            let (e, days) = EXPRS[expr];
            let c = CronSchedule::new(e, ZONES[zone]).unwrap();
            let all = changes_of(zone);
            prop_assume!(!all.is_empty());
            let t = all[pick.index(all.len())] + shift;
            let defined = by_definition(&c, t, days);
            let next = defined.range(t + 1..).next().copied();
            let latest = defined.range(..=t).next_back().copied();
            prop_assert_eq!(c.next(t), next, "next({}) of {:?}", t, c);
            prop_assert_eq!(c.latest(t), latest, "latest({}) of {:?}", t, c);
        }
    }
}
