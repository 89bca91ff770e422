//! The connection to Redis (one server or a cluster), the stored layout and the Lua scripts.
//!
//! # Stored layout
//!
//! Each entry is one Redis string: an 8-byte big-endian version followed by the value, so a
//! plain `GET`/`MGET` returns value and version in one round trip.
//!
//! # Versions
//!
//! Versions are 64 random bits drawn by the client (a CSPRNG-seeded thread-local generator)
//! for every write. A per-key counter cannot survive a delete (the counter would go with the
//! key, and re-creating it would restart at 1: an A-B-A), and a global counter key breaks
//! Redis Cluster, where a script may touch keys of one slot only. With random versions a
//! version reappears for a key only by a 2^-64 coincidence per write, and an update never
//! reuses the version it replaces (redrawn in that case).
//!
//! # Retried compare-and-swap
//!
//! A reply can be lost after the server ran the command (a connection cut at the wrong
//! moment). The cluster client then sends the same command again, and so does this backend
//! for its scripts (see [`Core::eval`]); the single-server connection manager does not.
//! Without care, a create or update retried that way finds its own write, reports
//! `Conflict`, and [`Cache::update`](larder_cache_api::Cache::update) runs its closure a
//! second time (a counter goes up by 2). So every conditional write is idempotent:
//!
//! * **Create and update:** the new version the client drew doubles as the request id (64
//!   random bits drawn once per call, sent unchanged by every retry). When the stored
//!   version is not the expected one (or, for a create, the key is present) but *is* the
//!   new version, the write already happened: the script answers success, and the caller
//!   gets the version stored. This costs nothing on the common path and changes nothing in
//!   the stored layout. The check sees the current record only: if another client
//!   overwrote or deleted the entry between the lost reply and the retry, the retry reports
//!   the conflict it finds (the first write did take effect, and was replaced since).
//! * **Delete-if-version:** once the key is gone there is no record left to carry an id,
//!   so the script leaves a marker: a small key next to the entry (same hash slot, a name
//!   no valid [`Key`] can take, see [`marker_key`]) holding the caller's random request id
//!   for [`MARKER_TTL_MIN`] or four operation deadlines, whichever is longer. A retry that
//!   finds the key absent or replaced, and the marker holding its own id, reports success
//!   (`Ok(true)`); any other caller still gets the conflict. One `SET` more inside the same
//!   script; no extra round trip.

use std::io::Write;

use larder_cache_api::{Bytes, Entry, Key, Result, Ttl, Version};
use redis::{Cmd, RedisWrite, ToRedisArgs, Value};

use crate::config::{RedisConfig, Topology};
use crate::error::{self, map};

/// Bytes of the version header in front of every stored value.
const HEADER: usize = 8;

/// Set-if-absent. Replies 1 when written (or when the stored entry is this very write,
/// retried: its version is the one in ARGV[1]), else the stored string.
const CREATE: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur then
  if string.sub(cur, 1, 8) == string.sub(ARGV[1], 1, 8) then return 1 end
  return cur
