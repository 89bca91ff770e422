//! The whole conformance suite, coordination cases included, over the near cache
//! (`layer::Near`) in front of every backend: Redis (single server and Cluster) and
//! PostgreSQL with their invalidation channels, and memory, memcached, sled and SQLite with an
//! explicitly accepted staleness (they have no channel).
//!
//! `Near` declares CAS as not linearizable (a read may be stale by the bound), so the suite
//! checks that coordination refuses it.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use larder::layer::{ChannelState, InvalidationChannel, Near};
use larder::DynBackend;
use larder_backend_memcached::MemcachedBackend;
use larder_backend_memory::MemoryBackend;
use larder_backend_redis::RedisBackend;
use larder_backend_sled::{SledBackend, SledConfig};
use larder_tests::cluster::{shutdown_redis_at_exit, RedisCluster};
use larder_tests::db;
use larder_tests::owning::Owning;
use larder_tests::server::ServerProcess;
use larder_tests::{eventually, Patience};

static REDIS: OnceLock<ServerProcess> = OnceLock::new();
static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();

const ACCEPTED: Duration = Duration::from_secs(5);

fn accepted(b: DynBackend) -> DynBackend {
    Arc::new(Near::builder(b).accept_staleness(ACCEPTED).build().unwrap())
}

/// A near cache with `channel`, once the channel is up (reads before that would only
/// bypass the local tier, which is correct but would not exercise it).
async fn with_channel(b: DynBackend, channel: impl InvalidationChannel + 'static) -> DynBackend {
    let near = Near::builder(b).channel(channel).build().unwrap();
    let patience = Patience::new(Duration::from_secs(10)).every(Duration::from_millis(10));
    eventually(patience, "the invalidation channel is up", async || {
        near.channel_state() == ChannelState::Up
    })
    .await;
    Arc::new(near)
}

async fn near_redis() -> DynBackend {
    let server = REDIS.get_or_init(|| {
        let s = ServerProcess::redis();
        shutdown_redis_at_exit(s.port());
        s
    });
    let redis = RedisBackend::connect(&format!("redis://{}", server.addr()))
        .await
        .unwrap();
    let tracking = redis.tracking();
    with_channel(Arc::new(redis), tracking).await
}

async fn near_cluster() -> DynBackend {
    let cluster = CLUSTER.get_or_init(|| {
        let c = RedisCluster::start();
        c.kill_at_exit();
        c
    });
    let redis = RedisBackend::connect(&format!("redis+cluster://{}", cluster.seeds()))
        .await
        .unwrap();
    let tracking = redis.tracking();
    with_channel(Arc::new(redis), tracking).await
}

async fn near_postgres() -> DynBackend {
    let (kv, _schema) = db::pg_kv().await;
    let notify = kv.notify();
    with_channel(Arc::new(kv), notify).await
}

async fn near_memory() -> DynBackend {
    accepted(Arc::new(MemoryBackend::default()))
}

async fn near_memcached() -> DynBackend {
    let server = ServerProcess::memcached_with(&["-I", "2m"]);
    let b = MemcachedBackend::connect(&format!("memcache://{}", server.addr()))
        .await
        .unwrap();
    accepted(Owning::wrap(Arc::new(b), server))
}

async fn near_sled() -> DynBackend {
    let dir = tempfile::tempdir().unwrap();
    let b = SledBackend::new(
        SledConfig::new(dir.path()).with_sweep_interval(Some(Duration::from_millis(200))),
    )
    .await
    .unwrap();
    accepted(Owning::wrap(Arc::new(b), dir))
}

async fn near_sqlite() -> DynBackend {
    let (kv, dir) = db::sqlite_kv().await;
    accepted(Owning::wrap(Arc::new(kv), dir))
}

mod redis {
    larder_coord::conformance_suite!(super::near_redis);
}
mod redis_cluster {
    larder_coord::conformance_suite!(super::near_cluster);
}
mod postgres {
    larder_coord::conformance_suite!(super::near_postgres);
}
mod memory {
    larder_coord::conformance_suite!(super::near_memory);
}
mod memcached {
    larder_coord::conformance_suite!(super::near_memcached);
}
mod sled {
    larder_coord::conformance_suite!(super::near_sled);
}
mod sqlite {
    larder_coord::conformance_suite!(super::near_sqlite);
}
