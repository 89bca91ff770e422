//! Redis Sentinel: the primary of a monitored service, found through the sentinels and
//! followed across failovers.
//!
//! # URL
//!
//! ```text
//! redis+sentinel://[user[:password]@]s1:p1,s2:p2,.../service_name[/db][?param=value&...]
//! rediss+sentinel://...        (TLS to the sentinels and to the primary, feature `tls`)
//! ```
//!
//! The hosts are **sentinels** (default port 26379), never data nodes; `service_name` is
//! the name the sentinels monitor the primary under (`sentinel monitor <name> ...`).
//!
//! # Credentials
//!
//! The user name and password of the URL authenticate to the **primary** (and are what
//! `RedisConfig::username` and its password hold), as for `redis://`. Sentinels usually
//! run without a password; when they require one, give it as `sentinel_password=...`
//! (and `sentinel_username=...` for an ACL user) — the primary's credentials are never sent
//! to a sentinel. `sentinel_password` is a secret like the URL's password: it never appears
//! in `Debug` output, in errors, or in the URL as [`BackendUrl`](larder_cache_api::url)
//! prints it.
//!
//! # Discovery and failover
//!
//! Following the Sentinel client protocol, the sentinels are asked in order
//! (`SENTINEL GET-MASTER-ADDR-BY-NAME`); the first that names an address wins, and moves to
//! the front of the list for next time. The named node is connected to and must answer
//! `ROLE` as `master` before it is used, so a stale answer is not trusted. Each sentinel
//! costs at most `connect_timeout + response_timeout`: one that is down, stalled or answers
//! something that is not Redis protocol is passed over for the next.
//!
//! Operations share one multiplexed connection to the primary. When it fails — the
//! connection is lost, a reply times out, or the server answers `READONLY` (it was demoted
//! to a replica) — the sentinels are asked again, once, in the background, and later
//! operations wait for that answer (within their own deadline). Besides, a sentinel is asked
//! every `sentinel_check_ms` (default 250) whether the primary moved: a failover with the
//! old primary still alive (`SENTINEL FAILOVER`, a partition) breaks no connection, and the
//! sentinels demote the old primary only seconds later. A write refused with
//! `READONLY` was not applied and is sent once more to the newly found primary; any other
//! failed operation returns its error, since it may or may not have been applied.
//!
//! # What Sentinel does not promise
//!
//! Replication to the replicas is asynchronous: a write the old primary acknowledged but
//! had not yet sent on is **lost** when a replica is promoted. So a Sentinel backend
//! declares `linearizable_cas = false` (as Redis Cluster does), and coordination
//! (`larder-coord`) refuses it: a lease granted on the old primary could be granted again
//! on the new one.

use std::fmt;
use std::sync::{Arc, Mutex};

use larder_cache_api::url::BackendUrl;
use larder_cache_api::{Error, ErrorKind, Result};
use redis::aio::MultiplexedConnection;
use redis::{Cmd, ErrorKind as RK, RedisError, ServerErrorKind, Value};
use tokio::sync::watch;

use crate::config::RedisConfig;
use crate::error::BACKEND;

/// Default port of a sentinel.
pub(crate) const DEFAULT_SENTINEL_PORT: u16 = 26379;

/// The Sentinel part of a [`RedisConfig`]: which service, and how to authenticate to the
/// sentinels themselves. `Debug` never shows the password.
///
/// Parsed from `redis+sentinel://[user[:password]@]s1:p1,s2:p2/service_name[/db]`: the
/// hosts are sentinels (default port 26379). The URL's user and password authenticate to
/// the **primary**; the sentinels get none of them, only `sentinel_username` and
/// `sentinel_password` when given (both options, the password hidden wherever the URL is
/// printed). `sentinel_check_ms` (default 250) is how often a sentinel is asked whether
/// the primary moved while the one in use still answers.
///
/// A Sentinel backend declares `linearizable_cas = false`: replication to the replica that
/// gets promoted is asynchronous, so a failover can lose writes the old primary
/// acknowledged, and coordination (`larder-coord`) refuses it.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SentinelConfig {
    /// The name the sentinels monitor the primary under.
    pub service_name: String,
    /// ACL user name for the sentinels (`sentinel_username=`); `None` is `default`.
    pub username: Option<String>,
    password: Option<String>,
    /// How often a sentinel is asked whether the primary moved while the one in use still
    /// answers (`sentinel_check_ms=`, default 250).
    pub check_interval: std::time::Duration,
}

