//! The counter of two web app processes on one PostgreSQL, with every tenth session save's
//! reply lost after PostgreSQL committed it (a TCP proxy that follows the PostgreSQL
//! protocol sits between the processes and the server, `FaultProxy::start_postgres`): 1000
//! increments, 4 at a time, alternating between the instances, move the counter by exactly
//! the increments the app acknowledged (a save resent after its lost reply recognises its
//! own committed write instead of applying the increment again).
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use common::{AppProcess, Client};
use larder_tests::proxy::FaultProxy;
use larder_tests::server::ServerProcess;
use reqwest::Method;

/// The text of the session saves (the versioned save and the locked one).
const SAVE: &[u8] = b"UPDATE larder_sessions SET principal = $1";

const N: usize = 1000;
const AT_ONCE: usize = 4;

/// The `host:port` of the test database's URL.
fn server() -> String {
    let base = larder_tests::db::postgres_url();
    let rest = base.split_once("://").map_or(base.as_str(), |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let server = authority.rsplit('@').next().unwrap_or_default().to_owned();
    assert!(
        server.contains(':'),
        "the test database URL names its port: {base}"
    );
    server
}

/// The test database's URL through the proxy at `port`, unencrypted (the proxy reads the
/// protocol), on `schema`.
fn url_through(port: u16, schema: &str) -> String {
    let base = larder_tests::db::postgres_url();
    let via = base.replacen(&server(), &format!("127.0.0.1:{port}"), 1);
    let sep = if via.contains('?') { '&' } else { '?' };
    format!("{via}{sep}sslmode=disable&options=-csearch_path%3D{schema}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lost_save_replies_keep_the_counter_exact() {
    let proxy = FaultProxy::start_postgres(&server()).await;
    let (_store, schema) = larder_tests::db::pg_store().await;
    let redis = ServerProcess::redis();
    let apps: Vec<AppProcess> = ["web-1", "web-2"]
        .iter()
        .map(|name| {
            AppProcess::start(&[
                "--database-url".into(),
                url_through(proxy.port(), &schema),
                "--cache-url".into(),
                format!("redis://{}", redis.addr()),
                "--instance".into(),
                (*name).into(),
            ])
        })
        .collect();
    let bases: Vec<String> = apps.iter().map(|a| a.url("")).collect();
    let mut c = Client::new();
    c.login(&bases[0], "ada").await;
    assert_eq!(c.whoami(&bases[1]).await["counter"], 0);

    proxy.lose_statement_replies(SAVE, 10, usize::MAX);
    let acknowledged = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..AT_ONCE {
        let mut client = c.same_session();
        let bases = bases.clone();
        let (acknowledged, failed, next) = (acknowledged.clone(), failed.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= N {
                    return;
                }
                let url = format!("{}/counter", bases[i % 2]);
                let (status, _) = client.raw(Method::POST, &url, "").await;
                if status == 200 {
                    acknowledged.fetch_add(1, Ordering::SeqCst);
                } else {
                    // Reported as failed: one that applied would show in the count.
                    failed.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let lost = proxy.stop_losing_statement_replies();
    // The last increment may have gone to the other instance: its near cache may answer
    // from before it until the bound has passed.
    tokio::time::sleep(larder::layer::DEFAULT_MAX_STALENESS).await;
    let counter = c.whoami(&bases[0]).await["counter"].as_u64().unwrap();
    let acknowledged = acknowledged.load(Ordering::SeqCst);
    let failed = failed.load(Ordering::SeqCst);
    eprintln!(
        "{N} increments, {lost} save replies lost: counter {counter}, acknowledged \
         {acknowledged}, failed {failed}"
    );
    assert!(lost >= N / 20, "the proxy lost too few replies: {lost}");
    assert_eq!(
        counter, acknowledged,
        "the counter must move by exactly the acknowledged increments ({failed} failed)"
    );
}
