//! The near cache's coherence guarantee between two OS processes (`near_peer`), on Redis
//! (client tracking) and on PostgreSQL (LISTEN/NOTIFY): process B reads one key in a loop
//! through `Near`, process A overwrites it with an increasing counter straight on the backend
//! and records when each write returned. A read of B that *started* at least [`BOUND`] after
//! one of A's writes returned must see that write or a newer one: the count of reads that did
//! not ("stale outside the bound") must be 0. Reads that are stale within the bound are
//! counted and reported, with the largest staleness observed.
//!
//! B's invalidation channel goes through a TCP fault proxy (its data connection does not);
//! the second test of each backend cuts the channel for 5 s mid-run: B must flush and bypass
//! its local tier (and say so in its stats) and still never be stale beyond the bound.
//!
//! On PostgreSQL the `larder_kv_notify` trigger is dropped, or disabled, while a writer and
//! a reader run: the syncs go through the trigger, so the reader's channel goes down and says
//! why, and no read is stale beyond the bound.
//!
//! Then the refusals: a backend without a channel and no accepted staleness, a capacity of 0,
//! and a channel together with an accepted staleness are configuration errors.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use larder::layer::Near;
use larder::{CacheBackend, DynBackend, ErrorKind};
use larder_backend_memcached::MemcachedBackend;
use larder_backend_memory::MemoryBackend;
use larder_backend_redis::RedisBackend;
use larder_backend_sled::{SledBackend, SledConfig};
use larder_tests::db;
use larder_tests::proxy::{FaultProxy, Mode};
use larder_tests::server::ServerProcess;
use larder_tests::{eventually, Patience};
use sqlx::postgres::PgConnectOptions;

/// The staleness bound under test (the near cache's default `max_staleness`).
const BOUND: Duration = Duration::from_millis(50);
/// A's writes, and their pace (one per millisecond on average).
const WRITES: u64 = 10_000;
const PACE_US: u64 = 1_000;

#[derive(Debug, Default)]
struct Report {
    writes: usize,
    reads: usize,
    stale_inside: usize,
    stale_outside: usize,
    max_staleness: Duration,
    last_value: u64,
    local_hits: u64,
    shared_hits: u64,
    misses: u64,
    invalidations: u64,
    bypassed: u64,
    flushes: u64,
}

fn tmp(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "near-{}-{name}-{:x}",
        std::process::id(),
        rand_u64()
    ))
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(7);
    h.finish()
}

fn peer(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_near_peer"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// Runs A and B on `kind` (`redis` or `postgres`), B's channel through `proxy`, cutting the
/// channel for `cut.1` starting `cut.0` after A starts, if given.
async fn run(
    kind: &str,
    data_url: &str,
    channel_url: &str,
    proxy: &FaultProxy,
    cut: Option<(Duration, Duration)>,
) -> Report {
    let key = format!("near-coherence-{:016x}", rand_u64());
    let reads_file = tmp("reads");
    let writes_file = tmp("writes");
    let mut reader = peer(&[
        "reader",
        kind,
        data_url,
        channel_url,
        &key,
        "0",
        "0",
        reads_file.to_str().unwrap(),
    ]);
    let mut out = BufReader::new(reader.stdout.take().unwrap());
    let out = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "reader did not start");
        out
    })
    .await
    .unwrap();

    let mut writer = peer(&[
        "writer",
        kind,
        data_url,
        "-",
        &key,
        &WRITES.to_string(),
        &PACE_US.to_string(),
        writes_file.to_str().unwrap(),
    ]);
    if let Some((after, length)) = cut {
        tokio::time::sleep(after).await;
        proxy.set(Mode::Cut);
        tokio::time::sleep(length).await;
        proxy.set(Mode::Pass);
    }
    let status = tokio::task::spawn_blocking(move || writer.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "writer failed");
    // Let B read the final value for a while, then stop it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut stdin = reader.stdin.take().unwrap();
    stdin.write_all(b"stop\n").unwrap();
    drop(stdin);
    let (stats, status) = tokio::task::spawn_blocking(move || {
        let mut out = out;
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        (line, reader.wait().unwrap())
    })
    .await
    .unwrap();
    assert!(status.success(), "reader failed");

    let writes: Vec<u64> = std::fs::read(&writes_file)
        .unwrap()
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let reads: Vec<(u64, u64)> = std::fs::read(&reads_file)
        .unwrap()
        .chunks_exact(16)
        .map(|c| {
            (
                u64::from_le_bytes(c[..8].try_into().unwrap()),
                u64::from_le_bytes(c[8..].try_into().unwrap()),
            )
        })
        .collect();
    let _ = std::fs::remove_file(&writes_file);
    let _ = std::fs::remove_file(&reads_file);
    let mut r = analyse(&writes, &reads);
    let s: Vec<u64> = stats
        .split_whitespace()
        .skip(1)
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(s.len(), 6, "reader stats line: {stats:?}");
    (
        r.local_hits,
        r.shared_hits,
        r.misses,
        r.invalidations,
        r.bypassed,
        r.flushes,
    ) = (s[0], s[1], s[2], s[3], s[4], s[5]);
    eprintln!("{kind} (cut: {cut:?}): {r:#?}");
    r
}

