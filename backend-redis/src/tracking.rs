//! The invalidation channel of a near cache over Redis: server-assisted client-side caching
//! (`CLIENT TRACKING`, RESP3 push messages).
//!
//! # How
//!
//! A dedicated RESP3 connection per master turns on `CLIENT TRACKING ON BCAST` (optionally
//! limited to key prefixes): the server then pushes an `invalidate` message to it for every
//! key written, deleted, expired or evicted, whichever connection did it. The reads of the
//! near cache keep using the backend's own connection, so this works for any read path and,
//! with one connection per master, for a Redis Cluster.
//!
//! # Races
//!
//! The invalidation of a write may reach this process before or after the reply of a read
//! that raced with it, on another connection. The near cache handles that (a read keeps its
//! result only if no invalidation of its key arrived since it was sent). What this module adds
//! is the **sync point**: it sends `PING` on the tracking connection every quarter of the
//! staleness bound; Redis queues the invalidations of a write before the write's reply
//! leaves, so when the `PONG` of a ping sent at `t` comes back, every invalidation of a write
//! completed before `t` has already been handled (push messages are handed over in the order
//! they arrive, before the reply that follows them). A missed `PONG` (the response timeout),
//! a lost connection or a changed cluster topology takes the channel down; it reconnects with
//! a capped back-off.
//!
//! # Confirming against the node that takes writes now
//!
//! A `PONG` only vouches for the node that sent it. So a sync also needs, from after `t`,
//! `ROLE` answered `master` on the same connection (pipelined with the `PING`: no extra
//! round trip), which catches a demoted node (a Cluster failover, `REPLICAOF`), and, behind
//! Sentinel, every configured sentinel naming the tracked node
//! ([`Witnesses`](crate::sentinel::Witnesses)): a primary left alive by a failover still
//! says `master` and takes writes until the sentinels reconfigure it, seconds later, while
//! clients that ask a switched sentinel already write to the new one. A sentinel that does
//! not answer confirms nothing (the local tier is bypassed once the bound passes); one that
//! names another node, a role other than `master` or a changed slot map takes the channel
//! down ([`ChannelFault::PrimaryMoved`]: flushed, bypassed until the new primary confirms)
//! and, behind Sentinel, makes the backend look its primary up again at once. Since the near
//! cache keeps what the backend reads, a backend that reads another node (or is looking its
//! primary up after `READONLY` or a lost connection) takes the channel down too.
//!
//! # Connection generations
//!
//! Each subscription (one connection per master) reports through a sink of its own
//! generation ([`InvalidationSink::next_generation`]): the `Disconnection` an old connection
//! pushes when it closes may arrive after its successor is up, and then changes nothing; a
//! `Disconnection` of the current connections still takes the channel down.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use larder_cache_api::layer::{
    resubscribe, ChannelFault, InvalidationChannel, InvalidationSink, Subscription,
};
use larder_cache_api::{Error, ErrorKind, Result};
use redis::{ProtocolVersion, PushInfo, PushKind, Value};

use crate::config::{RedisConfig, Topology};
use crate::error::{self, BACKEND};
use crate::node::{self, node_info};
use crate::sentinel::{Agreement, SentinelConn, Witnesses};

/// The invalidation channel of a Redis server, Cluster or Sentinel-monitored primary, for
/// `larder_near::Near`: see [`RedisBackend::tracking`](crate::RedisBackend::tracking).
#[derive(Debug, Clone)]
pub struct RedisTracking {
    config: RedisConfig,
    prefixes: Vec<String>,
    recent: RecentPushes,
    /// Behind Sentinel, the backend's own connection, told when the primary moved.
    backend: Option<SentinelConn>,
}

/// The push handlers of the last few connection generations, for the test seam
/// [`RedisTracking::push_disconnection`].
#[derive(Clone, Default)]
struct RecentPushes(Arc<Mutex<Vec<(u64, PushHandler)>>>);

type PushHandler = Arc<dyn Fn(PushInfo) + Send + Sync>;

/// Generations whose push handler stays reachable through the test seam.
const RECENT_GENERATIONS: usize = 4;

impl RecentPushes {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(u64, PushHandler)>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn record(&self, generation: u64, handler: PushHandler) {
        let mut v = self.lock();
        v.push((generation, handler));
        while v.len() > RECENT_GENERATIONS {
            v.remove(0);
        }
    }
}

