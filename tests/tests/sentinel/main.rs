//! The Redis backend behind Redis Sentinel, against real servers: one primary, one replica
//! and three sentinels (quorum 2). The conformance suite over the Sentinel backend,
//! failovers under a writing client (SIGKILL of the primary; `SENTINEL FAILOVER` with the
//! old primary alive), what coordination makes of it, authentication, TLS, and bad input:
//! URLs, sentinels that are down, stalled, speak garbage or are no sentinels at all. The
//! `READONLY` path (a primary demoted behind the client's back) runs against a small fake
//! that speaks the protocol, in front of a real server.
//!
//! The shared deployment lives in a `static` for the whole test binary, with a watchdog
//! that stops it once the test process has exited (see `larder_tests::cluster`).
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use larder::{Bytes, CacheBackend, DynBackend, ErrorKind, Key, PutMode};
use larder_backend_redis::{RedisBackend, RedisConfig};
use larder_tests::sentinel::{SentinelSet, TlsSentinel, FAILOVER_TIMEOUT, SERVICE};
use larder_tests::tls::TlsRedis;
use larder_tests::{eventually, Patience};

mod bad_input;
mod near_failover;
mod readonly;

static SET: OnceLock<SentinelSet> = OnceLock::new();

/// The tests that fail a primary over run one at a time: each has its own deployment, and
/// on two cores two failovers at once would measure each other.
static FAILOVERS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn set() -> &'static SentinelSet {
    SET.get_or_init(|| {
        let s = SentinelSet::start();
        s.kill_at_exit();
        s
    })
}

fn url() -> String {
    format!("redis+sentinel://{}/{SERVICE}", set().sentinels())
}

async fn sentinel_backend() -> DynBackend {
    Arc::new(RedisBackend::connect(&url()).await.unwrap())
}

mod redis_sentinel {
    larder_coord::conformance_suite!(super::sentinel_backend);
}

/// Short timeouts so faults surface quickly: one sentinel costs at most 400 ms.
const FAST: &str = "response_timeout_ms=200&connect_timeout_ms=200";

fn key(tag: &str) -> Key {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    Key::new(format!("st-{tag}-{:x}", h.finish())).unwrap()
}