end
if ARGV[2] == '0' then
  redis.call('SET', KEYS[1], ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return 1
";

/// Set-if-version. Replies 1 when written (or when the stored entry is this very write,
/// retried), 0 when absent, else the stored string.
const UPDATE: &str = r"
local cur = redis.call('GET', KEYS[1])
if not cur then return 0 end
local v = string.sub(cur, 1, 8)
if v ~= ARGV[1] then
  if v == string.sub(ARGV[2], 1, 8) then return 1 end
  return cur
end
if ARGV[3] == '0' then
  redis.call('SET', KEYS[1], ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return 1
";

/// Delete-if-version. KEYS[2] is the entry's delete marker, ARGV[2] the caller's request id,
/// ARGV[3] the marker's lifetime in milliseconds. Replies 1 when deleted (or when the marker
/// shows that this very request deleted it, retried), 0 when absent, else the stored string.
const DELETE_IF: &str = r"
local cur = redis.call('GET', KEYS[1])
if not cur or string.sub(cur, 1, 8) ~= ARGV[1] then
  if redis.call('GET', KEYS[2]) == ARGV[2] then return 1 end
  if not cur then return 0 end
  return cur
end
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return 1
";

/// How many times [`Core::eval`] sends a script whose reply may have been lost.
const SCRIPT_ATTEMPTS: u32 = 3;

/// The shortest life of a delete marker (see the module docs): longer than any resend of
/// the delete can come late.
const MARKER_TTL_MIN: std::time::Duration = std::time::Duration::from_secs(10);

/// Removes the expiry. PERSIST alone replies 0 both for an absent key and for a key without
/// expiry; the contract needs to tell them apart.
const PERSIST: &str = r"
if redis.call('PERSIST', KEYS[1]) == 1 then return 1 end
return redis.call('EXISTS', KEYS[1])
";

/// A Lua script run with EVALSHA, falling back to EVAL (which also caches it on that server)
/// when the server answers NOSCRIPT: after a restart, a failover, or on a cluster node that
/// has not seen it yet. One round trip in the common case.
#[derive(Debug)]
struct Lua {
    src: &'static str,
    sha: String,
}

impl Lua {
    fn new(src: &'static str) -> Self {
        Lua {
            src,
            sha: redis::Script::new(src).get_hash().to_string(),
        }
    }
}

/// The stored string `version ‖ value`, written straight into the command buffer (one copy).
struct Stored<'a> {
    version: u64,
    value: &'a [u8],
}

impl ToRedisArgs for Stored<'_> {
    fn write_redis_args<W>(&self, out: &mut W)
    where
        W: ?Sized + RedisWrite,
    {
        let mut w = out.writer_for_next_arg();
        // Writing into the command's in-memory buffer cannot fail.
        let _ = w.write_all(&self.version.to_be_bytes());
        let _ = w.write_all(self.value);
    }
}

/// One shared, multiplexed, self-reconnecting connection: to a single server
/// ([`redis::aio::ConnectionManager`]) or to a cluster (the cluster client's connection,
/// which keeps one multiplexed connection per node and follows slot moves).
#[derive(Clone)]
enum Conn {
    Single(redis::aio::ConnectionManager),
    #[cfg(feature = "cluster")]
    Cluster(redis::cluster_async::ClusterConnection),
    Sentinel(crate::sentinel::SentinelConn),
}

impl Conn {
    async fn query(&self, cmd: &Cmd) -> redis::RedisResult<Value> {
        match self {
            Conn::Single(c) => cmd.query_async(&mut c.clone()).await,
            #[cfg(feature = "cluster")]
            Conn::Cluster(c) => cmd.query_async(&mut c.clone()).await,
            Conn::Sentinel(s) => s.query(cmd).await,
        }
    }
}

