//! The load: HTTP clients looping reads or writes on their own sessions ([`drive`]), and
//! clients racing on one session ([`contend`]).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::rounds::Stand;
use crate::stores::{pg_application, Kind};
use crate::{
    CLIENTS, CONTENDERS, CONTENTION_BUDGET, MAX_REQUESTS_PER_CLIENT, MEASURE, PER_CONTENDER,
    REQUEST_TIMEOUT, WARM_UP,
};

pub(crate) fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(2 * CLIENTS)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("http client")
}

/// Logs in on `base`; returns the `id=...` cookie pair.
pub(crate) async fn new_session(client: &reqwest::Client, base: &str) -> String {
    let r = client
        .post(format!("{base}/login"))
        .send()
        .await
        .expect("login request");
    assert!(r.status().is_success(), "login: {}", r.status());
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("id="))
        .and_then(|v| v.split(';').next())
        .expect("session cookie")
        .to_owned()
}

/// Latencies and failures of a set of requests.
#[derive(Debug, Default, Clone)]
struct Tally {
    lat: Vec<Duration>,
    /// Requests without a 2xx and its whole body, timeouts included.
    errors: usize,
    /// Requests the client gave up on after `REQUEST_TIMEOUT`.
    timeouts: usize,
}

impl Tally {
    /// Sends one request, timing it until its whole body is read.
    async fn send(&mut self, req: reqwest::RequestBuilder) {
        let t = Instant::now();
        let (failed, timeout) = match req.send().await {
            Ok(r) => {
                let status_ok = r.status().is_success();
                match r.bytes().await {
                    Ok(_) => (!status_ok, false),
                    Err(e) => (true, e.is_timeout()),
                }
            }
            Err(e) => (true, e.is_timeout()),
        };
        self.lat.push(t.elapsed());
        self.errors += usize::from(failed);
        self.timeouts += usize::from(timeout);
    }

    fn merge(&mut self, o: Tally) {
        self.lat.extend(o.lat);
        self.errors += o.errors;
        self.timeouts += o.timeouts;
    }

    /// The `p` quantile of the latencies (0 when there are none); sorts them.
    fn quantile(&mut self, p: f64) -> Duration {
        self.lat.sort_unstable();
        let i = ((self.lat.len() as f64 * p) as usize).min(self.lat.len().saturating_sub(1));
        self.lat.get(i).copied().unwrap_or_default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Read,
    Write,
}

#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Load {
    pub(crate) rps: f64,
    pub(crate) p50: Duration,
    pub(crate) p99: Duration,
    pub(crate) requests: usize,
    pub(crate) errors: usize,
    pub(crate) timeouts: usize,
    /// CPU time of this whole process (clients, app, store clients; not the servers) per
    /// request, warm-up included: steadier than requests/s on a shared machine.
    pub(crate) cpu_per_request: Duration,
    /// CPU time of the PostgreSQL server processes serving this store, per request.
    pub(crate) pg_cpu_per_request: Duration,
}

/// CPU time used so far by the live threads of process `pid` (`/proc/<pid>/task/*/schedstat`,
/// nanoseconds; zero where that does not exist).
fn cpu_of(pid: &str) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Duration::ZERO;
    };
    let ns: u64 = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(ns)
}

fn process_cpu() -> Duration {
    cpu_of("self")
}

/// CPU time used so far by the PostgreSQL server processes of `kind`'s connections (found by
/// their `application_name`; the server runs on this machine).
pub(crate) async fn pg_cpu(admin: &sqlx::PgPool, kind: Kind) -> Duration {
    let pids: Vec<(i32,)> =
        sqlx::query_as("SELECT pid FROM pg_stat_activity WHERE application_name = $1")
            .bind(pg_application(kind))
            .fetch_all(admin)
            .await
            .unwrap_or_default();
    pids.iter().map(|(p,)| cpu_of(&p.to_string())).sum()
}

