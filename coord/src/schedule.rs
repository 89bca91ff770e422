//! When periodic tasks are due: schedules (intervals, cron expressions) and the interval
//! syntax operators write.

use std::fmt;
use std::time::Duration;

use larder_cache_api::{Error, ErrorKind, Result};

/// When a task is due.
#[derive(Clone)]
pub enum Schedule {
    /// Every interval, aligned on the Unix epoch (period `n` starts at `n × interval`).
    Every(Duration),
    /// At the times of a cron expression (with seconds: `"0 */5 * * * *"`), UTC. Feature
    /// `cron`.
    #[cfg(feature = "cron")]
    Cron(Box<cron::Schedule>),
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Every(d) => write!(f, "Every({d:?})"),
            #[cfg(feature = "cron")]
            Schedule::Cron(c) => write!(f, "Cron({c})"),
        }
    }
}

/// The longest interval a schedule accepts.
const MAX_INTERVAL: Duration = Duration::from_secs(100 * 366 * 24 * 3600);

/// Parses an interval as an operator writes it: a whole number followed by `ms`, `s`, `m`,
/// `h` or `d`, or by nothing for seconds (`500ms`, `30s`, `5m`, `2h`, `1d`, `90`). Anything
/// else, and any interval a [`Schedule::every`] would refuse (zero, beyond 100 years, a
/// number too large to hold), is an [`ErrorKind::Config`] error; no input panics.
///
/// ```
/// use std::time::Duration;
/// use larder_coord::parse_interval;
///
/// assert_eq!(parse_interval("5m")?, Duration::from_secs(300));
/// assert_eq!(parse_interval("250ms")?, Duration::from_millis(250));
/// assert!(parse_interval("0s").is_err());
/// assert!(parse_interval("18446744073709551615d").is_err());
/// # Ok::<(), larder_cache_api::Error>(())
/// ```
pub fn parse_interval(text: &str) -> Result<Duration> {
    let s = text.trim();
    let shown = || {
        // Echo a bounded prefix only: the text may be arbitrarily long.
        let mut end = s.len().min(40);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{:?}{}", &s[..end], if end < s.len() { "…" } else { "" })
    };
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let per_ms: u64 = match unit {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                "{} is not an interval: a whole number with ms, s, m, h or d (e.g. 500ms, 30s, 5m)",
                shown()
            ),
            ))
        }
    };
    let too_long = || {
        Error::new(
            ErrorKind::Config,
            format!("interval {} is longer than 100 years", shown()),
        )
    };
    if num.is_empty() {
        return Err(Error::new(
            ErrorKind::Config,
            format!("{} is not an interval: it has no number", shown()),
        ));
    }
    // All digits: a parse failure can only be a number too large for u64.
    let n: u64 = num.parse().map_err(|_| too_long())?;
    let ms = n.checked_mul(per_ms).ok_or_else(too_long)?;
    let d = Duration::from_millis(ms);
    if d > MAX_INTERVAL {
        return Err(too_long());
    }
    Schedule::every(d)?;
    Ok(d)
}

impl Schedule {
    /// `Schedule::Every(interval)`, checked: an interval shorter than 1 ms or longer than
    /// 100 years is an [`ErrorKind::Config`] error (building the variant directly defers that
    /// check to [`Scheduler::with_task`](crate::Scheduler::with_task)).
    ///
    /// ```
    /// use std::time::Duration;
    /// use larder_coord::Schedule;
    /// use larder_cache_api::ErrorKind;
    ///
    /// assert!(Schedule::every(Duration::from_secs(60)).is_ok());
    /// assert_eq!(Schedule::every(Duration::ZERO).unwrap_err().kind(), ErrorKind::Config);
    /// assert_eq!(Schedule::every(Duration::MAX).unwrap_err().kind(), ErrorKind::Config);
    /// ```
    pub fn every(interval: Duration) -> Result<Self> {
        let s = Schedule::Every(interval);
        s.check()?;
        Ok(s)
    }

    /// A cron schedule (seconds field included), checked.
    #[cfg(feature = "cron")]
    pub fn cron(expr: &str) -> Result<Self> {
        use std::str::FromStr;
        cron::Schedule::from_str(expr)
            .map(|s| Schedule::Cron(Box::new(s)))
            .map_err(|e| {
                Error::new(
                    ErrorKind::Config,
                    format!("invalid cron expression {expr:?}"),
                )
                .with_source(e)
            })
    }

    pub(crate) fn check(&self) -> Result<()> {
        match self {
            Schedule::Every(d) if d.as_millis() == 0 => Err(Error::new(
                ErrorKind::Config,
                "a task interval must be at least 1 ms",
            )),
            // Periods are milliseconds since the epoch in an i64: beyond a century the
            // arithmetic has no room, and no deployment waits that long.
            Schedule::Every(d) if *d > MAX_INTERVAL => Err(Error::new(
                ErrorKind::Config,
                format!("a task interval must be at most 100 years, not {d:?}"),
            )),
            _ => Ok(()),
        }
    }

    /// The period that contains `now_ms`, named by its start (ms since the epoch).
    pub fn period_at(&self, now_ms: i64) -> Option<i64> {
        match self {
            Schedule::Every(d) => {
                let i = i64::try_from(d.as_millis()).ok().filter(|i| *i > 0)?;
                now_ms.div_euclid(i).checked_mul(i)
            }
            #[cfg(feature = "cron")]
            Schedule::Cron(c) => {
                let now = cron_time(now_ms)?;
                // The iterator starts after `now + 1 ms`; stepping back gives the last fire
                // time at or before `now`.
                let after = now.checked_add_signed(chrono::Duration::milliseconds(1))?;
                c.after(&after).next_back().map(|t| t.timestamp_millis())
            }
        }
    }

