//! A compare-and-swap whose reply is lost after the server applied it, then sent again, must
//! report the caller's own success, not a conflict with its own write: on one redis-server
//! (the backend resends) and on a three-master Redis Cluster (the cluster client resends).
//!
//! The reply is lost by a TCP proxy in front of the server (`FaultProxy::lose_reply_to`): it
//! forwards the `EVALSHA`, waits for the server's answer, drops it and closes the
//! connection. For the cluster, the node owning the test keys announces the proxy's port
//! (`cluster-announce-port`), so the cluster client reaches that node through the proxy.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use larder::{Bytes, Cache, DeleteMode, DynBackend, ErrorKind, Key, PutMode};
use larder_backend_redis::RedisBackend;
use larder_tests::cluster::RedisCluster;
use larder_tests::eventually;
use larder_tests::proxy::{FaultProxy, Mode};
use larder_tests::server::ServerProcess;

/// All keys of a run share this hash tag, so on a cluster they live on one node.
const TAG: &str = "cas-retry";

fn key(what: &str) -> Key {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    Key::new(format!("{{{TAG}}}:{what}:{n:x}")).unwrap()
}

/// Runs every conditional write once with its reply lost, through `proxy`, against `b`.
async fn lost_replies_report_own_success(b: DynBackend, proxy: &FaultProxy) {
    // Load the scripts on the server behind the proxy first: a lost reply to a NOSCRIPT
    // answer would test nothing.
    let w = key("warm");
    let v = b
        .put(&w, Bytes::from_static(b"0"), None, PutMode::Create)
        .await
        .unwrap();
    let v = b
        .put(&w, Bytes::from_static(b"1"), None, PutMode::Update(v))
        .await
        .unwrap();
    assert!(b.delete(&w, DeleteMode::IfVersion(v)).await.unwrap());
    assert_eq!(proxy.replies_lost(), 0);

    // `Cache::update` on a present key (an update-if-version): the closure runs once and
    // the counter goes up by one.
    let cache = Cache::new(b.clone());
    let counter = key("counter");
    cache.set(&counter, &41u64, None).await.unwrap();
    let calls = AtomicUsize::new(0);
    proxy.lose_reply_to(b"EVALSHA");
    let n = cache
        .update(&counter, None, |n: Option<u64>| {
            calls.fetch_add(1, Ordering::SeqCst);
            n.unwrap_or(0) + 1
        })
        .await
        .unwrap();
    assert_eq!(proxy.replies_lost(), 1, "the proxy lost the CAS reply");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the closure ran once");
    assert_eq!(n, 42);
    assert_eq!(cache.get::<u64>(&counter).await.unwrap(), Some(42));

    // `Cache::update` on an absent key (a create-if-absent).
    let fresh = key("fresh");
    let calls = AtomicUsize::new(0);
    proxy.lose_reply_to(b"EVALSHA");
    let n = cache
        .update(&fresh, None, |n: Option<u64>| {
            calls.fetch_add(1, Ordering::SeqCst);
            n.unwrap_or(0) + 1
        })
        .await
        .unwrap();
    assert_eq!(proxy.replies_lost(), 2);
    assert_eq!((n, calls.load(Ordering::SeqCst)), (1, 1));
    assert_eq!(cache.get::<u64>(&fresh).await.unwrap(), Some(1));

    // The backend's own answers: the version returned is the one stored.
    let k = key("raw");
    proxy.lose_reply_to(b"EVALSHA");
    let v1 = b
        .put(&k, Bytes::from_static(b"created"), None, PutMode::Create)
        .await
        .unwrap();
    assert_eq!(proxy.replies_lost(), 3);
    let e = b.get(&k).await.unwrap().unwrap();
    assert_eq!((&e.value[..], e.version), (&b"created"[..], v1));

    proxy.lose_reply_to(b"EVALSHA");
    let v2 = b
        .put(
            &k,
            Bytes::from_static(b"updated"),
            None,
            PutMode::Update(v1),
        )
        .await
        .unwrap();
    assert_eq!(proxy.replies_lost(), 4);
    assert_ne!(v2, v1);
    let e = b.get(&k).await.unwrap().unwrap();
    assert_eq!((&e.value[..], e.version), (&b"updated"[..], v2));

    proxy.lose_reply_to(b"EVALSHA");
    assert!(b.delete(&k, DeleteMode::IfVersion(v2)).await.unwrap());
    assert_eq!(proxy.replies_lost(), 5);
    assert!(b.get(&k).await.unwrap().is_none());

    // The delete marker answers its own request only: another delete of the same version
    // is told the key is absent, and the key can be created again.
    let e = b.delete(&k, DeleteMode::IfVersion(v2)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    assert!(e.current().is_none());
    let v3 = b
        .put(&k, Bytes::from_static(b"again"), None, PutMode::Create)
        .await
        .unwrap();
    assert_eq!(b.get(&k).await.unwrap().unwrap().version, v3);
    // Nor does a retried create or update of another caller pass for its own: a create on a
    // present key and an update from a stale version still conflict.
    let e = b
        .put(&k, Bytes::from_static(b"x"), None, PutMode::Create)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict);
    assert_eq!(e.current().unwrap().version, v3);
    let e = b
        .put(&k, Bytes::from_static(b"x"), None, PutMode::Update(v2))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict);
    assert_eq!(e.current().unwrap().version, v3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_server_lost_cas_replies_are_own_success() {
    let srv = ServerProcess::redis();
    let proxy = FaultProxy::start(&srv.addr()).await;
    let b: DynBackend = Arc::new(
        RedisBackend::connect(&format!("redis://{}", proxy.addr()))
            .await
            .unwrap(),
    );
    lost_replies_report_own_success(b, &proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_lost_cas_replies_are_own_success() {
    let cluster = RedisCluster::start();
    let owner = cluster.owner_of(key("probe").as_str());
    let proxy = FaultProxy::start(&format!("127.0.0.1:{owner}")).await;
    cluster.announce_port(owner, proxy.port());
    // Seed with the other masters: the client learns the owner's address (the proxy) from
    // the slot map.
    let seeds: Vec<String> = cluster
        .ports()
        .iter()
        .filter(|&&p| p != owner)
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    let b: DynBackend = Arc::new(
        RedisBackend::connect(&format!("redis+cluster://{}", seeds.join(",")))
            .await
            .unwrap(),
    );
    lost_replies_report_own_success(b, &proxy).await;
}

/// A create whose reply is lost, then its entry deleted by another client before the resend
/// arrives: the resend recognises its own write (the write history) and reports success
/// without writing the key again, for a delete-if-version and for a plain `DEL`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resent_create_after_a_delete_leaves_the_key_deleted() {
    let srv = ServerProcess::redis();
    let proxy = FaultProxy::start(&srv.addr()).await;
    let b: DynBackend = Arc::new(
        RedisBackend::connect(&format!("redis://{}", proxy.addr()))
            .await
            .unwrap(),
    );
    let direct: DynBackend = Arc::new(
        RedisBackend::connect(&format!("redis://{}", srv.addr()))
            .await
            .unwrap(),
    );
    // The scripts loaded on the server first (see above).
    let w = key("warm");
    let v = b
        .put(&w, Bytes::from_static(b"0"), None, PutMode::Create)
        .await
        .unwrap();
    assert!(b.delete(&w, DeleteMode::IfVersion(v)).await.unwrap());

    for (round, by_version) in [(1, true), (2, false)] {
        let k = key(if by_version { "del-if" } else { "del" });
        proxy.lose_reply_then_hold(b"EVALSHA");
        let put = {
            let (b, k) = (b.clone(), k.clone());
            tokio::spawn(async move {
                b.put(&k, Bytes::from_static(b"created"), None, PutMode::Create)
                    .await
            })
        };
        // The create ran, its reply is lost, and the resend is held at the proxy.
        eventually(
            Duration::from_secs(5),
            "the create's reply is lost",
            async || proxy.replies_lost() == round,
        )
        .await;
        let created = direct.get(&k).await.unwrap().expect("the create ran");
        assert_eq!(&created.value[..], b"created");
        let deleted = if by_version {
            direct.delete(&k, DeleteMode::IfVersion(created.version))
        } else {
            direct.delete(&k, DeleteMode::Any)
        };
        assert!(deleted.await.unwrap());
        proxy.set(Mode::Pass);

        let v = put
            .await
            .unwrap()
            .expect("the resend reports the create's success");
        assert_eq!(v, created.version, "the version of the one write");
        assert!(
            direct.get(&k).await.unwrap().is_none(),
            "the resend re-created a deleted key (round {round})"
        );
        // The key itself is free: a new create writes it.
        direct
            .put(&k, Bytes::from_static(b"new"), None, PutMode::Create)
            .await
            .unwrap();
    }
}

/// 1000 compare-and-swap increments, 4 at a time, with the connection cut after every tenth
/// script's reply came back from the server: the counter ends at exactly the number of
/// acknowledged increments (a resent script recognises its own request id).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_server_lost_cas_replies_keep_a_counter_exact() {
    const N: usize = 1000;
    let srv = ServerProcess::redis();
    let proxy = FaultProxy::start(&srv.addr()).await;
    let b: DynBackend = Arc::new(
        RedisBackend::connect(&format!("redis://{}", proxy.addr()))
            .await
            .unwrap(),
    );
    let counter = key("exact");
    // The scripts loaded first (a lost NOSCRIPT answer would test nothing).
    larder_tests::cas_counter::run(b.clone(), &counter, 10, 1).await;
    proxy.lose_statement_replies(b"EVALSHA", 10, usize::MAX);
    let counted = larder_tests::cas_counter::run(b, &counter, N, 4).await;
    let lost = proxy.stop_losing_statement_replies();
    eprintln!("{N} increments, {lost} CAS replies lost: {counted:?}");
    assert!(lost >= N / 20, "the proxy lost too few replies: {lost}");
    assert_eq!(
        counted.stored, counted.acknowledged,
        "the counter must move by exactly the acknowledged increments"
    );
    assert_eq!(counted.acknowledged + counted.failed, N as u64);
}
