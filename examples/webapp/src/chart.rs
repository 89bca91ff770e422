//! The status page's "last minute" section: the headline figures and a small SVG chart,
//! drawn on the server into the page (no script, no external asset). Above, the session
//! cache's hit ratio per second (bars); below, cache and database latency p50 and p99 per
//! second (lines, log scale). Every bar and point has a `<title>`, which browsers show on
//! hover.

use std::fmt::Write;

use crate::window::{Minute, Percentiles, Second, SECONDS};

const WIDTH: f64 = 480.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 470.0;
const RATIO_TOP: f64 = 10.0;
const RATIO_BOTTOM: f64 = 60.0;
const LATENCY_TOP: f64 = 80.0;
const LATENCY_BOTTOM: f64 = 170.0;
const HEIGHT: f64 = 215.0;
/// Latencies below this (seconds) are drawn at it: a log scale has no zero.
const FLOOR: f64 = 1e-6;

const HIT_COLOUR: &str = "#2a7d2a";

/// A latency series: what it reads from a second, its element id and legend, its look.
struct Series {
    id: &'static str,
    label: &'static str,
    colour: &'static str,
    dashed: bool,
    pick: fn(&Second) -> Option<(f64, u64)>,
}

const SERIES: [Series; 4] = [
    Series {
        id: "cache-p50",
        label: "cache p50",
        colour: "#3b6fd4",
        dashed: false,
        pick: |s| s.cache.map(|p| (p.p50, p.count)),
    },
    Series {
        id: "cache-p99",
        label: "cache p99",
        colour: "#3b6fd4",
        dashed: true,
        pick: |s| s.cache.map(|p| (p.p99, p.count)),
    },
    Series {
        id: "db-p50",
        label: "database p50",
        colour: "#c0561b",
        dashed: false,
        pick: |s| s.database.map(|p| (p.p50, p.count)),
    },
    Series {
        id: "db-p99",
        label: "database p99",
        colour: "#c0561b",
        dashed: true,
        pick: |s| s.database.map(|p| (p.p99, p.count)),
    },
];

