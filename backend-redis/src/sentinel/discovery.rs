//! Finding the primary of a Sentinel-monitored service: the sentinels are asked in order,
//! and the node the first of them names must answer `ROLE` as `master`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use larder_cache_api::{Error, ErrorKind, Result};
use redis::aio::MultiplexedConnection;
use redis::Value;

use super::errors::{problem, Failure, Node, Problem};
use crate::config::{RedisConfig, SentinelConfig};
use crate::error::BACKEND;
use crate::node::{self, node_info};

/// The primary in use.
#[derive(Debug)]
pub(super) struct Primary {
    pub(super) addr: (String, u16),
    pub(super) conn: MultiplexedConnection,
    /// Counts discoveries, so that a failure on an older primary does not discard a newer one.
    pub(super) generation: u64,
}

/// What discovery needs and keeps between discoveries: the primary's configuration, the
/// service, and the sentinels in the order to ask them.
pub(super) struct Discovery {
    /// The primary's configuration (credentials, database, TLS, timeouts).
    pub(super) config: RedisConfig,
    pub(super) sentinel: SentinelConfig,
    /// The sentinels, the one that answered last first.
    sentinels: Mutex<Vec<(String, u16)>>,
    generation: AtomicU64,
}

impl Discovery {
    /// The discovery of the service `config` names, through its sentinels.
    pub(super) fn new(config: &RedisConfig) -> Result<Self> {
        let sentinel = config.sentinel.clone().ok_or_else(|| {
            Error::new(
                ErrorKind::Config,
                "a Sentinel topology needs a service name",
            )
            .with_backend(BACKEND)
        })?;
        Ok(Discovery {
            config: config.clone(),
            sentinel,
            sentinels: Mutex::new(config.nodes.clone()),
            generation: AtomicU64::new(0),
        })
    }

    /// The sentinels, in the order to ask them.
    pub(super) fn sentinels(&self) -> Vec<(String, u16)> {
        self.sentinels
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// The longest one step may take: one connection attempt plus one reply.
    pub(super) fn step(&self) -> Duration {
        self.config.connect_timeout + self.config.response_timeout
    }

    /// Asks the sentinels in order for the primary of the service, and connects to it.
    pub(super) async fn discover(&self) -> std::result::Result<Primary, Failure> {
        let mut problems = Vec::new();
        for (i, (host, port)) in self.sentinels().iter().enumerate() {
            match self.primary_named_by(host, *port).await {
                Err(p) => problems.push(p),
                Ok((addr, conn)) => {
                    if i > 0 {
                        self.move_to_front(host, *port);
                    }
                    let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
                    return Ok(Primary {
                        addr,
                        conn,
                        generation,
                    });
                }
            }
        }
        Err(Failure::of(&self.sentinel.service_name, &problems))
    }

    /// Asks the sentinel at `host:port` for the primary, and connects to the node it names;
    /// each step within [`step`](Self::step).
    async fn primary_named_by(
        &self,
        host: &str,
        port: u16,
    ) -> std::result::Result<((String, u16), MultiplexedConnection), Problem> {
        let step = self.step();
        let name = &self.sentinel.service_name;
        let at = format!("sentinel {}", host_port(host, port));
        let asked = tokio::time::timeout(step, self.ask_sentinel(host, port)).await;
        let (mhost, mport) = match asked {
            Err(_) => return Err(Problem::Slow(format!("{at}: no reply within {step:?}"))),
            Ok(Err(p)) => return Err(p.prefixed(&at, ": ")),
            Ok(Ok(None)) => {
                return Err(Problem::Misconfigured(format!(
                    "{at}: monitors no service named {name:?}"
                )))
            }
            Ok(Ok(Some(addr))) => addr,
        };
        let named = format!("{at} names {} as primary", host_port(&mhost, mport));
        match tokio::time::timeout(step, self.connect_primary(&mhost, mport)).await {
            Err(_) => Err(Problem::Slow(format!(
                "{named}, which gave no reply within {step:?}"
            ))),
            Ok(Err(p)) => Err(p.prefixed(&format!("{named}, but"), " ")),
            Ok(Ok(conn)) => Ok(((mhost, mport), conn)),
        }
    }

    /// Asks the sentinel that answered first next time.
    fn move_to_front(&self, host: &str, port: u16) {
        if let Ok(mut s) = self.sentinels.lock() {
            if let Some(pos) = s.iter().position(|(h, p)| h == host && *p == port) {
                let a = s.remove(pos);
                s.insert(0, a);
            }
        }
    }

    /// `SENTINEL GET-MASTER-ADDR-BY-NAME` on one sentinel: the address, or `None` if it does
    /// not monitor the service.
    async fn ask_sentinel(
        &self,
        host: &str,
        port: u16,
    ) -> std::result::Result<Option<(String, u16)>, Problem> {
        let mut conn = self.open_sentinel(host, port).await?;
        self.master_addr(&mut conn).await
    }

    /// A connection to the sentinel at `host:port`.
    pub(super) async fn open_sentinel(
        &self,
        host: &str,
        port: u16,
    ) -> std::result::Result<MultiplexedConnection, Problem> {
        // The sentinel's own credentials, database 0; TLS as for the primary.
        let mut sc = self.config.clone().with_db(0);
        sc.username = self.sentinel.username.clone();
        sc.set_password(self.sentinel.password().map(str::to_owned));
        let info = node_info(&sc, host, port).map_err(|e| Problem::Down(e.to_string()))?;
        let client = node::client(&sc, info).map_err(|e| Problem::Misconfigured(e.to_string()))?;
        client
            .get_multiplexed_async_connection_with_config(&async_config(&sc))
            .await
            .map_err(|e| problem(&e, Node::Sentinel))
    }

    /// `SENTINEL GET-MASTER-ADDR-BY-NAME` on a sentinel connection.
    pub(super) async fn master_addr(
        &self,
        conn: &mut MultiplexedConnection,
    ) -> std::result::Result<Option<(String, u16)>, Problem> {
        let reply: Value = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(&self.sentinel.service_name)
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

    /// Connects to the node a sentinel named, with the primary's credentials and database, and
    /// checks that it is a primary (`ROLE`).
    async fn connect_primary(
        &self,
        host: &str,
        port: u16,
    ) -> std::result::Result<MultiplexedConnection, Problem> {
        let config = &self.config;
        let info = node_info(config, host, port).map_err(|e| Problem::Down(e.to_string()))?;
        let client =
            node::client(config, info).map_err(|e| Problem::Misconfigured(e.to_string()))?;
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
}

fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn async_config(config: &RedisConfig) -> redis::AsyncConnectionConfig {
    redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(config.connect_timeout))
        .set_response_timeout(Some(config.response_timeout))
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}