/// The connection plus what every operation needs.
pub(crate) struct Core {
    conn: Conn,
    create: Lua,
    update: Lua,
    delete_if: Lua,
    persist: Lua,
    deadline: std::time::Duration,
    /// Lifetime of a delete marker, in milliseconds.
    marker_ttl_ms: u64,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

fn tcp_settings() -> redis::io::tcp::TcpSettings {
    use redis::io::tcp::socket2::TcpKeepalive;
    use std::time::Duration;
    // redis-rs leaves TCP_NODELAY off by default; on a multiplexed connection Nagle's
    // algorithm plus delayed ACKs holds small requests back, so turn it on. Keepalive and
    // a user timeout let the kernel declare a dead peer (host gone, no RST) so that the
    // connection is replaced instead of timing out forever.
    let s = redis::io::tcp::TcpSettings::default()
        .set_nodelay(true)
        .set_keepalive(
            TcpKeepalive::new()
                .with_time(Duration::from_secs(15))
                .with_interval(Duration::from_secs(5))
                .with_retries(3),
        );
    #[cfg(any(target_os = "android", target_os = "fuchsia", target_os = "linux"))]
    let s = s.set_user_timeout(Duration::from_secs(30));
    s
}

pub(crate) fn node_info(
    config: &RedisConfig,
    host: &str,
    port: u16,
) -> Result<redis::ConnectionInfo> {
    use redis::IntoConnectionInfo;
    let addr = if config.tls {
        redis::ConnectionAddr::TcpTls {
            host: host.to_string(),
            port,
            insecure: config.tls_insecure,
            tls_params: None,
        }
    } else {
        redis::ConnectionAddr::Tcp(host.to_string(), port)
    };
    let mut redis_info = redis::RedisConnectionInfo::default().set_db(i64::from(config.db));
    if let Some(u) = &config.username {
        redis_info = redis_info.set_username(u);
    }
    if let Some(p) = config.password() {
        redis_info = redis_info.set_password(p);
    }
    Ok(addr
        .into_connection_info()
        .map_err(error::map_connect)?
        .set_redis_settings(redis_info)
        .set_tcp_settings(tcp_settings()))
}

#[cfg(feature = "tls")]
pub(crate) fn ensure_crypto_provider() {
    // rustls needs a process-wide crypto provider; install ring unless the application
    // already installed one (a second install fails harmlessly).
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

impl Core {
    pub(crate) async fn connect(config: &RedisConfig) -> Result<Self> {
        config.validate()?;
        #[cfg(feature = "tls")]
        if config.tls {
            ensure_crypto_provider();
        }
        let deadline = config.op_deadline();
        let conn = match config.topology {
            Topology::Single => {
                let (host, port) = &config.nodes[0];
                let info = node_info(config, host, *port)?;
                let client = Self::single_client(config, info)?;
                let mc = redis::aio::ConnectionManagerConfig::new()
                    .set_response_timeout(Some(config.response_timeout))
                    .set_connection_timeout(Some(config.connect_timeout))
                    // Reconnect in the background a few times with a short, capped backoff:
                    // with no retries a reconnect that fails on something other than an I/O
                    // error (a server still loading its data, say) is never tried again, and
                    // the backend stays down after the server is back (the web app's
                    // restart test caught it). Every operation is bounded by its own deadline
                    // (`run`), and a failed reconnect is retried by the next operation that
                    // finds it failed.
                    .set_number_of_retries(4)
                    .set_min_delay(std::time::Duration::from_millis(50))
                    .set_max_delay(std::time::Duration::from_millis(500));
                // One direct attempt first, without the manager's retries, so that a wrong
                // password, database or certificate is reported as such, at once.
                let probe = async {
                    let cfg = redis::AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(config.connect_timeout))
                        .set_response_timeout(Some(config.response_timeout));
                    let mut c = client
                        .get_multiplexed_async_connection_with_config(&cfg)
                        .await?;
                    redis::cmd("PING").query_async::<Value>(&mut c).await
                };
                tokio::time::timeout(deadline, probe)
                    .await
                    .map_err(|e| error::deadline("connect", deadline, e))?
                    .map_err(error::map_connect)?;
                let connect = redis::aio::ConnectionManager::new_with_config(client, mc);
                let m = tokio::time::timeout(deadline * 2, connect)
                    .await
                    .map_err(|e| error::deadline("connect", deadline * 2, e))?
                    .map_err(error::map_connect)?;
                Conn::Single(m)
            }
            #[cfg(feature = "cluster")]
            Topology::Cluster => {
                let nodes = config
                    .nodes
                    .iter()
                    .map(|(h, p)| node_info(config, h, *p))
                    .collect::<Result<Vec<_>>>()?;
                let mut b = redis::cluster::ClusterClientBuilder::new(nodes)
                    .connection_timeout(config.connect_timeout)
                    .response_timeout(config.response_timeout)
                    .tcp_settings(tcp_settings());
                if let Some(u) = &config.username {
                    b = b.username(u);
                }
                if let Some(p) = config.password() {
                    b = b.password(p);
                }
                #[cfg(feature = "tls")]
                if config.tls {
                    b = b.tls(if config.tls_insecure {
                        redis::TlsMode::Insecure
                    } else {
                        redis::TlsMode::Secure
                    });
                    if let Some(pem) = config.tls_root_cert() {
                        b = b.certs(redis::TlsCertificates {
                            client_tls: None,
                            root_cert: Some(pem.to_vec()),
                        });
                    }
                }
                let client = b.build().map_err(error::map_connect)?;
                let c = tokio::time::timeout(deadline * 2, client.get_async_connection())
                    .await
                    .map_err(|e| error::deadline("connect", deadline * 2, e))?
                    .map_err(error::map_connect)?;
                Conn::Cluster(c)
            }
            Topology::Sentinel => {
                Conn::Sentinel(crate::sentinel::SentinelConn::connect(config).await?)
            }
            #[cfg(not(feature = "cluster"))]
            Topology::Cluster => {
                // `validate` refuses this already; kept for exhaustiveness.
                return Err(larder_cache_api::Error::new(
                    larder_cache_api::ErrorKind::Config,
                    "built without the `cluster` feature",
                )
                .with_backend(error::BACKEND));
            }
        };
        let core = Core {
            conn,
            create: Lua::new(CREATE),
            update: Lua::new(UPDATE),
            delete_if: Lua::new(DELETE_IF),
            persist: Lua::new(PERSIST),
            deadline,
            marker_ttl_ms: u64::try_from(MARKER_TTL_MIN.max(deadline * 4).as_millis())
                .unwrap_or(u64::MAX),
        };
        // Surface a missing password or an unusable database at connect time, not on the
        // first operation.
        core.run("PING", &redis::cmd("PING")).await?;
        Ok(core)
    }

    /// `INFO <section>` of the server, or of every master of a cluster: `(node, text)`, with
    /// `Err(why)` for a node (or the only server) that did not answer it.
    pub(crate) async fn info(
        &self,
        section: &str,
    ) -> Vec<(String, std::result::Result<String, String>)> {
        let mut c = redis::cmd("INFO");
        c.arg(section);
        match self.run("INFO", &c).await {
            Ok(v) => crate::durability::per_node(v),
            Err(e) => vec![(String::new(), Err(e.to_string()))],
        }
    }

    #[cfg_attr(not(feature = "tls"), allow(unused_variables))]
    pub(crate) fn single_client(
        config: &RedisConfig,
        info: redis::ConnectionInfo,
    ) -> Result<redis::Client> {
        #[cfg(feature = "tls")]
        if let (true, Some(pem)) = (config.tls, config.tls_root_cert()) {
            return redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.to_vec()),
                },
            )
            .map_err(error::map_connect);
        }
        redis::Client::open(info).map_err(error::map_connect)
    }

    /// With Sentinel: `host:port` of the primary in use, if one is known right now.
    pub(crate) fn sentinel_primary(&self) -> Option<String> {
        match &self.conn {
            Conn::Sentinel(s) => s.primary_addr(),
            _ => None,
        }
    }

    /// Runs `cmd` within the operation deadline.
    ///
    /// The timer costs about a tenth of the throughput of 64 concurrent `get`s
    /// (`benches/RESULTS.md`, Redis), but the connection manager's reconnect retries make
    /// its own timeouts no bound on an operation, and without retries it can stay down.
    async fn run(&self, op: &'static str, cmd: &Cmd) -> Result<Value> {
        match tokio::time::timeout(self.deadline, self.conn.query(cmd)).await {
            Ok(r) => r.map_err(|e| map(op, e)),
            Err(e) => Err(error::deadline(op, self.deadline, e)),
        }
    }

    /// Runs a script on `keys` (all in one hash slot): EVALSHA, then EVAL if the server
    /// does not have it.
    ///
    /// Every script is idempotent under a resend of the same arguments (see the module
    /// docs), so a failure that may have lost the reply of an applied script (connection
    /// dropped, no reply in time) is retried with the very same command, up to
    /// [`SCRIPT_ATTEMPTS`] sends in all, within the one operation deadline. The retry is
    /// what turns a lost reply into the caller's own success: on a single server nothing
    /// else would resend, and on a cluster the client's own resend lands on the same
    /// scripts.
    async fn eval(
        &self,
        op: &'static str,
        lua: &Lua,
        keys: &[&[u8]],
        args: impl Fn(&mut Cmd) + Sync,
    ) -> Result<Value> {
        let build = |verb: &str, body: &str| {
            let mut c = redis::cmd(verb);
            c.arg(body).arg(keys.len());
            for k in keys {
                c.arg(*k);
            }
            args(&mut c);
            c
        };
        let once = || async {
            match self.conn.query(&build("EVALSHA", &lua.sha)).await {
                Err(e)
                    if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    self.conn.query(&build("EVAL", lua.src)).await
                }
                r => r,
            }
        };
        let fut = async {
            let mut sent = 1;
            loop {
                match once().await {
                    Err(e) if sent < SCRIPT_ATTEMPTS && may_have_lost_reply(&e) => {
                        sent += 1;
                        // A dropped single-server connection is being replaced by the
                        // manager; the next query waits for it. A short pause spares a
                        // server that is not back yet a burst of attempts.
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    }
                    r => return r,
                }
            }
        };
        match tokio::time::timeout(self.deadline, fut).await {
            Ok(r) => r.map_err(|e| map(op, e)),
            Err(e) => Err(error::deadline(op, self.deadline, e)),
        }
    }

    pub(crate) async fn get(&self, key: &Key) -> Result<Option<Entry>> {
        // Sized up front: the command's buffers are allocated once, not grown per argument.
        let mut c = Cmd::with_capacity(2, 3 + key.as_bytes().len());
        c.arg("GET").arg(key.as_bytes());
        let v = self.run("GET", &c).await?;
        optional_entry("GET", v)
    }

    pub(crate) async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Entry>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut c = redis::cmd("MGET");
        for k in keys {
            c.arg(k.as_bytes());
        }
        match self.run("MGET", &c).await? {
            Value::Array(items) if items.len() == keys.len() => items
                .into_iter()
                .map(|v| optional_entry("MGET", v))
                .collect(),
            other => Err(error::unexpected("MGET", &other)),
        }
    }

    pub(crate) async fn overwrite(
        &self,
        key: &Key,
        value: &[u8],
        ttl: Option<Ttl>,
    ) -> Result<Version> {
        let version = new_version(None);
        let c = set_cmd(key, version, value, ttl);
        match self.run("SET", &c).await? {
            Value::Okay => Ok(Version::from_raw(version)),
            other => Err(error::unexpected("SET", &other)),
        }
    }

    pub(crate) async fn overwrite_many(
        &self,
        items: &[(Key, Bytes)],
        ttl: Option<Ttl>,
    ) -> Result<Vec<Version>> {
        let versions: Vec<u64> = items.iter().map(|_| new_version(None)).collect();
        match &self.conn {
            Conn::Single(m) => {
                // One pipeline: one write to the socket and one wait for all replies.
                let mut p = redis::pipe();
                for ((k, v), ver) in items.iter().zip(&versions) {
                    p.add_command(set_cmd(k, *ver, v, ttl)).ignore();
                }
                let mut m = m.clone();
                let fut = p.exec_async(&mut m);
                match tokio::time::timeout(self.deadline, fut).await {
                    Ok(r) => r.map_err(|e| map("SET (pipeline)", e))?,
                    Err(e) => return Err(error::deadline("SET (pipeline)", self.deadline, e)),
                }
            }
            Conn::Sentinel(s) => {
                let mut p = redis::pipe();
                for ((k, v), ver) in items.iter().zip(&versions) {
                    p.add_command(set_cmd(k, *ver, v, ttl)).ignore();
                }
                match tokio::time::timeout(self.deadline, s.exec_pipeline(&p)).await {
                    Ok(r) => r.map_err(|e| map("SET (pipeline)", e))?,
                    Err(e) => return Err(error::deadline("SET (pipeline)", self.deadline, e)),
                }
            }
            #[cfg(feature = "cluster")]
            Conn::Cluster(_) => {
                // Keys live on different nodes, and a cluster pipeline must stay in one slot;
                // concurrent commands share each node's multiplexed connection instead.
                let futs = items.iter().zip(&versions).map(|((k, v), ver)| {
                    let c = set_cmd(k, *ver, v, ttl);
                    async move {
                        match self.run("SET", &c).await? {
                            Value::Okay => Ok(()),
                            other => Err(error::unexpected("SET", &other)),
                        }
                    }
                });
                join_all(futs).await?;
            }
        }
        Ok(versions.into_iter().map(Version::from_raw).collect())
    }

    pub(crate) async fn create(
        &self,
        key: &Key,
        value: &[u8],
        ttl: Option<Ttl>,
    ) -> Result<Version> {
        let version = new_version(None);
        let reply = self
            .eval("create", &self.create, &[key.as_bytes()], |c| {
                c.arg(Stored { version, value }).arg(ttl_arg(ttl));
            })
            .await?;
        match reply {
            Value::Int(1) => Ok(Version::from_raw(version)),
            Value::BulkString(cur) => Err(error::exists(decode(cur)?)),
            other => Err(error::unexpected("create", &other)),
        }
    }

    pub(crate) async fn update(
        &self,
        key: &Key,
        value: &[u8],
        ttl: Option<Ttl>,
        expected: Version,
    ) -> Result<Version> {
        let expected = expected.into_raw();
        let version = new_version(Some(expected));
        let reply = self
            .eval("update", &self.update, &[key.as_bytes()], |c| {
                c.arg(&expected.to_be_bytes()[..])
                    .arg(Stored { version, value })
                    .arg(ttl_arg(ttl));
            })
            .await?;
        match reply {
            Value::Int(1) => Ok(Version::from_raw(version)),
            Value::Int(0) => Err(error::version_mismatch(None)),
            Value::BulkString(cur) => Err(error::version_mismatch(Some(decode(cur)?))),
            other => Err(error::unexpected("update", &other)),
        }
    }

    pub(crate) async fn delete(&self, key: &Key) -> Result<bool> {
        let mut c = redis::cmd("DEL");
        c.arg(key.as_bytes());
        match self.run("DEL", &c).await? {
            Value::Int(n) => Ok(n > 0),
            other => Err(error::unexpected("DEL", &other)),
        }
    }

    pub(crate) async fn delete_if(&self, key: &Key, expected: Version) -> Result<bool> {
        let expected = expected.into_raw().to_be_bytes();
        // Drawn once for this call: every resend carries the same id.
        let request: [u8; 8] = rand::random();
        let marker = marker_key(key.as_bytes());
        let reply = self
            .eval(
                "delete_if_version",
                &self.delete_if,
                &[key.as_bytes(), &marker],
                |c| {
                    c.arg(&expected[..])
                        .arg(&request[..])
                        .arg(self.marker_ttl_ms);
                },
            )
            .await?;
        match reply {
            Value::Int(1) => Ok(true),
            Value::Int(0) => Err(error::version_mismatch(None)),
            Value::BulkString(cur) => Err(error::version_mismatch(Some(decode(cur)?))),
            other => Err(error::unexpected("delete_if_version", &other)),
        }
    }

    pub(crate) async fn touch(&self, key: &Key, ttl: Option<Ttl>) -> Result<bool> {
        let reply = match ttl {
            Some(t) => {
                let mut c = redis::cmd("PEXPIRE");
                c.arg(key.as_bytes()).arg(t.as_millis());
                self.run("PEXPIRE", &c).await?
            }
            None => {
                self.eval("PERSIST", &self.persist, &[key.as_bytes()], |_| {})
                    .await?
            }
        };
        match reply {
            Value::Int(n) => Ok(n == 1),
            other => Err(error::unexpected("touch", &other)),
        }
    }
}

