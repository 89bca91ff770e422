//! Picking a backend from a URL at run time.

use larder_cache_api::{DynBackend, Error, ErrorKind, Result};

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use larder_cache_api::url::BackendUrl;

type Opening = Pin<Box<dyn Future<Output = Result<DynBackend>> + Send>>;
/// Opens a backend from its parsed URL.
type Opener = fn(BackendUrl) -> Opening;

/// A URL scheme, the Cargo feature that brings it, and how to open it in this build.
#[derive(Debug, Clone, Copy)]
struct Scheme {
    name: &'static str,
    feature: &'static str,
    open: Option<Opener>,
}

/// Every scheme larder knows: the one list.
const SCHEMES: &[Scheme] = &[
    Scheme {
        name: "memory",
        feature: "memory",
        open: MEMORY,
    },
    Scheme {
        name: "redis",
        feature: "redis",
        open: REDIS,
    },
    Scheme {
        name: "rediss",
        feature: "redis-tls",
        open: REDIS_TLS,
    },
    Scheme {
        name: "redis+cluster",
        feature: "cluster",
        open: CLUSTER,
    },
    Scheme {
        name: "rediss+cluster",
        feature: "cluster",
        open: CLUSTER,
    },
    Scheme {
        name: "redis+sentinel",
        feature: "redis",
        open: REDIS,
    },
    Scheme {
        name: "rediss+sentinel",
        feature: "redis-tls",
        open: REDIS_TLS,
    },
    Scheme {
        name: "memcache",
        feature: "memcached",
        open: MEMCACHED,
    },
    Scheme {
        name: "memcached",
        feature: "memcached",
        open: MEMCACHED,
    },
    Scheme {
        name: "sled",
        feature: "sled",
        open: SLED,
    },
    Scheme {
        name: "postgres",
        feature: "postgres",
        open: POSTGRES,
    },
    Scheme {
        name: "postgresql",
        feature: "postgres",
        open: POSTGRES,
    },
    Scheme {
        name: "sqlite",
        feature: "sqlite",
        open: SQLITE,
    },
];

#[cfg(feature = "memory")]
const MEMORY: Option<Opener> = Some(|u| {
    Box::pin(async move {
        let config = larder_backend_memory::MemoryConfig::from_backend_url(&u)?;
        let b = Arc::new(larder_backend_memory::MemoryBackend::new(config)?);
        // Expired entries are otherwise only dropped when read or evicted.
        b.spawn_sweeper(std::time::Duration::from_secs(30));
        Ok(b as DynBackend)
    })
});
#[cfg(not(feature = "memory"))]
const MEMORY: Option<Opener> = None;

#[cfg(feature = "redis")]
const REDIS: Option<Opener> = Some(|u| {
    Box::pin(async move {
        let config = larder_backend_redis::RedisConfig::from_backend_url(&u)?;
        Ok(Arc::new(larder_backend_redis::RedisBackend::new(config).await?) as DynBackend)
    })
});
#[cfg(not(feature = "redis"))]
const REDIS: Option<Opener> = None;
#[cfg(feature = "redis-tls")]
const REDIS_TLS: Option<Opener> = REDIS;
#[cfg(not(feature = "redis-tls"))]
const REDIS_TLS: Option<Opener> = None;
#[cfg(feature = "cluster")]
const CLUSTER: Option<Opener> = REDIS;
#[cfg(not(feature = "cluster"))]
const CLUSTER: Option<Opener> = None;

#[cfg(feature = "memcached")]
const MEMCACHED: Option<Opener> = Some(|u| {
    Box::pin(async move {
        let config = larder_backend_memcached::MemcachedConfig::from_backend_url(&u)?;
        Ok(Arc::new(larder_backend_memcached::MemcachedBackend::new(config).await?) as DynBackend)
    })
});
#[cfg(not(feature = "memcached"))]
const MEMCACHED: Option<Opener> = None;

#[cfg(feature = "sled")]
const SLED: Option<Opener> = Some(|u| {
    Box::pin(async move {
        let config = larder_backend_sled::SledConfig::from_backend_url(&u)?;
        Ok(Arc::new(larder_backend_sled::SledBackend::new(config).await?) as DynBackend)
    })
});
#[cfg(not(feature = "sled"))]
const SLED: Option<Opener> = None;

// The SQL store hands the URL as written to its driver (sqlx), whose options it takes.
#[cfg(feature = "postgres")]
const POSTGRES: Option<Opener> = Some(|u| {
    Box::pin(async move {
        Ok(Arc::new(larder_backend_sql::PgKv::connect(u.raw()).await?) as DynBackend)
    })
});
#[cfg(not(feature = "postgres"))]
const POSTGRES: Option<Opener> = None;

