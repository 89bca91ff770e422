//! The near cache over Redis beyond the conformance suite: sessions written through
//! (`CachedStore`) over `Near(Redis)` on two instances, where a logout on one is seen by the
//! other once the staleness bound has passed; on a Redis Cluster, invalidations arrive
//! from every master; tracking works over TLS; tracking limited to key prefixes keeps
//! only the keys it covers; and a late `Disconnection` of an old tracking connection leaves
//! the channel of its successor up.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use larder::layer::{ChannelState, InvalidationChannel, Near, NearStats, DEFAULT_MAX_STALENESS};
use larder::{Bytes, CacheBackend, DynBackend, Key, PutMode};
use larder_backend_redis::{RedisBackend, RedisConfig, RedisTracking};
use larder_session_persist::{CachedStore, SessionManager};
use larder_tests::cluster::RedisCluster;
use larder_tests::db;
use larder_tests::server::ServerProcess;
use larder_tests::tls::TlsRedis;
use larder_tests::{eventually, Patience};

/// `Near(redis)` kept coherent by `tracking`, once the channel is up (`what`).
async fn tracked(
    redis: RedisBackend,
    tracking: impl InvalidationChannel + 'static,
    what: &str,
) -> Near {
    let near = Near::builder(Arc::new(redis))
        .channel(tracking)
        .build()
        .unwrap();
    let patience = Patience::new(Duration::from_secs(10)).every(Duration::from_millis(10));
    eventually(patience, what, async || {
        near.channel_state() == ChannelState::Up
    })
    .await;
    near
}

/// `Near(Redis)` with its channel up.
async fn near(url: &str) -> (DynBackend, Arc<NearStats>) {
    let redis = RedisBackend::connect(url).await.unwrap();
    let tracking = redis.tracking();
    let near = tracked(redis, tracking, "tracking is up").await;
    let stats = near.stats();
    (Arc::new(near), stats)
}

/// Two application instances, each with its own near cache and connections, sharing
/// PostgreSQL and Redis: a logout on A is a miss on B once the bound has passed, although B
/// had the session in its local tier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_on_one_instance_is_seen_by_the_other_within_the_bound() {
    let server = ServerProcess::redis();
    let url = format!("redis://{}", server.addr());
    let (store_a, schema) = db::pg_store().await;
    let store_b = db::pg_store_in(&schema).await;
    let (near_a, _) = near(&url).await;
    let (near_b, stats_b) = near(&url).await;
    let a = SessionManager::new(Arc::new(CachedStore::new(store_a, near_a)));
    let b = SessionManager::new(Arc::new(CachedStore::new(store_b, near_b)));
    for round in 0..20 {
        let mut s = a.create().await.unwrap();
        s.insert("user", &format!("u{round}")).unwrap();
        s.save().await.unwrap();
        let id = s.id().as_str().to_string();
        // B loads it twice: the second load is answered by its local tier.
        for _ in 0..2 {
            let got = b.load(&id).await.unwrap().expect("B sees the session");
            assert_eq!(
                got.get::<String>("user").unwrap(),
                Some(format!("u{round}"))
            );
        }
        assert!(s.delete().await.unwrap(), "logout on A");
        tokio::time::sleep(DEFAULT_MAX_STALENESS).await;
        assert!(
            b.load(&id).await.unwrap().is_none(),
            "round {round}: B still loads a session logged out on A"
        );
    }
    assert!(stats_b.local_hits() > 0, "B's local tier was never used");
    assert!(stats_b.invalidations() > 0, "B received no invalidation");
}