    /// The period after the one starting at `period`.
    pub fn next(&self, period: i64) -> Option<i64> {
        match self {
            Schedule::Every(d) => period.checked_add(i64::try_from(d.as_millis()).ok()?),
            #[cfg(feature = "cron")]
            Schedule::Cron(c) => {
                let at = cron_time(period)?;
                c.after(&at).next().map(|t| t.timestamp_millis())
            }
        }
    }

    /// The period before the one starting at `period`.
    pub(crate) fn prev(&self, period: i64) -> Option<i64> {
        match self {
            Schedule::Every(d) => period.checked_sub(i64::try_from(d.as_millis()).ok()?),
            #[cfg(feature = "cron")]
            Schedule::Cron(c) => {
                let at = cron_time(period)?;
                c.after(&at).next_back().map(|t| t.timestamp_millis())
            }
        }
    }
}

/// `ms` as a time for the cron crate, clamped to 1969-12-31 ..= the last millisecond of 2100
/// (UTC). Cron fires only in 1970 to 2100, so the clamp changes no answer, and the crate's own
/// arithmetic (`± 1 s`) overflows, and panics, near the ends of what chrono can hold (and
/// looking back from 2101 it misses 2100's times).
#[cfg(feature = "cron")]
fn cron_time(ms: i64) -> Option<chrono::DateTime<chrono::Utc>> {
    const BEFORE_1970: i64 = -86_400_000;
    const END_OF_2100: i64 = 4_133_980_799_999;
    chrono::DateTime::from_timestamp_millis(ms.clamp(BEFORE_1970, END_OF_2100))
}

#[cfg(test)]
mod interval_props {
    use proptest::prelude::*;

    use super::*;

    fn in_range(d: Duration) -> bool {
        d >= Duration::from_millis(1) && d <= MAX_INTERVAL
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn any_text_is_an_interval_or_a_config_error(s in "\\PC{0,24}|[0-9]{1,25}(ms|s|m|h|d|)") {
            match parse_interval(&s) {
                Ok(d) => {
                    prop_assert!(in_range(d), "{s:?} -> {d:?}");
                    prop_assert!(Schedule::every(d).is_ok());
                }
                Err(e) => prop_assert_eq!(e.kind(), ErrorKind::Config),
            }
        }

        #[test]
        fn numbers_with_units_mean_what_they_say(
            n in prop_oneof![0u64..100_000, any::<u64>()],
            (unit, ms) in prop_oneof![
                Just(("ms", 1u128)), Just(("s", 1_000)), Just(("", 1_000)),
                Just(("m", 60_000)), Just(("h", 3_600_000)), Just(("d", 86_400_000)),
            ],
        ) {
            let want = u128::from(n) * ms;
            let got = parse_interval(&format!("{n}{unit}"));
            if want >= 1 && want <= MAX_INTERVAL.as_millis() {
                prop_assert_eq!(got.unwrap().as_millis(), want);
            } else {
                prop_assert_eq!(got.unwrap_err().kind(), ErrorKind::Config);
            }
        }

        #[test]
        fn schedules_of_any_size(secs in any::<u64>(), nanos in 0u32..1_000_000_000, now in any::<i64>()) {
            let d = Duration::new(secs, nanos);
            match Schedule::every(d) {
                Ok(s) => {
                    prop_assert!(in_range(d));
                    if let Some(p) = s.period_at(now) {
                        prop_assert!(p <= now);
                        let _ = s.next(p);
                        let _ = s.prev(p);
                    }
                }
                Err(e) => {
                    prop_assert!(!in_range(d));
                    prop_assert_eq!(e.kind(), ErrorKind::Config);
                }
            }
            // Built directly, unchecked: the arithmetic must still not panic.
            let s = Schedule::Every(d);
            let _ = (s.period_at(now), s.next(now), s.prev(now));
        }
    }
}

#[cfg(all(test, feature = "cron"))]
mod cron_edges {
    use super::*;

    /// Found by fuzzing schedules: at the last millisecond chrono can hold, `period_at`
    /// panicked with "`DateTime + TimeDelta` overflowed".
    #[test]
    fn cron_arithmetic_at_the_ends_of_time() {
        let s = Schedule::cron("* * * * * *").unwrap();
        let max = chrono::DateTime::<chrono::Utc>::MAX_UTC.timestamp_millis();
        let min = chrono::DateTime::<chrono::Utc>::MIN_UTC.timestamp_millis();
        for now in [max, max - 1, min, min + 1, i64::MAX, i64::MIN, 0] {
            let _ = s.period_at(now);
            let _ = s.next(now);
            let _ = s.prev(now);
        }
        // The clamp changes no answer: cron fires only in 1970 to 2100.
        let last = Schedule::cron("59 59 23 31 12 *").unwrap();
        // The last fire there is, 2100-12-31T23:59:59Z, seen from any later time.
        let final_fire = last.period_at(4_133_980_799_999);
        assert_eq!(final_fire, Some(4_133_980_799_000));
        assert_eq!(last.period_at(max), final_fire);
        assert_eq!(last.period_at(i64::MAX), final_fire);
        assert_eq!(last.next(final_fire.unwrap()), None);
        assert_eq!(last.next(min), Some(31_535_999_000), "1970-12-31T23:59:59Z");
    }
}

#[cfg(test)]
mod interval_edges {
    use super::*;

    #[test]
    fn period_arithmetic_at_the_ends_of_i64() {
        let s = Schedule::Every(Duration::from_secs(1));
        assert_eq!(s.prev(i64::MIN), None);
        assert_eq!(s.next(i64::MAX), None);
        assert_eq!(s.period_at(i64::MIN), None);
        assert_eq!(s.period_at(i64::MAX), Some(i64::MAX - i64::MAX % 1000));
    }
}