/// Whether `e` may hide a reply lost after the server ran the command, so that sending it
/// again is the way to learn the outcome: the connection dropped or failed, or no reply came
/// in time. Errors the server answered (a script error, `NOSCRIPT`, a refusal) are final.
fn may_have_lost_reply(e: &redis::RedisError) -> bool {
    e.is_timeout()
        || e.is_connection_dropped()
        || e.is_io_error()
        || e.kind() == redis::ErrorKind::ClusterConnectionNotFound
}

/// The name of `key`'s delete marker (see the module docs): in the same Redis Cluster hash
/// slot as `key`, so that one script can touch both, and never a valid [`Key`] (it holds a
/// space), so that it cannot collide with an entry.
///
/// Redis hashes the part between the first `{` and the next `}` when that part is not
/// empty (the hash tag), else the whole key. Three shapes, told apart by their suffix:
///
/// * a key with a hash tag: `key ␠larder:del` (appending keeps the tag);
/// * a key without one and without `}`: `{key}␠larder:del:w` (the whole key becomes the tag);
/// * otherwise: `{t}␠larder:del:s␠key`, where `t` is a short tag of the key's slot.
fn marker_key(key: &[u8]) -> Vec<u8> {
    const TAGGED: &[u8] = b" larder:del";
    const WRAPPED: &[u8] = b" larder:del:w";
    const SLOTTED: &[u8] = b" larder:del:s ";
    let mut m = Vec::with_capacity(key.len() + 24);
    if hash_tag(key).is_some() {
        m.extend_from_slice(key);
        m.extend_from_slice(TAGGED);
    } else if !key.contains(&b'}') {
        m.push(b'{');
        m.extend_from_slice(key);
        m.push(b'}');
        m.extend_from_slice(WRAPPED);
    } else {
        m.push(b'{');
        m.extend_from_slice(slot_tag(slot(key)));
        m.push(b'}');
        m.extend_from_slice(SLOTTED);
        m.extend_from_slice(key);
    }
    m
}