/// Each client loops `op` on its own session; only requests started after the warm-up
/// count.
pub(crate) async fn drive(
    client: &reqwest::Client,
    stand: &Stand,
    admin: &sqlx::PgPool,
    op: Op,
) -> Load {
    let (base, cookies) = (stand.a.base.as_str(), &stand.cookies);
    let pg_start = pg_cpu(admin, stand.kind).await;
    let cpu_start = process_cpu();
    let start = Instant::now();
    let warm_end = start + WARM_UP;
    let end = warm_end + MEASURE;
    let tasks: Vec<_> = cookies
        .iter()
        .enumerate()
        .map(|(c, cookie)| {
            let (client, base, cookie) = (client.clone(), base.to_owned(), cookie.clone());
            tokio::spawn(async move {
                let (mut warm, mut measured) = (Tally::default(), Tally::default());
                let mut n = 0usize;
                while n < MAX_REQUESTS_PER_CLIENT && Instant::now() < end {
                    let req = match op {
                        Op::Read => client.get(format!("{base}/read")),
                        Op::Write => client
                            .post(format!("{base}/write"))
                            .body(format!("v{c}-{n}")),
                    };
                    let req = req.header("cookie", &cookie);
                    if Instant::now() < warm_end {
                        warm.send(req).await;
                    } else {
                        measured.send(req).await;
                    }
                    n += 1;
                }
                (measured, n, Instant::now())
            })
        })
        .collect();
    let (mut all, mut last, mut sent) = (Tally::default(), warm_end, 0);
    for t in tasks {
        let (tally, n, done) = t.await.expect("client task");
        all.merge(tally);
        sent += n;
        last = last.max(done);
    }
    let cpu = process_cpu().saturating_sub(cpu_start);
    let pg = pg_cpu(admin, stand.kind).await.saturating_sub(pg_start);
    let sent = u32::try_from(sent.max(1)).unwrap_or(u32::MAX);
    Load {
        cpu_per_request: cpu / sent,
        pg_cpu_per_request: pg / sent,
        rps: all.lat.len() as f64 / last.duration_since(warm_end).as_secs_f64().max(1e-9),
        p50: all.quantile(0.50),
        p99: all.quantile(0.99),
        requests: all.lat.len(),
        errors: all.errors,
        timeouts: all.timeouts,
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Race {
    /// `POST /incr`: get + 1 + insert of one counter.
    Incr,
    /// `POST /own/{c}/{n}`: each client its own key.
    Own,
}

impl Race {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Race::Incr => "incr",
            Race::Own => "own",
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Contention {
    pub(crate) sent: usize,
    pub(crate) errors: usize,
    pub(crate) timeouts: usize,
    /// Lost updates (incr: 1000 − final counter) or lost keys (own: keys not at 49);
    /// `None` if the final `GET /dump` failed.
    pub(crate) lost: Option<usize>,
    /// The final counter (incr only).
    pub(crate) last: Option<u64>,
    pub(crate) p50: Duration,
    pub(crate) max: Duration,
    pub(crate) secs: f64,
}

/// `CONTENDERS` clients × `PER_CONTENDER` requests on one new session; client `c`'s request
/// `n` goes to `bases[(c + n) % bases.len()]`.
pub(crate) async fn contend(client: &reqwest::Client, bases: &[String], race: Race) -> Contention {
    let cookie = new_session(client, &bases[0]).await;
    let start = Instant::now();
    let deadline = start + CONTENTION_BUDGET;
    let tasks: Vec<_> = (0..CONTENDERS)
        .map(|c| {
            let (client, bases, cookie) = (client.clone(), bases.to_vec(), cookie.clone());
            tokio::spawn(async move {
                let mut tally = Tally::default();
                for n in 0..PER_CONTENDER {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    let base = &bases[(c + n) % bases.len()];
                    let url = match race {
                        Race::Incr => format!("{base}/incr"),
                        Race::Own => format!("{base}/own/{c}/{n}"),
                    };
                    let req = client.post(url).header("cookie", &cookie).timeout(left);
                    tally.send(req).await;
                }
                tally
            })
        })
        .collect();
    let mut all = Tally::default();
    for t in tasks {
        all.merge(t.await.expect("contention task"));
    }
    let mut out = Contention {
        sent: all.lat.len(),
        errors: all.errors,
        timeouts: all.timeouts,
        p50: all.quantile(0.5),
        max: all.quantile(1.0),
        secs: start.elapsed().as_secs_f64(),
        ..Contention::default()
    };
    let dump: Option<HashMap<String, Value>> = match client
        .get(format!("{}/dump", bases[0]))
        .header("cookie", &cookie)
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => r
            .bytes()
            .await
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok()),
        _ => None,
    };
    if let Some(d) = dump {
        match race {
            Race::Incr => {
                let last = d.get("counter").and_then(Value::as_u64).unwrap_or(0);
                out.last = Some(last);
                out.lost = Some((CONTENDERS * PER_CONTENDER).saturating_sub(last as usize));
            }
            Race::Own => {
                let want = (PER_CONTENDER - 1) as u64;
                let lost = (0..CONTENDERS)
                    .filter(|c| d.get(&format!("k{c}")).and_then(Value::as_u64) != Some(want))
                    .count();
                out.lost = Some(lost);
            }
        }
    }
    out
}