/// `writes[i]`: when the write of counter `i + 1` returned (ns). `reads`: (start ns, counter).
fn analyse(writes: &[u64], reads: &[(u64, u64)]) -> Report {
    assert!(
        writes.windows(2).all(|w| w[0] <= w[1]),
        "write times go back"
    );
    let bound = BOUND.as_nanos() as u64;
    let mut r = Report {
        writes: writes.len(),
        reads: reads.len(),
        ..Report::default()
    };
    for &(t, c) in reads {
        // Writes returned before the read started: the read must not be older than the
        // last of them once BOUND has passed.
        let known = writes.partition_point(|&w| w <= t) as u64;
        if c >= known {
            continue;
        }
        // Stale: the write that overwrote what it returned (counter c + 1) returned at
        // writes[c], before the read started.
        let staleness = Duration::from_nanos(t - writes[c as usize]);
        r.max_staleness = r.max_staleness.max(staleness);
        let must = writes.partition_point(|&w| w + bound <= t) as u64;
        if c < must {
            r.stale_outside += 1;
        } else {
            r.stale_inside += 1;
        }
    }
    r.last_value = reads.last().map(|&(_, c)| c).unwrap_or(0);
    r
}

fn check(r: &Report, cut: bool) {
    assert_eq!(r.writes as u64, WRITES);
    assert!(r.reads > r.writes, "the reader hardly read: {r:#?}");
    assert_eq!(r.stale_outside, 0, "reads stale beyond {BOUND:?}: {r:#?}");
    assert_eq!(r.last_value, WRITES, "the reader never saw the last write");
    assert!(r.local_hits > 0, "the local tier was never used: {r:#?}");
    assert!(r.invalidations > 0, "no invalidation arrived: {r:#?}");
    if cut {
        assert!(
            r.bypassed > 0,
            "the cut channel did not make reads bypass: {r:#?}"
        );
        assert!(
            r.flushes > 0,
            "the cut channel did not flush the local tier: {r:#?}"
        );
    }
}

fn redis_setup() -> (ServerProcess, String) {
    let server = ServerProcess::redis();
    let url = format!("redis://{}", server.addr());
    (server, url)
}

async fn redis_case(cut: Option<(Duration, Duration)>) -> Report {
    let (server, url) = redis_setup();
    let proxy = FaultProxy::start(&server.addr()).await;
    let channel = format!("redis://{}", proxy.addr());
    run("redis", &url, &channel, &proxy, cut).await
}