/// A duration in seconds as milliseconds with about three significant digits.
fn ms(seconds: f64) -> String {
    let ms = seconds * 1000.0;
    if ms < 1.0 {
        format!("{ms:.3} ms")
    } else if ms < 10.0 {
        format!("{ms:.2} ms")
    } else if ms < 100.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

/// `10^d` seconds as milliseconds, with as many decimals as it needs.
fn decade_label(d: i32) -> String {
    let e = d + 3;
    if e >= 0 {
        format!("{} ms", 10u64.saturating_pow(e.unsigned_abs()))
    } else {
        format!("{:.*} ms", e.unsigned_abs() as usize, 10f64.powi(e))
    }
}

fn latency_text(p: Option<Percentiles>, what: &str) -> String {
    match p {
        Some(p) => format!("{} / {} ({} {what})", ms(p.p50), ms(p.p99), p.count),
        None => format!("no {what}"),
    }
}

/// The x of a second `age` seconds old (oldest at the left).
fn x_of(age: u64) -> f64 {
    let span = (SECONDS - 1) as f64;
    LEFT + (span - age.min(SECONDS - 1) as f64) * (RIGHT - LEFT) / span
}

/// The decades (powers of ten, in seconds) the latency panel spans: those of the data,
/// at least one.
fn decades(m: &Minute) -> (i32, i32) {
    let values = m
        .seconds
        .iter()
        .flat_map(|s| SERIES.iter().filter_map(move |series| (series.pick)(s)))
        .map(|(v, _)| v.max(FLOOR).log10());
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !lo.is_finite() {
        return (-4, -2); // 0.1 ms to 10 ms: an empty panel still has a scale
    }
    let lo = lo.floor() as i32;
    let hi = (hi.ceil() as i32).max(lo + 1);
    (lo, hi)
}

/// The "last minute" section of the status page.
pub(crate) fn section(m: &Minute) -> String {
    let ratio = match m.hit_ratio() {
        Some(r) => format!("{:.0} % of {} session loads", r * 100.0, m.hits + m.misses),
        None => "no session loads".into(),
    };
    let mut out = format!(
        "<h2>Last minute</h2><table>\
         <tr><td>session cache hit ratio</td><td id=\"hit-ratio\">{ratio}</td></tr>\
         <tr><td>cache latency p50 / p99</td><td id=\"cache-latency\">{}</td></tr>\
         <tr><td>database latency p50 / p99</td><td id=\"db-latency\">{}</td></tr></table>",
        latency_text(m.cache, "operations"),
        latency_text(m.database, "calls"),
    );
    out.push_str(&svg(m));
    out
}

fn svg(m: &Minute) -> String {
    let mut s = String::new();
    // `write!` into a String cannot fail.
    let _ = write!(
        s,
        "<svg id=\"last-minute\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" \
         height=\"{HEIGHT}\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\" \
         font-family=\"sans-serif\" font-size=\"10\">\
         <title>Session cache hit ratio and latency percentiles, last {SECONDS} s</title>"
    );
    // Frames and axis labels.
    for (top, bottom) in [(RATIO_TOP, RATIO_BOTTOM), (LATENCY_TOP, LATENCY_BOTTOM)] {
        let _ = write!(
            s,
            "<rect x=\"{LEFT}\" y=\"{top}\" width=\"{w}\" height=\"{h}\" fill=\"none\" stroke=\"#ccc\"/>",
            w = RIGHT - LEFT,
            h = bottom - top
        );
    }
    let _ = write!(
        s,
        "<text x=\"{lx}\" y=\"{t}\" text-anchor=\"end\">100 %</text>\
         <text x=\"{lx}\" y=\"{b}\" text-anchor=\"end\">0 %</text>\
         <text x=\"{lx}\" y=\"{mid}\" text-anchor=\"end\">hits</text>",
        lx = LEFT - 4.0,
        t = RATIO_TOP + 8.0,
        b = RATIO_BOTTOM,
        mid = (RATIO_TOP + RATIO_BOTTOM) / 2.0 + 4.0,
    );
    let (lo, hi) = decades(m);
    let y_of = |seconds: f64| {
        let f = (seconds.max(FLOOR).log10() - f64::from(lo)) / f64::from(hi - lo);
        LATENCY_BOTTOM - f * (LATENCY_BOTTOM - LATENCY_TOP)
    };
    for d in lo..=hi {
        let y = y_of(10f64.powi(d));
        let _ = write!(
            s,
            "<line x1=\"{LEFT}\" x2=\"{RIGHT}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#eee\"/>\
             <text x=\"{lx}\" y=\"{ty:.1}\" text-anchor=\"end\">{label}</text>",
            lx = LEFT - 4.0,
            ty = y + 3.0,
            label = decade_label(d),
        );
    }
    for (age, text) in [(SECONDS - 1, format!("-{SECONDS} s")), (0, "now".into())] {
        let _ = write!(
            s,
            "<text x=\"{x:.1}\" y=\"{y}\" text-anchor=\"middle\">{text}</text>",
            x = x_of(age),
            y = LATENCY_BOTTOM + 12.0
        );
    }
    if m.seconds.is_empty() {
        let _ = write!(
            s,
            "<text x=\"{x}\" y=\"{y}\" text-anchor=\"middle\" fill=\"#888\">no traffic in the last minute</text>",
            x = (LEFT + RIGHT) / 2.0,
            y = (LATENCY_TOP + LATENCY_BOTTOM) / 2.0
        );
    }

    // Hit ratio: one bar per second with lookups (at least a pixel high, so 0 % shows).
    let bar = (RIGHT - LEFT) / SECONDS as f64 * 0.8;
    let _ = write!(s, "<g id=\"hit-ratio-bars\" fill=\"{HIT_COLOUR}\">");
    for sec in &m.seconds {
        if let Some(r) = sec.hit_ratio() {
            let h = (r * (RATIO_BOTTOM - RATIO_TOP)).max(1.0);
            let _ = write!(
                s,
                "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{bar:.1}\" height=\"{h:.1}\">\
                 <title>{age} s ago: {hits} hits, {misses} misses</title></rect>",
                x = x_of(sec.age) - bar / 2.0,
                y = RATIO_BOTTOM - h,
                age = sec.age,
                hits = sec.hits,
                misses = sec.misses,
            );
        }
    }
    s.push_str("</g>");

    // Latency: a line and a point per second for each series.
    for series in &SERIES {
        let points: Vec<(u64, f64, u64)> = m
            .seconds
            .iter()
            .filter_map(|sec| (series.pick)(sec).map(|(v, n)| (sec.age, v, n)))
            .collect();
        let _ = write!(
            s,
            "<g id=\"{id}\" stroke=\"{c}\" fill=\"{c}\">",
            id = series.id,
            c = series.colour
        );
        let line: Vec<String> = points
            .iter()
            .map(|&(age, v, _)| format!("{:.1},{:.1}", x_of(age), y_of(v)))
            .collect();
        let _ = write!(
            s,
            "<polyline fill=\"none\" stroke-width=\"1.5\"{dash} points=\"{pts}\"/>",
            dash = if series.dashed {
                " stroke-dasharray=\"4 3\""
            } else {
                ""
            },
            pts = line.join(" ")
        );
        for &(age, v, n) in &points {
            let _ = write!(
                s,
                "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"2.5\">\
                 <title>{age} s ago: {label} {val} ({n} samples)</title></circle>",
                x = x_of(age),
                y = y_of(v),
                label = series.label,
                val = ms(v),
            );
        }
        s.push_str("</g>");
    }

    // Legend.
    let mut x = LEFT;
    let legend_y = HEIGHT - 6.0;
    let _ = write!(
        s,
        "<rect x=\"{x}\" y=\"{ry}\" width=\"8\" height=\"8\" fill=\"{HIT_COLOUR}\"/>\
         <text x=\"{tx}\" y=\"{legend_y}\">hit ratio</text>",
        ry = legend_y - 8.0,
        tx = x + 11.0
    );
    x += 62.0;
    for series in &SERIES {
        let _ = write!(
            s,
            "<line x1=\"{x}\" x2=\"{x2}\" y1=\"{ly}\" y2=\"{ly}\" stroke=\"{c}\" stroke-width=\"1.5\"{dash}/>\
             <text x=\"{tx}\" y=\"{legend_y}\">{label}</text>",
            x2 = x + 14.0,
            ly = legend_y - 4.0,
            c = series.colour,
            dash = if series.dashed {
                " stroke-dasharray=\"4 3\""
            } else {
                ""
            },
            tx = x + 17.0,
            label = series.label,
        );
        x += 17.0 + 6.0 * series.label.len() as f64 + 10.0;
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::window::{Latency, Lookup, Window};

    #[test]
    fn one_bar_and_one_point_per_second_with_data() {
        let w = Window::new();
        w.count_at(100, Lookup::Hit, 3);
        w.count_at(100, Lookup::Miss, 1);
        w.count_at(120, Lookup::Miss, 2);
        w.count_at(125, Lookup::Hit, 0);
        w.record_at(100, Latency::Cache, 0.0004);
        w.record_at(120, Latency::Cache, 0.0008);
        w.record_at(120, Latency::Database, 0.02);
        let html = section(&w.read_at(130));
        assert!(html.contains("<td id=\"hit-ratio\">50 % of 6 session loads</td>"));
        assert_eq!(
            html.matches("<rect x=").count(),
            2 + 2 + 1,
            "frames, bars, legend"
        );
        assert!(html.contains("<title>30 s ago: 3 hits, 1 misses</title>"));
        // Two cache points for each cache series, one database point for each.
        let between = |a: &str, b: &str| {
            let start = html.find(a).unwrap();
            let end = start + html[start..].find(b).unwrap();
            html[start..end].matches("<circle").count()
        };
        assert_eq!(between("id=\"cache-p50\"", "</g>"), 2);
        assert_eq!(between("id=\"cache-p99\"", "</g>"), 2);
        assert_eq!(between("id=\"db-p50\"", "</g>"), 1);
        assert_eq!(between("id=\"db-p99\"", "</g>"), 1);
        // The scale spans 0.1 ms to 100 ms: the data's decades.
        assert!(html.contains(">0.1 ms</text>") && html.contains(">100 ms</text>"));
        assert!(!html.contains("no traffic"));
    }

    #[test]
    fn an_empty_minute_says_so() {
        let html = section(&Window::new().read_at(5));
        assert!(html.contains("no traffic in the last minute"));
        assert!(html.contains("<td id=\"hit-ratio\">no session loads</td>"));
        assert!(!html.contains("<circle"));
    }
}