impl fmt::Debug for SentinelConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SentinelConfig")
            .field("service_name", &self.service_name)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("check_interval", &self.check_interval)
            .finish()
    }
}

impl SentinelConfig {
    /// The service `service_name`, sentinels without authentication.
    pub fn new(service_name: impl Into<String>) -> Self {
        SentinelConfig {
            service_name: service_name.into(),
            username: None,
            password: None,
            check_interval: std::time::Duration::from_millis(250),
        }
    }

    /// Sets the password the sentinels require (kept out of `Debug` and errors).
    pub fn with_password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// Sets the ACL user name for the sentinels.
    pub fn with_username(mut self, username: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self
    }

    /// Whether a sentinel password is set.
    pub fn has_password(&self) -> bool {
        self.password.is_some()
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.check_interval < std::time::Duration::from_millis(10) {
            return Err(config_err("sentinel_check_ms must be at least 10"));
        }
        let name = &self.service_name;
        if name.is_empty() {
            return Err(config_err(
                "no Sentinel service name: write redis+sentinel://host:port,.../service_name[/db]",
            ));
        }
        if name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '/')
        {
            return Err(config_err(format!(
                "Sentinel service name {name:?} holds a space, control character or '/'"
            )));
        }
        Ok(())
    }
}

/// Splits the path of a Sentinel URL, `/service_name[/db]`, into the service name and the
/// database.
pub(crate) fn parse_path(path: &str) -> Result<(String, Option<u32>)> {
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
    let mut parts = trimmed.split('/');
    let service = parts.next().unwrap_or_default();
    if service.is_empty() {
        return Err(config_err(
            "no Sentinel service name: write redis+sentinel://host:port,.../service_name[/db]",
        ));
    }
    let db = match parts.next() {
        None => None,
        Some(db) => Some(db.parse::<u32>().map_err(|e| {
            config_err(format!(
                "database {db:?} in the Sentinel URL is not a number from 0 up"
            ))
            .with_source(e)
        })?),
    };
    if parts.next().is_some() {
        return Err(config_err(format!(
            "the path {path:?} of a Sentinel URL has more than /service_name/db"
        )));
    }
    Ok((service.to_owned(), db))
}

/// The URL options only a Sentinel URL takes.
pub(crate) const OPTIONS: [&str; 3] = [
    "sentinel_username",
    "sentinel_password",
    "sentinel_check_ms",
];

/// The Sentinel parts of a parsed `redis+sentinel://` URL: service name, database, and the
/// sentinels' credentials. The caller fills in hosts, the primary's credentials and the
/// other options.
pub(crate) fn from_url(u: &BackendUrl) -> Result<RedisConfig> {
    let (service, db) = parse_path(u.path())?;
    let mut s = SentinelConfig::new(service);
    s.username = u.option("sentinel_username").map(str::to_owned);
    s.password = u.option("sentinel_password").map(str::to_owned);
    if let Some(ms) = u.option_parsed::<u64>("sentinel_check_ms")? {
        s.check_interval = std::time::Duration::from_millis(ms);
    }
    Ok(RedisConfig::sentinel(Vec::new(), s).with_db(db.unwrap_or(0)))
}

fn config_err(msg: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::new(ErrorKind::Config, msg).with_backend(BACKEND)
}