async fn postgres_case(cut: Option<(Duration, Duration)>) -> Report {
    let (_kv, schema) = db::pg_kv().await;
    let opts: PgConnectOptions = db::postgres_url().parse().unwrap();
    let upstream = format!("{}:{}", opts.get_host(), opts.get_port());
    let proxy = FaultProxy::start(&upstream).await;
    let user = opts.get_username();
    let channel = format!(
        "postgres://{user}@{}/{}",
        proxy.addr(),
        opts.get_database().unwrap_or("postgres")
    );
    run("postgres", &db::schema_url(&schema), &channel, &proxy, cut).await
}

/// The channel is cut 2 s after A starts, for 5 s.
const CUT: Option<(Duration, Duration)> = Some((Duration::from_secs(2), Duration::from_secs(5)));

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_two_processes_never_stale_beyond_bound() {
    let r = redis_case(None).await;
    check(&r, false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_channel_cut_bypasses_and_stays_within_bound() {
    let r = redis_case(CUT).await;
    check(&r, true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_processes_never_stale_beyond_bound() {
    let r = postgres_case(None).await;
    check(&r, false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_channel_cut_bypasses_and_stays_within_bound() {
    let r = postgres_case(CUT).await;
    check(&r, true);
}

fn config_error(r: larder::Result<Near>) -> String {
    let e = r.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    e.to_string()
}

/// memcached, sled, SQLite and memory have no invalidation channel: wrapping them needs an
/// explicitly accepted staleness, and the refusal says how.
#[tokio::test]
async fn backends_without_channel_are_refused_unless_staleness_is_accepted() {
    let server = ServerProcess::memcached();
    let memcached: DynBackend = Arc::new(
        MemcachedBackend::connect(&format!("memcache://{}", server.addr()))
            .await
            .unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let sled: DynBackend = Arc::new(SledBackend::new(SledConfig::new(dir.path())).await.unwrap());
    let (sqlite, _dir) = db::sqlite_kv().await;
    let sqlite: DynBackend = Arc::new(sqlite);
    let memory: DynBackend = Arc::new(MemoryBackend::default());
    for b in [memcached, sled, sqlite, memory] {
        let name = b.capabilities().name;
        assert!(
            !b.capabilities().invalidation_channel,
            "{name} declares a channel"
        );
        let msg = config_error(Near::builder(b.clone()).build());
        assert!(msg.contains("no invalidation channel"), "{name}: {msg}");
        assert!(msg.contains("accept_staleness"), "{name}: {msg}");
        assert!(msg.contains(name), "{name}: {msg}");
        config_error(
            Near::builder(b.clone())
                .accept_staleness(Duration::ZERO)
                .build(),
        );
        let near = Near::builder(b)
            .accept_staleness(Duration::from_millis(500))
            .build()
            .unwrap();
        assert_eq!(near.channel_state(), larder::layer::ChannelState::Accepted);
    }
}

#[tokio::test]
async fn zero_capacity_and_conflicting_options_are_config_errors() {
    let memory: DynBackend = Arc::new(MemoryBackend::default());
    let msg = config_error(
        Near::builder(memory.clone())
            .capacity(0)
            .accept_staleness(Duration::from_secs(1))
            .build(),
    );
    assert!(msg.contains("capacity"), "{msg}");
    config_error(
        Near::builder(memory.clone())
            .max_age(Duration::ZERO)
            .accept_staleness(Duration::from_secs(1))
            .build(),
    );

    let (server, url) = redis_setup();
    let redis = RedisBackend::connect(&url).await.unwrap();
    let tracking = redis.tracking();
    let redis: DynBackend = Arc::new(redis);
    let msg = config_error(
        Near::builder(redis.clone())
            .capacity(0)
            .channel(tracking.clone())
            .build(),
    );
    assert!(msg.contains("capacity"), "{msg}");
    let msg = config_error(
        Near::builder(redis)
            .channel(tracking)
            .accept_staleness(Duration::from_secs(1))
            .build(),
    );
    assert!(msg.contains("not both"), "{msg}");
    drop(server);
}

/// Redis and PostgreSQL declare their channel, and a near cache built over them without it
/// says so; a namespace over them does not (its keys are not the ones the channel names).
#[tokio::test]
async fn backends_with_a_channel_declare_it_and_the_refusal_names_it() {
    let (server, url) = redis_setup();
    let redis: DynBackend = Arc::new(RedisBackend::connect(&url).await.unwrap());
    let (pg, _schema) = db::pg_kv().await;
    let pg: DynBackend = Arc::new(pg);
    for b in [redis, pg] {
        let name = b.capabilities().name;
        assert!(b.capabilities().invalidation_channel, "{name}");
        let msg = config_error(Near::builder(b.clone()).build());
        assert!(msg.contains("offers one"), "{name}: {msg}");
        assert!(msg.contains(".channel("), "{name}: {msg}");
        let ns = larder::layer::Namespace::new(b.clone(), "ns").unwrap();
        assert!(
            !ns.capabilities().invalidation_channel,
            "{name} behind a namespace"
        );
        let near = Near::builder(b)
            .accept_staleness(Duration::from_millis(500))
            .build()
            .unwrap();
        assert!(
            !near.capabilities().invalidation_channel,
            "{name} behind Near"
        );
    }
    drop(server);
}

/// A NOTIFY costs every write a database-wide lock at commit, so the migrations leave the
/// trigger out and the first listener installs it, before its channel is up; two listeners
/// starting together both come up, and a write through one reaches the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_trigger_is_installed_by_the_first_listener_only() {
    use bytes::Bytes;
    use larder::layer::ChannelState;
    use larder::{Key, PutMode};

    let (kv, _schema) = db::pg_kv().await;
    let pool = kv.pool().clone();
    let has_trigger = || async {
        sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_trigger \
             WHERE tgrelid = 'larder_kv'::regclass AND tgname = 'larder_kv_notify')",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    let k = Key::new("first-listener").unwrap();
    kv.put(&k, Bytes::from_static(b"v0"), None, PutMode::Overwrite)
        .await
        .unwrap();
    assert!(!has_trigger().await, "the migrations installed the trigger");

    let (a_notify, b_notify) = (kv.notify(), kv.notify());
    let shared: DynBackend = Arc::new(kv);
    let a = Near::builder(shared.clone())
        .channel(a_notify)
        .build()
        .unwrap();
    let b = Near::builder(shared).channel(b_notify).build().unwrap();
    let patience = Patience::new(Duration::from_secs(10)).every(Duration::from_millis(10));
    eventually(patience, "both channels are up", async || {
        a.channel_state() == ChannelState::Up && b.channel_state() == ChannelState::Up
    })
    .await;
    assert!(has_trigger().await, "no listener installed the trigger");

    // B keeps v0 locally; A's write must reach it through the trigger.
    // (A local entry is served once the channel has confirmed it after the fill.)
    let patience = Patience::new(Duration::from_secs(5)).every(Duration::from_millis(5));
    eventually(patience, "B keeps v0 locally", async || {
        if b.stats().local_hits() > 0 {
            return true;
        }
        assert_eq!(b.get(&k).await.unwrap().unwrap().value, &b"v0"[..]);
        false
    })
    .await;
    a.put(&k, Bytes::from_static(b"v1"), None, PutMode::Overwrite)
        .await
        .unwrap();
    let patience = Patience::new(Duration::from_secs(5)).every(Duration::from_millis(5));
    eventually(patience, "B reads v1", async || {
        let seen = b.get(&k).await.unwrap().unwrap().value;
        if seen == b"v1"[..] {
            Ok(())
        } else {
            Err(format!("B kept {seen:?}"))
        }
    })
    .await;
    assert!(b.stats().invalidations() >= 1, "B saw no invalidation");
}

/// Two near caches on one schema: A writes a counter, B reads it in a loop; 1.5 s in,
/// `sql` (run on the schema) takes the trigger away. 0 reads of B may return a value older
/// than the bound after a write was acknowledged, and B's stats must name `fault`.
async fn trigger_taken_away(sql: &str, fault: larder::layer::ChannelFault) {
    use bytes::Bytes;
    use larder::layer::ChannelState;
    use larder::{Key, PutMode};
    use std::time::Instant;

    let (kv_a, schema) = db::pg_kv().await;
    let kv_b = larder_backend_sql::PgKv::from_pool(db::pg_pool_in(&schema).await);
    let (notify_a, notify_b) = (kv_a.notify(), kv_b.notify());
    let a = Arc::new(
        Near::builder(Arc::new(kv_a))
            .channel(notify_a)
            .build()
            .unwrap(),
    );
    let b = Arc::new(
        Near::builder(Arc::new(kv_b))
            .channel(notify_b)
            .build()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.channel_state() != ChannelState::Up || b.channel_state() != ChannelState::Up {
        assert!(Instant::now() < deadline, "a channel never came up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let k = Key::new("trigger-taken-away").unwrap();
    let put = {
        let (a, k) = (a.clone(), k.clone());
        move |n: u64| {
            let (a, k) = (a.clone(), k.clone());
            async move {
                let v = Bytes::copy_from_slice(&n.to_le_bytes());
                a.put(&k, v, None, PutMode::Overwrite).await.unwrap();
            }
        }
    };
    put(0).await;
    let start = Instant::now();
    let run_for = Duration::from_millis(4500);
    // A: counter n+1 after n, and when each write returned.
    let writer = tokio::spawn(async move {
        let mut acked = Vec::new();
        while start.elapsed() < run_for {
            put(acked.len() as u64 + 1).await;
            acked.push(Instant::now());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        acked
    });
    // B: when each read started, and the counter it returned.
    let reader = tokio::spawn({
        let (b, k) = (b.clone(), k.clone());
        async move {
            let mut reads = Vec::new();
            while start.elapsed() < run_for {
                let t = Instant::now();
                let v = b.get(&k).await.unwrap().unwrap().value;
                reads.push((t, u64::from_le_bytes(v[..8].try_into().unwrap())));
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
            reads
        }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let hits_before = b.stats().local_hits();
    let admin = db::pg_pool_in(&schema).await;
    sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(&admin)
        .await
        .unwrap();
    let acked = writer.await.unwrap();
    let reads = reader.await.unwrap();

    let stale = reads
        .iter()
        .filter(|&&(t, c)| {
            let must = acked.iter().take_while(|&&w| w + BOUND <= t).count() as u64;
            c < must
        })
        .count();
    let stats = b.stats();
    eprintln!(
        "{sql}: {} writes, {} reads, {stale} stale beyond {BOUND:?}, {stats:?}, fault {:?}",
        acked.len(),
        reads.len(),
        stats.channel_fault()
    );
    assert!(
        hits_before > 0,
        "B's local tier was never used before: {stats:?}"
    );
    assert_eq!(stale, 0, "reads stale beyond {BOUND:?} after `{sql}`");
    assert_eq!(b.channel_state(), ChannelState::Down, "B still reports up");
    assert_eq!(stats.channel_fault(), Some(fault));
    assert_eq!(a.stats().channel_fault(), Some(fault));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_dropped_trigger_is_seen_and_never_stale_beyond_bound() {
    trigger_taken_away(
        "DROP TRIGGER larder_kv_notify ON larder_kv",
        larder::layer::ChannelFault::TriggerMissing,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_disabled_trigger_is_seen_and_never_stale_beyond_bound() {
    trigger_taken_away(
        "ALTER TABLE larder_kv DISABLE TRIGGER larder_kv_notify",
        larder::layer::ChannelFault::TriggerDisabled,
    )
    .await;
}
