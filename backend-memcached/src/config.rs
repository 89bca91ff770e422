//! Configuration of the memcached backend, parsed from a `memcache://` URL.

use std::time::Duration;

use larder_cache_api::url::BackendUrl;
use larder_cache_api::{Error, ErrorKind, Result};

use crate::error::BACKEND;

/// The port memcached listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 11211;

/// The largest value limit larder declares, whatever the server allows.
pub(crate) const MAX_VALUE_CAP: usize = 64 * 1024 * 1024;

/// Where the servers are and how long to wait for them.
///
/// ```
/// use std::time::Duration;
/// use larder_backend_memcached::MemcachedConfig;
///
/// let c = MemcachedConfig::from_url("memcache://10.0.0.1:11211,10.0.0.2?timeout_ms=250")?;
/// assert_eq!(c.servers, ["10.0.0.1:11211", "10.0.0.2:11211"]);
/// assert_eq!(c.timeout, Duration::from_millis(250));
/// # Ok::<(), larder_cache_api::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemcachedConfig {
    /// `host:port` of every server. With several, keys are spread by consistent hashing, so
    /// every client must list the same servers (the order does not matter).
    pub servers: Vec<String>,
    /// Deadline for opening a TCP connection.
    pub connect_timeout: Duration,
    /// Deadline for one request/response exchange once connected.
    pub timeout: Duration,
    /// Idle connections kept per server.
    pub max_idle: usize,
    /// Most connections open at once per server (`None`: unbounded).
    pub max_connections: Option<usize>,
    /// Points per server on the hash ring; more spreads keys more evenly.
    pub vnodes: usize,
    /// Declare a smaller value limit than the servers allow (`None`: the servers' own limit,
    /// read at connect, capped at 64 MiB).
    pub max_value_size: Option<usize>,
}

impl MemcachedConfig {
    /// A configuration for `servers` (`host` or `host:port`) with default timeouts.
    pub fn new<S: AsRef<str>>(servers: impl IntoIterator<Item = S>) -> Result<Self> {
        let servers = servers
            .into_iter()
            .map(|s| normalize_server(s.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        let c = MemcachedConfig {
            servers,
            ..MemcachedConfig::defaults()
        };
        c.validate()?;
        Ok(c)
    }

    fn defaults() -> Self {
        MemcachedConfig {
            servers: Vec::new(),
            connect_timeout: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            max_idle: 16,
            max_connections: None,
            vnodes: 160,
            max_value_size: None,
        }
    }

    /// Sets [`connect_timeout`](Self::connect_timeout).
    pub fn with_connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Sets [`timeout`](Self::timeout).
    pub fn with_timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }

    /// Sets [`max_idle`](Self::max_idle).
    pub fn with_max_idle(mut self, n: usize) -> Self {
        self.max_idle = n;
        self
    }

    /// Sets [`max_connections`](Self::max_connections).
    pub fn with_max_connections(mut self, n: Option<usize>) -> Self {
        self.max_connections = n;
        self
    }

    /// Sets [`vnodes`](Self::vnodes).
    pub fn with_vnodes(mut self, n: usize) -> Self {
        self.vnodes = n;
        self
    }

    /// Sets [`max_value_size`](Self::max_value_size).
    pub fn with_max_value_size(mut self, n: Option<usize>) -> Self {
        self.max_value_size = n;
        self
    }

    /// Parses `memcache://host[:port][,host[:port]...][?param=value&...]`
    /// (`memcached://` is accepted too). Parameters, all optional:
    /// `connect_timeout_ms`, `timeout_ms`, `max_idle`, `max_connections`, `vnodes`,
    /// `max_value_size`.
    pub fn from_url(url: &str) -> Result<Self> {
        Self::from_backend_url(&BackendUrl::parse(url)?)
    }

    /// The configuration a parsed `memcache://` URL describes.
    pub fn from_backend_url(u: &BackendUrl) -> Result<Self> {
        if !matches!(u.scheme(), "memcache" | "memcached") {
            return Err(config_error(format!(
                "expected a memcache:// URL, got scheme {:?}",
                u.scheme()
            )));
        }
        if u.username().is_some() || u.password().is_some() {
            // Never echo the URL: it holds a password.
            return Err(config_error(
                "memcached URLs take no credentials: the meta protocol has no authentication",
            ));
        }
        if !matches!(u.path(), "" | "/") {
            return Err(config_error("a memcached URL has no path"));
        }
        u.check_options(&[
            "connect_timeout_ms",
            "timeout_ms",
            "max_idle",
            "max_connections",
            "vnodes",
            "max_value_size",
        ])?;
        let mut c = MemcachedConfig {
            servers: u
                .hosts()
                .iter()
                .map(|h| {
                    let host = if h.host.contains(':') {
                        format!("[{}]", h.host)
                    } else {
                        h.host.clone()
                    };
                    normalize_server(&match h.port {
                        Some(p) => format!("{host}:{p}"),
                        None => host,
                    })
                })
                .collect::<Result<Vec<_>>>()?,
            ..MemcachedConfig::defaults()
        };
        let size = |name: &str| -> Result<Option<usize>> {
            Ok(u.option_parsed::<u64>(name)?
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX)))
        };
        if let Some(n) = u.option_parsed::<u64>("connect_timeout_ms")? {
            c.connect_timeout = Duration::from_millis(n);
        }
        if let Some(n) = u.option_parsed::<u64>("timeout_ms")? {
            c.timeout = Duration::from_millis(n);
        }
        if let Some(n) = size("max_idle")? {
            c.max_idle = n;
        }
        if let Some(n) = size("max_connections")? {
            c.max_connections = Some(n);
        }
        if let Some(n) = size("vnodes")? {
            c.vnodes = n;
        }
        if let Some(n) = size("max_value_size")? {
            c.max_value_size = Some(n);
        }
        c.validate()?;
        Ok(c)
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.servers.is_empty() {
            return Err(config_error("at least one memcached server is needed"));
        }
        let mut seen = std::collections::HashSet::new();
        for s in &self.servers {
            if !seen.insert(s) {
                return Err(config_error(format!("server {s} is listed twice")));
            }
        }
        if self.connect_timeout.is_zero() || self.timeout.is_zero() {
            return Err(config_error("memcached timeouts must be positive"));
        }
        if self.vnodes == 0 || self.vnodes > 4096 {
            return Err(config_error("vnodes must be within 1..=4096"));
        }
        if self.max_connections == Some(0) {
            return Err(config_error("max_connections must be positive"));
        }
        if let Some(n) = self.max_value_size {
            if !(1024..=MAX_VALUE_CAP).contains(&n) {
                return Err(config_error(format!(
                    "max_value_size must be within 1 KiB..=64 MiB, got {n}"
                )));
            }
        }
        Ok(())
    }
}

