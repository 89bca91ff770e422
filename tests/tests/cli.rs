//! The operator command line (`larder::cli`) in-process, against a real PostgreSQL schema
//! and a real Redis.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use larder::coord::{Durability, HolderId, Lease, LeaseConfig, Scheduler, SchedulerConfig};
use larder::sessions::{expiry_task, CachedStore, PgStore, SessionData, SessionStore, Timestamp};
use larder::{DynBackend, ErrorKind};
use larder_tests::db;
use larder_tests::server::ServerProcess;

async fn cli(args: &[&str]) -> larder::Result<String> {
    larder::cli::run(std::iter::once("larder").chain(args.iter().copied())).await
}

async fn create(store: &PgStore, principal: &str, ttl_secs: i64) {
    let expires = Timestamp(Timestamp::now().0 + ttl_secs * 1000);
    store
        .create(SessionData::new(), Some(principal.to_owned()), expires)
        .await
        .unwrap();
}

async fn redis_backend(server: &ServerProcess) -> DynBackend {
    larder::connect(&format!("redis://{}", server.addr()))
        .await
        .unwrap()
}

#[tokio::test]
async fn count_reads_the_schema_named_in_the_url() {
    let (store, schema) = db::pg_store().await;
    let url = db::schema_url(&schema);
    assert_eq!(
        cli(&["--database-url", &url, "sessions", "count"])
            .await
            .unwrap(),
        "0\n"
    );
    for p in ["ada", "bob", "cy"] {
        create(&store, p, 3600).await;
    }
    assert_eq!(
        cli(&["--database-url", &url, "sessions", "count"])
            .await
            .unwrap(),
        "3\n"
    );
}

#[tokio::test]
async fn revoke_deletes_in_the_database_and_tombstones_the_cache() {
    let redis = ServerProcess::redis();
    let redis_url = format!("redis://{}", redis.addr());
    let (store, schema) = db::pg_store().await;
    let url = db::schema_url(&schema);
    // The application's view: SQL behind a Redis write-through cache.
    let app = CachedStore::new(store.clone(), redis_backend(&redis).await);
    let data = SessionData::new;
    let later = Timestamp(Timestamp::now().0 + 3_600_000);
    let a1 = app.create(data(), Some("ada".into()), later).await.unwrap();
    let a2 = app.create(data(), Some("ada".into()), later).await.unwrap();
    let b = app.create(data(), Some("bob".into()), later).await.unwrap();
    // Loaded once: now cached in Redis.
    for r in [&a1, &a2, &b] {
        assert!(app.load(&r.id).await.unwrap().is_some());
    }

    let out = cli(&[
        "--database-url",
        &url,
        "--cache-url",
        &redis_url,
        "sessions",
        "revoke",
        "--principal",
        "ada",
    ])
    .await
    .unwrap();
    assert!(out.starts_with("revoked 2 session(s) of \"ada\""), "{out}");
    assert!(!out.contains("warning"), "{out}");

    // Gone through the cache and in the authority; bob untouched.
    assert!(app.load(&a1.id).await.unwrap().is_none());
    assert!(app.load(&a2.id).await.unwrap().is_none());
    assert!(store.load(&a1.id).await.unwrap().is_none());
    assert!(app.load(&b.id).await.unwrap().is_some());
    assert_eq!(
        cli(&["--database-url", &url, "sessions", "count"])
            .await
            .unwrap(),
        "1\n"
    );

    // Database-only revocation says so.
    let out = cli(&[
        "--database-url",
        &url,
        "sessions",
        "revoke",
        "--principal",
        "bob",
    ])
    .await
    .unwrap();
    assert!(
        out.contains("revoked 1 session(s)") && out.contains("outbox"),
        "{out}"
    );
    assert!(store.load(&b.id).await.unwrap().is_none());
}

