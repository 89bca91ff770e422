//! Async helpers shared by the networked benches: alternated per-op timing of larder against
//! its raw anchor, throughput runs of many concurrent tasks, and a TCP echo server that
//! gives the loopback round-trip floor.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

/// A current-thread runtime with I/O and timers, the one the latency benches run on.
pub fn current_thread() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("current-thread runtime")
}

/// A multi-thread runtime with one worker per core (2 here), for the throughput runs.
pub fn multi_thread() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("multi-thread runtime")
}

/// Per-op median (µs) over `rounds` rounds, alternating larder and the raw anchor every
/// `per_round` operations so that machine drift hits both alike; returns (larder, raw).
pub async fn alternate<L, R, LF, RF>(
    rounds: usize,
    per_round: usize,
    mut larder: L,
    mut raw: R,
) -> (f64, f64)
where
    L: FnMut(usize) -> LF,
    R: FnMut(usize) -> RF,
    LF: Future<Output = ()>,
    RF: Future<Output = ()>,
{
    let (mut l, mut r) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
    for round in 0..rounds {
        let t = Instant::now();
        for i in 0..per_round {
            larder(round * per_round + i).await;
        }
        l.push(t.elapsed().as_secs_f64() * 1e6 / per_round as f64);
        let t = Instant::now();
        for i in 0..per_round {
            raw(round * per_round + i).await;
        }
        r.push(t.elapsed().as_secs_f64() * 1e6 / per_round as f64);
    }
    (median(&mut l), median(&mut r))
}

/// The median of `v` (0 when empty); sorts it.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Prints one `ratio` line to stderr: `what`, both per-op times (µs) and larder / raw.
pub fn report(bench: &str, what: &str, (l, r): (f64, f64)) {
    eprintln!(
        "ratio {bench} {what:<24} larder {l:>9.2} µs  raw {r:>9.2} µs  larder/raw {:.3}",
        l / r
    );
}

/// [`report`] for operations measured in nanoseconds (in-process caches): both per-op times
/// (ns) and larder / raw.
pub fn report_ns(bench: &str, what: &str, (l, r): (f64, f64)) {
    eprintln!(
        "ratio {bench} {what:<24} larder {:>9.1} ns  raw {:>9.1} ns  larder/raw {:.3}",
        l * 1e3,
        r * 1e3,
        l / r
    );
}

/// Operations per second of `tasks` tasks each calling `op` in a loop for `dur` on `rt`.
/// `op` gets a running index (distinct per task). Every task yields every 16 operations so
/// that operations which never wait (sled) still interleave.
pub fn throughput<F, Fut>(rt: &Runtime, tasks: usize, dur: Duration, op: F) -> f64
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let op = Arc::new(op);
    rt.block_on(async {
        let start = Instant::now();
        let deadline = start + dur;
        let handles: Vec<_> = (0..tasks)
            .map(|t| {
                let op = op.clone();
                tokio::spawn(async move {
                    let mut n = 0usize;
                    while Instant::now() < deadline {
                        op(t.wrapping_mul(7919).wrapping_add(n)).await;
                        n += 1;
                        if n % 16 == 0 {
                            tokio::task::yield_now().await;
                        }
                    }
                    n
                })
            })
            .collect();
        let mut total = 0usize;
        for h in handles {
            total += h.await.expect("throughput task");
        }
        total as f64 / start.elapsed().as_secs_f64()
    })
}

/// Throughput of larder and of the raw anchor, each run twice in the order L R L R for
/// `dur`; the better run of each is kept and a `throughput` line is printed to stderr.
/// Returns (larder ops/s, raw ops/s).
#[allow(clippy::too_many_arguments)]
pub fn throughput_pair<LF, LFut, RF, RFut>(
    bench: &str,
    what: &str,
    rt: &Runtime,
    tasks: usize,
    dur: Duration,
    larder: LF,
    raw: RF,
) -> (f64, f64)
where
    LF: Fn(usize) -> LFut + Send + Sync + Clone + 'static,
    LFut: Future<Output = ()> + Send + 'static,
    RF: Fn(usize) -> RFut + Send + Sync + Clone + 'static,
    RFut: Future<Output = ()> + Send + 'static,
{
    let (mut l, mut r) = (0f64, 0f64);
    for _ in 0..2 {
        l = l.max(throughput(rt, tasks, dur, larder.clone()));
        r = r.max(throughput(rt, tasks, dur, raw.clone()));
    }
    eprintln!(
        "throughput {bench} {what:<24} {tasks} tasks  larder {l:>10.0} ops/s  raw {r:>10.0} ops/s  larder/raw {:.3}",
        l / r
    );
    (l, r)
}