/// The hash tag of `key`, as Redis Cluster defines it.
fn hash_tag(key: &[u8]) -> Option<&[u8]> {
    let open = key.iter().position(|b| *b == b'{')?;
    let len = key[open + 1..].iter().position(|b| *b == b'}')?;
    let tag = &key[open + 1..open + 1 + len];
    (!tag.is_empty()).then_some(tag)
}

/// The Redis Cluster hash slot of `key`: CRC16 (XMODEM) of its hash tag or of the whole key,
/// modulo 16384.
fn slot(key: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in hash_tag(key).unwrap_or(key) {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc & 0x3FFF
}

/// A short string (letters and digits) whose slot is `slot`: the first such string in
/// length-then-alphabet order, from a table built on first use (16384 entries).
fn slot_tag(want: u16) -> &'static [u8] {
    static TABLE: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
        let mut table = vec![Vec::new(); 16384];
        let mut missing = table.len();
        let mut n: u64 = 0;
        while missing > 0 {
            // The n-th string in bijective base 62: every length, every string, once.
            let mut s = Vec::new();
            let mut i = n;
            loop {
                s.push(ALPHABET[(i % 62) as usize]);
                if i < 62 {
                    break;
                }
                i = i / 62 - 1;
            }
            n += 1;
            let t = &mut table[usize::from(slot(&s))];
            if t.is_empty() {
                *t = s;
                missing -= 1;
            }
        }
        table
    });
    &table[usize::from(want)]
}

