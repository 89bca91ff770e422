//! The Redis backend against real servers: the conformance suite on one redis-server and on
//! a three-master Redis Cluster, plus faults (server stopped, connections stalled or cut),
//! authentication and URL errors.
//!
//! The shared server and cluster live in `static`s for the whole test binary. Statics are
//! never dropped, so each registers a watchdog (see `larder_tests::cluster`) that stops it
//! once the test process has exited.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use larder::{Bytes, CacheBackend, DeleteMode, DynBackend, ErrorKind, Key, PutMode};
use larder_backend_redis::{RedisBackend, RedisConfig};
use larder_tests::cluster::{shutdown_redis_at_exit, RedisCluster};
use larder_tests::outage::Outage;
use larder_tests::proxy::FaultProxy;
use larder_tests::server::ServerProcess;
use larder_tests::tls::TlsRedis;

static SERVER: OnceLock<ServerProcess> = OnceLock::new();
static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();

fn server() -> &'static ServerProcess {
    SERVER.get_or_init(|| {
        let s = ServerProcess::redis();
        shutdown_redis_at_exit(s.port());
        s
    })
}

fn cluster() -> &'static RedisCluster {
    CLUSTER.get_or_init(|| {
        let c = RedisCluster::start();
        c.kill_at_exit();
        c
    })
}

async fn single_backend() -> DynBackend {
    let url = format!("redis://{}", server().addr());
    Arc::new(RedisBackend::connect(&url).await.unwrap())
}

async fn cluster_backend() -> DynBackend {
    let url = format!("redis+cluster://{}", cluster().seeds());
    Arc::new(RedisBackend::connect(&url).await.unwrap())
}

mod redis {
    larder_coord::conformance_suite!(super::single_backend);
}

mod redis_cluster {
    larder_coord::conformance_suite!(super::cluster_backend);
}

fn key(tag: &str) -> Key {
    Key::new(format!("rt-{tag}-{:x}", rand_u64())).unwrap()
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

/// Short timeouts so faults surface quickly: every operation is bounded by 400 ms.
const FAST: &str = "response_timeout_ms=200&connect_timeout_ms=200";
const BOUND: Duration = Duration::from_millis(5 * 400);

fn assert_down(e: &larder::Error) {
    assert!(
        matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::Timeout),
        "expected unavailable or timeout, got {e}"
    );
    assert!(e.is_retryable(), "{e}");
    assert_eq!(e.backend(), Some("redis"));
    assert!(
        std::error::Error::source(e).is_some(),
        "the cause is kept: {e:?}"
    );
}

/// A backend with [`FAST`] timeouts on a server of its own, for the outage cases.
async fn redis_server() -> Outage {
    let srv = ServerProcess::redis();
    let b = RedisBackend::connect(&format!("redis://{}/?{FAST}", srv.addr()))
        .await
        .unwrap();
    // No persistence: the restarted server kept nothing (`persistent` is false).
    Outage::server(Arc::new(b), srv, "redis")
        .bound(BOUND)
        .recovers_within(Duration::from_secs(10))
}

/// The same, through a fault proxy.
async fn redis_proxied() -> Outage {
    let srv = ServerProcess::redis();
    let proxy = FaultProxy::start(&srv.addr()).await;
    let b = RedisBackend::connect(&format!("redis://{}/?{FAST}", proxy.addr()))
        .await
        .unwrap();
    Outage::proxied(Arc::new(b), proxy, Some(srv), "redis")
        .bound(BOUND)
        .recovers_within(Duration::from_secs(10))
        .recovers_from_stall_within(Duration::from_secs(5))
}

