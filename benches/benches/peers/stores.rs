//! The stores under test ([`Kind`]), the servers they share ([`Env`]), and an app instance
//! over each.

use std::sync::Arc;
use std::time::Duration;

use larder_backend_redis::RedisBackend;
use larder_cache_api::DynBackend;
use larder_near::{ChannelState, Near};
use larder_session_persist::{CachedStore, PgStore, TowerStore};
use larder_tests::{eventually, Patience};
use sqlx::postgres::PgConnectOptions;
use tower_sessions::CachingSessionStore;
use tower_sessions_redis_store::fred::prelude::{ClientLike, Config as FredConfig, Pool};
use tower_sessions_redis_store::RedisStore;
use tower_sessions_sqlx_store::PostgresStore;

use crate::adapters::Compat;
use crate::app::{serve, Instance};
use crate::{FRED_POOL, PG_POOL};

#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    SqlxPg,
    Redis,
    Caching,
    LarderPg,
    LarderPgRedis,
    LarderNear,
}

impl Kind {
    pub(crate) const ALL: [Kind; 6] = [
        Kind::SqlxPg,
        Kind::Redis,
        Kind::Caching,
        Kind::LarderPg,
        Kind::LarderPgRedis,
        Kind::LarderNear,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::SqlxPg => "sqlx-pg",
            Kind::Redis => "redis",
            Kind::Caching => "caching(redis,sqlx-pg)",
            Kind::LarderPg => "larder-pg",
            Kind::LarderPgRedis => "larder-pg+redis",
            Kind::LarderNear => "larder-pg+redis+near",
        }
    }

    /// larder's stores beside the peer each is compared with: the fastest peer on the same
    /// servers (the SQL store on PostgreSQL alone; the caching store when Redis is there).
    pub(crate) const PAIRS: [(Kind, Kind); 3] = [
        (Kind::LarderPg, Kind::SqlxPg),
        (Kind::LarderPgRedis, Kind::Caching),
        (Kind::LarderNear, Kind::Caching),
    ];

    /// The stores `PEERS_STORES` names (comma-separated names; `caching` for the caching
    /// store), else all of them.
    pub(crate) fn selected() -> Vec<Kind> {
        match std::env::var("PEERS_STORES") {
            Ok(list) if !list.trim().is_empty() => {
                let names: Vec<&str> = list.split(',').map(str::trim).collect();
                Kind::ALL
                    .into_iter()
                    // `caching` names `caching(redis,sqlx-pg)`, whose comma would split.
                    .filter(|k| {
                        names.iter().any(|n| {
                            k.name() == *n
                                || k.name().strip_prefix(n).is_some_and(|r| r.starts_with('('))
                        })
                    })
                    .collect()
            }
            _ => Kind::ALL.to_vec(),
        }
    }
}