#[cfg(feature = "cluster")]
async fn join_all<F: std::future::Future<Output = Result<()>>>(
    futs: impl Iterator<Item = F>,
) -> Result<()> {
    let results = futures_util::future::join_all(futs).await;
    results.into_iter().collect()
}

fn set_cmd(key: &Key, version: u64, value: &[u8], ttl: Option<Ttl>) -> Cmd {
    let mut c = redis::cmd("SET");
    c.arg(key.as_bytes()).arg(Stored { version, value });
    // SET without PX drops any previous expiry, which is the contract: every write states
    // its TTL.
    if let Some(t) = ttl {
        c.arg("PX").arg(t.as_millis());
    }
    c
}

/// The TTL argument of the scripts: milliseconds, or "0" for none (a TTL is never zero).
fn ttl_arg(ttl: Option<Ttl>) -> u64 {
    ttl.map_or(0, Ttl::as_millis)
}

fn new_version(not: Option<u64>) -> u64 {
    loop {
        let v: u64 = rand::random();
        if Some(v) != not {
            return v;
        }
    }
}

fn optional_entry(op: &'static str, v: Value) -> Result<Option<Entry>> {
    match v {
        Value::Nil => Ok(None),
        Value::BulkString(b) => decode(b).map(Some),
        other => Err(error::unexpected(op, &other)),
    }
}

