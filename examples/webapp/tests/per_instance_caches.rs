//! Three instances on one PostgreSQL with `--database-url` alone, so each keeps its own sled
//! cache: a change made on one is seen by the others, and a logout on one is refused by the
//! others with the old cookie within 2 s, ten times over.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{pg_url_with_schema, AppProcess, Client};
use larder_tests::{eventually, Patience};
use reqwest::Method;

/// The bound the app documents for a change made on another instance (1.5 s), with room.
fn within_two_seconds() -> Patience {
    Patience::new(Duration::from_secs(2)).every(Duration::from_millis(20))
}

/// A client that only carries `cookie`.
fn with_cookie(cookie: &str) -> Client {
    let mut c = Client::new();
    c.cookie = Some(cookie.to_owned());
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_instance_caches_on_one_postgres_see_changes_and_logouts() {
    let (_store, schema) = larder_tests::db::pg_store().await;
    let db_url = pg_url_with_schema(&schema);
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let apps: Vec<AppProcess> = dirs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            AppProcess::start(&[
                "--database-url".into(),
                db_url.clone(),
                "--data-dir".into(),
                d.path().display().to_string(),
                "--instance".into(),
                format!("web-{i}"),
            ])
        })
        .collect();
    let bases: Vec<String> = apps.iter().map(|a| a.url("")).collect();
    let mut c = Client::new();
    c.status(&bases[0]).await;

    for round in 0..10 {
        let home = &bases[round % 3];
        let others: Vec<&String> = bases.iter().filter(|b| *b != home).collect();
        let user = format!("u{round}");
        c.cookie = None;
        c.login(home, &user).await;
        // Every instance serves the session, and now holds it in its own cache.
        for b in &bases {
            assert_eq!(
                c.whoami(b).await["user"],
                user.as_str(),
                "round {round} on {b}"
            );
            assert_eq!(c.whoami(b).await["counter"], 0);
        }
        // A change on one instance is seen on the others.
        let v = c.post_json(&format!("{home}/counter"), "").await;
        assert_eq!(v["counter"], 1);
        for b in &others {
            let mut probe = c.same_session();
            eventually(
                within_two_seconds(),
                format!("round {round}: {b} sees the counter moved on {home}"),
                async || probe.whoami(b).await["counter"] == 1,
            )
            .await;
        }
        // A logout on one instance: the old cookie is refused on the others.
        let cookie = c.cookie.clone().unwrap();
        let (status, body) = c.raw(Method::POST, &format!("{home}/logout"), "").await;
        assert_eq!(status, 303, "logout: {body}");
        for b in &others {
            eventually(
                within_two_seconds(),
                format!("round {round}: {b} refuses the session logged out on {home}"),
                async || with_cookie(&cookie).whoami(b).await["user"].is_null(),
            )
            .await;
        }
    }
    // The instances learnt it from the change log, not from a shared cache.
    for b in &bases {
        let st = c.status(b).await;
        assert!(
            st["cache_stats"]["log_evictions"].as_u64().unwrap() > 0,
            "{b}: {st}"
        );
    }
}