/// Starts a TCP echo server on 127.0.0.1 in a thread of its own (with its own runtime, as a
/// server process would be), for the life of the process. Returns its address.
pub fn echo_server() -> SocketAddr {
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind echo server");
    std_listener.set_nonblocking(true).expect("nonblocking");
    let addr = std_listener.local_addr().expect("echo addr");
    std::thread::spawn(move || {
        let rt = current_thread();
        rt.block_on(async move {
            let listener = TcpListener::from_std(std_listener).expect("echo listener");
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    continue;
                };
                let _ = s.set_nodelay(true);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if s.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
    });
    addr
}

/// A client connection to the echo server, with `TCP_NODELAY`.
pub async fn echo_client(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).await.expect("connect echo");
    s.set_nodelay(true).expect("nodelay");
    s
}

/// One round trip: writes `msg`, reads the same number of bytes back into `buf`.
pub async fn echo_round_trip(s: &mut TcpStream, msg: &[u8], buf: &mut [u8]) {
    s.write_all(msg).await.expect("echo write");
    s.read_exact(&mut buf[..msg.len()])
        .await
        .expect("echo read");
}

/// Criterion-style timing of `iters` echo round trips of `msg` on `s` (for `iter_custom`).
pub async fn echo_iters(s: &tokio::sync::Mutex<TcpStream>, msg: &[u8], iters: u64) -> Duration {
    let mut s = s.lock().await;
    let mut buf = vec![0u8; msg.len()];
    let t = Instant::now();
    for _ in 0..iters {
        echo_round_trip(&mut s, msg, &mut buf).await;
    }
    t.elapsed()
}

/// Throughput of larder and of the raw anchor in `rounds` alternated rounds of `dur` each
/// (L R L R ...), for a shared machine whose speed drifts more between two runs than the
/// difference measured. Prints a `throughput` line to stderr: the median ops/s of each side
/// and the median of the per-round ratios larder / raw, which it returns. On Linux the line
/// also gives this process's CPU time per operation (all threads, so the client's work
/// without the server's), median per side and median per-round ratio: under a loaded
/// machine that ratio moves far less than ops/s.
#[allow(clippy::too_many_arguments)]
pub fn throughput_rounds<LF, LFut, RF, RFut>(
    bench: &str,
    what: &str,
    rt: &Runtime,
    tasks: usize,
    dur: Duration,
    rounds: usize,
    larder: LF,
    raw: RF,
) -> f64
where
    LF: Fn(usize) -> LFut + Send + Sync + Clone + 'static,
    LFut: Future<Output = ()> + Send + 'static,
    RF: Fn(usize) -> RFut + Send + Sync + Clone + 'static,
    RFut: Future<Output = ()> + Send + 'static,
{
    // (ops/s, CPU µs per op) of one round.
    fn measure<F, Fut>(rt: &Runtime, tasks: usize, dur: Duration, op: F) -> (f64, Option<f64>)
    where
        F: Fn(usize) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let cpu = process_cpu_ns();
        let t = Instant::now();
        let ops_per_s = throughput(rt, tasks, dur, op);
        let ops = ops_per_s * t.elapsed().as_secs_f64();
        let cpu = cpu
            .zip(process_cpu_ns())
            .map(|(a, b)| (b - a) as f64 / 1e3 / ops);
        (ops_per_s, cpu)
    }
    let (mut l, mut r, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    let (mut lc, mut rc, mut cratio) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let (a, ac) = measure(rt, tasks, dur, larder.clone());
        let (b, bc) = measure(rt, tasks, dur, raw.clone());
        l.push(a);
        r.push(b);
        ratio.push(a / b);
        if let (Some(ac), Some(bc)) = (ac, bc) {
            lc.push(ac);
            rc.push(bc);
            cratio.push(ac / bc);
        }
    }
    let (l, r, ratio) = (median(&mut l), median(&mut r), median(&mut ratio));
    let cpu = if cratio.len() == rounds {
        format!(
            "  cpu/op larder {:.2} µs raw {:.2} µs, median round larder/raw {:.3}",
            median(&mut lc),
            median(&mut rc),
            median(&mut cratio)
        )
    } else {
        String::new()
    };
    eprintln!(
        "throughput {bench} {what:<24} {tasks} tasks, {rounds} rounds  larder {l:>10.0} ops/s  raw {r:>10.0} ops/s  median round larder/raw {ratio:.3}{cpu}"
    );
    ratio
}

/// CPU time (ns) used so far by all threads of this process, from
/// `/proc/self/task/*/schedstat`; `None` where that does not exist.
fn process_cpu_ns() -> Option<u64> {
    let mut total = 0;
    for t in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let s = std::fs::read_to_string(t.path().join("schedstat")).ok()?;
        total += s.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}
