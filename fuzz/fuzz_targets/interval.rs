//! Intervals as operators write them (`larder tasks status --every`, configuration) and
//! schedules built from any duration, cron text, time zone name or schedule text
//! (`Schedule::parse`): every size is a `Config` error or a schedule, and a schedule's
//! arithmetic never panics at any clock reading.
#![no_main]

use std::time::Duration;

use arbitrary::Arbitrary;
use larder_cache_api::ErrorKind;
use larder_coord::{parse_interval, Schedule};
use libfuzzer_sys::fuzz_target;

const CENTURY: Duration = Duration::from_secs(100 * 366 * 24 * 3600);

#[derive(Debug, Arbitrary)]
enum Now {
    Any(i64),
    Near(u8, i16),
}

impl Now {
    fn ms(&self) -> i64 {
        match *self {
            Now::Any(v) => v,
            // Readings at the ends of what clocks, chrono and i64 hold.
            Now::Near(which, off) => {
                let base = match which % 6 {
                    0 => i64::MIN,
                    1 => i64::MAX,
                    2 => 0,
                    3 => chrono::DateTime::<chrono::Utc>::MAX_UTC.timestamp_millis(),
                    4 => chrono::DateTime::<chrono::Utc>::MIN_UTC.timestamp_millis(),
                    _ => 1_700_000_000_000,
                };
                base.saturating_add(i64::from(off))
            }
        }
    }
}

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    text: &'a str,
    secs: u64,
    nanos: u32,
    now: Now,
    /// Valid expressions ([`KNOWN`]), so the schedule arithmetic gets the mutations, or text.
    cron: Pick<'a>,
    /// Zones with daylight-saving changes of every kind ([`ZONES`]), or text.
    zone: Pick<'a>,
}

/// One of a list of valid inputs, or any text.
#[derive(Debug, Arbitrary)]
enum Pick<'a> {
    Known(u8),
    Text(&'a str),
}

impl<'a> Pick<'a> {
    fn pick(&self, known: &[&'a str]) -> &'a str {
        match *self {
            Pick::Known(i) => known[usize::from(i) % known.len()],
            Pick::Text(t) => t,
        }
    }
}

const ZONES: &[&str] = &[
    "UTC",
    "Europe/Paris",
    "Australia/Lord_Howe",
    "Antarctica/Troll",
    "Pacific/Apia",
    "America/Sao_Paulo",
];

const KNOWN: &[&str] = &[
    "* * * * * *",
    "0 */5 * * * *",
    "0 0 0 29 2 *",
    "0 0 12 * * Mon-Fri",
    "59 59 23 31 12 * 2099",
    "0 0 0 1 1 * 1970",
];

fn exercise(s: &Schedule, now: i64) {
    if let Some(p) = s.period_at(now) {
        assert!(p <= now, "{s:?}: period {p} after now {now}");
        if let Some(n) = s.next(p) {
            assert!(n > p, "{s:?}: next {n} not after {p}");
        }
    }
    let _ = s.next(now);
}

fuzz_target!(|input: Input<'_>| {
    match parse_interval(input.text) {
        Ok(d) => {
            assert!(d >= Duration::from_millis(1) && d <= CENTURY, "{d:?}");
            assert!(Schedule::every(d).is_ok());
        }
        Err(e) => assert_eq!(e.kind(), ErrorKind::Config, "{e}"),
    }
    let d = Duration::new(input.secs, input.nanos % 1_000_000_000);
    match Schedule::every(d) {
        Ok(s) => {
            assert!(d >= Duration::from_millis(1) && d <= CENTURY, "{d:?}");
            exercise(&s, input.now.ms());
        }
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::Config);
            assert!(d < Duration::from_millis(1) || d > CENTURY, "{d:?}: {e}");
        }
    }
    // Unchecked construction is allowed too: its arithmetic must not panic either.
    exercise(&Schedule::Every(d), input.now.ms());
    let cron = input.cron.pick(KNOWN);
    match Schedule::cron(cron) {
        Ok(s) => exercise(&s, input.now.ms()),
        Err(e) => assert_eq!(e.kind(), ErrorKind::Config),
    }
    let zone = input.zone.pick(ZONES);
    match Schedule::cron_in(cron, zone) {
        Ok(s) => exercise(&s, input.now.ms()),
        Err(e) => assert_eq!(e.kind(), ErrorKind::Config),
    }
    match Schedule::parse(input.text) {
        Ok(s) => exercise(&s, input.now.ms()),
        Err(e) => assert_eq!(e.kind(), ErrorKind::Config),
    }
});
