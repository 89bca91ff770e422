//! Configuration of the Redis backend: the topology, where the nodes are, credentials,
//! TLS and limits, and what Sentinel adds. Parsed from a URL in [`url`], the one place where
//! the backend reads a URL.

use std::fmt;
use std::time::Duration;

use larder_cache_api::{Error, ErrorKind, Result};

mod url;

/// Default largest value: 16 MiB.
pub const DEFAULT_MAX_VALUE_SIZE: usize = 16 * 1024 * 1024;
/// Largest value the backend can be configured to accept: 64 MiB.
pub const MAX_VALUE_SIZE_LIMIT: usize = 64 * 1024 * 1024;
/// Smallest value limit the contract allows: 1 KiB.
const MIN_VALUE_SIZE_LIMIT: usize = 1024;
const DEFAULT_PORT: u16 = 6379;

/// Whether to talk to one server or to a Redis Cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Topology {
    /// One server (`redis://`, `rediss://`).
    Single,
    /// A Redis Cluster reached through one or more seed nodes (`redis+cluster://`,
    /// `rediss+cluster://`).
    Cluster,
    /// The primary of a service monitored by Redis Sentinel, found through the sentinels
    /// and followed across failovers (`redis+sentinel://`, `rediss+sentinel://`; see
    /// [`SentinelConfig`]).
    Sentinel,
}

/// How to reach Redis, and the limits of a [`RedisBackend`](crate::RedisBackend).
///
/// Parsed from a URL by [`RedisConfig::from_url`]:
///
/// ```text
/// redis://[user][:password@]host[:port][/db][?param=value&...]
/// rediss://...                                   (TLS, feature `tls`)
/// redis+cluster://[user][:password@]h1:p1,h2:p2[?param=value&...]   (feature `cluster`)
/// rediss+cluster://...                           (both)
/// redis+sentinel://[user][:password@]s1:p1,s2:p2/service_name[/db][?param=value&...]
/// rediss+sentinel://...                          (TLS, feature `tls`)
/// ```
///
/// For Sentinel the hosts are the sentinels (default port 26379), the URL's credentials are
/// the primary's, and `sentinel_username` / `sentinel_password` authenticate to the
/// sentinels; `sentinel_check_ms` (default 250) is how often a sentinel is asked whether
/// the primary moved (see [`SentinelConfig`]).
///
/// ```
/// use larder_backend_redis::{RedisConfig, Topology};
///
/// let c = RedisConfig::from_url(
///     "redis+sentinel://:pw@s1:26379,s2:26380/mymaster/2?sentinel_password=spw",
/// )?;
/// assert_eq!(c.topology, Topology::Sentinel);
/// assert_eq!(c.sentinel.as_ref().map(|s| s.service_name.as_str()), Some("mymaster"));
/// assert_eq!(c.db, 2);
/// assert!(!format!("{c:?}").contains("spw"));
/// # Ok::<(), larder_cache_api::Error>(())
/// ```
///
/// Parameters: `response_timeout_ms`, `connect_timeout_ms` (both default 1000),
/// `max_value_size` (bytes, default 16 MiB, at most 64 MiB) and `tls_insecure=true` (or the
/// fragment `#insecure`), which turns off **all** certificate verification — the chain of
/// trust as well as the host name — so anyone on the path can impersonate the server: for
/// tests against throw-away certificates only. User and password are percent-decoded; a
/// password may hold `/ ? # @ :` raw (see [`larder_cache_api::url`]).
///
/// `Debug` never shows the password:
///
/// ```
/// use larder_backend_redis::RedisConfig;
///
/// let c = RedisConfig::from_url("redis://app:s3cret@cache.internal:6380/3?response_timeout_ms=250")?;
/// assert_eq!(c.nodes, vec![("cache.internal".to_string(), 6380)]);
/// assert_eq!(c.db, 3);
/// assert_eq!(c.username.as_deref(), Some("app"));
/// assert!(c.has_password());
/// assert_eq!(c.response_timeout.as_millis(), 250);
/// assert!(!format!("{c:?}").contains("s3cret"));
/// # Ok::<(), larder_cache_api::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisConfig {
    /// One server, a cluster, or a Sentinel-monitored primary.
    pub topology: Topology,
    /// `(host, port)` of the server, of the cluster's seed nodes, or of the sentinels.
    pub nodes: Vec<(String, u16)>,
    /// Connect with TLS (`rediss://`).
    pub tls: bool,
    /// With TLS: accept any certificate, verifying neither its chain nor its host name
    /// (tests only: it gives up TLS's protection against impersonation).
    pub tls_insecure: bool,
    /// ACL user name (`AUTH user password`); `None` authenticates as `default`.
    pub username: Option<String>,
    password: Option<String>,
    tls_root_cert: Option<Vec<u8>>,
    /// Database number (`SELECT`); always 0 for a cluster.
    pub db: u32,
    /// How long to wait for a reply before an operation fails with
    /// [`ErrorKind::Timeout`].
    pub response_timeout: Duration,
    /// How long one connection attempt may take.
    pub connect_timeout: Duration,
    /// Largest value `put` accepts (bytes, 1 KiB to 64 MiB).
    pub max_value_size: usize,
    /// With [`Topology::Sentinel`]: the service and the sentinels' credentials.
    pub sentinel: Option<SentinelConfig>,
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("topology", &self.topology)
            .field("nodes", &self.nodes)
            .field("tls", &self.tls)
            .field("tls_insecure", &self.tls_insecure)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field(
                "tls_root_cert",
                &self.tls_root_cert.as_ref().map(|_| "<set>"),
            )
            .field("db", &self.db)
            .field("response_timeout", &self.response_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_value_size", &self.max_value_size)
            .field("sentinel", &self.sentinel)
            .finish()
    }
}

