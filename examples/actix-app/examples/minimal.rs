//! The minimal actix-web app of `examples/actix-app/README.md`: sessions, a cached
//! computation and a periodic task, all in one SQLite file that copies of the app share.
//!
//! `SESSION_SECRET=$(head -c 32 /dev/urandom | base64) cargo run -p larder-actix-app
//! --example minimal`; `APP_DB` and `APP_LISTEN` change the file and the address. The
//! README's copy of this file is checked to be the same text (`tests/readme.rs`).

// actix-web runs each request on one thread: handler futures need not be `Send`.
#![allow(clippy::future_not_send)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::cookie::Key as CookieKey;
use actix_web::error::ErrorServiceUnavailable;
use actix_web::{web, App, HttpServer};
use larder::actix_session::{Session, SessionMiddleware};
use larder::coord::{HolderId, Schedule, Scheduler, SchedulerConfig, TaskSpec};
use larder::sessions::ActixStore;
use larder::{Cache, Key, Ttl};

/// How many times this process ran the expensive computation.
static LOADS: AtomicU64 = AtomicU64::new(0);

#[actix_web::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // One SQLite file holds the sessions, the cache and the task records: copies of the
    // app started on the same file share all three. `sqlite_url` makes the URL of a path.
    let path = std::env::var("APP_DB").unwrap_or_else(|_| "app.db".into());
    let url = larder::sqlite_url(&std::path::absolute(path)?);
    let sessions = ActixStore::new(larder::sessions::connect(&url).await?);
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

    // The key sealing the cookie: the same in every copy and across restarts.
    let secret = std::env::var("SESSION_SECRET").map_err(|_| "set SESSION_SECRET")?;
    if secret.len() < 32 {
        return Err("SESSION_SECRET must be at least 32 bytes".into());
    }
    let cookie_key = CookieKey::derive_from(secret.as_bytes());
    let server = HttpServer::new(move || {
        let sessions = SessionMiddleware::builder(sessions.clone(), cookie_key.clone())
            .cookie_secure(false) // plain HTTP for development; drop this behind TLS
            .build();
        App::new()
            .wrap(sessions)
            .app_data(web::Data::new(cache.clone()))
            .route("/login", web::post().to(login))
            .route("/counter", web::post().to(counter))
            .route("/report", web::get().to(report))
    })
    .bind(std::env::var("APP_LISTEN").unwrap_or_else(|_| "127.0.0.1:8080".into()))?;
    println!("listening on http://{}", server.addrs()[0]);
    server.run().await?; // until Ctrl-C
                         // Stop the scheduler: a run in progress sees its context's `cancel` token fire.
    stop.cancel();
    scheduler_done.await?;
    Ok(())
}

/// Logs in as the user named in the body.
async fn login(session: Session, name: String) -> actix_web::Result<&'static str> {
    session.renew(); // a new id at login: no session fixation
    session.insert("user", name.trim())?;
    Ok("logged in\n")
}

/// Adds one to the session's counter. actix-session's read-modify-write of one key is last
/// writer wins under concurrent requests (different keys are all kept).
async fn counter(session: Session) -> actix_web::Result<String> {
    let n = session.get::<u64>("counter")?.unwrap_or(0) + 1;
    session.insert("counter", n)?;
    Ok(format!("{n}\n"))
}

/// An expensive computation, cached for a minute.
async fn report(cache: web::Data<Cache>) -> actix_web::Result<String> {
    let total: u64 = async {
        let key = Key::new("report:total")?;
        cache
            .get_or_compute(&key, Some(Ttl::from_secs(60)?), || async {
                LOADS.fetch_add(1, Ordering::Relaxed);
                actix_web::rt::time::sleep(Duration::from_millis(200)).await;
                (1..=100).sum()
            })
            .await
    }
    .await
    .map_err(|e: larder::Error| {
        eprintln!("report: {e}"); // the cause stays in the log, not in the response
        ErrorServiceUnavailable("try again later\n")
    })?;
    let loads = LOADS.load(Ordering::Relaxed);
    Ok(format!("{total} (loader calls in this process: {loads})\n"))
}