impl std::fmt::Debug for RecentPushes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let generations: Vec<u64> = self.lock().iter().map(|(g, _)| *g).collect();
        f.debug_tuple("RecentPushes").field(&generations).finish()
    }
}

impl RedisTracking {
    /// A channel to the server or cluster of `config` (normally the backend's own; another one
    /// only to reach the same data by another route). Behind Sentinel, prefer
    /// [`RedisBackend::tracking`](crate::RedisBackend::tracking), which also moves that
    /// backend over as soon as the primary moves.
    pub fn new(config: RedisConfig) -> Self {
        RedisTracking {
            config,
            prefixes: Vec::new(),
            recent: RecentPushes::default(),
            backend: None,
        }
    }

    /// Tells `backend` (the backend's Sentinel connection) when the primary moved.
    pub(crate) fn following(mut self, backend: Option<SentinelConn>) -> Self {
        self.backend = backend;
        self
    }

    /// The newest connection generation of this channel's subscription (0 before the first
    /// connection). Test seam.
    #[doc(hidden)]
    pub fn generation(&self) -> u64 {
        self.recent.lock().last().map_or(0, |(g, _)| *g)
    }

    /// Hands the push handler of the connections of `generation` (one of the last few) a
    /// `Disconnection`, as redis-rs does when such a connection closes; `false` if that
    /// generation is not known. Test seam: lets a test deliver a late `Disconnection`.
    #[doc(hidden)]
    pub fn push_disconnection(&self, generation: u64) -> bool {
        let handlers: Vec<PushHandler> = self
            .recent
            .lock()
            .iter()
            .filter(|(g, _)| *g == generation)
            .map(|(_, h)| Arc::clone(h))
            .collect();
        for h in &handlers {
            h(PushInfo {
                kind: PushKind::Disconnection,
                data: Vec::new(),
            });
        }
        !handlers.is_empty()
    }

    /// Only report keys starting with one of `prefixes` (`BCAST PREFIX ...`): less traffic
    /// when the server holds much else. The near cache then keeps only keys that match one
    /// (others are always read from the server).
    pub fn prefixes<I, S>(mut self, prefixes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.prefixes = prefixes.into_iter().map(Into::into).collect();
        self
    }
}

impl InvalidationChannel for RedisTracking {
    fn subscribe(&self, sink: InvalidationSink) -> Result<Subscription> {
        self.config.validate()?;
        Subscription::spawn(BACKEND, "redis client tracking", run(self.clone(), sink))
    }

    fn describe(&self) -> String {
        let mut s = "redis client tracking (bcast".to_string();
        for p in &self.prefixes {
            s.push_str(&format!(" prefix {p:?}"));
        }
        s.push(')');
        s
    }

    fn covers(&self, key: &[u8]) -> bool {
        self.prefixes.is_empty() || self.prefixes.iter().any(|p| key.starts_with(p.as_bytes()))
    }
}

/// Subscribes, reports, and resubscribes after every failure, until the near cache is gone.
async fn run(tracking: RedisTracking, sink: InvalidationSink) {
    resubscribe(&sink, "redis client tracking", || session(&tracking, &sink)).await;
}

/// One tracking connection.
struct Tracked {
    conn: redis::aio::MultiplexedConnection,
    lost: Arc<AtomicBool>,
}

async fn connect(
    tracking: &RedisTracking,
    host: &str,
    port: u16,
    sink: &InvalidationSink,
) -> Result<Tracked> {
    let config = &tracking.config;
    #[cfg(feature = "tls")]
    if config.tls {
        node::ensure_crypto_provider();
    }
    let info = node_info(config, host, port)?;
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    let info = info.set_redis_settings(settings);
    let client = node::client(config, info)?;
    let lost = Arc::new(AtomicBool::new(false));
    // `sink` is this connection generation's: a late push of this connection changes
    // nothing once a newer generation is up.
    let (push_sink, push_lost) = (sink.clone(), lost.clone());
    let handler: PushHandler = Arc::new(move |p: PushInfo| on_push(&push_sink, &push_lost, p));
    tracking
        .recent
        .record(sink.generation(), Arc::clone(&handler));
    let cfg = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(config.connect_timeout))
        .set_response_timeout(Some(config.response_timeout))
        .set_push_sender(move |p: PushInfo| {
            handler(p);
            Ok::<(), std::convert::Infallible>(())
        });
    let deadline = config.connect_timeout + config.response_timeout;
    let mut conn = tokio::time::timeout(
        deadline,
        client.get_multiplexed_async_connection_with_config(&cfg),
    )
    .await
    .map_err(|e| error::deadline("connect", deadline, e))?
    .map_err(error::map_connect)?;
    let mut cmd = redis::cmd("CLIENT");
    cmd.arg("TRACKING").arg("ON").arg("BCAST");
    for p in &tracking.prefixes {
        cmd.arg("PREFIX").arg(p);
    }
    cmd.query_async::<()>(&mut conn)
        .await
        .map_err(|e| error::map("CLIENT TRACKING", e))?;
    Ok(Tracked { conn, lost })
}