/// The primary in use.
#[derive(Debug)]
struct Primary {
    addr: (String, u16),
    conn: MultiplexedConnection,
    generation: u64,
}

/// Why no primary could be found: one line per sentinel asked.
#[derive(Debug, Clone)]
struct Failure {
    kind: ErrorKind,
    detail: String,
}

impl Failure {
    fn into_error(self) -> Error {
        Error::new(self.kind, format!("connect: {}", self.detail)).with_backend(BACKEND)
    }

    /// The failure as a client error, for the operation that waited for it (which maps it
    /// back to the same kind in `error::map`).
    fn to_redis(&self) -> RedisError {
        match self.kind {
            ErrorKind::Config => RedisError::from((
                RK::InvalidClientConfig,
                "Redis Sentinel",
                self.detail.clone(),
            )),
            ErrorKind::Timeout => {
                std::io::Error::new(std::io::ErrorKind::TimedOut, self.detail.clone()).into()
            }
            _ => std::io::Error::new(std::io::ErrorKind::NotConnected, self.detail.clone()).into(),
        }
    }
}

#[derive(Debug, Clone)]
enum Phase {
    Ready(Arc<Primary>),
    Discovering,
    Failed(Failure),
}

struct Shared {
    /// The primary's configuration (credentials, database, TLS, timeouts).
    config: RedisConfig,
    sentinel: SentinelConfig,
    /// The sentinels, the one that answered last first.
    sentinels: Mutex<Vec<(String, u16)>>,
    phase: watch::Sender<Phase>,
    generation: std::sync::atomic::AtomicU64,
}

/// A self-healing connection to the primary of a Sentinel-monitored service.
#[derive(Clone)]
pub(crate) struct SentinelConn {
    shared: Arc<Shared>,
}

impl fmt::Debug for SentinelConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SentinelConn")
            .field("service", &self.shared.sentinel.service_name)
            .finish_non_exhaustive()
    }
}