/// `host` or `host:port` (IPv6 in brackets) as `host:port`, the server's identity on the ring.
fn normalize_server(s: &str) -> Result<String> {
    let s = s.trim();
    if s.is_empty() {
        return Err(config_error("empty server in the memcached server list"));
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest
            .split_once(']')
            .ok_or_else(|| config_error(format!("unclosed '[' in server {s:?}")))?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(|| {
                config_error(format!("expected :port after ']' in server {s:?}"))
            })?),
        };
        (format!("[{h}]"), port)
    } else {
        match s.rsplit_once(':') {
            Some((h, _)) if h.contains(':') => {
                return Err(config_error(format!(
                    "IPv6 server {s:?} must be written in brackets: [addr]:port"
                )))
            }
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (s.to_string(), None),
        }
    };
    if host.is_empty() || host == "[]" {
        return Err(config_error(format!("server {s:?} has no host")));
    }
    if host
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(config_error(format!("server {s:?} has an invalid host")));
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| config_error(format!("server {s:?} has an invalid port {p:?}")))?,
    };
    Ok(format!("{host}:{port}"))
}

fn config_error(msg: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::new(ErrorKind::Config, msg).with_backend(BACKEND)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_servers_and_params() {
        let c = MemcachedConfig::from_url(
            "memcache://a:1,b,[::1]:3,[::2]?connect_timeout_ms=50&timeout_ms=70&vnodes=100&max_idle=2&max_connections=9&max_value_size=4096",
        )
        .unwrap();
        assert_eq!(c.servers, ["a:1", "b:11211", "[::1]:3", "[::2]:11211"]);
        assert_eq!(c.connect_timeout, Duration::from_millis(50));
        assert_eq!(c.timeout, Duration::from_millis(70));
        assert_eq!(c.vnodes, 100);
        assert_eq!(c.max_idle, 2);
        assert_eq!(c.max_connections, Some(9));
        assert_eq!(c.max_value_size, Some(4096));
        assert!(MemcachedConfig::from_url("memcached://h/").is_ok());
    }

    #[test]
    fn rejects_bad_urls() {
        for bad in [
            "redis://h",
            "memcache://",
            "memcache://h:0",
            "memcache://h:x",
            "memcache://h,h",
            "memcache://::1",
            "memcache://[::1",
            "memcache://h/db",
            "memcache://h?timeout_ms=0",
            "memcache://h?timeout_ms=abc",
            "memcache://h?what=1",
            "memcache://h?vnodes=0",
            "memcache://h?max_value_size=10",
            "memcache://h:1,,h:2",
        ] {
            let e = MemcachedConfig::from_url(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Config, "{bad}");
        }
    }

    #[test]
    fn credentials_are_refused_and_never_echoed() {
        let e = MemcachedConfig::from_url("memcache://user:hunter2@h:1").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert!(!format!("{e:?}").contains("hunter2"), "{e:?}");
    }

    #[test]
    fn new_normalizes() {
        let c = MemcachedConfig::new(["h", "g:2"]).unwrap();
        assert_eq!(c.servers, ["h:11211", "g:2"]);
        assert_eq!(
            MemcachedConfig::new(Vec::<String>::new())
                .unwrap_err()
                .kind(),
            ErrorKind::Config
        );
    }
}