fn on_push(sink: &InvalidationSink, lost: &AtomicBool, p: PushInfo) {
    match p.kind {
        PushKind::Invalidate => match p.data.first() {
            Some(Value::Array(keys)) => {
                for k in keys {
                    match k {
                        Value::BulkString(b) => sink.invalidate(b),
                        Value::SimpleString(s) => sink.invalidate(s.as_bytes()),
                        _ => sink.invalidate_all(),
                    }
                }
            }
            // A null key list: the server flushed its data (FLUSHALL, FLUSHDB).
            _ => sink.invalidate_all(),
        },
        PushKind::Disconnection => {
            lost.store(true, Ordering::SeqCst);
            sink.down();
        }
        _ => {}
    }
}

/// The masters to track: the server, the Sentinel service's primary (with the connection
/// that follows it, to notice a failover), or every master of the cluster.
async fn masters(tracking: &RedisTracking) -> Result<(Vec<(String, u16)>, Option<SentinelConn>)> {
    let config = &tracking.config;
    match config.topology {
        Topology::Single => return Ok((vec![config.nodes[0].clone()], None)),
        Topology::Sentinel => {
            let s = SentinelConn::connect(config).await?;
            let primary = s.primary_node().ok_or_else(|| {
                Error::new(
                    ErrorKind::Unavailable,
                    "the Sentinel service has no primary",
                )
                .with_backend(BACKEND)
            })?;
            return Ok((vec![primary], Some(s)));
        }
        Topology::Cluster => {}
    }
    let mut last = None;
    for (host, port) in &config.nodes {
        match cluster_masters(config, host, *port).await {
            Ok(m) => return Ok((m, None)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| Error::new(ErrorKind::Config, "no seed node").with_backend(BACKEND)))
}

/// The masters as `CLUSTER SLOTS` on `host:port` lists them, sorted.
async fn cluster_masters(
    config: &RedisConfig,
    host: &str,
    port: u16,
) -> Result<Vec<(String, u16)>> {
    let client = node::client(config, node_info(config, host, port)?)?;
    let cfg = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(config.connect_timeout))
        .set_response_timeout(Some(config.response_timeout));
    let mut c = client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await
        .map_err(error::map_connect)?;
    slots_masters(&mut c, host).await
}

async fn slots_masters(
    c: &mut redis::aio::MultiplexedConnection,
    seed_host: &str,
) -> Result<Vec<(String, u16)>> {
    let v: Value = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(c)
        .await
        .map_err(|e| error::map("CLUSTER SLOTS", e))?;
    let mut out = Vec::new();
    if let Value::Array(ranges) = v {
        for r in ranges {
            let Value::Array(r) = r else { continue };
            let Some(Value::Array(master)) = r.get(2) else {
                continue;
            };
            let host = match master.first() {
                Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                Some(Value::SimpleString(s)) => s.clone(),
                _ => String::new(),
            };
            // An empty or unknown endpoint means "the address you reached me at".
            let host = if host.is_empty() || host == "?" {
                seed_host.to_string()
            } else {
                host
            };
            let Some(Value::Int(port)) = master.get(1) else {
                continue;
            };
            let Ok(port) = u16::try_from(*port) else {
                continue;
            };
            out.push((host, port));
        }
    }
    out.sort();
    out.dedup();
    if out.is_empty() {
        return Err(
            Error::new(ErrorKind::Unavailable, "CLUSTER SLOTS lists no master")
                .with_backend(BACKEND),
        );
    }
    Ok(out)
}

