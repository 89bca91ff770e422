//! The connection to the primary of a Sentinel-monitored service, which follows it across
//! failovers: discovery again after a failure, and a periodic check with a sentinel.

use std::fmt;
use std::sync::Arc;

use larder_cache_api::Result;
use redis::aio::MultiplexedConnection;
use redis::{Cmd, Value};
use tokio::sync::watch;

use super::discovery::{Discovery, Primary};
use super::errors::{is_readonly, needs_new_primary, Failure};
use crate::config::RedisConfig;
use crate::error;

/// Where the connection stands: a primary in use, a discovery under way, or the failure of
/// the last one (the next operation starts another).
#[derive(Debug, Clone)]
enum Phase {
    Ready(Arc<Primary>),
    Discovering,
    Failed(Failure),
}

/// What every handle on the connection shares, and the background check watches.
struct Shared {
    discovery: Discovery,
    phase: watch::Sender<Phase>,
}

/// A self-healing connection to the primary of a Sentinel-monitored service.
#[derive(Clone)]
pub(crate) struct SentinelConn {
    shared: Arc<Shared>,
}

impl fmt::Debug for SentinelConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SentinelConn")
            .field("service", &self.shared.discovery.sentinel.service_name)
            .finish_non_exhaustive()
    }
}

impl SentinelConn {
    /// Finds the primary (within the connect deadline) and connects to it.
    pub(crate) async fn connect(config: &RedisConfig) -> Result<Self> {
        let discovery = Discovery::new(config)?;
        let (tx, _) = watch::channel(Phase::Discovering);
        let shared = Arc::new(Shared {
            discovery,
            phase: tx,
        });
        // Every sentinel may take one attempt to answer and one to reach the primary it
        // names; nothing here waits longer than that.
        let per_step = config.connect_timeout + config.response_timeout;
        let limit = per_step * 2 * u32::try_from(config.nodes.len()).unwrap_or(u32::MAX);
        let primary = match tokio::time::timeout(limit, shared.discovery.discover()).await {
            Ok(Ok(p)) => p,
            Ok(Err(f)) => return Err(f.into_error()),
            Err(e) => return Err(error::deadline("connect", limit, e)),
        };
        shared.phase.send_replace(Phase::Ready(Arc::new(primary)));
        tokio::spawn(watch_sentinels(
            Arc::downgrade(&shared),
            shared.discovery.sentinel.check_interval,
        ));
        Ok(SentinelConn { shared })
    }

    /// The primary in use, if one is known right now.
    pub(crate) fn primary_node(&self) -> Option<(String, u16)> {
        match &*self.shared.phase.borrow() {
            Phase::Ready(p) => Some(p.addr.clone()),
            _ => None,
        }
    }

    /// How the sentinels are asked.
    pub(super) fn discovery(&self) -> &Discovery {
        &self.shared.discovery
    }

    /// Someone learnt that `addr` is no longer the primary (a near cache's tracking, which
    /// asks the sentinels more often than the periodic check): if it is the one in use, the
    /// sentinels are asked again now.
    pub(crate) fn moved_from(&self, addr: &(String, u16)) {
        self.start_discovery(|p| matches!(p, Phase::Ready(q) if &q.addr == addr));
    }

    /// `host:port` of the primary in use, if one is known right now.
    pub(crate) fn primary_addr(&self) -> Option<String> {
        match &*self.shared.phase.borrow() {
            Phase::Ready(p) => Some(format!("{}:{}", p.addr.0, p.addr.1)),
            _ => None,
        }
    }

    /// Runs `cmd` on the primary.
    pub(crate) async fn query(&self, cmd: &Cmd) -> redis::RedisResult<Value> {
        self.with_primary(|mut c| async move { cmd.query_async(&mut c).await })
            .await
    }

    /// Runs a pipeline on the primary.
    pub(crate) async fn exec_pipeline(&self, p: &redis::Pipeline) -> redis::RedisResult<()> {
        self.with_primary(|mut c| async move { p.exec_async(&mut c).await })
            .await
    }