#[cfg(feature = "sqlite")]
const SQLITE: Option<Opener> = Some(|u| {
    Box::pin(async move {
        Ok(Arc::new(larder_backend_sql::SqliteKv::connect(u.raw()).await?) as DynBackend)
    })
});
#[cfg(not(feature = "sqlite"))]
const SQLITE: Option<Opener> = None;

/// The URL schemes [`connect`] knows, each with the Cargo feature it needs and whether this
/// build has it.
///
/// ```
/// assert!(larder::schemes().any(|(scheme, _, built)| scheme == "memory" && built));
/// ```
pub fn schemes() -> impl Iterator<Item = (&'static str, &'static str, bool)> {
    SCHEMES
        .iter()
        .map(|s| (s.name, s.feature, s.open.is_some()))
}

/// Connects to the backend a URL names:
///
/// | URL | backend | feature |
/// |---|---|---|
/// | `memory://?capacity=10000` | in-process | `memory` (default) |
/// | `redis://[:password@]host:port/db` | Redis | `redis` |
/// | `rediss://...` | Redis over TLS | `redis-tls` |
/// | `redis+cluster://host:port,host:port` | Redis Cluster | `cluster` |
/// | `redis+sentinel://s1:p1,s2:p2/service[/db]`, `rediss+sentinel://...` | the primary Redis Sentinel names | `redis`, `redis-tls` |
/// | `memcache://h1:p1,h2:p2` | memcached | `memcached` |
/// | `sled:///path/to/dir` | sled | `sled` |
/// | `postgres://user@host/db`, `postgresql://...` | the `larder_kv` table in PostgreSQL | `postgres` |
/// | `sqlite://path/to/file.db` | the `larder_kv` table in SQLite | `sqlite` |
///
/// The SQL URLs run the store's migrations (its tables `larder_kv` and `larder_fences`,
/// created if missing; see `larder::backends::sql`).
///
/// A scheme whose feature is not compiled in returns [`ErrorKind::Unsupported`] naming the
/// feature; an unknown scheme or a malformed URL returns [`ErrorKind::Config`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> larder::Result<()> {
/// let backend = larder::connect("memory://?capacity=10000").await?;
/// assert_eq!(backend.capabilities().name, "memory");
///
/// let err = larder::connect("carrier-pigeon://coop").await.unwrap_err();
/// assert_eq!(err.kind(), larder::ErrorKind::Config);
/// # Ok(()) }
/// ```
pub async fn connect(url: &str) -> Result<DynBackend> {
    // Parsed once, here; each backend maps the parsed form to its configuration.
    let parsed = BackendUrl::parse(url)?;
    let Some(scheme) = SCHEMES.iter().find(|s| s.name == parsed.scheme()) else {
        return Err(Error::new(
            ErrorKind::Config,
            format!(
                "unknown backend URL scheme {:?} (known: {})",
                parsed.scheme(),
                SCHEMES
                    .iter()
                    .map(|s| format!("{}://", s.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    };
    match scheme.open {
        Some(open) => open(parsed).await,
        None => Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "{}:// URLs need larder's `{}` feature, which this build does not enable",
                scheme.name, scheme.feature
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn scheme_without_its_feature_names_the_feature() {
        #[cfg(not(feature = "sled"))]
        {
            let e = connect("sled:///tmp/x").await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Unsupported);
            assert!(e.message().contains("`sled` feature"), "{e}");
        }
        #[cfg(not(feature = "postgres"))]
        {
            let e = connect("postgresql://u@h/db").await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Unsupported);
            assert!(e.message().contains("`postgres` feature"), "{e}");
        }
        let e = connect("no-scheme").await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        let e = connect("ftp://x").await.unwrap_err();
        assert!(e.message().contains("memory://"), "{e}");
    }

    #[cfg(feature = "memory")]
    #[tokio::test]
    async fn memory_url_parameters_are_checked() {
        assert!(connect("memory://").await.is_ok());
        assert!(connect("MEMORY://?capacity=5").await.is_ok());
        assert_eq!(
            connect("memory://?capacity=1").await.unwrap_err().kind(),
            ErrorKind::Config
        );
        let e = connect("memory://?capacity=lots").await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        let e = connect("memory://?colour=blue").await.unwrap_err();
        assert!(e.message().contains("colour"), "{e}");
        let e = connect("memory://?capacity=0").await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
    }
}
