//! The rounds over every store, the contention runs, and the report: per-round lines, the
//! markdown table and the `ratio` lines.

use std::fmt::Write as _;
use std::time::Duration;

use larder_benches::harness::median;

use crate::app::Instance;
use crate::load::{contend, drive, new_session, Contention, Load, Op, Race};
use crate::stores::{instance, Env, Kind};
use crate::{CLIENTS, CONTENDERS, PER_CONTENDER};

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The 1-, 5- and 15-minute load averages as `/proc/loadavg` shows them (`?` elsewhere).
pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".to_owned())
}

/// One store under test: its first app instance (serving every round) and the sessions of
/// the read and write clients.
pub(crate) struct Stand {
    pub(crate) kind: Kind,
    pub(crate) a: Instance,
    pub(crate) cookies: Vec<String>,
    pub(crate) reads: Vec<Load>,
    pub(crate) writes: Vec<Load>,
}

impl Stand {
    pub(crate) async fn new(kind: Kind, env: &Env, client: &reqwest::Client) -> Stand {
        let a = instance(kind, env).await;
        let mut cookies = Vec::with_capacity(CLIENTS);
        for _ in 0..CLIENTS {
            cookies.push(new_session(client, &a.base).await);
        }
        Stand {
            kind,
            a,
            cookies,
            reads: Vec::new(),
            writes: Vec::new(),
        }
    }

    /// The median over the rounds of requests/s, p50 and p99, and all the errors.
    pub(crate) fn summary(loads: &[Load]) -> Load {
        let pick = |f: &dyn Fn(&Load) -> f64| median(&mut loads.iter().map(f).collect::<Vec<_>>());
        Load {
            rps: pick(&|l| l.rps),
            p50: Duration::from_secs_f64(pick(&|l| l.p50.as_secs_f64())),
            p99: Duration::from_secs_f64(pick(&|l| l.p99.as_secs_f64())),
            requests: loads.iter().map(|l| l.requests).sum(),
            errors: loads.iter().map(|l| l.errors).sum(),
            timeouts: loads.iter().map(|l| l.timeouts).sum(),
            cpu_per_request: Duration::from_secs_f64(pick(&|l| l.cpu_per_request.as_secs_f64())),
            pg_cpu_per_request: Duration::from_secs_f64(pick(&|l| {
                l.pg_cpu_per_request.as_secs_f64()
            })),
        }
    }
}

fn print_load(name: &str, what: &str, round: usize, l: &Load) {
    println!(
        "peers {name:<22} {what:<5} round {round}  {CLIENTS} clients  {:>8.0} req/s  \
         p50 {:>6.2} ms  p99 {:>6.2} ms  CPU µs/req: this process {:>4.0}, PostgreSQL {:>4.0}  \
         requests {}  errors {} (timeouts {})",
        l.rps,
        ms(l.p50),
        ms(l.p99),
        l.cpu_per_request.as_secs_f64() * 1e6,
        l.pg_cpu_per_request.as_secs_f64() * 1e6,
        l.requests,
        l.errors,
        l.timeouts
    );
}

/// Reads then writes on every stand, `rounds` times, the order rotated by one stand per
/// round so that no store always runs first or right after the same one.
pub(crate) async fn run_rounds(
    client: &reqwest::Client,
    admin: &sqlx::PgPool,
    stands: &mut [Stand],
    rounds: usize,
    ops: &[Op],
) {
    let n = stands.len();
    for round in 0..rounds {
        for i in 0..n {
            let s = &mut stands[(i + round) % n];
            for &op in ops {
                let load = drive(client, s, admin, op).await;
                match op {
                    Op::Read => {
                        print_load(s.kind.name(), "read", round, &load);
                        s.reads.push(load);
                    }
                    Op::Write => {
                        print_load(s.kind.name(), "write", round, &load);
                        s.writes.push(load);
                    }
                }
            }
        }
        println!("peers load average after round {round}: {}", load_average());
    }
}

/// larder / peer per round for each pair present, then the median of those ratios (and
/// their range), printed as `ratio` lines.
pub(crate) fn print_ratios(stands: &[Stand]) {
    let find = |k: Kind| stands.iter().find(|s| s.kind.name() == k.name());
    for (larder, peer) in Kind::PAIRS {
        let (Some(l), Some(p)) = (find(larder), find(peer)) else {
            continue;
        };
        for (what, lv, pv) in [
            ("read", &l.reads, &p.reads),
            ("write", &l.writes, &p.writes),
        ] {
            let per = |f: fn(&Load) -> Duration| {
                let mut r: Vec<f64> = lv
                    .iter()
                    .zip(pv)
                    // A side that used (next to) no CPU there has no ratio.
                    .filter(|(_, b)| f(b) >= Duration::from_micros(1))
                    .map(|(a, b)| f(a).as_secs_f64() / f(b).as_secs_f64())
                    .collect();
                if r.is_empty() {
                    "–".to_owned()
                } else {
                    format!("{:.3}", median(&mut r))
                }
            };
            let mut r: Vec<f64> = lv
                .iter()
                .zip(pv)
                .map(|(a, b)| a.rps / b.rps.max(1e-9))
                .collect();
            let each = r.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>();
            let med = median(&mut r);
            println!(
                "ratio peers {what:<5} {:>22} / {:<22} median {med:.3}  range {:.2}–{:.2}  \
                 per round [{}]",
                larder.name(),
                peer.name(),
                r.first().copied().unwrap_or(0.0),
                r.last().copied().unwrap_or(0.0),
                each.join(" ")
            );
            println!(
                "ratio peers {what:<5} {:>22} / {:<22} CPU per request, median: this process \
                 {}, PostgreSQL {}",
                larder.name(),
                peer.name(),
                per(|l| l.cpu_per_request),
                per(|l| l.pg_cpu_per_request)
            );
        }
    }
}

