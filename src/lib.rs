#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use larder_cache_api::*;

/// Layers over any backend: those of the contract crate (`Namespace`, `Timeout`,
/// `Instrumented`, `Restrict`, the invalidation channel) and the near cache (`Near`, the
/// `larder-near` crate).
pub mod layer {
    #[doc(inline)]
    pub use larder_cache_api::layer::*;
    #[doc(inline)]
    pub use larder_near::{
        ChannelState, Near, NearBuilder, NearStats, DEFAULT_CAPACITY, DEFAULT_MAX_AGE,
        DEFAULT_MAX_STALENESS,
    };
}

/// Coordination across processes: leases with fencing tokens, an elector, periodic tasks
/// claimed once per period (the `larder-coord` crate; feature `cron` adds cron schedules).
#[doc(inline)]
pub use larder_coord as coord;

/// Backends compiled into this build, one module per Cargo feature.
pub mod backends {
    /// memcached, one or many servers (feature `memcached`).
    #[cfg(feature = "memcached")]
    pub use larder_backend_memcached as memcached;
    /// The in-process backend (feature `memory`, on by default).
    #[cfg(feature = "memory")]
    pub use larder_backend_memory as memory;
    /// Redis, single node, cluster or Sentinel (feature `redis`; `redis-tls`, `cluster`).
    #[cfg(feature = "redis")]
    pub use larder_backend_redis as redis;
    /// sled, embedded and persistent (feature `sled`).
    #[cfg(feature = "sled")]
    pub use larder_backend_sled as sled;
    /// The compare-and-swap store and fences in PostgreSQL or SQLite (features `postgres`,
    /// `sqlite`).
    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    pub use larder_backend_sql as sql;
}

#[cfg(any(
    feature = "postgres",
    feature = "sqlite",
    feature = "tower-sessions",
    feature = "actix"
))]
pub mod sessions;

/// The operator command line `larder` (feature `cli`).
#[cfg(feature = "cli")]
pub mod cli;
mod connect;
pub use connect::{connect, schemes};

/// The `sqlite://` URL of a database file, for [`connect`] and
/// [`sessions::connect`]: `%`, `?` and `#` in the path are
/// percent-encoded (features `sqlite`).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> larder::Result<()> {
/// # let dir = std::env::temp_dir().join(format!("larder-sqlite-url-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir).unwrap();
/// let url = larder::sqlite_url(&dir.join("app.db")); // an absolute path: sqlite:///...
/// assert!(url.starts_with("sqlite:///"));
/// let kv = larder::connect(&url).await?;
/// # let _ = kv;
/// # Ok(()) }
/// ```
#[cfg(feature = "sqlite")]
pub use larder_backend_sql::sqlite_url;

/// The tower-sessions crate that [`sessions::TowerStore`] implements (feature
/// `tower-sessions`): use it from here (`larder::tower_sessions::SessionManagerLayer`) and
/// its version always matches larder's.
#[cfg(feature = "tower-sessions")]
pub use larder_session_persist::tower_sessions;

/// The actix-session crate that [`sessions::ActixStore`] implements (feature `actix`): use
/// it from here (`larder::actix_session::SessionMiddleware`) and its version always matches
/// larder's.
#[cfg(feature = "actix")]
pub use larder_session_persist::actix_session;