impl SentinelConn {
    /// Finds the primary (within the connect deadline) and connects to it.
    pub(crate) async fn connect(config: &RedisConfig) -> Result<Self> {
        let sentinel = config
            .sentinel
            .clone()
            .ok_or_else(|| config_err("a Sentinel topology needs a service name"))?;
        let (tx, _) = watch::channel(Phase::Discovering);
        let shared = Arc::new(Shared {
            config: config.clone(),
            sentinel,
            sentinels: Mutex::new(config.nodes.clone()),
            phase: tx,
            generation: std::sync::atomic::AtomicU64::new(0),
        });
        // Every sentinel may take one attempt to answer and one to reach the primary it
        // names; nothing here waits longer than that.
        let per_step = config.connect_timeout + config.response_timeout;
        let limit = per_step * 2 * u32::try_from(config.nodes.len()).unwrap_or(u32::MAX);
        let primary = match tokio::time::timeout(limit, discover(&shared)).await {
            Ok(Ok(p)) => p,
            Ok(Err(f)) => return Err(f.into_error()),
            Err(e) => return Err(crate::error::deadline("connect", limit, e)),
        };
        shared.phase.send_replace(Phase::Ready(Arc::new(primary)));
        tokio::spawn(watch_sentinels(
            Arc::downgrade(&shared),
            shared.sentinel.check_interval,
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
                let next = match discover(&shared).await {
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
        let step = shared.config.connect_timeout + shared.config.response_timeout;
        let answer = tokio::time::timeout(step, async {
            let conn = match &mut cached {
                Some(c) => c,
                None => {
                    let list = shared
                        .sentinels
                        .lock()
                        .map(|s| s.clone())
                        .unwrap_or_else(|p| p.into_inner().clone());
                    let (host, port) = &list[next % list.len()];
                    cached.insert(open_sentinel(&shared, host, *port).await?)
                }
            };
            master_addr(&shared, conn).await
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

/// A write refused by a replica.
fn is_readonly(e: &RedisError) -> bool {
    e.kind() == RK::Server(ServerErrorKind::ReadOnly) || e.code() == Some("READONLY")
}

/// An error after which the primary must be looked up again: the connection is gone or
/// stuck, or the server is no longer (or not yet) a usable primary.
fn needs_new_primary(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
        || is_readonly(e)
        || matches!(
            e.kind(),
            RK::Server(ServerErrorKind::MasterDown | ServerErrorKind::BusyLoading)
        )
}

/// What went wrong with one sentinel, or with the primary it named.
enum Problem {
    /// Not reachable, or the node it named is not a reachable primary: may heal.
    Down(String),
    /// No reply in time.
    Slow(String),
    /// Will not heal by asking again: not a sentinel, wrong credentials, unknown service.
    Misconfigured(String),
}

/// Asks the sentinels in order for the primary of the service, and connects to it.
async fn discover(shared: &Shared) -> std::result::Result<Primary, Failure> {
    let sentinels = shared
        .sentinels
        .lock()
        .map(|s| s.clone())
        .unwrap_or_else(|p| p.into_inner().clone());
    let step = shared.config.connect_timeout + shared.config.response_timeout;
    let name = &shared.sentinel.service_name;
    let mut problems = Vec::new();
    for (i, (host, port)) in sentinels.iter().enumerate() {
        let at = format!("sentinel {}", host_port(host, *port));
        let asked = tokio::time::timeout(step, ask_sentinel(shared, host, *port)).await;
        let (mhost, mport) = match asked {
            Err(_) => {
                problems.push(Problem::Slow(format!("{at}: no reply within {step:?}")));
                continue;
            }
            Ok(Err(p)) => {
                problems.push(p.prefixed(&at, ": "));
                continue;
            }
            Ok(Ok(None)) => {
                problems.push(Problem::Misconfigured(format!(
                    "{at}: monitors no service named {name:?}"
                )));
                continue;
            }
            Ok(Ok(Some(addr))) => addr,
        };
        let named = format!("{at} names {} as primary", host_port(&mhost, mport));
        match tokio::time::timeout(step, connect_primary(shared, &mhost, mport)).await {
            Err(_) => problems.push(Problem::Slow(format!(
                "{named}, which gave no reply within {step:?}"
            ))),
            Ok(Err(p)) => problems.push(p.prefixed(&format!("{named}, but"), " ")),
            Ok(Ok(conn)) => {
                if i > 0 {
                    if let Ok(mut s) = shared.sentinels.lock() {
                        if let Some(pos) = s.iter().position(|a| a == &(host.clone(), *port)) {
                            let a = s.remove(pos);
                            s.insert(0, a);
                        }
                    }
                }
                let generation = shared
                    .generation
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                    + 1;
                return Ok(Primary {
                    addr: (mhost, mport),
                    conn,
                    generation,
                });
            }
        }
    }
    let kind = if problems
        .iter()
        .all(|p| matches!(p, Problem::Misconfigured(_)))
    {
        ErrorKind::Config
    } else if problems.iter().any(|p| matches!(p, Problem::Down(_))) {
        ErrorKind::Unavailable
    } else {
        ErrorKind::Timeout
    };
    let lines: Vec<&str> = problems
        .iter()
        .map(|p| match p {
            Problem::Down(s) | Problem::Slow(s) | Problem::Misconfigured(s) => s.as_str(),
        })
        .collect();
    Err(Failure {
        kind,
        detail: format!(
            "no primary found for Sentinel service {name:?}: {}",
            lines.join("; ")
        ),
    })
}

impl Problem {
    fn prefixed(self, at: &str, sep: &str) -> Problem {
        match self {
            Problem::Down(s) => Problem::Down(format!("{at}{sep}{s}")),
            Problem::Slow(s) => Problem::Slow(format!("{at}{sep}{s}")),
            Problem::Misconfigured(s) => Problem::Misconfigured(format!("{at}{sep}{s}")),
        }
    }
}

fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Which node a problem is about, for the hint in its message.
#[derive(Clone, Copy)]
enum Node {
    Sentinel,
    Primary,
}

impl Node {
    fn what(self) -> &'static str {
        match self {
            Node::Sentinel => "a Redis Sentinel",
            Node::Primary => "a Redis primary",
        }
    }

    fn credentials(self) -> &'static str {
        match self {
            Node::Sentinel => "check sentinel_password and sentinel_username",
            Node::Primary => "check the user and password in the URL",
        }
    }
}

/// A client error on one line, at most 300 characters: a reply that is not Redis protocol
/// is quoted by the client, newlines and all.
fn one_line(e: &RedisError) -> String {
    let mut s = e
        .to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    if let Some((cut, _)) = s.char_indices().nth(300) {
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

/// Describes a client error from a node that should be a sentinel or a primary. Messages
/// carry server replies and I/O errors only, never credentials.
fn problem(e: &RedisError, node: Node) -> Problem {
    let what = node.what();
    let text = one_line(e);
    if e.is_timeout() {
        return Problem::Slow(format!("no reply in time ({text})"));
    }
    // rustls reports an untrusted or mismatched certificate, and a TLS client talking to a
    // plain server, as invalid data (see `error::map_connect`).
    if crate::error::io_kind(e) == Some(std::io::ErrorKind::InvalidData) {
        return Problem::Misconfigured(format!(
            "TLS handshake failed ({text}; is the certificate trusted and the scheme right?)"
        ));
    }
    let auth = || {
        Problem::Misconfigured(format!(
            "authentication failed ({text}; {})",
            node.credentials()
        ))
    };
    match e.code() {
        Some("NOAUTH") | Some("WRONGPASS") => return auth(),
        Some("NOPERM") => return Problem::Misconfigured(format!("permission denied ({text})")),
        _ => {}
    }
    match e.kind() {
        RK::AuthenticationFailed => auth(),
        RK::Parse | RK::UnexpectedReturnType | RK::RESP3NotSupported => Problem::Misconfigured(
            format!("the reply is not that of {what} (not Redis protocol: {text})"),
        ),
        RK::Server(ServerErrorKind::ResponseError) | RK::Extension => {
            Problem::Misconfigured(format!("refused: {text} (is it {what}?)"))
        }
        RK::InvalidClientConfig => {
            Problem::Misconfigured(format!("invalid configuration ({text})"))
        }
        _ => Problem::Down(format!("unreachable ({text})")),
    }
}

fn async_config(config: &RedisConfig) -> redis::AsyncConnectionConfig {
    redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(config.connect_timeout))
        .set_response_timeout(Some(config.response_timeout))
}

/// `SENTINEL GET-MASTER-ADDR-BY-NAME` on one sentinel: the address, or `None` if it does
/// not monitor the service.
async fn ask_sentinel(
    shared: &Shared,
    host: &str,
    port: u16,
) -> std::result::Result<Option<(String, u16)>, Problem> {
    let mut conn = open_sentinel(shared, host, port).await?;
    master_addr(shared, &mut conn).await
}

/// A connection to the sentinel at `host:port`.
async fn open_sentinel(
    shared: &Shared,
    host: &str,
    port: u16,
) -> std::result::Result<MultiplexedConnection, Problem> {
    // The sentinel's own credentials, database 0; TLS as for the primary.
    let mut sc = shared.config.clone().with_db(0);
    sc.username = shared.sentinel.username.clone();
    sc.set_password(shared.sentinel.password.clone());
    let info = crate::core::node_info(&sc, host, port).map_err(|e| Problem::Down(e.to_string()))?;
    let client = crate::core::Core::single_client(&sc, info)
        .map_err(|e| Problem::Misconfigured(e.to_string()))?;
    client
        .get_multiplexed_async_connection_with_config(&async_config(&sc))
        .await
        .map_err(|e| problem(&e, Node::Sentinel))
}

/// `SENTINEL GET-MASTER-ADDR-BY-NAME` on a sentinel connection.
async fn master_addr(
    shared: &Shared,
    conn: &mut MultiplexedConnection,
) -> std::result::Result<Option<(String, u16)>, Problem> {
    let reply: Value = redis::cmd("SENTINEL")
        .arg("GET-MASTER-ADDR-BY-NAME")
        .arg(&shared.sentinel.service_name)
        .query_async(conn)
        .await
        .map_err(|e| problem(&e, Node::Sentinel))?;
    match reply {
        Value::Nil => Ok(None),
        Value::Array(items) if items.len() == 2 => {
            let host = text(&items[0]);
            let port = text(&items[1]).and_then(|p| p.parse::<u16>().ok());
            match (host, port) {
                (Some(h), Some(p)) if !h.is_empty() && p != 0 => Ok(Some((h, p))),
                _ => Err(Problem::Misconfigured(
                    "answered an address that is not host and port".to_owned(),
                )),
            }
        }
        _ => Err(Problem::Misconfigured(
            "the reply is not that of a Redis Sentinel (no address, no nil)".to_owned(),
        )),
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// Connects to the node a sentinel named, with the primary's credentials and database, and
/// checks that it is a primary (`ROLE`).
async fn connect_primary(
    shared: &Shared,
    host: &str,
    port: u16,
) -> std::result::Result<MultiplexedConnection, Problem> {
    let config = &shared.config;
    let info =
        crate::core::node_info(config, host, port).map_err(|e| Problem::Down(e.to_string()))?;
    let client = crate::core::Core::single_client(config, info)
        .map_err(|e| Problem::Misconfigured(e.to_string()))?;
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&async_config(config))
        .await
        .map_err(|e| problem(&e, Node::Primary))?;
    let role: Value = redis::cmd("ROLE")
        .query_async(&mut conn)
        .await
        .map_err(|e| problem(&e, Node::Primary))?;
    let first = match &role {
        Value::Array(items) => items.first().and_then(text),
        _ => None,
    };
    match first.as_deref() {
        Some("master") => Ok(conn),
        // A failover in progress or a stale sentinel: may heal.
        Some(other) => Err(Problem::Down(format!(
            "it is a {other}, not a primary (failover in progress?)"
        ))),
        None => Err(Problem::Misconfigured(
            "the reply to ROLE is not that of a Redis primary".to_owned(),
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(parse_path("/mymaster").unwrap(), ("mymaster".into(), None));
        assert_eq!(parse_path("/mymaster/").unwrap(), ("mymaster".into(), None));
        assert_eq!(
            parse_path("/mymaster/3").unwrap(),
            ("mymaster".into(), Some(3))
        );
        for bad in ["", "/", "//3", "/m/x", "/m/-1", "/m/1/2"] {
            assert_eq!(
                parse_path(bad).unwrap_err().kind(),
                ErrorKind::Config,
                "{bad}"
            );
        }
        assert!(parse_path("/")
            .unwrap_err()
            .to_string()
            .contains("service name"));
    }

    #[test]
    fn debug_hides_the_sentinel_password() {
        let c = SentinelConfig::new("m").with_password("sentinel-secret-9");
        let d = format!("{c:?}");
        assert!(
            !d.contains("sentinel-secret-9") && d.contains("<redacted>"),
            "{d}"
        );
        assert!(c.has_password());
    }

    #[test]
    fn failures_keep_their_kind_through_the_client_error() {
        for kind in [
            ErrorKind::Config,
            ErrorKind::Timeout,
            ErrorKind::Unavailable,
        ] {
            let f = Failure {
                kind,
                detail: "x".into(),
            };
            let e = crate::error::map("GET", f.to_redis());
            assert_eq!(e.kind(), kind, "{e}");
        }
    }
}