/// Where the servers are: the PostgreSQL URL and each store's schema, and Redis.
pub(crate) struct Env {
    pub(crate) pg_url: String,
    /// Each store's own fresh schema (so that no store reads a table another one bloats).
    pub(crate) schemas: Vec<(&'static str, String)>,
    pub(crate) redis_url: String,
    /// Reads `pg_stat_activity` for [`pg_cpu`].
    pub(crate) admin: sqlx::PgPool,
}

/// The `application_name` of the PostgreSQL connections of `kind`'s store objects, so that
/// the CPU time of their server processes can be told apart.
pub(crate) fn pg_application(kind: Kind) -> String {
    format!("peers {}", kind.name())
}

impl Env {
    pub(crate) fn schema(&self, kind: Kind) -> &str {
        self.schemas
            .iter()
            .find(|(k, _)| *k == kind.name())
            .map(|(_, s)| s.as_str())
            .expect("a schema per store")
    }
}

pub(crate) async fn sqlx_store(env: &Env, kind: Kind) -> PostgresStore {
    let opts: tower_sessions_sqlx_store::sqlx::postgres::PgConnectOptions =
        env.pg_url.parse().expect("postgres url");
    // `PEERS_SQLX_CHECK=0` turns off sqlx's check before each use for the peer too, to
    // see how much of a difference is that check.
    let check = std::env::var("PEERS_SQLX_CHECK").map_or(true, |v| v != "0");
    let pool = tower_sessions_sqlx_store::sqlx::postgres::PgPoolOptions::new()
        .max_connections(PG_POOL)
        .test_before_acquire(check)
        .connect_with(opts.application_name(&pg_application(kind)))
        .await
        .expect("sqlx 0.8 pool");
    PostgresStore::new(pool)
        .with_schema_name(env.schema(kind))
        .expect("schema name")
}

async fn fred_pool(env: &Env) -> Pool {
    let config = FredConfig::from_url(&env.redis_url).expect("fred config");
    let pool = Pool::new(config, None, None, None, FRED_POOL).expect("fred pool");
    // The connection tasks run in the background; `Instance::stop` quits them.
    let _connections = pool.init().await.expect("fred connects");
    pool
}

/// A larder `PgStore` with its own pool on the run's schema (migrated once in `main`), from
/// larder's pool settings as `PgStore::connect` uses them (the peer gets sqlx's defaults,
/// which is what its `PostgresStore::new(pool)` is documented with).
async fn larder_pg(env: &Env, kind: Kind) -> PgStore {
    let opts: PgConnectOptions = env.pg_url.parse().expect("postgres url");
    let pool = PgStore::pool_options()
        .max_connections(PG_POOL)
        .connect_with(
            opts.options([("search_path", env.schema(kind))])
                .application_name(&pg_application(kind)),
        )
        .await
        .expect("larder pool");
    PgStore::from_pool(pool)
}

/// A new app instance over a new store object of `kind`.
pub(crate) async fn instance(kind: Kind, env: &Env) -> Instance {
    match kind {
        Kind::SqlxPg => serve(Compat(sqlx_store(env, kind).await), vec![]).await,
        Kind::Redis => {
            let pool = fred_pool(env).await;
            serve(Compat(RedisStore::new(pool.clone())), vec![pool]).await
        }
        Kind::Caching => {
            let pool = fred_pool(env).await;
            let store = CachingSessionStore::new(
                Compat(RedisStore::new(pool.clone())),
                Compat(sqlx_store(env, kind).await),
            );
            serve(store, vec![pool]).await
        }
        Kind::LarderPg => {
            serve(
                TowerStore::new(Arc::new(larder_pg(env, kind).await)),
                vec![],
            )
            .await
        }
        Kind::LarderPgRedis => {
            let cache: DynBackend = Arc::new(
                RedisBackend::connect(&env.redis_url)
                    .await
                    .expect("larder redis backend"),
            );
            let store = CachedStore::new(larder_pg(env, kind).await, cache);
            serve(TowerStore::new(Arc::new(store)), vec![]).await
        }
        Kind::LarderNear => {
            let store = CachedStore::new(larder_pg(env, kind).await, near_redis(env).await);
            serve(TowerStore::new(Arc::new(store)), vec![]).await
        }
    }
}

/// A near cache over larder's Redis backend, kept coherent by its Redis tracking channel
/// (as the example web app builds it when several instances share Redis); returned once the
/// channel is up, so that the local tier is in use from the first request.
async fn near_redis(env: &Env) -> DynBackend {
    let redis = RedisBackend::connect(&env.redis_url)
        .await
        .expect("larder redis backend");
    let tracking = redis.tracking();
    let near = Near::builder(Arc::new(redis))
        .channel(tracking)
        .build()
        .expect("near cache");
    let patience = Patience::new(Duration::from_secs(10)).every(Duration::from_millis(10));
    eventually(patience, "Redis tracking is up", async || {
        near.channel_state() == ChannelState::Up
    })
    .await;
    Arc::new(near)
}
