//! The minimal axum app of the README: sessions, a cached computation and a periodic task,
//! all in one SQLite file that any number of copies of the app can share.
//!
//! `cargo run --example minimal_axum --features axum,sqlite`, then:
//! `curl -c jar -b jar -d ada localhost:3000/login`, `curl -b jar -X POST localhost:3000/counter`,
//! `curl localhost:3000/report`. `APP_DB` and `APP_LISTEN` change the file and the address.
//! The README's copy of this file is checked to be the same text (`app-tests/minimal_axum.rs`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Extension, Router};
use larder::coord::{HolderId, Schedule, Scheduler, SchedulerConfig, TaskSpec};
use larder::sessions::{AtomicSession, SessionError, TowerStore};
use larder::tower_sessions::{Session, SessionManagerLayer};
use larder::{Cache, Key, Ttl};

/// How many times this process ran the expensive computation.
static LOADS: AtomicU64 = AtomicU64::new(0);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // One SQLite file holds the sessions, the cache and the task records: copies of the
    // app started on the same file share all three. `sqlite_url` makes the URL of a path.
    let path = std::env::var("APP_DB").unwrap_or_else(|_| "app.db".into());
    let url = larder::sqlite_url(&std::path::absolute(path)?);
    let sessions = TowerStore::new(larder::sessions::connect(&url).await?);
    let kv = larder::connect(&url).await?; // a compare-and-swap store: the `larder_kv` table
    let cache = Cache::new(kv.clone());

    // A periodic task: each 2 s period runs once, in one of the copies.
    let tick = TaskSpec::new(
        "tick",
        Schedule::Every(Duration::from_secs(2)),
        |ctx| async move {
            // `period`: the start of the period, in milliseconds since the Unix epoch.
            println!("task {} ran period {}", ctx.task, ctx.period);
            Ok(())
        },
    );
    let scheduler =
        Scheduler::new(kv, HolderId::generate(), SchedulerConfig::default())?.with_task(tick)?;
    let (stop, scheduler_done) = Arc::new(scheduler).spawn();

    let app = Router::new()
        .route("/login", post(login))
        .route("/counter", post(counter))
        .route("/report", get(report))
        // Plain HTTP for development; drop `with_secure(false)` behind TLS.
        .layer(SessionManagerLayer::new(sessions.clone()).with_secure(false))
        // `AtomicSession` finds the store here (without it, its routes answer 500).
        .layer(Extension(sessions))
        .with_state(cache);

    let listen = std::env::var("APP_LISTEN").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    // Stop the scheduler: a run in progress sees its context's `cancel` token fire.
    stop.cancel();
    scheduler_done.await?;
    Ok(())
}

/// Logs in as the user named in the body.
async fn login(session: Session, name: String) -> Result<&'static str, StatusCode> {
    let failed = |_| StatusCode::INTERNAL_SERVER_ERROR;
    session.cycle_id().await.map_err(failed)?; // a new id at login: no session fixation
    session.insert("user", name.trim()).await.map_err(failed)?;
    Ok("logged in\n")
}

/// Adds one to the session's counter: exact under concurrent requests, in every copy.
async fn counter(session: AtomicSession) -> Result<String, SessionError> {
    let n = session
        .update("counter", |n: Option<u64>| n.unwrap_or(0) + 1)
        .await?;
    Ok(format!("{n}\n"))
}

/// An expensive computation, cached for a minute; `larder::Error` is a response (503 when
/// the store is down, and so on, with no internal detail).
async fn report(State(cache): State<Cache>) -> Result<String, larder::Error> {
    let key = Key::new("report:total")?;
    let total: u64 = cache
        .get_or_compute(&key, Some(Ttl::from_secs(60)?), || async {
            LOADS.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(200)).await;
            (1..=100).sum()
        })
        .await?;
    let loads = LOADS.load(Ordering::Relaxed);
    Ok(format!("{total} (loader calls in this process: {loads})\n"))
}