    async fn with_primary<T, F, Fut>(&self, f: F) -> redis::RedisResult<T>
    where
        F: Fn(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let p = self.primary().await?;
        match f(p.conn.clone()).await {
            Err(e) if is_readonly(&e) => {
                // A replica refused the write: it was not applied. The primary moved; ask
                // the sentinels again and send it once more.
                self.invalidate(p.generation);
                let p = self.primary().await?;
                let r = f(p.conn.clone()).await;
                if let Err(e) = &r {
                    if needs_new_primary(e) {
                        self.invalidate(p.generation);
                    }
                }
                r
            }
            Err(e) if needs_new_primary(&e) => {
                self.invalidate(p.generation);
                Err(e)
            }
            r => r,
        }
    }

    /// The primary in use; while none is known, waits for (or starts) a discovery and
    /// returns its failure if it fails.
    async fn primary(&self) -> redis::RedisResult<Arc<Primary>> {
        let mut rx = self.shared.phase.subscribe();
        let mut started = false;
        loop {
            let phase = rx.borrow_and_update().clone();
            match phase {
                Phase::Ready(p) => return Ok(p),
                Phase::Discovering => {
                    // The sender lives in `shared`, which `self` holds: never closed.
                    let _ = rx.changed().await;
                }
                Phase::Failed(f) => {
                    if started {
                        return Err(f.to_redis());
                    }
                    started = true;
                    self.start_discovery(|p| matches!(p, Phase::Failed(_)));
                }
            }
        }
    }

    /// Forgets the primary of `generation` (if still in use) and asks the sentinels again.
    fn invalidate(&self, generation: u64) {
        self.start_discovery(|p| matches!(p, Phase::Ready(q) if q.generation == generation));
    }

    /// Starts one discovery in the background if the phase matches `when`.
    fn start_discovery(&self, when: impl FnOnce(&Phase) -> bool) {
        let mut begin = false;
        self.shared.phase.send_if_modified(|p| {
            if when(p) {
                *p = Phase::Discovering;
                begin = true;
            }
            begin
        });
        if begin {
            let shared = self.shared.clone();
            tokio::spawn(async move {
                let next = match shared.discovery.discover().await {
                    Ok(p) => Phase::Ready(Arc::new(p)),
                    Err(f) => Phase::Failed(f),
                };
                shared.phase.send_replace(next);
            });
        }
    }
}

/// Every `interval`, asks a sentinel which node is the primary, and moves over when the
/// answer differs from the primary in use. A failover with the old primary alive
/// (`SENTINEL FAILOVER`, a partition) breaks no connection, and the sentinels demote the
/// old primary only some seconds later: until then writes would go on to it, and be lost.
/// Ends with the last handle on the connection.
async fn watch_sentinels(weak: std::sync::Weak<Shared>, interval: std::time::Duration) {
    let mut cached: Option<MultiplexedConnection> = None;
    let mut next = 0usize;
    loop {
        tokio::time::sleep(interval).await;
        let Some(shared) = weak.upgrade() else {
            return;
        };
        let current = match &*shared.phase.borrow() {
            Phase::Ready(p) => Some((p.addr.clone(), p.generation)),
            _ => None,
        };
        let Some((addr, generation)) = current else {
            continue;
        };
        let discovery = &shared.discovery;
        let step = discovery.step();
        let answer = tokio::time::timeout(step, async {
            let conn = match &mut cached {
                Some(c) => c,
                None => {
                    let list = discovery.sentinels();
                    let (host, port) = &list[next % list.len()];
                    cached.insert(discovery.open_sentinel(host, *port).await?)
                }
            };
            discovery.master_addr(conn).await
        })
        .await;
        match answer {
            Ok(Ok(Some(named))) if named != addr => {
                SentinelConn {
                    shared: shared.clone(),
                }
                .invalidate(generation);
            }
            Ok(Ok(_)) => {}
            _ => {
                // Ask the next sentinel next time.
                cached = None;
                next = next.wrapping_add(1);
            }
        }
    }
}
