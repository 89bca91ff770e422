//! A recorded history of a counter across a failover, checked against a near cache's
//! staleness bound: process B writes `1, 2, ...` with a fresh client for each write (so it
//! reaches a new primary as early as a process started then would), process A reads through
//! the near cache; no read may return a value older than a write acknowledged at least the
//! bound before the read started.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use larder_cache_api::{Bytes, CacheBackend, Key, PutMode};

/// A write acknowledged at `acked`; `node` is what the writer's client named as the node
/// that took it (empty when it cannot tell).
#[derive(Debug, Clone)]
pub struct Acked {
    /// The counter value written.
    pub value: u64,
    /// The node the write went to, as the client reports it.
    pub node: String,
    /// When the acknowledgement arrived.
    pub acked: Instant,
}

/// A successful read, started at `started`.
#[derive(Debug, Clone)]
pub struct Read {
    /// When the read was sent.
    pub started: Instant,
    /// The counter value it returned.
    pub value: u64,
}

/// A read that returned `read` though `due` had been acknowledged `since` before it started
/// (the oldest such write), `since` being at least the bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stale {
    /// The value read.
    pub read: u64,
    /// The newest value it had to return at least.
    pub due: u64,
    /// How long before the read the oldest missed write was acknowledged.
    pub since: Duration,
}

/// Writes `1, 2, ...` to `k` every `every` until `stop`, each with a client `connect` makes
/// anew; `node` names where a write went. Returns the acknowledged writes.
pub fn writer<B, C, F, N>(
    connect: C,
    node: N,
    k: Key,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Acked>>
where
    B: CacheBackend + 'static,
    C: Fn() -> F + Send + 'static,
    F: std::future::Future<Output = larder_cache_api::Result<B>> + Send,
    N: Fn(&B) -> String + Send + 'static,
{
    tokio::spawn(async move {
        let mut log = Vec::new();
        let mut value = 0u64;
        while !stop.load(Ordering::SeqCst) {
            value += 1;
            if let Ok(b) = connect().await {
                let v = Bytes::from(value.to_string());
                if b.put(&k, v, None, PutMode::Overwrite).await.is_ok() {
                    log.push(Acked {
                        value,
                        node: node(&b),
                        acked: Instant::now(),
                    });
                }
            }
            tokio::time::sleep(every).await;
        }
        log
    })
}

/// Reads `k` through `near` every `every` until `stop`; returns the successful reads.
pub fn reader(
    near: Arc<dyn CacheBackend>,
    k: Key,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Read>> {
    tokio::spawn(async move {
        let mut log = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            let started = Instant::now();
            if let Ok(Some(e)) = near.get(&k).await {
                let value = std::str::from_utf8(&e.value)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .expect("the counter holds a number");
                log.push(Read { started, value });
            }
            tokio::time::sleep(every).await;
        }
        log
    })
}

/// The reads older than `bound` allows: a value below that of a write `must_see` keeps
/// (one that survives the failover) acknowledged at least `bound` before the read started.
pub fn stale_reads(
    writes: &[Acked],
    reads: &[Read],
    bound: Duration,
    must_see: impl Fn(&Acked) -> bool,
) -> Vec<Stale> {
    let kept: Vec<&Acked> = writes.iter().filter(|w| must_see(w)).collect();
    let mut out = Vec::new();
    for r in reads {
        let due = kept
            .iter()
            .filter(|w| w.acked + bound <= r.started)
            .map(|w| w.value)
            .max();
        let Some(due) = due else { continue };
        if r.value >= due {
            continue;
        }
        let since = kept
            .iter()
            .filter(|w| w.value > r.value && w.value <= due)
            .map(|w| r.started - w.acked)
            .max()
            .unwrap_or_default();
        out.push(Stale {
            read: r.value,
            due,
            since,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_is_stale_only_below_a_kept_write_older_than_the_bound() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let w = |value, node: &str, at| Acked {
            value,
            node: node.into(),
            acked: t0 + ms(at),
        };
        let writes = [w(1, "a", 0), w(2, "a", 10), w(3, "b", 20)];
        let r = |value, at| Read {
            started: t0 + ms(at),
            value,
        };
        let reads = [r(1, 55), r(1, 60), r(2, 70), r(3, 70), r(2, 75)];
        let all = stale_reads(&writes, &reads, ms(50), |_| true);
        assert_eq!(
            all,
            [
                Stale {
                    read: 1,
                    due: 2,
                    since: ms(50)
                },
                Stale {
                    read: 2,
                    due: 3,
                    since: ms(50)
                },
                Stale {
                    read: 2,
                    due: 3,
                    since: ms(55)
                },
            ]
        );
        // Writes that may be lost are not due.
        assert_eq!(
            stale_reads(&writes, &reads, ms(50), |w| w.node == "a"),
            [Stale {
                read: 1,
                due: 2,
                since: ms(50)
            }]
        );
    }
}