/// On a cluster, the near cache tracks every master: a write on any of them, by another
/// client, is seen through the near cache once the bound has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_invalidations_arrive_from_every_master() {
    let cluster = RedisCluster::start();
    let url = format!("redis+cluster://{}", cluster.seeds());
    let (near, stats) = near(&url).await;
    let other = RedisBackend::connect(&url).await.unwrap();
    // Keys until every master owns at least two.
    let mut keys: Vec<(Key, u16)> = Vec::new();
    let mut i = 0;
    while cluster
        .ports()
        .iter()
        .any(|p| keys.iter().filter(|(_, q)| q == p).count() < 2)
    {
        let k = format!("near-cluster-{i}");
        let owner = cluster.owner_of(&k);
        keys.push((Key::new(k).unwrap(), owner));
        i += 1;
    }
    for round in 0u64..20 {
        for (k, _) in &keys {
            other
                .put(
                    k,
                    Bytes::copy_from_slice(&round.to_be_bytes()),
                    None,
                    PutMode::Overwrite,
                )
                .await
                .unwrap();
        }
        tokio::time::sleep(DEFAULT_MAX_STALENESS).await;
        for _ in 0..2 {
            for (k, owner) in &keys {
                let e = near.get(k).await.unwrap().unwrap();
                assert_eq!(
                    e.value[..],
                    round.to_be_bytes(),
                    "round {round}: {k} (master {owner}) is stale"
                );
            }
        }
    }
    assert!(stats.local_hits() > 0, "the local tier was never used");
    assert!(
        stats.invalidations() >= 19 * keys.len() as u64,
        "invalidations missing: {} for {} writes",
        stats.invalidations(),
        20 * keys.len()
    );
}

/// With `BCAST PREFIX`, the server reports only the listed prefixes: keys outside them are
/// never kept in process (they would not be invalidated), keys inside are, and both stay
/// fresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_prefixes_keep_only_covered_keys() {
    let server = ServerProcess::redis();
    let url = format!("redis://{}", server.addr());
    let redis = RedisBackend::connect(&url).await.unwrap();
    let tracking = RedisTracking::new(redis.config().clone()).prefixes(["near-p:"]);
    let near = tracked(redis, tracking, "tracking is up").await;
    let stats = near.stats();
    let other = RedisBackend::connect(&url).await.unwrap();
    let inside = Key::new("near-p:a").unwrap();
    let outside = Key::new("near-q:a").unwrap();
    for round in 0u64..10 {
        for k in [&inside, &outside] {
            other
                .put(
                    k,
                    Bytes::copy_from_slice(&round.to_be_bytes()),
                    None,
                    PutMode::Overwrite,
                )
                .await
                .unwrap();
        }
        tokio::time::sleep(DEFAULT_MAX_STALENESS).await;
        let before = stats.local_hits();
        for _ in 0..3 {
            let e = near.get(&outside).await.unwrap().unwrap();
            assert_eq!(
                e.value[..],
                round.to_be_bytes(),
                "round {round}: outside key stale"
            );
        }
        assert_eq!(
            stats.local_hits(),
            before,
            "an uncovered key was served locally"
        );
        for _ in 0..3 {
            let e = near.get(&inside).await.unwrap().unwrap();
            assert_eq!(
                e.value[..],
                round.to_be_bytes(),
                "round {round}: inside key stale"
            );
        }
    }
    assert!(
        stats.local_hits() > 0,
        "the covered key was never served locally"
    );
}

/// Over TLS with a private CA, tracking connects with the backend's certificate settings
/// and another client's writes are seen through the near cache within the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_over_tls() {
    let srv = TlsRedis::start();
    let config = RedisConfig::from_url(&format!("rediss://127.0.0.1:{}", srv.port()))
        .unwrap()
        .with_tls_root_cert(srv.ca_pem().to_vec());
    let redis = RedisBackend::new(config.clone()).await.unwrap();
    let tracking = redis.tracking();
    let near = tracked(redis, tracking, "tracking is up over TLS").await;
    let stats = near.stats();
    let other = RedisBackend::new(config).await.unwrap();
    let k = Key::new("near-tls").unwrap();
    for round in 0u64..10 {
        other
            .put(
                &k,
                Bytes::copy_from_slice(&round.to_be_bytes()),
                None,
                PutMode::Overwrite,
            )
            .await
            .unwrap();
        tokio::time::sleep(DEFAULT_MAX_STALENESS).await;
        for _ in 0..2 {
            let e = near.get(&k).await.unwrap().unwrap();
            assert_eq!(
                e.value[..],
                round.to_be_bytes(),
                "round {round}: stale over TLS"
            );
        }
    }
    assert!(stats.local_hits() > 0, "the local tier was never used");
    assert!(
        stats.invalidations() >= 9,
        "invalidations: {}",
        stats.invalidations()
    );
}

