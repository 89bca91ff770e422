//! Two web app processes on one PostgreSQL and one Redis, one logged-in session, 20
//! clients × 50 requests alternating between the instances: notes set through
//! tower-sessions keep every client's key and a removal stands; the counter's atomic update
//! counts every increment. And bad cookies get a fresh session and change nothing.
#![allow(clippy::unwrap_used)]

mod common;

use common::{pg_url_with_schema, AppProcess, Client, Instances};
use larder::sessions::SessionStore;
use larder_tests::server::ServerProcess;
use reqwest::Method;

const CLIENTS: usize = 20;
const REQUESTS: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_lose_no_write_on_one_session() {
    let instances = Instances::start(&["web-1", "web-2"]).await;
    let store = &instances.store;
    let bases = instances.bases();
    let mut c = Client::new();
    c.login(&bases[0], "ada").await;
    let (s, body) = c
        .raw(
            Method::POST,
            &format!("{}/notes/victim", bases[1]),
            "remove me",
        )
        .await;
    assert_eq!(s, 200, "{body}");

    // (a) every client sets its own note; (c) client 0 removes `victim` midway.
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let mut client = c.same_session();
        let bases = bases.clone();
        tasks.push(tokio::spawn(async move {
            let mut errors = 0;
            for j in 0..REQUESTS {
                let base = &bases[(i + j) % 2];
                let (s, _) = client
                    .raw(Method::POST, &format!("{base}/notes/c{i}"), &j.to_string())
                    .await;
                errors += usize::from(s != 200);
                if i == 0 && j == 10 {
                    let (s, _) = client
                        .raw(Method::DELETE, &format!("{base}/notes/victim"), "")
                        .await;
                    errors += usize::from(s != 200);
                }
            }
            // The last write may have gone to the other instance: its near cache may answer
            // from before it until the bound has passed (`max_staleness`, README).
            tokio::time::sleep(larder::layer::DEFAULT_MAX_STALENESS).await;
            let notes = client.get_json(&format!("{}/notes", bases[i % 2])).await;
            assert_eq!(
                notes[format!("c{i}")],
                (REQUESTS - 1).to_string(),
                "client {i} reads its note back"
            );
            errors
        }));
    }
    let mut errors = 0;
    for t in tasks {
        errors += t.await.unwrap();
    }
    assert_eq!(errors, 0, "requests that failed");
    let notes = c.get_json(&format!("{}/notes", bases[0])).await;
    let last = (REQUESTS - 1).to_string();
    let lost: Vec<usize> = (0..CLIENTS)
        .filter(|i| notes[format!("c{i}")].as_str() != Some(last.as_str()))
        .collect();
    assert!(
        lost.is_empty(),
        "notes that lost their last write: {lost:?} in {notes}"
    );
    assert!(notes.get("victim").is_none(), "the removal stands: {notes}");

    // (b) 1000 increments through the atomic update: exactly 1000.
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let mut client = c.same_session();
        let bases = bases.clone();
        tasks.push(tokio::spawn(async move {
            for j in 0..REQUESTS {
                let v = client
                    .post_json(&format!("{}/counter", bases[(i + j) % 2]), "")
                    .await;
                assert!(v["counter"].as_u64().unwrap() >= 1);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let me = c.whoami(&bases[1]).await;
    assert_eq!(me["counter"], CLIENTS * REQUESTS, "{me}");
    assert_eq!(me["user"], "ada");
    // Every instance tags what it puts into the shared cache, with the key they share.
    let status = c.status(&bases[0]).await;
    assert_eq!(status["cache_integrity"], true);
    assert_eq!(status["cache_stats"]["integrity_failures"], 0);
    assert_eq!(store.count().await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_cookies_get_a_fresh_session_and_change_nothing() {
    let (store, schema) = larder_tests::db::pg_store().await;
    let redis = ServerProcess::redis();
    let app = AppProcess::start(&[
        "--database-url".into(),
        pg_url_with_schema(&schema),
        "--cache-url".into(),
        format!("redis://{}", redis.addr()),
    ]);
    let base = app.url("");
    let mut ada = Client::new();
    ada.login(&base, "ada").await;
    let before = ada.whoami(&base).await;

    let big = format!("id={}", "A".repeat(64 * 1024));
    for cookie in [
        "id=__larder_loaded".to_owned(),
        format!(
            "__larder_loaded={}",
            ada.cookie.clone().unwrap().trim_start_matches("id=")
        ),
        "id=%7B%22v%22%3A1%7D".to_owned(),
        big,
    ] {
        let mut c = Client::new();
        c.cookie = Some(cookie.clone());
        let (status, body) = c
            .raw(Method::GET, &format!("{base}/whoami?format=json"), "")
            .await;
        // A clear refusal (the header is too large) or a fresh, anonymous session.
        if status == 200 {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["user"], serde_json::Value::Null, "{cookie:.40}: {body}");
        } else {
            assert!(
                (400..500).contains(&status),
                "{cookie:.40}: {status} {body}"
            );
        }
        let (status, _) = c.raw(Method::POST, &format!("{base}/counter"), "").await;
        assert!(
            status == 401 || (400..500).contains(&status),
            "{cookie:.40}: {status}"
        );
    }
    assert_eq!(
        store.count().await.unwrap(),
        1,
        "no session created or removed"
    );
    assert_eq!(
        ada.whoami(&base).await,
        before,
        "the real session is untouched"
    );
}
