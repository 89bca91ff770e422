//! When periodic tasks are due: schedules (intervals, cron expressions in a time zone) and
//! the syntax operators write them in.

use std::fmt;
use std::time::Duration;

use larder_cache_api::{Error, ErrorKind, Result};

use crate::quote::quoted;

#[cfg(feature = "cron")]
use crate::zoned_cron::CronSchedule;

/// When a task is due. Each period is named by the instant it starts, in milliseconds since
/// the Unix epoch (UTC), so every process that shares a task names its periods alike.
///
/// A cron schedule reads its expression on the wall clock of a time zone
/// (`Schedule::cron_in`, feature `cron`). Where that clock jumps forward (a gap), the times it skips fire
/// once, at the first instant after the gap; where it goes back (an overlap), a time fires
/// once, at its first occurrence, unless the hour field matches every hour, which keeps
/// hourly and more frequent schedules on real time. The details and an example day are on
/// `CronSchedule`.
#[derive(Clone)]
pub enum Schedule {
    /// Every interval, aligned on the Unix epoch (period `n` starts at `n × interval`).
    Every(Duration),
    /// At the times of a cron expression (with seconds: `"0 */5 * * * *"`) on the wall clock
    /// of a time zone, UTC unless given ([`Schedule::cron_in`]); what happens when that clock
    /// jumps is on [`CronSchedule`]. Feature `cron`.
    #[cfg(feature = "cron")]
    Cron(Box<CronSchedule>),
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Every(d) => write!(f, "Every({d:?})"),
            #[cfg(feature = "cron")]
            Schedule::Cron(c) => write!(f, "Cron({c:?})"),
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
    let shown = || quoted(s);
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

    /// A cron schedule (seconds field included) in UTC, checked: an invalid expression is an
    /// [`ErrorKind::Config`] error.
    #[cfg(feature = "cron")]
    pub fn cron(expr: &str) -> Result<Self> {
        Self::cron_in(expr, "UTC")
    }

    /// A cron schedule (seconds field included) on the wall clock of the IANA time zone
    /// `zone`, checked: an unknown zone or an invalid expression (a field out of range, such
    /// as second 60) is an [`ErrorKind::Config`] error that says which. How daylight-saving
    /// changes are handled: [`CronSchedule`].
    ///
    /// ```
    /// use larder_coord::Schedule;
    /// use larder_cache_api::ErrorKind;
    ///
    /// // 02:30 in Paris: 00:30 UTC in summer, 01:30 UTC in winter.
    /// let nightly = Schedule::cron_in("0 30 2 * * *", "Europe/Paris")?;
    /// let winter = 1_767_225_600_000; // 2026-01-01T00:00:00Z
    /// assert_eq!(nightly.next(winter), Some(winter + 5_400_000)); // 01:30 UTC
    ///
    /// let err = Schedule::cron_in("0 30 2 * * *", "Europe/Pariss").unwrap_err();
    /// assert_eq!(err.kind(), ErrorKind::Config);
    /// assert!(err.message().contains("unknown time zone"));
    /// assert_eq!(Schedule::cron_in("60 * * * * *", "UTC").unwrap_err().kind(), ErrorKind::Config);
    /// # Ok::<(), larder_cache_api::Error>(())
    /// ```
    #[cfg(feature = "cron")]
    pub fn cron_in(expr: &str, zone: &str) -> Result<Self> {
        CronSchedule::new(expr, zone).map(|c| Schedule::Cron(Box::new(c)))
    }

    /// A schedule as an operator writes it in a configuration file or on a command line: an
    /// interval ([`parse_interval`]: `30s`, `5m`, `1d`), or a cron expression with seconds
    /// (`0 30 2 * * *`, UTC), optionally preceded by `CRON_TZ=<IANA zone>` for a time zone
    /// (`CRON_TZ=Europe/Paris 0 30 2 * * *`, the prefix cronie and Go's cron use). Anything
    /// else is an [`ErrorKind::Config`] error; no input panics. Cron needs feature `cron`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use larder_coord::Schedule;
    ///
    /// assert!(matches!(Schedule::parse("5m")?, Schedule::Every(d) if d == Duration::from_secs(300)));
    /// # #[cfg(feature = "cron")] {
    /// let Schedule::Cron(c) = Schedule::parse("CRON_TZ=Europe/Paris 0 30 2 * * *")? else {
    ///     unreachable!()
    /// };
    /// assert_eq!((c.expression(), c.time_zone()), ("0 30 2 * * *", "Europe/Paris"));
    /// assert!(Schedule::parse("CRON_TZ=Mars/Olympus 0 30 2 * * *").is_err());
    /// # }
    /// assert!(Schedule::parse("every now and then").is_err());
    /// # Ok::<(), larder_cache_api::Error>(())
    /// ```
    pub fn parse(text: &str) -> Result<Self> {
        let text = text.trim();
        #[cfg(feature = "cron")]
        if let Some(rest) = text.strip_prefix("CRON_TZ=") {
            let (zone, expr) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
            return Self::cron_in(expr.trim(), zone);
        }
        // An interval is one word; a cron expression has six or seven.
        if !text.contains(char::is_whitespace) {
            return parse_interval(text).and_then(Schedule::every);
        }
        #[cfg(feature = "cron")]
        return Self::cron(text);
        #[cfg(not(feature = "cron"))]
        Err(Error::new(
            ErrorKind::Config,
            format!(
                "{} is not an interval (and cron expressions need the `cron` feature)",
                quoted(text)
            ),
        ))
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
            Schedule::Cron(c) => c.latest(now_ms),
        }
    }

    /// The period after the one starting at `period`.
    pub fn next(&self, period: i64) -> Option<i64> {
        match self {
            Schedule::Every(d) => period.checked_add(i64::try_from(d.as_millis()).ok()?),
            #[cfg(feature = "cron")]
            Schedule::Cron(c) => c.next(period),
        }
    }

    /// The period before the one starting at `period`.
    pub(crate) fn prev(&self, period: i64) -> Option<i64> {
        match self {
            Schedule::Every(d) => period.checked_sub(i64::try_from(d.as_millis()).ok()?),
            #[cfg(feature = "cron")]
            Schedule::Cron(c) => c.latest(period.checked_sub(1)?),
        }
    }
}

impl std::str::FromStr for Schedule {
    type Err = Error;

    /// [`Schedule::parse`].
    fn from_str(s: &str) -> Result<Self> {
        Schedule::parse(s)
    }
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