/// Splits a stored string into version and value without copying the value.
fn decode(raw: Vec<u8>) -> Result<Entry> {
    let Some(head) = raw.get(..HEADER) else {
        return Err(error::foreign(raw.len()));
    };
    let mut v = [0u8; HEADER];
    v.copy_from_slice(head);
    let version = Version::from_raw(u64::from_be_bytes(v));
    let value = Bytes::from(raw).slice(HEADER..);
    Ok(Entry { value, version })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn layout_roundtrips() {
        let mut raw = 0x0102_0304_0506_0708u64.to_be_bytes().to_vec();
        raw.extend_from_slice(b"hello");
        let e = decode(raw).unwrap();
        assert_eq!(e.version.into_raw(), 0x0102_0304_0506_0708);
        assert_eq!(&e.value[..], b"hello");
        let e = decode(vec![0; 8]).unwrap();
        assert!(e.value.is_empty());
        assert_eq!(
            decode(b"short".to_vec()).unwrap_err().kind(),
            larder_cache_api::ErrorKind::Decode
        );
    }

    #[test]
    fn stored_is_one_argument() {
        let args = Stored {
            version: 1,
            value: b"ab",
        }
        .to_redis_args();
        assert_eq!(args, vec![vec![0, 0, 0, 0, 0, 0, 0, 1, b'a', b'b']]);
    }

    #[test]
    fn update_never_reuses_the_replaced_version() {
        for _ in 0..1000 {
            assert_ne!(new_version(Some(7)), 7);
        }
    }

    #[test]
    fn slot_matches_the_cluster_spec() {
        // The examples of the Redis Cluster specification, and CRC16("123456789") = 0x31C3.
        assert_eq!(slot(b"123456789"), 0x31C3 & 0x3FFF);
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_ne!(slot(b"foo{}{bar}"), slot(b"bar"));
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
        assert_eq!(slot(b"foo{bar}{zap}"), slot(b"bar"));
        assert_eq!(hash_tag(b"foo{}{bar}"), None);
        assert_eq!(hash_tag(b"foo{{bar}}zap"), Some(&b"{bar"[..]));
    }

    #[test]
    fn every_slot_has_a_short_tag() {
        for s in 0..16384u16 {
            let t = slot_tag(s);
            assert!(!t.is_empty() && t.len() <= 4, "slot {s}: {t:?}");
            assert!(t.iter().all(u8::is_ascii_alphanumeric));
            assert_eq!(slot(t), s);
        }
    }

    #[test]
    fn markers_share_the_slot_and_never_collide() {
        let keys: [&[u8]; 9] = [
            b"plain",
            b"{plain}",
            b"{user1}:profile",
            b"pre{tag}post{x}",
            b"closing}only",
            b"{}empty}",
            b"}{x",
            b"open{",
            b"{",
        ];
        let mut seen = std::collections::HashSet::new();
        for k in keys {
            let m = marker_key(k);
            assert_eq!(slot(&m), slot(k), "{:?}", String::from_utf8_lossy(k));
            assert!(m.contains(&b' '), "not a valid larder key");
            assert!(seen.insert(m), "{:?}", String::from_utf8_lossy(k));
        }
    }

    #[cfg(feature = "cluster")]
    #[test]
    fn slot_agrees_with_the_cluster_client() {
        use redis::cluster_routing::Slot;
        for k in [
            &b"plain"[..],
            b"{a}b",
            b"a}b",
            b"{}x}",
            b"x{y",
            b"\xff{\x00}",
        ] {
            assert_eq!(Slot::for_key(k), Slot::new(slot(k)).unwrap());
            assert_eq!(Slot::for_key(marker_key(k)), Slot::for_key(k));
        }
    }

    #[test]
    fn scripts_have_distinct_hashes() {
        let hashes = [CREATE, UPDATE, DELETE_IF, PERSIST].map(|s| Lua::new(s).sha);
        for (i, a) in hashes.iter().enumerate() {
            assert_eq!(a.len(), 40);
            for b in &hashes[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }
}
