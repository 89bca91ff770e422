//! Three instances on PostgreSQL and one Redis, no sticky sessions: a scripted client
//! spreads its requests over all of them, through an instance crash and a Redis outage. Each
//! instance keeps a near cache in front of Redis (coherent within `DEFAULT_MAX_STALENESS`).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{pg_url_with_schema, AppProcess, Client};
use larder::layer::DEFAULT_MAX_STALENESS;
use larder_tests::server::ServerProcess;
use larder_tests::{eventually, Patience};

fn hits(v: &serde_json::Value) -> u64 {
    v["cache_stats"]["hits"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_sessions_and_coordinate() {
    let (store, schema) = larder_tests::db::pg_store().await;
    let mut redis = ServerProcess::redis();
    let db_url = pg_url_with_schema(&schema);
    let args = |name: &str| -> Vec<String> {
        vec![
            "--database-url".into(),
            db_url.clone(),
            "--cache-url".into(),
            format!("redis://{}", redis.addr()),
            "--instance".into(),
            name.into(),
            "--expiry-interval-ms".into(),
            "1000".into(),
        ]
    };
    let mut apps = vec![
        AppProcess::start(&args("web-1")),
        AppProcess::start(&args("web-2")),
        AppProcess::start(&args("web-3")),
    ];
    let bases: Vec<String> = apps.iter().map(|a| a.url("")).collect();
    let mut c = Client::new();

    // Log in on one instance; 30 increments round-robin over all three.
    c.login(&bases[0], "ada").await;
    // The instances write into the test's own schema.
    assert_eq!(
        larder::sessions::SessionStore::count(&store).await.unwrap(),
        1
    );
    for i in 0..30 {
        let v = c.post_json(&format!("{}/counter", bases[i % 3]), "").await;
        assert_eq!(
            v["counter"],
            i as u64 + 1,
            "increment {i} on {}",
            bases[i % 3]
        );
    }
    // Each instance has a near cache in front of Redis, coherent within its staleness bound:
    // once the bound has passed, every instance sees the last increment.
    tokio::time::sleep(DEFAULT_MAX_STALENESS).await;
    for _ in 0..2 {
        for b in &bases {
            let v = c.whoami(b).await;
            assert_eq!(v["user"], "ada");
            assert_eq!(v["counter"], 30, "counter seen by {b}");
        }
    }
    let mut local_hits = 0;
    for b in &bases {
        let near = c.status(b).await["near_cache"].clone();
        assert_eq!(near["channel"], "up", "{b}: {near}");
        local_hits += near["local_hits"].as_u64().unwrap();
    }
    assert!(local_hits > 0, "no instance answered from its near cache");

    // Crash one instance and restart it: still logged in there.
    apps[1].kill();
    apps[1].spawn();
    let v = c.whoami(&bases[1]).await;
    assert_eq!(v["user"], "ada");
    assert_eq!(v["counter"], 30);

    // Redis down: every request still succeeds, from the database.
    redis.stop();
    for i in 0..9 {
        let v = c.post_json(&format!("{}/counter", bases[i % 3]), "").await;
        assert_eq!(v["counter"], 31 + i as u64);
    }
    let mut errors = 0;
    for b in &bases {
        assert_eq!(c.whoami(b).await["user"], "ada");
        errors += c.status(b).await["cache_stats"]["errors"].as_u64().unwrap();
    }
    assert!(
        errors > 0,
        "the Redis outage was not noticed by any instance"
    );

    // Redis back: cache hits resume.
    redis.start();
    tokio::time::sleep(Duration::from_millis(1500)).await; // past the breaker cool-down
    let mut before = 0;
    for b in &bases {
        before += hits(&c.status(b).await);
    }
    for _ in 0..5 {
        for b in &bases {
            let v = c.whoami(b).await;
            assert_eq!(v["counter"], 39);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut after = 0;
    for b in &bases {
        after += hits(&c.status(b).await);
    }
    assert!(
        after >= before + 5,
        "cache hits did not resume after Redis came back ({before} -> {after})"
    );

    // The expiry task runs once per period across the three instances: watch the shared
    // task record and each instance's own run count for a few periods.
    let task_of = |v: &serde_json::Value| v["tasks"][0].clone();
    let mut runs0 = 0;
    for b in &bases {
        runs0 += c.status(b).await["expiry_runs_here"].as_u64().unwrap();
    }
    let token0 = task_of(&c.status(&bases[0]).await)["token"]
        .as_u64()
        .unwrap();
    let started = Instant::now();
    let mut seen: HashMap<i64, (u64, String)> = HashMap::new();
    while started.elapsed() < Duration::from_secs(6) {
        for b in &bases {
            let t = task_of(&c.status(b).await);
            let lr = &t["last_run"];
            if let Some(period) = lr["period"].as_i64() {
                let entry = (
                    lr["token"].as_u64().unwrap(),
                    lr["holder"].as_str().unwrap().to_owned(),
                );
                let prev = seen.entry(period).or_insert_with(|| entry.clone());
                assert_eq!(*prev, entry, "period {period} was run twice");
            }
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let elapsed = started.elapsed();
    // Let a run in flight finish before the counts are compared.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let token1 = task_of(&c.status(&bases[0]).await)["token"]
        .as_u64()
        .unwrap();
    let mut runs1 = 0;
    let mut runners = 0;
    for b in &bases {
        let n = c.status(b).await["expiry_runs_here"].as_u64().unwrap();
        runs1 += n;
        runners += u64::from(n > 0);
    }
    // The task's history (the status shows its last ten runs) has each run seen, once.
    let history = task_of(&c.status(&bases[0]).await)["history"].clone();
    let history = history.as_array().expect("a history").clone();
    for (period, (token, holder)) in &seen {
        let found: Vec<_> = history
            .iter()
            .filter(|h| h["token"].as_u64() == Some(*token))
            .collect();
        if history.len() == 10 && found.is_empty() {
            continue; // older than the ten shown
        }
        assert_eq!(found.len(), 1, "period {period} in {history:?}");
        assert_eq!(found[0]["period"].as_i64(), Some(*period));
        assert_eq!(found[0]["holder"].as_str(), Some(holder.as_str()));
        assert_eq!(found[0]["outcome"], "ok");
    }
    assert!(task_of(&c.status(&bases[0]).await)["paused"].is_null());
    let claims = token1 - token0;
    let periods = elapsed.as_secs() + 2;
    assert!(
        claims >= 3,
        "the expiry task hardly ran: {claims} claims in {elapsed:?}"
    );
    assert!(
        claims <= periods,
        "{claims} claims in {elapsed:?}: more than one per period"
    );
    assert!(
        (runs1 - runs0).abs_diff(claims) <= 1,
        "runs across instances ({}) differ from claims ({claims})",
        runs1 - runs0
    );
    assert!(seen.len() >= 3, "saw only {} periods", seen.len());
    assert!(runners >= 1);

    // A leader holds the "leader" lease, and every instance sees the same one.
    let patience = Patience::new(Duration::from_secs(20)).every(Duration::from_millis(200));
    eventually(
        patience,
        "every instance sees the same leader",
        async || {
            let mut holders = Vec::new();
            for b in &bases {
                holders.push(c.status(b).await["leader"]["holder"].clone());
            }
            if holders[0].is_string() && holders.iter().all(|h| *h == holders[0]) {
                Ok(())
            } else {
                Err(format!("no agreed leader: {holders:?}"))
            }
        },
    )
    .await;

    // A second browser of the same user, then "log out everywhere" from the first: both
    // sessions are gone on every instance (the old cookies are replayed on purpose).
    let mut other = Client::new();
    other.login(&bases[1], "ada").await;
    let mut stranger = Client::new();
    stranger.login(&bases[0], "bob").await;
    let first_cookie = c.cookie.clone();
    let other_cookie = other.cookie.clone();
    let v = c
        .post_json(&format!("{}/logout-everywhere", bases[2]), "")
        .await;
    assert_eq!(v["sessions_deleted"], 2);
    tokio::time::sleep(DEFAULT_MAX_STALENESS).await;
    for b in &bases {
        c.cookie = first_cookie.clone();
        other.cookie = other_cookie.clone();
        assert!(
            c.whoami(b).await["user"].is_null(),
            "still logged in on {b}"
        );
        assert!(
            other.whoami(b).await["user"].is_null(),
            "other browser still logged in on {b}"
        );
        assert_eq!(
            stranger.whoami(b).await["user"],
            "bob",
            "another user was logged out"
        );
    }
    drop(apps);
}