impl RedisConfig {
    /// A single server at `host:port`, database 0, no authentication, default limits.
    pub fn single(host: impl Into<String>, port: u16) -> Self {
        RedisConfig {
            topology: Topology::Single,
            nodes: vec![(host.into(), port)],
            tls: false,
            tls_insecure: false,
            username: None,
            password: None,
            tls_root_cert: None,
            db: 0,
            response_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            max_value_size: DEFAULT_MAX_VALUE_SIZE,
            sentinel: None,
        }
    }

    /// A cluster reached through the seed nodes `nodes`.
    pub fn cluster(nodes: impl IntoIterator<Item = (String, u16)>) -> Self {
        RedisConfig {
            topology: Topology::Cluster,
            nodes: nodes.into_iter().collect(),
            ..Self::single(String::new(), DEFAULT_PORT)
        }
    }

    /// The primary of the service `sentinel` names, found through the sentinels at
    /// `sentinels`.
    pub fn sentinel(
        sentinels: impl IntoIterator<Item = (String, u16)>,
        sentinel: SentinelConfig,
    ) -> Self {
        RedisConfig {
            topology: Topology::Sentinel,
            nodes: sentinels.into_iter().collect(),
            sentinel: Some(sentinel),
            ..Self::single(String::new(), DEFAULT_PORT)
        }
    }

    /// Sets the password (kept out of `Debug` and error messages).
    pub fn with_password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// Sets the ACL user name.
    pub fn with_username(mut self, username: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self
    }

    /// Sets the database number.
    pub fn with_db(mut self, db: u32) -> Self {
        self.db = db;
        self
    }

    /// Sets [`response_timeout`](Self::response_timeout).
    pub fn with_response_timeout(mut self, t: Duration) -> Self {
        self.response_timeout = t;
        self
    }

    /// Sets [`connect_timeout`](Self::connect_timeout).
    pub fn with_connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// Sets [`max_value_size`](Self::max_value_size).
    pub fn with_max_value_size(mut self, n: usize) -> Self {
        self.max_value_size = n;
        self
    }

    /// Turns TLS on or off.
    pub fn with_tls(mut self, tls: bool) -> Self {
        self.tls = tls;
        self
    }

    /// Trusts the CA certificate(s) in `pem` instead of the system's roots (TLS only).
    pub fn with_tls_root_cert(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_root_cert = Some(pem.into());
        self
    }

    /// Whether a password is set.
    pub fn has_password(&self) -> bool {
        self.password.is_some()
    }

    pub(crate) fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    pub(crate) fn set_password(&mut self, password: Option<String>) {
        self.password = password;
    }

    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    pub(crate) fn tls_root_cert(&self) -> Option<&[u8]> {
        self.tls_root_cert.as_deref()
    }

    /// The longest a single operation may take: one connection attempt plus one reply.
    pub(crate) fn op_deadline(&self) -> Duration {
        let one = self.connect_timeout + self.response_timeout;
        // Sentinel: asking a sentinel for the primary may come first.
        if self.topology == Topology::Sentinel {
            one * 2
        } else {
            one
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.nodes.is_empty() {
            return Err(config_err("no Redis host given"));
        }
        for (host, port) in &self.nodes {
            if host.is_empty() {
                return Err(config_err("empty Redis host name"));
            }
            if *port == 0 {
                return Err(config_err(format!(
                    "port 0 of host {host:?} is not a usable port"
                )));
            }
        }
        match self.topology {
            Topology::Sentinel => match &self.sentinel {
                Some(s) => s.validate()?,
                None => return Err(config_err("a Sentinel topology needs a service name")),
            },
            Topology::Single if self.nodes.len() > 1 => return Err(config_err(
                "several hosts given for a single Redis server; use redis+cluster:// for a cluster",
            )),
            Topology::Cluster if self.db != 0 => {
                return Err(config_err("Redis Cluster has only database 0"))
            }
            _ => {}
        }
        if self.topology == Topology::Cluster && !cfg!(feature = "cluster") {
            return Err(config_err(
                "redis+cluster:// needs larder-backend-redis built with the `cluster` feature",
            ));
        }
        if self.tls && !cfg!(feature = "tls") {
            return Err(config_err(
                "rediss:// needs larder-backend-redis built with the `tls` feature",
            ));
        }
        // Redis keeps database numbers in a signed 32-bit range; larger never exist.
        if self.db > i32::MAX as u32 {
            return Err(config_err(format!("database {} is out of range", self.db)));
        }
        if self.response_timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(config_err("Redis timeouts must be positive"));
        }
        if !(MIN_VALUE_SIZE_LIMIT..=MAX_VALUE_SIZE_LIMIT).contains(&self.max_value_size) {
            return Err(config_err(format!(
                "max_value_size {} is outside 1 KiB..=64 MiB",
                self.max_value_size
            )));
        }
        Ok(())
    }
}

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

    pub(crate) fn password(&self) -> Option<&str> {
        self.password.as_deref()
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

fn config_err(msg: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::new(ErrorKind::Config, msg).with_backend(crate::error::BACKEND)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn debug_hides_password() {
        let c = RedisConfig::from_url("redis://user:hunter2-secret@h:1").unwrap();
        let d = format!("{c:?}");
        assert!(!d.contains("hunter2-secret"), "{d}");
        assert!(d.contains("<redacted>"), "{d}");
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
}