fn detail(b: &dyn CacheBackend, name: &str) -> String {
    b.details()
        .into_iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no detail {name:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_say_no_linearizable_cas_and_coordination_refuses() {
    let b = sentinel_backend().await;
    let c = b.capabilities();
    assert_eq!(c.name, "redis");
    assert!(c.cas && c.touch && c.shared);
    // Durability is measured on the primary found at connect: the test servers run Redis's
    // defaults (no append-only file, `noeviction`).
    assert!(!c.may_evict, "{:?}", c.eviction_note);
    assert!(
        !c.linearizable_cas,
        "asynchronous replication: a failover can lose an acknowledged CAS"
    );
    assert!(!c.persistent);
    let e = larder::coord::check_backend(&b, larder::coord::Durability::AcceptLoss).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    assert!(e.message().contains("not linearizable"), "{e}");
    let lease = larder::coord::Lease::new(
        b.clone(),
        "sentinel-lease",
        larder::coord::HolderId::generate(),
        larder_coord::conformance::fast(),
    );
    assert_eq!(lease.unwrap_err().kind(), ErrorKind::Unsupported);
    // The primary in use is the one the sentinels name.
    assert_eq!(detail(&*b, "topology"), "Sentinel");
    assert_eq!(detail(&*b, "sentinel service"), SERVICE);
    let named = set().primary_by_sentinel(set().sentinel_ports()[0]);
    assert_eq!(detail(&*b, "primary"), named.replace(' ', ":"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn facade_opens_sentinel_urls() {
    assert!(larder::schemes().any(|(s, f, built)| s == "redis+sentinel" && f == "redis" && built));
    let b = larder::connect(&format!("{}/3", url())).await.unwrap();
    let k = key("facade");
    let v = b
        .put(
            &k,
            Bytes::from_static(b"via sentinel"),
            None,
            PutMode::Create,
        )
        .await
        .unwrap();
    let e = b.get(&k).await.unwrap().unwrap();
    assert_eq!((&e.value[..], e.version), (&b"via sentinel"[..], v));
    // Database 3 of the primary, not database 0.
    let zero = larder::connect(&url()).await.unwrap();
    assert!(zero.get(&k).await.unwrap().is_none());
    let many = b
        .put_many(
            &[
                (key("m1"), Bytes::from_static(b"1")),
                (key("m2"), Bytes::from_static(b"2")),
            ],
            None,
        )
        .await
        .unwrap();
    assert_eq!(many.len(), 2);
    // TLS Sentinel needs the facade's `redis-tls` feature: without it the scheme is refused
    // as not built; with it, these plain-text sentinels cannot complete a TLS handshake.
    let tls_built = larder::schemes().any(|(s, _, built)| s == "rediss+sentinel" && built);
    let e = larder::connect(&format!(
        "rediss+sentinel://{}/{SERVICE}?{FAST}",
        set().sentinels()
    ))
    .await
    .unwrap_err();
    if tls_built {
        assert_ne!(e.kind(), ErrorKind::Unsupported, "{e}");
    } else {
        assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
        assert!(e.message().contains("redis-tls"), "{e}");
    }
}

/// One write of the failover test: its index, when it started and ended, and its result.
struct Write {
    i: usize,
    /// The primary in use when the write started.
    primary: String,
    started: Instant,
    ended: Instant,
    result: larder::Result<larder::Version>,
}

/// A client that writes one new key after another, without pause while writes succeed
/// (20 ms after a failure), until `stop`; returns every write.
fn write_loop(
    b: Arc<RedisBackend>,
    key_of: impl Fn(usize) -> Key + Send + 'static,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Write>> {
    tokio::spawn(async move {
        let mut log = Vec::new();
        let mut i = 0;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            let primary = detail(&*b, "primary");
            let started = Instant::now();
            let result = b
                .put(
                    &key_of(i),
                    Bytes::from(i.to_string()),
                    None,
                    PutMode::Overwrite,
                )
                .await;
            let failed = result.is_err();
            log.push(Write {
                i,
                primary,
                started,
                ended: Instant::now(),
                result,
            });
            i += 1;
            if failed {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        log
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_under_a_writing_client() {
    let _serial = FAILOVERS.lock().await;
    let mut set = SentinelSet::start();
    let url = format!(
        "redis+sentinel://{}/{SERVICE}?response_timeout_ms=300&connect_timeout_ms=300",
        set.sentinels()
    );
    let b = Arc::new(RedisBackend::connect(&url).await.unwrap());
    assert_eq!(
        detail(&*b, "primary"),
        format!("127.0.0.1:{}", set.primary_port())
    );
    let tag = key("fo").as_str().to_owned();
    let key_of = move |i: usize| Key::new(format!("{tag}-{i}")).unwrap();

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = write_loop(b.clone(), key_of.clone(), stop.clone());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let killed = Instant::now();
    set.kill_primary();
    // Run until the new primary has taken writes for a while, or give up well after the
    // bound the assertion below checks.
    tokio::time::sleep(FAILOVER_TIMEOUT + Duration::from_secs(4)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let log = writer.await.unwrap();

    // Every failure was a retryable "down" error, never a hang beyond the deadline
    // (connect + response timeouts, doubled for the sentinel lookup) plus scheduling slack.
    for w in &log {
        if let Err(e) = &w.result {
            assert!(
                matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::Timeout),
                "write {}: {e}",
                w.i
            );
            assert!(e.is_retryable(), "{e}");
        }
        assert!(
            w.ended - w.started < Duration::from_millis(1200 + 800),
            "write {} took {:?}",
            w.i,
            w.ended - w.started
        );
    }
    let first_after = log
        .iter()
        .find(|w| w.started > killed && w.result.is_ok())
        .expect("writes succeed again after the failover");
    let resumed = first_after.ended - killed;
    assert!(
        resumed <= FAILOVER_TIMEOUT + Duration::from_secs(2),
        "writes resumed only {resumed:?} after the primary was killed"
    );
    // The new primary is the former replica.
    assert_eq!(
        detail(&*b, "primary"),
        format!("127.0.0.1:{}", set.replica_port())
    );
    assert_eq!(
        set.primary_by_sentinel(set.sentinel_ports()[1]),
        format!("127.0.0.1 {}", set.replica_port())
    );

    // What the new primary has of the acknowledged writes.
    let acked: Vec<&Write> = log.iter().filter(|w| w.result.is_ok()).collect();
    let keys: Vec<Key> = acked.iter().map(|w| key_of(w.i)).collect();
    let mut found = Vec::new();
    for chunk in keys.chunks(500) {
        found.extend(b.get_many(chunk).await.unwrap());
    }
    let split = first_after.i;
    let (mut old_acked, mut old_kept, mut lost) = (0, 0, 0);
    let mut seen_lost = false;
    for (w, got) in acked.iter().zip(&found) {
        if w.i < split {
            old_acked += 1;
            match got {
                Some(e) => {
                    old_kept += 1;
                    assert_eq!(&e.value[..], w.i.to_string().as_bytes());
                    assert_eq!(Some(e.version), w.result.as_ref().ok().copied());
                    // Replication keeps order: what survived is a prefix of the writes.
                    assert!(
                        !seen_lost,
                        "write {} kept after an earlier one was lost",
                        w.i
                    );
                }
                None => {
                    lost += 1;
                    seen_lost = true;
                }
            }
        } else {
            let e = got
                .as_ref()
                .unwrap_or_else(|| panic!("write {} acknowledged by the new primary is gone", w.i));
            assert_eq!(&e.value[..], w.i.to_string().as_bytes());
        }
    }
    let new_acked = acked.len() - old_acked;
    assert!(
        old_acked > 100 && new_acked > 10,
        "{old_acked} / {new_acked}"
    );
    // The last acknowledged write reads back.
    let last = acked.last().unwrap();
    assert_eq!(
        &b.get(&key_of(last.i)).await.unwrap().unwrap().value[..],
        last.i.to_string().as_bytes()
    );
    let failed = log.iter().filter(|w| w.result.is_err()).count();
    println!(
        "sentinel failover: writes resumed {resumed:?} after SIGKILL of the primary \
         (down-after 1000 ms, failover-timeout 3000 ms); acknowledged by the old primary: \
         {old_acked}, of which lost: {lost} (kept {old_kept}); acknowledged by the new \
         primary: {new_acked}, all read back; {failed} writes failed in between"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_and_sentinel_passwords_are_separate() {
    let set = SentinelSet::start_with(
        &[
            "--requirepass",
            "primary-pw-1",
            "--masterauth",
            "primary-pw-1",
        ],
        &[
            &format!("sentinel auth-pass {SERVICE} primary-pw-1"),
            "requirepass sentinel-pw-2",
            "sentinel sentinel-pass sentinel-pw-2",
        ],
    );
    let s = set.sentinels();
    let b = RedisBackend::connect(&format!(
        "redis+sentinel://:primary-pw-1@{s}/{SERVICE}/2?sentinel_password=sentinel-pw-2&{FAST}"
    ))
    .await
    .unwrap();
    let k = key("auth");
    b.put(&k, Bytes::from_static(b"authed"), None, PutMode::Create)
        .await
        .unwrap();
    assert_eq!(&b.get(&k).await.unwrap().unwrap().value[..], b"authed");
    for text in [format!("{b:?}"), format!("{:?}", b.config())] {
        assert!(
            !text.contains("primary-pw-1") && !text.contains("sentinel-pw-2"),
            "{text}"
        );
    }
    // Wrong or missing sentinel password, wrong primary password: configuration errors
    // that say "authentication" and never quote a password.
    for (url, secret) in [
        (
            format!(
                "redis+sentinel://:primary-pw-1@{s}/{SERVICE}?sentinel_password=wrong-pw-3&{FAST}"
            ),
            "wrong-pw-3",
        ),
        (
            format!("redis+sentinel://:primary-pw-1@{s}/{SERVICE}?{FAST}"),
            "primary-pw-1",
        ),
        (
            format!(
                "redis+sentinel://:wrong-pw-4@{s}/{SERVICE}?sentinel_password=sentinel-pw-2&{FAST}"
            ),
            "wrong-pw-4",
        ),
    ] {
        let e = RedisBackend::connect(&url).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config, "{e}");
        let text = format!("{e} {e:?}");
        assert!(text.contains("authentication"), "{text}");
        assert!(
            !text.contains(secret) && !text.contains("sentinel-pw-2"),
            "{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_failover_with_the_old_primary_alive_is_followed() {
    let _serial = FAILOVERS.lock().await;
    let set = SentinelSet::start();
    let url = format!(
        "redis+sentinel://{}/{SERVICE}?response_timeout_ms=300&connect_timeout_ms=300",
        set.sentinels()
    );
    let b = Arc::new(RedisBackend::connect(&url).await.unwrap());
    let (old, new) = (
        format!("127.0.0.1:{}", set.primary_port()),
        format!("127.0.0.1:{}", set.replica_port()),
    );
    assert_eq!(detail(&*b, "primary"), old);
    let tag = key("switch").as_str().to_owned();
    let key_of = move |i: usize| Key::new(format!("{tag}-{i}")).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = write_loop(b.clone(), key_of.clone(), stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let asked = Instant::now();
    set.failover();
    // The old primary keeps answering, and the sentinels demote it only seconds later: the
    // backend must move over on the sentinels' word alone (it asks every 250 ms).
    let limit = FAILOVER_TIMEOUT + Duration::from_secs(2);
    let named_new = format!("127.0.0.1 {}", set.replica_port());
    eventually(
        limit.saturating_sub(asked.elapsed()),
        "the sentinels name the replica",
        async || set.primary_by_sentinel(set.sentinel_ports()[2]) == named_new,
    )
    .await;
    let named = asked.elapsed();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let log = writer.await.unwrap();
    assert_eq!(set.role_of(set.replica_port()), "master");
    assert_eq!(detail(&*b, "primary"), new);
    for w in &log {
        if let Err(e) = &w.result {
            assert!(e.is_retryable(), "write {}: {e}", w.i);
        }
    }
    let first_new = log
        .iter()
        .find(|w| w.primary == new && w.result.is_ok())
        .expect("writes reach the new primary");
    let moved = first_new.ended - asked;
    assert!(
        moved <= limit,
        "writes reached the new primary only after {moved:?}"
    );
    // Every write acknowledged by the new primary reads back; of those the old one
    // acknowledged after the switch, some may be gone (asynchronous replication).
    let on_new: Vec<&Write> = log
        .iter()
        .filter(|w| w.primary == new && w.result.is_ok())
        .collect();
    assert!(on_new.len() > 10, "{}", on_new.len());
    let keys: Vec<Key> = on_new.iter().map(|w| key_of(w.i)).collect();
    let mut found = Vec::new();
    for chunk in keys.chunks(500) {
        found.extend(b.get_many(chunk).await.unwrap());
    }
    for (w, got) in on_new.iter().zip(&found) {
        let e = got
            .as_ref()
            .unwrap_or_else(|| panic!("write {} acknowledged by the new primary is gone", w.i));
        assert_eq!(&e.value[..], w.i.to_string().as_bytes());
    }
    let on_old: Vec<&Write> = log
        .iter()
        .filter(|w| w.primary == old && w.result.is_ok())
        .collect();
    let old_keys: Vec<Key> = on_old.iter().map(|w| key_of(w.i)).collect();
    let mut lost = 0;
    for chunk in old_keys.chunks(500) {
        lost += b
            .get_many(chunk)
            .await
            .unwrap()
            .iter()
            .filter(|e| e.is_none())
            .count();
    }
    let failed = log.iter().filter(|w| w.result.is_err()).count();
    println!(
        "sentinel manual failover: the sentinels named the new primary {named:?} and the first \
         write reached it {moved:?} after SENTINEL FAILOVER; acknowledged by the old primary: {}, of which lost: {lost}; by the new: \
         {}, all read back; {failed} writes failed in between",
        on_old.len(),
        on_new.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_sentinel_with_a_private_ca() {
    let primary = TlsRedis::start();
    let sentinel = TlsSentinel::start(&primary);
    let url = format!("rediss+sentinel://127.0.0.1:{}/{SERVICE}", sentinel.port());
    let config = RedisConfig::from_url(&url)
        .unwrap()
        .with_tls_root_cert(primary.ca_pem().to_vec());
    let b = RedisBackend::new(config).await.unwrap();
    assert_eq!(
        detail(&b, "primary"),
        format!("127.0.0.1:{}", primary.port())
    );
    assert_eq!(detail(&b, "tls"), "yes");
    let k = key("tls");
    let v = b
        .put(&k, Bytes::from_static(b"over tls"), None, PutMode::Create)
        .await
        .unwrap();
    assert_eq!(b.get(&k).await.unwrap().unwrap().version, v);
    // Without the CA the sentinel's certificate is not trusted: a configuration error.
    let e = RedisBackend::connect(&format!("{url}?{FAST}"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    assert!(e.to_string().contains("TLS"), "{e}");
    // Plain TCP to the TLS sentinel does not get through either.
    let e = RedisBackend::connect(&format!(
        "redis+sentinel://127.0.0.1:{}/{SERVICE}?{FAST}",
        sentinel.port()
    ))
    .await
    .unwrap_err();
    assert!(
        matches!(
            e.kind(),
            ErrorKind::Config | ErrorKind::Unavailable | ErrorKind::Timeout
        ),
        "{e}"
    );
}

/// A near cache over the Sentinel backend tracks the primary; after a failover (writes now
/// go to the promoted replica, which never heard of the tracking) the channel restarts on
/// the new primary and the local tier is flushed, so a value written on the new primary by
/// another client is seen through the near cache once the bound has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_near_cache_over_sentinel_is_flushed_and_follows_a_failover() {
    use larder::layer::{ChannelState, Near};
    let _serial = FAILOVERS.lock().await;
    let set = SentinelSet::start();
    let url = format!(
        "redis+sentinel://{}/{SERVICE}?response_timeout_ms=300&connect_timeout_ms=300",
        set.sentinels()
    );
    let redis = RedisBackend::connect(&url).await.unwrap();
    let tracking = redis.tracking();
    let near = Near::builder(Arc::new(redis))
        .channel(tracking)
        .build()
        .unwrap();
    let stats = near.stats();
    let up_within = |limit: Duration| {
        let near = &near;
        let patience = Patience::new(limit).every(Duration::from_millis(10));
        eventually(patience, "tracking is up", async move || {
            near.channel_state() == ChannelState::Up
        })
    };
    up_within(Duration::from_secs(10)).await;
    let other = RedisBackend::connect(&url).await.unwrap();
    let k = key("near");
    near.put(&k, Bytes::from_static(b"before"), None, PutMode::Overwrite)
        .await
        .unwrap();
    // Read until one read is a local hit (a read is served locally only while the channel
    // has synced within the bound, which a loaded machine may miss now and then).
    let patience = Patience::new(Duration::from_secs(10)).every(Duration::ZERO);
    eventually(patience, "the local tier is used", async || {
        if stats.local_hits() > 0 {
            return true;
        }
        let e = near.get(&k).await.unwrap().unwrap();
        assert_eq!(&e.value[..], b"before");
        false
    })
    .await;
    let flushes_before = stats.flushes();

    set.failover();
    let limit = FAILOVER_TIMEOUT + Duration::from_secs(2);
    let asked = Instant::now();
    let new = format!("127.0.0.1:{}", set.replica_port());
    eventually(
        limit.saturating_sub(asked.elapsed()),
        "the client moves over",
        async || detail(&other, "primary") == new,
    )
    .await;
    // Written on the new primary by another client: the new primary's tracking (if any)
    // is what must tell the near cache.
    other
        .put(&k, Bytes::from_static(b"after"), None, PutMode::Overwrite)
        .await
        .unwrap();
    let patience = Patience::new(limit).every(Duration::ZERO);
    eventually(
        patience,
        "the near cache serves the value from after the failover",
        async || {
            up_within(limit).await;
            tokio::time::sleep(larder::layer::DEFAULT_MAX_STALENESS).await;
            let e = near.get(&k).await.unwrap().unwrap();
            &e.value[..] == b"after"
        },
    )
    .await;
    assert!(
        stats.flushes() > flushes_before,
        "the failover did not flush the local tier"
    );
    // The local tier works again on the new primary: a write by the other client is seen.
    for _ in 0..2 {
        near.get(&k).await.unwrap();
    }
    other
        .put(&k, Bytes::from_static(b"later"), None, PutMode::Overwrite)
        .await
        .unwrap();
    tokio::time::sleep(larder::layer::DEFAULT_MAX_STALENESS).await;
    let e = near.get(&k).await.unwrap().unwrap();
    assert_eq!(&e.value[..], b"later");
}