#[tokio::test]
async fn sweep_removes_expired_rows_only() {
    let (store, schema) = db::pg_store().await;
    let url = db::schema_url(&schema);
    create(&store, "old", -60).await;
    create(&store, "old", -60).await;
    create(&store, "live", 3600).await;
    let rows = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM larder_sessions")
            .fetch_one(store.pool())
            .await
            .unwrap()
    };
    assert_eq!(rows().await, 3);
    let out = cli(&["--database-url", &url, "sessions", "sweep", "--batch", "1"])
        .await
        .unwrap();
    assert_eq!(out, "removed 2 expired session row(s)\n");
    assert_eq!(rows().await, 1);
    assert_eq!(
        cli(&["--database-url", &url, "sessions", "count"])
            .await
            .unwrap(),
        "1\n"
    );
    let e = cli(&["--database-url", &url, "sessions", "sweep", "--batch", "0"])
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
}

#[tokio::test]
async fn tasks_status_shows_lease_holder_and_last_run() {
    let (store, schema) = db::pg_store().await;
    let url = db::schema_url(&schema);
    let kv: DynBackend = Arc::new(db::pg_kv_beside(&store).await);

    let before = cli(&["--database-url", &url, "tasks", "status"])
        .await
        .unwrap();
    assert!(before.contains("never held"), "{before}");
    assert!(before.contains("larder.session-expiry"), "{before}");
    assert!(
        before.contains("? (pass --every or --schedule)"),
        "{before}"
    );

    let lease = Lease::new(
        kv.clone(),
        "leader",
        HolderId::named("node-a"),
        LeaseConfig::default(),
    )
    .unwrap();
    let held = lease.try_acquire().await.unwrap().unwrap();
    let scheduler = Scheduler::new(
        kv.clone(),
        HolderId::named("node-b"),
        SchedulerConfig::default(),
    )
    .unwrap()
    .with_task(expiry_task(
        Arc::new(store.clone()),
        Duration::from_secs(3600),
        100,
        Arc::new(AtomicU64::new(0)),
    ))
    .unwrap();
    let claims = scheduler.tick().await.unwrap();
    assert_eq!(claims.len(), 1);

    let out = cli(&["--database-url", &url, "tasks", "status", "--every", "1h"])
        .await
        .unwrap();
    let lease_line = out.lines().find(|l| l.starts_with("leader")).unwrap();
    assert!(lease_line.contains("node-a"), "{out}");
    assert!(lease_line.contains(&format!(" {} ", held.token)), "{out}");
    assert!(lease_line.contains(" held "), "{out}");
    let task_line = out
        .lines()
        .find(|l| l.starts_with("larder.session-expiry"))
        .unwrap();
    assert!(task_line.contains(" node-b@"), "{out}");
    assert!(
        task_line.contains(&format!(" #{} ", claims[0].token)),
        "{out}"
    );
    assert!(task_line.contains(" ok "), "{out}");
    // Claimed this hour: next due is the next hour, not now.
    assert!(!task_line.trim_end().ends_with("now"), "{out}");

    // Released: the table says so; a task nobody runs is "never".
    lease.release(held).await.unwrap();
    let out = cli(&[
        "--database-url",
        &url,
        "tasks",
        "status",
        "--lease",
        "leader",
        "--lease",
        "other",
        "--task",
        "nightly",
        "--every",
        "1d",
    ])
    .await
    .unwrap();
    assert!(
        out.lines()
            .any(|l| l.starts_with("leader") && l.contains("released")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("other") && l.contains("never held")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("nightly") && l.contains("never") && l.ends_with("now")),
        "{out}"
    );

    // A cron schedule in a time zone: at minute 30 in Kolkata (UTC+05:30) is at minute 0 in
    // UTC, so the period claimed this hour is the current one, and the next is due at the
    // next whole hour of UTC.
    let out = cli(&[
        "--database-url",
        &url,
        "tasks",
        "status",
        "--schedule",
        "CRON_TZ=Asia/Kolkata 0 30 * * * *",
    ])
    .await
    .unwrap();
    let task_line = out
        .lines()
        .find(|l| l.starts_with("larder.session-expiry"))
        .unwrap();
    let next = task_line.split_whitespace().last().unwrap();
    assert!(next.ends_with(":00:00.000Z"), "{out}");
}