/// The contention results of one store: incr then own, each through one and two instances.
pub(crate) struct Races {
    pub(crate) runs: [(Race, usize, Contention); 4],
    /// Errors the store returned to tower-sessions over the whole run, both instances.
    pub(crate) store_errors: usize,
}

/// The four contention runs on `stand`, with a second instance (its own store object)
/// started for the two-instance runs and stopped after.
pub(crate) async fn run_races(client: &reqwest::Client, stand: &Stand, env: &Env) -> Races {
    let b = instance(stand.kind, env).await;
    let name = stand.kind.name();
    let one = [stand.a.base.clone()];
    let two = [stand.a.base.clone(), b.base.clone()];
    let mut runs = [(Race::Incr, 1, Contention::default()); 4];
    for (i, (race, bases)) in [
        (Race::Incr, &one[..]),
        (Race::Incr, &two[..]),
        (Race::Own, &one[..]),
        (Race::Own, &two[..]),
    ]
    .into_iter()
    .enumerate()
    {
        let c = contend(client, bases, race).await;
        runs[i] = (race, bases.len(), c);
        let lost = c.lost.map_or("?".to_owned(), |l| l.to_string());
        let detail = match race {
            Race::Incr => format!(
                "final {}  lost updates {lost}",
                c.last.map_or("?".to_owned(), |v| v.to_string())
            ),
            Race::Own => format!("lost keys {lost}/{CONTENDERS}"),
        };
        println!(
            "peers {name:<22} {:<5} {} instance(s)  {CONTENDERS}x{PER_CONTENDER} on one session  \
             sent {}  {detail}  errors {} (timeouts {})  p50 {:.2} ms  max {:.0} ms  ({:.2} s)",
            race.name(),
            bases.len(),
            c.sent,
            c.errors,
            c.timeouts,
            ms(c.p50),
            ms(c.max),
            c.secs
        );
    }
    let mut store_errors = 0;
    for (which, inst) in [("a", &stand.a), ("b", &b)] {
        let (n, first) = inst.errors.take();
        store_errors += n;
        for m in first {
            println!("peers {name:<22} store error (instance {which}, {n} in all): {m}");
        }
    }
    b.stop().await;
    Races { runs, store_errors }
}

pub(crate) fn table(stands: &[Stand], races: &[Option<Races>]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| store | read req/s | read p50 / p99 ms | read CPU µs app / PG | write req/s | \
         write p50 / p99 ms | write CPU µs app / PG | \
         incr lost of 1000, 1 / 2 inst | own lost keys of {CONTENDERS}, 1 / 2 inst | \
         HTTP errors | store errors |"
    );
    let _ = writeln!(t, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for (s, r) in stands.iter().zip(races) {
        let (read, write) = (Stand::summary(&s.reads), Stand::summary(&s.writes));
        let lost = |i: usize| {
            r.as_ref().map_or("–".to_owned(), |r| {
                r.runs[i].2.lost.map_or("?".to_owned(), |l| l.to_string())
            })
        };
        let http_errors = read.errors
            + write.errors
            + r.as_ref()
                .map_or(0, |r| r.runs.iter().map(|x| x.2.errors).sum::<usize>());
        let _ = writeln!(
            t,
            "| {} | {:.0} | {:.2} / {:.2} | {:.0} / {:.0} | {:.0} | {:.2} / {:.2} | {:.0} / {:.0} | \
             {} / {} | {} / {} | {} | {} |",
            s.kind.name(),
            read.rps,
            ms(read.p50),
            ms(read.p99),
            read.cpu_per_request.as_secs_f64() * 1e6,
            read.pg_cpu_per_request.as_secs_f64() * 1e6,
            write.rps,
            ms(write.p50),
            ms(write.p99),
            write.cpu_per_request.as_secs_f64() * 1e6,
            write.pg_cpu_per_request.as_secs_f64() * 1e6,
            lost(0),
            lost(1),
            lost(2),
            lost(3),
            http_errors,
            r.as_ref().map_or("–".to_owned(), |r| r.store_errors.to_string()),
        );
    }
    t
}
