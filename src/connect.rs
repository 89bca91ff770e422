//! Picking a backend from a URL at run time.

use larder_cache_api::{DynBackend, Error, ErrorKind, Result};

/// URL schemes larder knows, and the Cargo feature each one needs.
const SCHEMES: &[(&str, &str)] = &[
    ("memory", "memory"),
    ("redis", "redis"),
    ("rediss", "redis-tls"),
    ("redis+cluster", "cluster"),
    ("rediss+cluster", "cluster"),
    ("memcache", "memcached"),
    ("memcached", "memcached"),
    ("sled", "sled"),
    ("postgres", "postgres"),
    ("postgresql", "postgres"),
    ("sqlite", "sqlite"),
];

/// Connects to the backend a URL names:
///
/// | URL | backend | feature |
/// |---|---|---|
/// | `memory://?capacity=10000` | in-process | `memory` (default) |
/// | `redis://[:password@]host:port/db` | Redis | `redis` |
/// | `rediss://...` | Redis over TLS | `redis-tls` |
/// | `redis+cluster://host:port,host:port` | Redis Cluster | `cluster` |
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
    let Some((scheme, _)) = url.split_once("://") else {
        return Err(Error::new(
            ErrorKind::Config,
            format!("{url:?} is not a backend URL (expected scheme://...)"),
        ));
    };
    let scheme = scheme.to_ascii_lowercase();
    match scheme.as_str() {
        #[cfg(feature = "memory")]
        "memory" => {
            let b = std::sync::Arc::new(larder_backend_memory::MemoryBackend::from_url(url)?);
            // Expired entries are otherwise only dropped when read or evicted.
            b.spawn_sweeper(std::time::Duration::from_secs(30));
            Ok(b)
        }
        #[cfg(feature = "redis")]
        "redis" | "rediss" | "redis+cluster" | "rediss+cluster" => {
            Ok(std::sync::Arc::new(larder_backend_redis::RedisBackend::connect(url).await?))
        }
        #[cfg(feature = "memcached")]
        "memcache" | "memcached" => Ok(std::sync::Arc::new(
            larder_backend_memcached::MemcachedBackend::connect(url).await?,
        )),
        #[cfg(feature = "sled")]
        "sled" => Ok(std::sync::Arc::new(
            larder_backend_sled::SledBackend::connect(url).await?,
        )),
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => Ok(std::sync::Arc::new(
            larder_backend_sql::PgKv::connect(url).await?,
        )),
        #[cfg(feature = "sqlite")]
        "sqlite" => Ok(std::sync::Arc::new(
            larder_backend_sql::SqliteKv::connect(url).await?,
        )),
        other => Err(match SCHEMES.iter().find(|(s, _)| *s == other) {
            Some((_, feature)) => Error::new(
                ErrorKind::Unsupported,
                format!(
                    "{other}:// URLs need larder's `{feature}` feature, which this build does not enable"
                ),
            ),
            None => Error::new(
                ErrorKind::Config,
                format!(
                    "unknown backend URL scheme {other:?} (known: {})",
                    SCHEMES
                        .iter()
                        .map(|(s, _)| format!("{s}://"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
        }),
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
        let e = connect("memory://?capacity=lots").await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        let e = connect("memory://?colour=blue").await.unwrap_err();
        assert!(e.message().contains("colour"), "{e}");
        let e = connect("memory://?capacity=0").await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
    }
}
