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

use std::io::Write;

use larder_cache_api::{Bytes, Entry, Key, Result, Ttl, Version};
use redis::{Cmd, RedisWrite, ToRedisArgs, Value};

use crate::config::{RedisConfig, Topology};
use crate::error::{self, map};

/// Bytes of the version header in front of every stored value.
const HEADER: usize = 8;

/// Set-if-absent. Replies 1 when written, else the stored string.
const CREATE: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur then return cur end
if ARGV[2] == '0' then
  redis.call('SET', KEYS[1], ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return 1
";

/// Set-if-version. Replies 1 when written, 0 when absent, else the stored string.
const UPDATE: &str = r"
local cur = redis.call('GET', KEYS[1])
if not cur then return 0 end
if string.sub(cur, 1, 8) ~= ARGV[1] then return cur end
if ARGV[3] == '0' then
  redis.call('SET', KEYS[1], ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return 1
";

/// Delete-if-version. Replies 1 when deleted, 0 when absent, else the stored string.
const DELETE_IF: &str = r"
local cur = redis.call('GET', KEYS[1])
if not cur then return 0 end
if string.sub(cur, 1, 8) ~= ARGV[1] then return cur end
redis.call('DEL', KEYS[1])
return 1
";

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
                    // Reconnect in the background a few times with a short, capped backoff;
                    // every operation is bounded by its own deadline anyway, and a failed
                    // reconnect is retried by the next operation that finds it failed.
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
    async fn run(&self, op: &'static str, cmd: &Cmd) -> Result<Value> {
        match tokio::time::timeout(self.deadline, self.conn.query(cmd)).await {
            Ok(r) => r.map_err(|e| map(op, e)),
            Err(e) => Err(error::deadline(op, self.deadline, e)),
        }
    }

    /// Runs a script: EVALSHA, then EVAL if the server does not have it.
    async fn eval(
        &self,
        op: &'static str,
        lua: &Lua,
        key: &Key,
        args: impl Fn(&mut Cmd) + Sync,
    ) -> Result<Value> {
        let build = |verb: &str, body: &str| {
            let mut c = redis::cmd(verb);
            c.arg(body).arg(1).arg(key.as_bytes());
            args(&mut c);
            c
        };
        let fut = async {
            match self.conn.query(&build("EVALSHA", &lua.sha)).await {
                Err(e)
                    if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    self.conn.query(&build("EVAL", lua.src)).await
                }
                r => r,
            }
        };
        match tokio::time::timeout(self.deadline, fut).await {
            Ok(r) => r.map_err(|e| map(op, e)),
            Err(e) => Err(error::deadline(op, self.deadline, e)),
        }
    }

    pub(crate) async fn get(&self, key: &Key) -> Result<Option<Entry>> {
        let mut c = redis::cmd("GET");
        c.arg(key.as_bytes());
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
            .eval("create", &self.create, key, |c| {
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
            .eval("update", &self.update, key, |c| {
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
        let reply = self
            .eval("delete_if_version", &self.delete_if, key, |c| {
                c.arg(&expected[..]);
            })
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
            None => self.eval("PERSIST", &self.persist, key, |_| {}).await?,
        };
        match reply {
            Value::Int(n) => Ok(n == 1),
            other => Err(error::unexpected("touch", &other)),
        }
    }
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
