//! The memcached backend against real memcached processes: the whole conformance suite on one
//! server and on a three-server ring, plus server restarts, network faults, the add trap,
//! long TTLs and consistent hashing.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use larder::{Bytes, CacheBackend, ErrorKind, Key, PutMode, Ttl};
use larder_backend_memcached::{MemcachedBackend, MemcachedConfig};
use larder_cache_api::DynBackend;
use larder_tests::outage::Outage;
use larder_tests::owning::Owning;
use larder_tests::proxy::{FaultProxy, Mode};
use larder_tests::server::ServerProcess;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

fn url(servers: &[&ServerProcess]) -> String {
    let hosts: Vec<String> = servers.iter().map(|s| s.addr()).collect();
    format!("memcache://{}", hosts.join(","))
}

async fn single() -> DynBackend {
    let server = ServerProcess::memcached_with(&["-I", "2m"]);
    let backend = MemcachedBackend::connect(&url(&[&server])).await.unwrap();
    Owning::wrap(Arc::new(backend), server)
}

async fn ring() -> DynBackend {
    let servers: Vec<ServerProcess> = (0..3).map(|_| ServerProcess::memcached()).collect();
    let backend = MemcachedBackend::connect(&url(&servers.iter().collect::<Vec<_>>()))
        .await
        .unwrap();
    Owning::wrap(Arc::new(backend), servers)
}

mod memcached {
    larder_coord::conformance_suite!(super::single);
}

mod memcached_ring {
    larder_coord::conformance_suite!(super::ring);
}

/// memcached may evict and restarts its CAS counter: coordination refuses it, clearly.
#[tokio::test]
async fn coordination_refuses_memcached() {
    let b = single().await;
    // Whatever the durability setting: accepting loss does not make CAS linearizable.
    let e = larder::coord::check_backend(&b, larder::coord::Durability::AcceptLoss).unwrap_err();
    assert_eq!(e.kind(), larder::ErrorKind::Unsupported);
    assert!(e.to_string().contains("memcached"), "{e}");
    let lease = larder::coord::Lease::new(
        b.clone(),
        "x",
        larder::coord::HolderId::generate(),
        larder::coord::LeaseConfig::default(),
    );
    assert_eq!(lease.unwrap_err().kind(), larder::ErrorKind::Unsupported);
}

fn key(tag: &str) -> Key {
    Key::new(format!("mc-test-{tag}")).unwrap()
}

/// One raw text-protocol exchange on a fresh connection, read up to a line for which
/// `done` is true; independent of the client under test.
async fn raw(addr: &str, cmd: &str, done: impl Fn(&str) -> bool) -> Vec<String> {
    let mut s = BufReader::new(TcpStream::connect(addr).await.unwrap());
    s.write_all(cmd.as_bytes()).await.unwrap();
    let mut lines = Vec::new();
    loop {
        let mut l = String::new();
        assert!(s.read_line(&mut l).await.unwrap() > 0, "server closed");
        let l = l.trim_end().to_string();
        let end = done(&l);
        lines.push(l);
        if end {
            return lines;
        }
    }
}

#[tokio::test]
async fn value_limit_is_read_from_the_server() {
    let big = ServerProcess::memcached_with(&["-I", "2m"]);
    let b = MemcachedBackend::connect(&url(&[&big])).await.unwrap();
    assert_eq!(b.capabilities().max_value_size, 2 * 1024 * 1024 - 512);
    let small = ServerProcess::memcached();
    let b = MemcachedBackend::connect(&url(&[&big, &small]))
        .await
        .unwrap();
    assert_eq!(
        b.capabilities().max_value_size,
        1024 * 1024 - 512,
        "the smallest server's limit applies"
    );
    // The declared limit holds with the longest key memcached accepts.
    let k = Key::new("L".repeat(250)).unwrap();
    let v = Bytes::from(vec![1u8; b.capabilities().max_value_size]);
    b.put(&k, v.clone(), None, PutMode::Overwrite)
        .await
        .unwrap();
    assert_eq!(b.get(&k).await.unwrap().unwrap().value.len(), v.len());
    let capped = MemcachedBackend::new(
        MemcachedConfig::new([big.addr()])
            .unwrap()
            .with_max_value_size(Some(4096)),
    )
    .await
    .unwrap();
    assert_eq!(capped.capabilities().max_value_size, 4096);
    let caps = b.capabilities();
    assert!(caps.cas && caps.touch && caps.may_evict && caps.shared);
    assert!(!caps.linearizable_cas && !caps.persistent);
    assert_eq!(caps.ttl_precision, Duration::from_secs(1));
}