mod redis_outages {
    larder_tests::outage_cases!(stopped: super::redis_server, proxied: super::redis_proxied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_at_connect_is_unavailable() {
    let port = larder_tests::free_port();
    let t = Instant::now();
    let e = RedisBackend::connect(&format!("redis://:pw-secret-1@127.0.0.1:{port}/?{FAST}"))
        .await
        .unwrap_err();
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    assert_down(&e);
    assert!(!e.to_string().contains("pw-secret-1"), "{e}");
    assert!(!format!("{e:?}").contains("pw-secret-1"), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_auth_and_failures() {
    let srv = ServerProcess::redis_with(&["--requirepass", "right-horse-battery"]);
    let addr = srv.addr();
    // redis-server cannot take an ACL rule with spaces on its command line; add the user
    // once it runs.
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &srv.port().to_string(), "--no-auth-warning"])
        .args(["-a", "right-horse-battery", "ACL", "SETUSER", "alice", "on"])
        .args([">alice-staple-pw", "~*", "&*", "+@all"])
        .output()
        .expect("redis-cli runs");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK", "{out:?}");
    // The right password, as the default user and as a named ACL user, in database 3.
    for url in [
        format!("redis://:right-horse-battery@{addr}/3"),
        format!("redis://alice:alice-staple-pw@{addr}/3"),
    ] {
        let b = RedisBackend::connect(&url).await.unwrap();
        let k = key("auth");
        b.put(&k, Bytes::from_static(b"ok"), None, PutMode::Overwrite)
            .await
            .unwrap();
        assert_eq!(&b.get(&k).await.unwrap().unwrap().value[..], b"ok");
        for text in [format!("{b:?}"), format!("{:?}", b.config())] {
            assert!(!text.contains("right-horse-battery"), "{text}");
            assert!(!text.contains("alice-staple-pw"), "{text}");
        }
    }
    // A wrong password, a wrong user, and no password at all: a typed, non-retryable
    // configuration error that names the problem and never the password.
    for (url, secret) in [
        (format!("redis://:wrong-zebra-pw@{addr}"), "wrong-zebra-pw"),
        (format!("redis://bob:bob-wrong-pw@{addr}"), "bob-wrong-pw"),
        (format!("redis://{addr}"), "right-horse-battery"),
    ] {
        let e = RedisBackend::connect(&url).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config, "{url}: {e}");
        assert!(!e.is_retryable());
        let text = e.to_string();
        assert!(text.contains("authentication"), "{text}");
        assert!(!text.contains(secret), "{text}");
        assert!(!format!("{e:?}").contains(secret));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_urls_are_config_errors() {
    let addr = server().addr();
    for url in [
        format!("redis://{addr}/abc"),
        format!("redis://{addr}/-1"),
        "redis://127.0.0.1:99999".to_string(),
        "redis://127.0.0.1:0".to_string(),
        "redis://127.0.0.1:notaport".to_string(),
        format!("redis://{addr}/?response_timeout_ms=soon"),
        format!("redis://{addr}/?max_value_size=1"),
        format!("redis+cluster://{addr}/1"),
        "memcache://127.0.0.1".to_string(),
    ] {
        let e = RedisBackend::connect(&url).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config, "{url}: {e}");
    }
    // A database the server does not have (16 by default) is refused at connect time.
    let e = RedisBackend::connect(&format!("redis://{addr}/99"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn databases_are_separate() {
    let addr = server().addr();
    let a = RedisBackend::connect(&format!("redis://{addr}/1"))
        .await
        .unwrap();
    let b = RedisBackend::connect(&format!("redis://{addr}/2"))
        .await
        .unwrap();
    let k = key("db");
    a.put(&k, Bytes::from_static(b"one"), None, PutMode::Overwrite)
        .await
        .unwrap();
    assert!(b.get(&k).await.unwrap().is_none());
    assert!(a.get(&k).await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_single_and_cluster() {
    let s = single_backend().await;
    let c = s.capabilities();
    assert_eq!(c.name, "redis");
    assert!(c.cas && c.linearizable_cas && c.touch && c.shared);
    // As measured on this server (`--save '' --appendonly no`, Redis's default noeviction):
    // see `durability_is_measured_at_connect`.
    assert!(!c.persistent && !c.may_evict);
    assert_eq!(c.ttl_precision, Duration::from_millis(1));
    assert_eq!(c.max_value_size, 16 * 1024 * 1024);
    let cl = cluster_backend().await;
    assert!(cl.capabilities().cas);
    // Every master is asked; none of them has an append-only file, and the note names them.
    let note = cl.capabilities().persistence_note.clone().unwrap();
    assert!(!cl.capabilities().persistent, "{note}");
    assert_eq!(
        note.matches("no append-only file (appendonly no) on 127.0.0.1:")
            .count(),
        3,
        "{note}"
    );
    assert!(
        !cl.capabilities().linearizable_cas,
        "a cluster failover can lose an acknowledged CAS"
    );
    let small = RedisBackend::connect(&format!("redis://{}/?max_value_size=4096", server().addr()))
        .await
        .unwrap();
    assert_eq!(small.capabilities().max_value_size, 4096);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_get_many_and_put_many_span_nodes() {
    let cl = cluster();
    let b = cluster_backend().await;
    let items: Vec<(Key, Bytes)> = (0..60)
        .map(|i| (key(&format!("span{i}")), Bytes::from(format!("value-{i}"))))
        .collect();
    let owners: std::collections::HashSet<u16> =
        items.iter().map(|(k, _)| cl.owner_of(k.as_str())).collect();
    assert_eq!(owners.len(), 3, "the keys land on all three masters");
    let versions = b.put_many(&items, None).await.unwrap();
    let mut keys: Vec<Key> = items.iter().map(|(k, _)| k.clone()).collect();
    keys.push(key("missing"));
    keys.push(items[0].0.clone());
    let got = b.get_many(&keys).await.unwrap();
    assert_eq!(got.len(), keys.len());
    for (i, (_, v)) in items.iter().enumerate() {
        let e = got[i].as_ref().unwrap();
        assert_eq!(&e.value, v, "order kept across slots");
        assert_eq!(e.version, versions[i]);
    }
    assert!(got[60].is_none());
    assert_eq!(got[61].as_ref().unwrap().version, versions[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_debug_hides_password() {
    let c = RedisConfig::from_url("redis://u:very-secret-pw@h:1/2").unwrap();
    assert!(!format!("{c:?}").contains("very-secret-pw"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca() {
    let srv = TlsRedis::start();
    let url = format!("rediss://127.0.0.1:{}", srv.port());
    let config = RedisConfig::from_url(&url)
        .unwrap()
        .with_tls_root_cert(srv.ca_pem().to_vec());
    let b = RedisBackend::new(config).await.unwrap();
    let k = key("tls");
    let v = b
        .put(&k, Bytes::from_static(b"over tls"), None, PutMode::Create)
        .await
        .unwrap();
    let e = b.get(&k).await.unwrap().unwrap();
    assert_eq!((&e.value[..], e.version), (&b"over tls"[..], v));
    b.put(&k, Bytes::from_static(b"cas"), None, PutMode::Update(v))
        .await
        .unwrap();
    // Without the CA the certificate is not trusted: refused, not silently accepted.
    let e = RedisBackend::connect(&format!("{url}/?{FAST}"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    assert!(e.to_string().contains("TLS"), "{e}");
    // Plain TCP to the TLS port does not get through either.
    assert!(
        RedisBackend::connect(&format!("redis://127.0.0.1:{}/?{FAST}", srv.port()))
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_millisecond_ttl_is_never_early() {
    let b = single_backend().await;
    assert_eq!(larder_tests::early_ttl_misses(&b, 10_000).await, 0);
}

/// The backend reports what the server is configured to keep, read from `INFO` at connect:
/// persistent only with an append-only file, non-evicting only with `maxmemory-policy
/// noeviction`, and neither where `INFO` may not be read. Coordination then refuses what may
/// lose its records (unless accepted) and takes what keeps them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durability_is_measured_at_connect() {
    use larder::coord::{check_backend, Durability};
    async fn caps_of(url: &str) -> larder::Capabilities {
        RedisBackend::connect(url)
            .await
            .unwrap()
            .capabilities()
            .clone()
    }
    let note = |n: &Option<std::borrow::Cow<'static, str>>| n.as_deref().unwrap_or("").to_owned();

    // Redis's defaults (no append-only file, noeviction), snapshots off.
    let default = ServerProcess::redis_with(&[]);
    let c = caps_of(&format!("redis://{}", default.addr())).await;
    assert!(!c.persistent, "{c:?}");
    assert!(!c.may_evict, "noeviction evicts nothing: {c:?}");
    assert_eq!(
        note(&c.persistence_note),
        "no append-only file (appendonly no)"
    );
    let b: DynBackend = Arc::new(
        RedisBackend::connect(&format!("redis://{}", default.addr()))
            .await
            .unwrap(),
    );
    let details = b.details();
    assert!(
        details.iter().any(|(k, v)| *k == "durability (at connect)"
            && v == "appendonly no, maxmemory-policy noeviction"),
        "{details:?}"
    );
    let e = check_backend(&b, Durability::Required).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert!(
        e.message()
            .contains("it is not persistent (no append-only file (appendonly no))"),
        "{e}"
    );
    assert!(check_backend(&b, Durability::AcceptLoss).is_ok());

    // An append-only file and noeviction: durable, and coordination takes it as it is.
    let aof =
        ServerProcess::redis_with(&["--appendonly", "yes", "--maxmemory-policy", "noeviction"]);
    let url = format!("redis://{}", aof.addr());
    let c = caps_of(&url).await;
    assert!(c.persistent && !c.may_evict, "{c:?}");
    let b: DynBackend = Arc::new(RedisBackend::connect(&url).await.unwrap());
    check_backend(&b, Durability::Required).unwrap();

    // An evicting policy: may evict, whatever the persistence.
    let lru =
        ServerProcess::redis_with(&["--appendonly", "yes", "--maxmemory-policy", "allkeys-lru"]);
    let url = format!("redis://{}", lru.addr());
    let c = caps_of(&url).await;
    assert!(c.persistent && c.may_evict, "{c:?}");
    assert_eq!(
        note(&c.eviction_note),
        "maxmemory-policy allkeys-lru evicts"
    );
    let b: DynBackend = Arc::new(RedisBackend::connect(&url).await.unwrap());
    let e = check_backend(&b, Durability::Required).unwrap_err();
    assert!(
        e.message()
            .contains("it may evict entries (maxmemory-policy allkeys-lru evicts)"),
        "{e}"
    );
    let volatile = ServerProcess::redis_with(&["--maxmemory-policy", "volatile-lru"]);
    let c = caps_of(&format!("redis://{}", volatile.addr())).await;
    assert!(!c.persistent && c.may_evict, "{c:?}");

    // A user whose ACL forbids INFO: the safe answer, and the note says why.
    let out = std::process::Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &aof.port().to_string()])
        .args([
            "ACL", "SETUSER", "app", "on", ">app-pw", "~*", "+@all", "-info",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK");
    let c = caps_of(&format!("redis://app:app-pw@{}", aof.addr())).await;
    assert!(
        !c.persistent && c.may_evict,
        "unknown counts as not durable: {c:?}"
    );
    assert!(
        note(&c.persistence_note).starts_with("persistence unknown: INFO persistence:"),
        "{c:?}"
    );
    assert!(note(&c.persistence_note).contains("permission"), "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_if_version_works_for_every_key_shape() {
    // Delete-if-version also writes a marker key next to the entry (see
    // `backend-redis/src/core.rs`), which must share the entry's cluster slot whatever the
    // key looks like: with a hash tag, without one, with braces that make no hash tag.
    let n = rand_u64();
    let shapes = [
        format!("plain-{n:x}"),
        format!("{{user{n:x}}}:profile"),
        format!("pre{{{n:x}}}post{{x}}"),
        format!("closing}}only-{n:x}"),
        format!("{{}}empty-tag}}-{n:x}"),
        format!("}}{{{n:x}"),
        format!("open{{-{n:x}"),
    ];
    for b in [single_backend().await, cluster_backend().await] {
        for s in &shapes {
            let k = Key::new(s.as_str()).unwrap();
            let v = b
                .put(&k, Bytes::from_static(b"v"), None, PutMode::Overwrite)
                .await
                .unwrap();
            assert!(b.delete(&k, DeleteMode::IfVersion(v)).await.unwrap(), "{s}");
            assert!(b.get(&k).await.unwrap().is_none(), "{s}");
            let e = b.delete(&k, DeleteMode::IfVersion(v)).await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Conflict, "{s}: {e}");
        }
    }
}
