//! The operations of the backend on its shared connection: reads, writes, the
//! conditional writes as scripts, and the server's `INFO`.
//!
//! How an entry is stored and versioned is in [`crate::layout`]; why a resent conditional
//! write reports its own success is in [`crate::scripts`].

use larder_cache_api::{Bytes, Entry, Key, Result, Ttl, Version};
use redis::{Cmd, Value};

use crate::config::RedisConfig;
use crate::connect::{self, Conn};
use crate::error::{self, map};
use crate::layout::{decode, new_version, optional_entry, Stored};
use crate::scripts::{self, ttl_arg, Lua, Scripts};
use crate::slot::{marker_key, writes_key};

/// The connection plus what every operation needs.
pub(crate) struct Core {
    conn: Conn,
    scripts: Scripts,
    deadline: std::time::Duration,
    /// Lifetime of a delete marker and of a write history, in milliseconds.
    marker_ttl_ms: u64,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl Core {
    /// Opens the connection `config` describes and checks that the server answers.
    pub(crate) async fn connect(config: &RedisConfig) -> Result<Self> {
        config.validate()?;
        #[cfg(feature = "tls")]
        if config.tls {
            crate::node::ensure_crypto_provider();
        }
        let deadline = config.op_deadline();
        let core = Core {
            conn: connect::open(config, deadline).await?,
            scripts: Scripts::new(),
            deadline,
            marker_ttl_ms: scripts::marker_ttl_ms(deadline),
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

    /// With Sentinel: `host:port` of the primary in use, if one is known right now.
    pub(crate) fn sentinel_primary(&self) -> Option<String> {
        match &self.conn {
            Conn::Sentinel(s) => s.primary_addr(),
            _ => None,
        }
    }

    /// With Sentinel: the connection that follows the primary.
    pub(crate) fn sentinel(&self) -> Option<crate::sentinel::SentinelConn> {
        match &self.conn {
            Conn::Sentinel(s) => Some(s.clone()),
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

    /// Runs a script within the operation deadline (see [`scripts::eval`]).
    async fn eval(
        &self,
        op: &'static str,
        lua: &Lua,
        keys: &[&[u8]],
        args: impl Fn(&mut Cmd) + Sync,
    ) -> Result<Value> {
        scripts::eval(&self.conn, self.deadline, op, lua, keys, args).await
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
            .eval(
                "create",
                &self.scripts.create,
                &[key.as_bytes(), &writes_key(key.as_bytes())],
                |c| {
                    c.arg(Stored { version, value })
                        .arg(ttl_arg(ttl))
                        .arg(self.marker_ttl_ms);
                },
            )
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
            .eval(
                "update",
                &self.scripts.update,
                &[key.as_bytes(), &writes_key(key.as_bytes())],
                |c| {
                    c.arg(&expected.to_be_bytes()[..])
                        .arg(Stored { version, value })
                        .arg(ttl_arg(ttl))
                        .arg(self.marker_ttl_ms);
                },
            )
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
                &self.scripts.delete_if,
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
                self.eval("PERSIST", &self.scripts.persist, &[key.as_bytes()], |_| {})
                    .await?
            }
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