#[tokio::test]
async fn connect_to_nothing_is_unavailable_quickly() {
    let port = larder_tests::free_port();
    let t = Instant::now();
    let e = MemcachedBackend::connect(&format!("memcache://127.0.0.1:{port}"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.is_retryable());
    assert!(std::error::Error::source(&e).is_some(), "source kept");
    assert!(t.elapsed() < Duration::from_secs(2));
}

/// A backend with a 500 ms timeout on a server of its own, for the outage cases; the
/// restart empties the server.
async fn memcached_server() -> Outage {
    let server = ServerProcess::memcached();
    let b = MemcachedBackend::connect(&format!("memcache://{}?timeout_ms=500", server.addr()))
        .await
        .unwrap();
    Outage::server(Arc::new(b), server, "memcached")
}

/// A server of its own, a fault proxy to it, and a backend with 300 ms timeouts through
/// the proxy.
async fn behind_proxy() -> (ServerProcess, FaultProxy, MemcachedBackend) {
    let server = ServerProcess::memcached();
    let proxy = FaultProxy::start(&server.addr()).await;
    let b = MemcachedBackend::connect(&format!(
        "memcache://{}?timeout_ms=300&connect_timeout_ms=300",
        proxy.addr()
    ))
    .await
    .unwrap();
    (server, proxy, b)
}

async fn memcached_proxied() -> Outage {
    let (server, proxy, b) = behind_proxy().await;
    Outage::proxied(Arc::new(b), proxy, Some(server), "memcached")
}

mod memcached_outages {
    larder_tests::outage_cases!(stopped: super::memcached_server, proxied: super::memcached_proxied);
}

#[tokio::test]
async fn proxy_stall_times_out_cut_is_unavailable_pass_works() {
    let (_server, proxy, b) = behind_proxy().await;
    let k = key("proxy");
    let v = b
        .put(&k, Bytes::from_static(b"x"), None, PutMode::Overwrite)
        .await
        .unwrap();

    proxy.set(Mode::Stall);
    let t = Instant::now();
    let e = b.get(&k).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert!(e.is_retryable());
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let e = b
        .put(&k, Bytes::from_static(b"y"), None, PutMode::Update(v))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");

    proxy.set(Mode::Pass);
    // The stalled CAS may or may not have landed once the bytes flowed again: read the truth.
    let now = b.get(&k).await.unwrap().unwrap();
    assert!(&now.value[..] == b"x" || &now.value[..] == b"y");

    proxy.set(Mode::Cut);
    for _ in 0..3 {
        let t = Instant::now();
        let e = b.get(&k).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
        assert!(t.elapsed() < Duration::from_secs(2));
    }

    proxy.set(Mode::Pass);
    let v2 = b
        .put(&k, Bytes::from_static(b"z"), None, PutMode::Overwrite)
        .await
        .unwrap();
    let e = b.get(&k).await.unwrap().unwrap();
    assert_eq!((&e.value[..], e.version), (&b"z"[..], v2));
}

/// Over ASCII, the `memcache` crate's `add` reports success on `NOT_STORED`; the backend must
/// check the real reply. Checked against the server directly, not through the client.
#[tokio::test]
async fn create_on_present_is_a_conflict_not_a_silent_success() {
    let server = ServerProcess::memcached();
    let b = MemcachedBackend::connect(&url(&[&server])).await.unwrap();
    let k = key("add-trap");
    let first = b
        .put(&k, Bytes::from_static(b"first"), None, PutMode::Create)
        .await
        .unwrap();
    let e = b
        .put(&k, Bytes::from_static(b"second"), None, PutMode::Create)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    let cur = e.current().unwrap();
    assert_eq!((&cur.value[..], cur.version), (&b"first"[..], first));
    let lines = raw(&server.addr(), &format!("gets {k}\r\n"), |l| l == "END").await;
    assert_eq!(lines[1], "first", "{lines:?}");
    assert_eq!(
        lines[0].split(' ').nth(4),
        Some(first.into_raw().to_string().as_str()),
        "the version is the server's CAS unique: {lines:?}"
    );
    // Several creators of a value someone set with a plain text-protocol `set`: all lose.
    let k2 = key("add-trap-2");
    raw(
        &server.addr(),
        &format!("set {k2} 0 0 3\r\nabc\r\n"),
        |_| true,
    )
    .await;
    for _ in 0..5 {
        let e = b
            .put(&k2, Bytes::from_static(b"mine"), None, PutMode::Create)
            .await
            .unwrap_err();
        assert_eq!(e.current().map(|c| &c.value[..]), Some(&b"abc"[..]));
    }
}

#[tokio::test]
async fn ttl_of_31_days_is_stored_as_31_days() {
    let server = ServerProcess::memcached();
    let b = MemcachedBackend::connect(&url(&[&server])).await.unwrap();
    let k = key("31d");
    let days31 = 31 * 24 * 3600;
    b.put(
        &k,
        Bytes::from_static(b"long"),
        Some(Ttl::from_secs(days31).unwrap()),
        PutMode::Overwrite,
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        &b.get(&k).await.unwrap().unwrap().value[..],
        b"long",
        "not read as a date in 1970"
    );
    let remaining = |lines: Vec<String>| -> u64 {
        lines[0]
            .split(' ')
            .find_map(|f| f.strip_prefix('t'))
            .unwrap()
            .parse()
            .unwrap()
    };
    let left = remaining(raw(&server.addr(), &format!("mg {k} t\r\n"), |_| true).await);
    assert!(
        (days31 - 5..=days31 + 2).contains(&left),
        "server reports {left}s left, expected about {days31}"
    );
    // A short TTL stays relative and gets the extra second for the server's clock tick.
    let s = key("short");
    b.put(
        &s,
        Bytes::from_static(b"s"),
        Some(Ttl::from_millis(1500).unwrap()),
        PutMode::Overwrite,
    )
    .await
    .unwrap();
    let left = remaining(raw(&server.addr(), &format!("mg {s} t\r\n"), |_| true).await);
    assert!((2..=3).contains(&left), "{left}");
}

#[tokio::test]
async fn touch_keeps_the_cas_unique_on_the_server() {
    let server = ServerProcess::memcached();
    let b = MemcachedBackend::connect(&url(&[&server])).await.unwrap();
    let k = key("touch-cas");
    let v = b
        .put(
            &k,
            Bytes::from_static(b"t"),
            Some(Ttl::from_secs(5).unwrap()),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    assert!(b.touch(&k, None).await.unwrap());
    let lines = raw(&server.addr(), &format!("mg {k} c t\r\n"), |_| true).await;
    assert_eq!(
        lines[0],
        format!("HD c{} t-1", v.into_raw()),
        "same CAS, no expiry"
    );
}

/// Removing one of three servers moves about a third of the keys, and only keys that lived
/// on the removed server. Observed on the servers themselves, not computed.
#[tokio::test]
async fn removing_a_server_remaps_only_its_keys() {
    let servers: Vec<ServerProcess> = (0..3).map(|_| ServerProcess::memcached()).collect();
    let all: Vec<&ServerProcess> = servers.iter().collect();
    let three = MemcachedBackend::connect(&url(&all)).await.unwrap();
    let two = MemcachedBackend::connect(&url(&[&servers[0], &servers[2]]))
        .await
        .unwrap();
    let each: Vec<MemcachedBackend> = {
        let mut v = Vec::new();
        for s in &servers {
            v.push(MemcachedBackend::connect(&url(&[s])).await.unwrap());
        }
        v
    };
    let keys: Vec<Key> = (0..3000)
        .map(|i| Key::new(format!("ring-key-{i}")).unwrap())
        .collect();

    // Where does each key live? Write it through `b` with a marker, then ask every server.
    async fn locate(
        b: &MemcachedBackend,
        each: &[MemcachedBackend],
        keys: &[Key],
        marker: &'static [u8],
    ) -> Vec<usize> {
        let items: Vec<(Key, Bytes)> = keys
            .iter()
            .map(|k| (k.clone(), Bytes::from_static(marker)))
            .collect();
        b.put_many(&items, None).await.unwrap();
        let mut at = vec![usize::MAX; keys.len()];
        for (s, single) in each.iter().enumerate() {
            for (i, e) in single.get_many(keys).await.unwrap().iter().enumerate() {
                if e.as_ref().is_some_and(|e| &e.value[..] == marker) {
                    assert_eq!(at[i], usize::MAX, "key {i} on two servers");
                    at[i] = s;
                }
            }
        }
        assert!(at.iter().all(|s| *s != usize::MAX), "every key found");
        at
    }

    let before = locate(&three, &each, &keys, b"three").await;
    for (k, s) in keys.iter().zip(&before) {
        assert_eq!(three.server_for(k), servers[*s].addr());
    }
    let per_server: Vec<usize> = (0..3)
        .map(|s| before.iter().filter(|x| **x == s).count())
        .collect();
    for n in &per_server {
        assert!((600..=1400).contains(n), "unbalanced: {per_server:?}");
    }
    let after = locate(&two, &each, &keys, b"two").await;
    let mut moved = 0;
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        assert_ne!(*a, 1, "nothing lands on the removed server");
        if b != a {
            moved += 1;
            assert_eq!(*b, 1, "key {i} moved from a server that stayed");
        }
    }
    let share = moved as f64 / keys.len() as f64;
    assert!(
        (0.20..=0.45).contains(&share),
        "{moved} of {} keys moved",
        keys.len()
    );
    assert_eq!(moved, per_server[1]);

    // Server order in the URL does not matter.
    let reversed = MemcachedBackend::connect(&url(&[&servers[2], &servers[1], &servers[0]]))
        .await
        .unwrap();
    let distinct: HashSet<&str> = keys.iter().map(|k| three.server_for(k)).collect();
    assert_eq!(distinct.len(), 3);
    for k in &keys {
        assert_eq!(three.server_for(k), reversed.server_for(k));
    }
}

#[tokio::test]
async fn get_many_spans_servers_and_survives_one_down() {
    let mut servers: Vec<ServerProcess> = (0..3).map(|_| ServerProcess::memcached()).collect();
    let b = MemcachedBackend::connect(&format!(
        "{}?timeout_ms=500",
        url(&servers.iter().collect::<Vec<_>>())
    ))
    .await
    .unwrap();
    let keys: Vec<Key> = (0..60).map(|i| key(&format!("gm-{i}"))).collect();
    let items: Vec<(Key, Bytes)> = keys
        .iter()
        .map(|k| (k.clone(), Bytes::from(k.to_string())))
        .collect();
    let versions = b.put_many(&items, None).await.unwrap();
    let got = b.get_many(&keys).await.unwrap();
    for ((k, e), v) in keys.iter().zip(&got).zip(&versions) {
        let e = e.as_ref().unwrap();
        assert_eq!((&e.value[..], e.version), (k.as_bytes(), *v));
    }
    // With one server down, a batch touching it fails as unavailable; keys elsewhere work.
    servers[1].stop();
    let down = servers[1].addr();
    let e = b.get_many(&keys).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    let up: Vec<Key> = keys
        .iter()
        .filter(|k| b.server_for(k) != down)
        .cloned()
        .collect();
    assert!(!up.is_empty());
    assert!(b.get_many(&up).await.unwrap().iter().all(Option::is_some));
}

#[tokio::test]
async fn a_server_with_cas_disabled_is_refused_with_the_reason() {
    let no_cas = ServerProcess::memcached_with(&["-C"]);
    let e = larder::connect(&format!("memcache://{}", no_cas.addr()))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), larder::ErrorKind::Config, "{e}");
    assert!(e.to_string().contains("CAS disabled (-C)"), "{e}");
    // The same in a ring: one such server is enough to refuse.
    let fine = ServerProcess::memcached();
    let e = larder::connect(&format!("memcache://{},{}", fine.addr(), no_cas.addr()))
        .await
        .unwrap_err();
    assert!(e.to_string().contains(&no_cas.addr()), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_millisecond_ttl_is_never_early() {
    let b = single().await;
    assert_eq!(larder_tests::early_ttl_misses(&b, 10_000).await, 0);
}