/// One command on a fresh connection to `addr`, as an inline command; the reply's payload
/// (a bulk string's bytes, or the line of any other reply).
async fn raw_command(addr: &str, cmd: &str) -> String {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let mut c = BufReader::new(tokio::net::TcpStream::connect(addr).await.unwrap());
    c.get_mut()
        .write_all(format!("{cmd}\r\n").as_bytes())
        .await
        .unwrap();
    let mut line = String::new();
    c.read_line(&mut line).await.unwrap();
    let Some(len) = line.strip_prefix('$') else {
        return line.trim_end().to_string();
    };
    let mut body = vec![0; len.trim_end().parse::<usize>().unwrap() + 2];
    c.read_exact(&mut body).await.unwrap();
    body.truncate(body.len() - 2);
    String::from_utf8(body).unwrap()
}

/// Reads `key` through `near` until one read is answered from process memory.
async fn until_local_hit(near: &Near, stats: &NearStats, key: &Key) {
    let before = stats.local_hits();
    let pace = Patience::new(Duration::from_secs(5)).every(Duration::from_millis(2));
    eventually(pace, format!("a local hit ({stats:?})"), async || {
        assert_eq!(near.get(key).await.unwrap().unwrap().value, &b"v"[..]);
        stats.local_hits() != before
    })
    .await;
}

/// The tracking connection of generation N is killed and N+1 comes up; then the
/// `Disconnection` of N arrives late (delivered through the connection's own push handler by
/// a test seam, as redis-rs does when such a connection closes): the tier stays up and local
/// hits go on. A `Disconnection` of the current generation still takes it down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_disconnection_of_an_old_connection_leaves_the_channel_up() {
    let server = ServerProcess::redis();
    let addr = server.addr();
    let redis = RedisBackend::connect(&format!("redis://{addr}"))
        .await
        .unwrap();
    let tracking = redis.tracking();
    let near = Near::builder(Arc::new(redis))
        .channel(tracking.clone())
        .build()
        .unwrap();
    let stats = near.stats();
    let wait_up = |generation: u64| {
        let (near, tracking) = (&near, &tracking);
        async move {
            let pace = Patience::new(Duration::from_secs(10)).every(Duration::from_millis(5));
            eventually(pace, "tracking up", async || {
                near.channel_state() == ChannelState::Up && tracking.generation() >= generation
            })
            .await;
        }
    };
    wait_up(1).await;
    let old = tracking.generation();
    let k = Key::new("generations").unwrap();
    near.put(&k, Bytes::from_static(b"v"), None, PutMode::Overwrite)
        .await
        .unwrap();
    until_local_hit(&near, &stats, &k).await;

    // Kill generation N's connection (the one client with tracking on) on the server.
    let list = raw_command(&addr, "CLIENT LIST").await;
    let tracked: Vec<&str> = list
        .lines()
        .filter(|l| {
            l.split(' ')
                .any(|f| f.strip_prefix("flags=").is_some_and(|f| f.contains('t')))
        })
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .collect();
    assert_eq!(tracked.len(), 1, "tracking clients: {list}");
    let killed = raw_command(&addr, &format!("CLIENT KILL ID {}", tracked[0])).await;
    assert_eq!(killed, ":1");
    wait_up(old + 1).await;
    let current = tracking.generation();
    until_local_hit(&near, &stats, &k).await;

    // The late Disconnection of generation N: nothing changes.
    let flushes = stats.flushes();
    assert!(tracking.push_disconnection(old), "generation {old} unknown");
    assert_eq!(near.channel_state(), ChannelState::Up);
    assert_eq!(
        stats.flushes(),
        flushes,
        "the old generation flushed the tier"
    );
    for _ in 0..3 {
        until_local_hit(&near, &stats, &k).await;
    }
    assert_eq!(stats.channel_fault(), None);

    // A Disconnection of the current generation still takes the channel down.
    let bypassed = stats.bypassed();
    assert!(tracking.push_disconnection(current));
    assert_eq!(near.channel_state(), ChannelState::Down);
    assert_eq!(
        stats.flushes(),
        flushes + 1,
        "the current generation did not flush"
    );
    assert_eq!(near.get(&k).await.unwrap().unwrap().value, &b"v"[..]);
    assert!(
        stats.bypassed() > bypassed,
        "a read used the tier while down"
    );
    assert_eq!(
        stats.channel_fault(),
        Some(larder::layer::ChannelFault::Lost)
    );
    drop(server);
}