/// Tracks every master until something fails; `Ok` when the near cache is gone.
async fn session(tracking: &RedisTracking, sink: &InvalidationSink) -> Result<()> {
    let (nodes, sentinel) = masters(tracking).await?;
    let sink = &sink.next_generation();
    let mut conns = Vec::with_capacity(nodes.len());
    for (host, port) in &nodes {
        conns.push(connect(tracking, host, *port, sink).await?);
    }
    sink.up();
    let ping_timeout = tracking.config.response_timeout;
    let mut tick = tokio::time::interval(sink.sync_interval().max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_topology_check = Instant::now();
    let mut witnesses = sentinel.as_ref().map(Witnesses::new);
    let mut last_agreed = Instant::now();
    loop {
        tick.tick().await;
        if sink.is_closed() {
            return Ok(());
        }
        // Every ping below is sent after `sent`, so each PONG vouches for `sent`.
        let sent = Instant::now();
        for t in &mut conns {
            let mut p = redis::pipe();
            p.cmd("ROLE").cmd("PING");
            let (role, _pong): (Value, Value) =
                tokio::time::timeout(ping_timeout, p.query_async(&mut t.conn))
                    .await
                    .map_err(|e| error::deadline("PING", ping_timeout, e))?
                    .map_err(|e| error::map("PING", e))?;
            if t.lost.load(Ordering::SeqCst) {
                return Err(
                    Error::new(ErrorKind::Unavailable, "tracking connection closed")
                        .with_backend(BACKEND),
                );
            }
            if !is_master(&role) {
                return Err(moved(sink, "a tracked node is no longer a primary"));
            }
        }
        if tracking.config.topology == Topology::Cluster
            && last_topology_check.elapsed() >= Duration::from_secs(1)
        {
            last_topology_check = Instant::now();
            let now = slots_masters(&mut conns[0].conn, &nodes[0].0).await?;
            if now != nodes {
                return Err(moved(
                    sink,
                    "cluster topology changed; tracking every master anew",
                ));
            }
        }
        // A failover moved the primary: what this connection tracked is no longer where
        // writes go, so the channel goes down (the near cache is flushed) and starts anew.
        if let (Some(s), Some(w)) = (&sentinel, &mut witnesses) {
            match w.ask(&nodes[0]).await {
                Agreement::Agreed if s.primary_node().as_ref() == Some(&nodes[0]) => {
                    // The near cache keeps what the backend reads, so the backend must read
                    // the tracked node too: one that is looking its primary up again (after
                    // `READONLY` or a lost connection) or found another is a topology sign.
                    if let Some(b) = &tracking.backend {
                        match b.primary_node() {
                            Some(p) if p == nodes[0] => {}
                            other => {
                                if let Some(p) = other {
                                    b.moved_from(&p);
                                }
                                return Err(moved(
                                    sink,
                                    "the backend no longer reads the tracked primary",
                                ));
                            }
                        }
                    }
                }
                // A sentinel that does not answer confirms nothing: the near cache serves
                // every read from Redis. Past a while that is a fault to report, not a
                // silent loss of the local tier.
                Agreement::Unknown if last_agreed.elapsed() >= UNCONFIRMED_AFTER => {
                    sink.down_because(ChannelFault::Unconfirmed);
                    return Err(Error::new(
                        ErrorKind::Unavailable,
                        "a sentinel has not confirmed the tracked primary for a second",
                    )
                    .with_backend(BACKEND));
                }
                Agreement::Unknown => continue,
                _ => {
                    s.moved_from(&nodes[0]);
                    if let Some(b) = &tracking.backend {
                        b.moved_from(&nodes[0]);
                    }
                    return Err(moved(
                        sink,
                        "the Sentinel service's primary moved; tracking the new one",
                    ));
                }
            }
        }
        last_agreed = Instant::now();
        sink.synced(sent);
    }
}

/// How long the sentinels may leave the tracked primary unconfirmed before the channel
/// reports [`ChannelFault::Unconfirmed`] and starts anew.
const UNCONFIRMED_AFTER: Duration = Duration::from_secs(1);

/// Reports the channel down because the node it confirmed against no longer takes the
/// writes; the error ends the session.
fn moved(sink: &InvalidationSink, what: &'static str) -> Error {
    sink.down_because(ChannelFault::PrimaryMoved);
    Error::new(ErrorKind::Unavailable, what).with_backend(BACKEND)
}

/// Whether a `ROLE` reply is a primary's.
fn is_master(role: &Value) -> bool {
    let Value::Array(items) = role else {
        return false;
    };
    match items.first() {
        Some(Value::BulkString(b)) => b == b"master",
        Some(Value::SimpleString(s)) => s == "master",
        _ => false,
    }
}
