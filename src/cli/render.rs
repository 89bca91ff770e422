//! How the commands print: aligned tables, times and durations.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use larder_coord::RunInfo;

pub(super) fn run_info(r: &RunInfo) -> String {
    let outcome = match &r.outcome {
        None => "running".to_owned(),
        Some(Ok(())) => "ok".to_owned(),
        Some(Err(e)) => format!(
            "failed: {}",
            e.split_whitespace().collect::<Vec<_>>().join(" ")
        ),
    };
    format!(
        "{} #{} {} {} {}",
        r.holder,
        r.token,
        ts(r.started_at_ms),
        r.finished_at_ms.map_or("-".to_owned(), ts),
        outcome
    )
}

/// The runs in progress: the latest, then how many earlier ones still run (tasks that allow
/// overlap) with their tokens, so a stuck earlier run is visible.
pub(super) fn running(latest: Option<&RunInfo>, earlier: &[RunInfo]) -> String {
    let Some(latest) = latest else {
        return "-".to_owned();
    };
    let mut s = run_info(latest);
    if !earlier.is_empty() {
        let tokens: Vec<String> = earlier.iter().map(|r| format!("#{}", r.token)).collect();
        let _ = write!(s, " (+{} earlier: {})", earlier.len(), tokens.join(" "));
    }
    s
}

pub(super) fn table(out: &mut String, rows: &[Vec<String>]) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = widths[c]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

pub(super) fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

pub(super) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Milliseconds since the epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC).
pub(super) fn ts(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let milli = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{milli:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// `500ms`, `30s`, `5m`, `2h`, `1d`, or plain seconds: [`larder_coord::parse_interval`], so
/// `--every` accepts exactly the intervals a schedule accepts.
pub(super) fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    larder_coord::parse_interval(s).map_err(|e| e.message().to_owned())
}

/// An interval or a cron expression, optionally in a time zone:
/// [`larder_coord::Schedule::parse`], so `--schedule` accepts exactly what a configuration does.
pub(super) fn parse_schedule(s: &str) -> std::result::Result<larder_coord::Schedule, String> {
    larder_coord::Schedule::parse(s).map_err(|e| e.message().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(token: u64) -> RunInfo {
        RunInfo {
            period: 0,
            holder: "a@h:1".into(),
            token,
            started_at_ms: 0,
            finished_at_ms: None,
            outcome: None,
        }
    }

    #[test]
    fn overlapping_runs_are_listed_with_their_tokens() {
        assert_eq!(running(None, &[]), "-");
        assert_eq!(
            running(Some(&run(9)), &[]),
            "a@h:1 #9 1970-01-01T00:00:00.000Z - running"
        );
        assert_eq!(
            running(Some(&run(9)), &[run(7), run(8)]),
            "a@h:1 #9 1970-01-01T00:00:00.000Z - running (+2 earlier: #7 #8)"
        );
    }

    #[test]
    fn timestamps_are_utc() {
        assert_eq!(ts(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(ts(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(ts(1_700_000_000_000), "2023-11-14T22:13:20.000Z");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(
            parse_duration("18446744073709551615d").is_err(),
            "overflow is an error"
        );
        assert!(parse_duration("99999999999999999999999").is_err());
        assert!(
            parse_duration("18446744073709551615s").is_err(),
            "beyond 100 years is refused here, not later by the scheduler"
        );
    }
}
