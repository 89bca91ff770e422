//! Configuration of the Redis backend, parsed from a URL.

use std::fmt;
use std::time::Duration;

use larder_cache_api::url::BackendUrl;
use larder_cache_api::{Error, ErrorKind, Result};

pub use crate::sentinel::SentinelConfig;

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

    /// Parses a `redis://`, `rediss://`, `redis+cluster://` or `rediss+cluster://` URL (see
    /// the [type docs](RedisConfig)).
    pub fn from_url(url: &str) -> Result<Self> {
        Self::from_backend_url(&BackendUrl::parse(url)?)
    }

    /// The configuration a parsed Redis URL describes.
    pub fn from_backend_url(u: &BackendUrl) -> Result<Self> {
        let (topology, tls) = match u.scheme() {
            "redis" => (Topology::Single, false),
            "rediss" => (Topology::Single, true),
            "redis+cluster" => (Topology::Cluster, false),
            "rediss+cluster" => (Topology::Cluster, true),
            "redis+sentinel" => (Topology::Sentinel, false),
            "rediss+sentinel" => (Topology::Sentinel, true),
            other => {
                return Err(config_err(format!(
                    "unsupported scheme {other:?} (expected redis, rediss, redis+cluster, rediss+cluster, redis+sentinel or rediss+sentinel)"
                )))
            }
        };
        let mut c = match topology {
            Topology::Single => RedisConfig::single(String::new(), DEFAULT_PORT),
            Topology::Cluster => RedisConfig::cluster(Vec::new()),
            Topology::Sentinel => crate::sentinel::from_url(u)?,
        };
        c.tls = tls;
        let default_port = match topology {
            Topology::Sentinel => crate::sentinel::DEFAULT_SENTINEL_PORT,
            _ => DEFAULT_PORT,
        };
        c.nodes = u
            .hosts()
            .iter()
            .map(|h| (h.host.clone(), h.port.unwrap_or(default_port)))
            .collect();
        c.username = u.username().map(str::to_owned);
        c.password = u.password().map(str::to_owned);
        match u.path().trim_matches('/') {
            // Sentinel: `/service_name[/db]`, read by `sentinel::from_url`.
            _ if topology == Topology::Sentinel => {}
            "" => {}
            db => {
                c.db = db.parse().map_err(|e| {
                    config_err(format!(
                        "database {db:?} in the Redis URL is not a number from 0 up"
                    ))
                    .with_source(e)
                })?;
            }
        }
        let mut known = vec![
            "response_timeout_ms",
            "timeout_ms",
            "connect_timeout_ms",
            "max_value_size",
            "tls_insecure",
        ];
        if topology == Topology::Sentinel {
            known.extend(crate::sentinel::OPTIONS);
        }
        u.check_options(&known)?;
        for name in ["response_timeout_ms", "timeout_ms"] {
            if let Some(n) = u.option_parsed::<u64>(name)? {
                c.response_timeout = Duration::from_millis(n);
            }
        }
        if let Some(n) = u.option_parsed::<u64>("connect_timeout_ms")? {
            c.connect_timeout = Duration::from_millis(n);
        }
        if let Some(n) = u.option_parsed::<u64>("max_value_size")? {
            c.max_value_size = usize::try_from(n).unwrap_or(usize::MAX);
        }
        if let Some(f) = u.option_flag("tls_insecure")? {
            c.tls_insecure = f;
        }
        match u.fragment() {
            None | Some("") => {}
            Some("insecure") => c.tls_insecure = true,
            Some(other) => {
                return Err(config_err(format!(
                    "unknown URL fragment #{other} (only #insecure is known)"
                )))
            }
        }
        c.validate()?;
        Ok(c)
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

fn config_err(msg: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::new(ErrorKind::Config, msg).with_backend(crate::error::BACKEND)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn single_defaults() {
        let c = RedisConfig::from_url("redis://localhost").unwrap();
        assert_eq!(c.nodes, vec![("localhost".into(), 6379)]);
        assert_eq!(c.db, 0);
        assert_eq!(c.topology, Topology::Single);
        assert!(!c.tls && !c.has_password() && c.username.is_none());
        assert_eq!(c.max_value_size, DEFAULT_MAX_VALUE_SIZE);
    }

    #[test]
    fn auth_db_and_params() {
        let c = RedisConfig::from_url(
            "redis://u%40x:p%3Aw%25@127.0.0.1:7000/5?connect_timeout_ms=50&max_value_size=2048",
        )
        .unwrap();
        assert_eq!(c.username.as_deref(), Some("u@x"));
        assert_eq!(c.password(), Some("p:w%"));
        assert_eq!(c.db, 5);
        assert_eq!(c.connect_timeout, Duration::from_millis(50));
        assert_eq!(c.max_value_size, 2048);
        let c = RedisConfig::from_url("redis://:only@h:1/").unwrap();
        assert!(c.username.is_none());
        assert_eq!(c.password(), Some("only"));
        let c = RedisConfig::from_url("redis://[::1]:7001").unwrap();
        assert_eq!(c.nodes, vec![("::1".into(), 7001)]);
    }

    #[test]
    fn debug_hides_password() {
        let c = RedisConfig::from_url("redis://user:hunter2-secret@h:1").unwrap();
        let d = format!("{c:?}");
        assert!(!d.contains("hunter2-secret"), "{d}");
        assert!(d.contains("<redacted>"), "{d}");
    }

    #[test]
    fn bad_urls_are_config_errors() {
        for bad in [
            "http://h",
            "redis://",
            "redis://h:99999",
            "redis://h:0",
            "redis://h:port",
            "redis://h/abc",
            "redis://h/-1",
            "redis://h/99999999999",
            "redis://h?nope=1",
            "redis://h?response_timeout_ms=0",
            "redis://h?max_value_size=10",
            "redis://h?max_value_size=100000000",
            "redis://h1,h2",
            "redis://h#other",
        ] {
            let e = RedisConfig::from_url(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Config, "{bad}: {e}");
        }
        // A '%' that starts no escape is part of the password, as written.
        let c = RedisConfig::from_url("redis://:pw%zz-secret@h").unwrap();
        assert_eq!(c.password(), Some("pw%zz-secret"));
        let e = RedisConfig::from_url("redis://:pw-secret@h:port").unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
    }

    #[test]
    fn cluster_urls() {
        let r = RedisConfig::from_url("redis+cluster://:pw@a:1,b:2,[::1]:3");
        if cfg!(feature = "cluster") {
            let c = r.unwrap();
            assert_eq!(c.topology, Topology::Cluster);
            assert_eq!(
                c.nodes,
                vec![("a".into(), 1), ("b".into(), 2), ("::1".into(), 3)]
            );
            assert_eq!(
                RedisConfig::from_url("redis+cluster://a:1/2")
                    .unwrap_err()
                    .kind(),
                ErrorKind::Config
            );
        } else {
            assert_eq!(r.unwrap_err().kind(), ErrorKind::Config);
        }
    }

    #[test]
    fn sentinel_urls() {
        let c = RedisConfig::from_url(
            "redis+sentinel://app:main-pw-1@s1:5000,s2,[::1]:5002/mymaster/4?sentinel_password=sent-pw-2&sentinel_username=watch&connect_timeout_ms=300",
        )
        .unwrap();
        assert_eq!(c.topology, Topology::Sentinel);
        assert_eq!(
            c.nodes,
            vec![
                ("s1".into(), 5000),
                ("s2".into(), 26379),
                ("::1".into(), 5002)
            ]
        );
        assert_eq!(c.db, 4);
        assert_eq!(c.username.as_deref(), Some("app"));
        assert_eq!(c.password(), Some("main-pw-1"));
        assert_eq!(c.connect_timeout, Duration::from_millis(300));
        let s = c.sentinel.as_ref().unwrap();
        assert_eq!(s.service_name, "mymaster");
        assert_eq!(s.username.as_deref(), Some("watch"));
        assert!(s.has_password());
        let d = format!("{c:?}");
        assert!(!d.contains("main-pw-1") && !d.contains("sent-pw-2"), "{d}");
        let c = RedisConfig::from_url("redis+sentinel://h/svc").unwrap();
        assert_eq!((c.db, c.nodes[0].1), (0, 26379));
        assert!(!c.sentinel.unwrap().has_password());

        for (bad, says) in [
            ("redis+sentinel://h:1", "service name"),
            ("redis+sentinel://h:1/", "service name"),
            ("redis+sentinel://h:1//2", "service name"),
            ("redis+sentinel:///svc", "no Redis host"),
            ("redis+sentinel://,h:1/svc", "empty Redis host"),
            ("redis+sentinel://h:1/svc/abc", "database"),
            ("redis+sentinel://h:1/svc/-1", "database"),
            ("redis+sentinel://h:1/svc/99999999999", "database"),
            ("redis+sentinel://h:1/svc/1/2", "path"),
            (
                "redis+sentinel://h:1/svc?sentinel_pasword=x",
                "unknown option",
            ),
            ("redis+sentinel://h:port/svc", "port"),
            ("redis+sentinel://h:1/sv%20c", "service name"),
            ("redis://h:1?sentinel_password=x", "unknown option"),
        ] {
            let e = RedisConfig::from_url(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Config, "{bad}: {e}");
            assert!(e.to_string().contains(says), "{bad}: {e}");
        }
        let e = RedisConfig::from_url(
            "redis+sentinel://:pw-secret-3@h:1?sentinel_password=sp-secret-4",
        )
        .unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
        let r = RedisConfig::from_url("rediss+sentinel://h:1/svc");
        if cfg!(feature = "tls") {
            assert!(r.unwrap().tls);
        } else {
            assert_eq!(r.unwrap_err().kind(), ErrorKind::Config);
        }
    }

    #[test]
    fn tls_needs_feature() {
        let r = RedisConfig::from_url("rediss://h:6380#insecure");
        if cfg!(feature = "tls") {
            let c = r.unwrap();
            assert!(c.tls && c.tls_insecure);
        } else {
            assert_eq!(r.unwrap_err().kind(), ErrorKind::Config);
        }
    }
}
