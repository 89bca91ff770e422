//! The whole conformance suite, coordination cases included, over every layer: `Namespace`,
//! `Timeout` (with fail-open reads), `Instrumented` and `Restrict`, each stacked on the
//! memory backend and on a real redis-server, plus all of them stacked at once.
//!
//! A layer that changes capabilities is checked against what it declares: `Namespace`
//! declares the shorter keys its prefix leaves room for, and `Restrict` is run with fewer
//! capabilities than the backend has (no CAS, no touch, smaller limits; and, on memory, CAS
//! that is not linearizable), so the suite checks that it refuses what it no longer offers
//! and that coordination refuses it.
//!
//! The shared redis-server lives in a `static` for the whole test binary, with a watchdog
//! that stops it once the test process has exited (see `larder_tests::cluster`).
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use larder::layer::{Instrumented, Namespace, Restrict, Timeout};
use larder::DynBackend;
use larder_backend_memory::MemoryBackend;
use larder_backend_redis::RedisBackend;
use larder_tests::cluster::shutdown_redis_at_exit;
use larder_tests::server::ServerProcess;

static SERVER: OnceLock<ServerProcess> = OnceLock::new();

fn memory() -> DynBackend {
    Arc::new(MemoryBackend::default())
}

async fn redis() -> DynBackend {
    let server = SERVER.get_or_init(|| {
        let s = ServerProcess::redis();
        shutdown_redis_at_exit(s.port());
        s
    });
    Arc::new(
        RedisBackend::connect(&format!("redis://{}", server.addr()))
            .await
            .unwrap(),
    )
}

/// A namespace with a name as long as allowed, so that it leaves the least room for keys.
fn namespace(b: DynBackend) -> DynBackend {
    let name = format!("layer{:059x}", rand_u64());
    Arc::new(Namespace::new(b, &name).unwrap())
}

fn timeout(b: DynBackend) -> DynBackend {
    Arc::new(Timeout::new(b, Duration::from_secs(10)).fail_open_reads(true))
}

fn instrumented(b: DynBackend) -> DynBackend {
    Arc::new(Instrumented::new(b))
}

/// Plain writes only, like the weakest cache: no CAS, no touch, smaller values and keys,
/// coarser TTLs; it may evict and is neither persistent nor shared.
fn restrict_plain(b: DynBackend) -> DynBackend {
    let mut caps = b.capabilities().clone();
    caps.cas = false;
    caps.linearizable_cas = false;
    caps.touch = false;
    caps.may_evict = true;
    caps.persistent = false;
    caps.shared = false;
    caps.max_value_size = 64 * 1024;
    caps.max_key_len = 200;
    caps.ttl_precision = caps.ttl_precision.max(Duration::from_millis(50));
    Arc::new(Restrict::new(b, caps).unwrap())
}

/// CAS that is not linearizable, like memcached's: CAS cases run, coordination refuses it.
fn restrict_cas_only(b: DynBackend) -> DynBackend {
    let mut caps = b.capabilities().clone();
    caps.linearizable_cas = false;
    Arc::new(Restrict::new(b, caps).unwrap())
}

/// Every layer at once, in the order an application stacks them.
fn stacked(b: DynBackend) -> DynBackend {
    instrumented(timeout(namespace(b)))
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.finish()
}

async fn namespace_on_memory() -> DynBackend {
    namespace(memory())
}
async fn timeout_on_memory() -> DynBackend {
    timeout(memory())
}
async fn instrumented_on_memory() -> DynBackend {
    instrumented(memory())
}
async fn restrict_plain_on_memory() -> DynBackend {
    restrict_plain(memory())
}
async fn restrict_cas_only_on_memory() -> DynBackend {
    restrict_cas_only(memory())
}
async fn stacked_on_memory() -> DynBackend {
    stacked(memory())
}

async fn namespace_on_redis() -> DynBackend {
    namespace(redis().await)
}
async fn timeout_on_redis() -> DynBackend {
    timeout(redis().await)
}
async fn instrumented_on_redis() -> DynBackend {
    instrumented(redis().await)
}
async fn restrict_plain_on_redis() -> DynBackend {
    restrict_plain(redis().await)
}
async fn stacked_on_redis() -> DynBackend {
    stacked(redis().await)
}

mod memory_namespace {
    larder_coord::conformance_suite!(super::namespace_on_memory);
}
mod memory_timeout {
    larder_coord::conformance_suite!(super::timeout_on_memory);
}
mod memory_instrumented {
    larder_coord::conformance_suite!(super::instrumented_on_memory);
}
mod memory_restrict_plain {
    larder_coord::conformance_suite!(super::restrict_plain_on_memory);
}
mod memory_restrict_cas_only {
    larder_coord::conformance_suite!(super::restrict_cas_only_on_memory);
}
mod memory_stacked {
    larder_coord::conformance_suite!(super::stacked_on_memory);
}

mod redis_namespace {
    larder_coord::conformance_suite!(super::namespace_on_redis);
}
mod redis_timeout {
    larder_coord::conformance_suite!(super::timeout_on_redis);
}
mod redis_instrumented {
    larder_coord::conformance_suite!(super::instrumented_on_redis);
}
mod redis_restrict_plain {
    larder_coord::conformance_suite!(super::restrict_plain_on_redis);
}
mod redis_stacked {
    larder_coord::conformance_suite!(super::stacked_on_redis);
}