#[tokio::test]
async fn tasks_status_reads_a_cache_backend_too() {
    let redis = ServerProcess::redis();
    let redis_url = format!("redis://{}", redis.addr());
    // A Redis without an append-only file may lose the records: the processes that wrote
    // them accepted that, and the status says so above the tables.
    let lease = Lease::new(
        redis_backend(&redis).await,
        "leader",
        HolderId::named("redis-holder"),
        LeaseConfig::default().with_durability(Durability::AcceptLoss),
    )
    .unwrap();
    assert!(lease.try_acquire().await.unwrap().is_some());
    let out = cli(&["--cache-url", &redis_url, "tasks", "status"])
        .await
        .unwrap();
    assert!(
        out.starts_with("coordination records in cache (redis)"),
        "{out}"
    );
    assert!(out.contains("redis-holder"), "{out}");
    assert!(
        out.lines().nth(1).is_some_and(|l| l.starts_with(
            "warning: redis may lose coordination records: it is not persistent (no append-only file"
        )),
        "{out}"
    );

    // memcached cannot coordinate: a clear refusal, not an empty table.
    let e = cli(&["--cache-url", "memcache://127.0.0.1:1", "tasks", "status"])
        .await
        .unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::Unsupported | ErrorKind::Unavailable),
        "{e}"
    );
}

#[tokio::test]
async fn cache_ping_and_stats_then_a_stopped_server_is_one_line() {
    let mut redis = ServerProcess::redis();
    let url = format!("redis://{}", redis.addr());
    let out = cli(&["--cache-url", &url, "cache", "ping"]).await.unwrap();
    assert!(out.starts_with("OK redis: connect "), "{out}");
    assert!(out.contains("delete"), "{out}");
    let stats = cli(&["--cache-url", &url, "cache", "stats"]).await.unwrap();
    assert!(stats.contains("backend            redis"), "{stats}");
    assert!(
        stats.contains(&format!("nodes              {}", redis.addr())),
        "{stats}"
    );
    assert!(stats.contains("linearizable cas   yes"), "{stats}");
    // As measured: this server has no append-only file.
    assert!(stats.contains("persistent         no"), "{stats}");
    assert!(
        stats.contains("coordination       only with Durability::AcceptLoss"),
        "{stats}"
    );
    assert!(
        stats.contains("appendonly no, maxmemory-policy noeviction"),
        "{stats}"
    );
    redis.stop();
    let e = cli(&["--cache-url", &url, "cache", "ping"])
        .await
        .unwrap_err();
    assert!(
        e.kind() == ErrorKind::Unavailable || e.kind() == ErrorKind::Timeout,
        "{e}"
    );
    let line = larder::cli::one_line(&e);
    assert!(!line.contains('\n'), "{line}");
    assert!(line.starts_with("redis: "), "{line}");
}

#[tokio::test]
async fn bad_input_is_a_clear_error() {
    let e = cli(&["sessions", "count"]).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(e.message().contains("--database-url"), "{e}");

    let e = cli(&["--database-url", "mysql://x/y", "sessions", "count"])
        .await
        .unwrap_err();
    assert!(e.message().contains("not a session database URL"), "{e}");

    let e = cli(&["--cache-url", "carrier-pigeon://coop", "cache", "ping"])
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);

    // A database without larder's tables is refused, and left untouched.
    let (store, schema) = db::pg_store().await;
    sqlx::query("DROP TABLE larder_sessions")
        .execute(store.pool())
        .await
        .unwrap();
    let e = cli(&[
        "--database-url",
        &db::schema_url(&schema),
        "sessions",
        "count",
    ])
    .await
    .unwrap_err();
    assert!(e.message().contains("no larder_sessions table"), "{e}");
    let recreated: Option<String> =
        sqlx::query_scalar("SELECT to_regclass('larder_sessions')::text")
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(recreated, None);

    let e = cli(&[
        "tasks",
        "status",
        "--schedule",
        "CRON_TZ=Europe/Pariss 0 30 2 * * *",
    ])
    .await
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(
        e.message().contains("unknown time zone \"Europe/Pariss\""),
        "{e}"
    );

    let e = cli(&["sessions", "frobnicate"]).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(e.message().contains("frobnicate"), "{e}");
}
