//! Every URL the Redis backend takes, read into a [`RedisConfig`]: the scheme picks the
//! topology and TLS, the hosts are the nodes (or the sentinels), the path is the database
//! (for Sentinel `/service_name[/db]`), the query holds the options.

use std::time::Duration;

use larder_cache_api::url::BackendUrl;
use larder_cache_api::Result;

use super::{config_err, RedisConfig, SentinelConfig, Topology, DEFAULT_PORT};

/// Default port of a sentinel.
const DEFAULT_SENTINEL_PORT: u16 = 26379;

/// The URL options every topology takes.
const OPTIONS: [&str; 5] = [
    "response_timeout_ms",
    "timeout_ms",
    "connect_timeout_ms",
    "max_value_size",
    "tls_insecure",
];

/// The URL options only a Sentinel URL takes.
const SENTINEL_OPTIONS: [&str; 3] = [
    "sentinel_username",
    "sentinel_password",
    "sentinel_check_ms",
];

impl RedisConfig {
    /// Parses a `redis://`, `rediss://`, `redis+cluster://` or `rediss+cluster://` URL (see
    /// the [type docs](RedisConfig)).
    pub fn from_url(url: &str) -> Result<Self> {
        Self::from_backend_url(&BackendUrl::parse(url)?)
    }

    /// The configuration a parsed Redis URL describes.
    pub fn from_backend_url(u: &BackendUrl) -> Result<Self> {
        let (topology, tls) = scheme(u.scheme())?;
        let mut c = match topology {
            Topology::Single => RedisConfig::single(String::new(), DEFAULT_PORT),
            Topology::Cluster => RedisConfig::cluster(Vec::new()),
            Topology::Sentinel => sentinel(u)?,
        };
        c.tls = tls;
        let default_port = match topology {
            Topology::Sentinel => DEFAULT_SENTINEL_PORT,
            _ => DEFAULT_PORT,
        };
        c.nodes = u
            .hosts()
            .iter()
            .map(|h| (h.host.clone(), h.port.unwrap_or(default_port)))
            .collect();
        c.username = u.username().map(str::to_owned);
        c.password = u.password().map(str::to_owned);
        // Sentinel: `/service_name[/db]`, read by `sentinel`.
        if topology != Topology::Sentinel {
            if let Some(db) = database(u.path())? {
                c.db = db;
            }
        }
        options(&mut c, u, topology)?;
        fragment(&mut c, u)?;
        c.validate()?;
        Ok(c)
    }
}

/// The topology and whether to use TLS, as the scheme says.
fn scheme(scheme: &str) -> Result<(Topology, bool)> {
    Ok(match scheme {
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
    })
}

/// The database in the path of a single-server or cluster URL, `/db`, if there is one.
fn database(path: &str) -> Result<Option<u32>> {
    match path.trim_matches('/') {
        "" => Ok(None),
        db => db.parse().map(Some).map_err(|e| {
            config_err(format!(
                "database {db:?} in the Redis URL is not a number from 0 up"
            ))
            .with_source(e)
        }),
    }
}

/// The Sentinel parts of a parsed `redis+sentinel://` URL: service name, database, and the
/// sentinels' credentials. The caller fills in hosts, the primary's credentials and the
/// other options.
fn sentinel(u: &BackendUrl) -> Result<RedisConfig> {
    let (service, db) = parse_path(u.path())?;
    let mut s = SentinelConfig::new(service);
    s.username = u.option("sentinel_username").map(str::to_owned);
    s.password = u.option("sentinel_password").map(str::to_owned);
    if let Some(ms) = u.option_parsed::<u64>("sentinel_check_ms")? {
        s.check_interval = Duration::from_millis(ms);
    }
    Ok(RedisConfig::sentinel(Vec::new(), s).with_db(db.unwrap_or(0)))
}

/// Splits the path of a Sentinel URL, `/service_name[/db]`, into the service name and the
/// database.
fn parse_path(path: &str) -> Result<(String, Option<u32>)> {
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

/// Refuses options the topology does not take, and applies the others.
fn options(c: &mut RedisConfig, u: &BackendUrl, topology: Topology) -> Result<()> {
    let mut known = OPTIONS.to_vec();
    if topology == Topology::Sentinel {
        known.extend(SENTINEL_OPTIONS);
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
    Ok(())
}

/// The fragment: only `#insecure` (the same as `tls_insecure=true`).
fn fragment(c: &mut RedisConfig, u: &BackendUrl) -> Result<()> {
    match u.fragment() {
        None | Some("") => {}
        Some("insecure") => c.tls_insecure = true,
        Some(other) => {
            return Err(config_err(format!(
                "unknown URL fragment #{other} (only #insecure is known)"
            )))
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::DEFAULT_MAX_VALUE_SIZE;
    use larder_cache_api::ErrorKind;

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
}