/// The bound across a Cluster failover (`CLUSTER FAILOVER` on a replica, the old master
/// alive): B writes a counter every ~10 ms with a fresh cluster client for each write, A
/// reads it through `Near` every ~2 ms; no read returns a value older than a write
/// acknowledged more than the bound before it started (see `larder_tests::history`). The
/// tracking channel, which confirmed against the old master, goes down as it is demoted
/// (`ChannelFault::PrimaryMoved`) and comes back on the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_reads_stay_within_the_bound_across_a_cluster_failover() {
    use larder_tests::history::{reader, stale_reads, writer};
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut cluster = RedisCluster::start();
    let k = Key::new("near-cluster-failover").unwrap();
    let replica = cluster.add_replica(cluster.owner_of(k.as_str()));
    let url = format!("redis+cluster://{}", cluster.seeds());
    let redis = RedisBackend::connect(&url).await.unwrap();
    let tracking = redis.tracking();
    let near = Arc::new(tracked(redis, tracking, "tracking is up").await);
    let stats = near.stats();
    let stop = Arc::new(AtomicBool::new(false));
    let b_url = url.clone();
    let b = writer(
        move || {
            let url = b_url.clone();
            async move { RedisBackend::connect(&url).await }
        },
        |_: &RedisBackend| String::new(),
        k.clone(),
        Duration::from_millis(10),
        stop.clone(),
    );
    let a = reader(near.clone(), k, Duration::from_millis(2), stop.clone());
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let hits_before = stats.local_hits();
    let flushes_before = stats.flushes();
    cluster.failover_to(replica);
    let switched = std::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(3000)).await;
    stop.store(true, Ordering::SeqCst);
    let hits_after = stats.local_hits() - hits_before;
    let (writes, reads) = (b.await.unwrap(), a.await.unwrap());

    // A coordinated failover loses no acknowledged write: every one must be seen.
    let stale = stale_reads(&writes, &reads, DEFAULT_MAX_STALENESS, |_| true);
    let worst = stale.iter().map(|s| s.since).max().unwrap_or_default();
    let after = writes.iter().filter(|w| w.acked > switched).count();
    println!(
        "near over cluster failover: {} reads from 1 s before CLUSTER FAILOVER to 3 s after, \
         {hits_before} local hits before, {hits_after} after; B: {} writes acknowledged, \
         {after} after the switch; reads older than a write acknowledged \
         {DEFAULT_MAX_STALENESS:?} before: {} (worst {worst:?})",
        reads.len(),
        writes.len(),
        stale.len()
    );
    assert!(after > 20, "B wrote {after} times after the switch");
    assert!(reads.len() >= 1000, "only {} reads", reads.len());
    assert!(hits_before > 0, "the local tier was not used before");
    assert!(
        stats.flushes() > flushes_before,
        "the demotion of the tracked master did not flush the local tier"
    );
    assert!(
        stale.is_empty(),
        "{} reads returned a value older than a write acknowledged more than \
         {DEFAULT_MAX_STALENESS:?} before: {:?}",
        stale.len(),
        &stale[..stale.len().min(20)]
    );
}

/// A tracked server that becomes a replica (`REPLICAOF`: it no longer takes the writes) takes
/// the channel down with `PrimaryMoved` at its next sync: the local tier is flushed and no
/// read is answered from it while the node stays a replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tracked_server_turned_replica_is_no_longer_confirmed() {
    use larder::layer::ChannelFault;
    let server = ServerProcess::redis();
    let other = ServerProcess::redis();
    let redis = RedisBackend::connect(&format!("redis://{}", server.addr()))
        .await
        .unwrap();
    let tracking = redis.tracking();
    let near = tracked(redis, tracking, "tracking is up").await;
    let stats = near.stats();
    let k = Key::new("near-demoted").unwrap();
    near.put(&k, Bytes::from_static(b"v"), None, PutMode::Overwrite)
        .await
        .unwrap();
    until_local_hit(&near, &stats, &k).await;
    let flushes = stats.flushes();
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &server.port().to_string()])
        .args(["REPLICAOF", "127.0.0.1", &other.port().to_string()])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK");
    let patience = Patience::new(Duration::from_secs(5)).every(Duration::from_millis(1));
    eventually(
        patience,
        "the channel goes down as primary_moved",
        async || stats.channel_fault() == Some(ChannelFault::PrimaryMoved),
    )
    .await;
    assert!(stats.flushes() > flushes, "the local tier was not flushed");
    let hits = stats.local_hits();
    for _ in 0..20 {
        near.get(&k).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(stats.local_hits(), hits, "a replica's sync was counted");
}
