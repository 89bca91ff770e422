//! The larder example web app: logins, a per-session counter, "log out everywhere", a
//! status page with a chart of the last minute, and `/metrics` for Prometheus, on axum and
//! tower-sessions.
//!
//! Sessions live in SQL (SQLite by default, or PostgreSQL) behind a write-through cache
//! (sled by default, or Redis, memcached, memory); coordination (a leader lease and the
//! session expiry task) runs in the same SQL database. Any number of instances can serve
//! the same users with no sticky sessions, and a restart logs nobody out.
//!
//! The binary `larder-webapp` is [`Config`] parsed from flags and environment, then
//! [`serve`]. Tests build the app in-process with [`App::build`].

mod chart;
mod observed_store;
pub mod telemetry;
pub mod window;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Form, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use larder::coord::{
    Elector, HolderId, Lease, LeaseConfig, Role, Scheduler, SchedulerConfig, TaskStatus,
};
use larder::layer::{ChannelState, Instrumented, Near};
use larder::sessions::{
    expiry_task, AtomicSession, CachedStore, SessionError, SessionStore, TowerStore,
    WriteThroughStats,
};
use larder::url::redact;
use larder::DynBackend;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::observed_store::ObservedStore;
use tower_sessions::{Expiry, Session, SessionManagerLayer};

/// The session key holding the logged-in user (also the session's principal).
pub const USER_KEY: &str = "user";
/// The session key holding the counter.
pub const COUNTER_KEY: &str = "counter";
/// The name of the leader lease.
pub const LEADER_LEASE: &str = "leader";

/// Configuration, from flags or environment variables. With none at all the app keeps
/// everything under `./larder-data`: an SQLite file for sessions and coordination, and a
/// sled cache.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "larder-webapp", version, about)]
pub struct Config {
    // Values from the environment are never shown by --help: a URL may carry a password.
    /// Where the embedded defaults keep their files (SQLite database, sled cache).
    #[arg(
        long,
        env = "LARDER_DATA_DIR",
        hide_env_values = true,
        default_value = "./larder-data"
    )]
    pub data_dir: PathBuf,
    /// The session database: `sqlite://path` or `postgres://user@host/db` (a schema can be
    /// chosen with `?options=-csearch_path%3Dname`). Default: `sessions.db` in the data
    /// directory.
    #[arg(long, env = "LARDER_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// The session cache: `sled:///path`, `redis://host:port`, `memcache://host:port` or
    /// `memory://`. Default: a sled cache in the data directory. A per-instance cache (sled,
    /// memory) in front of a database other instances share stays coherent: each instance
    /// follows the database's change log, and sees a change or a logout made on another
    /// within 1.5 s.
    #[arg(long, env = "LARDER_CACHE_URL", hide_env_values = true)]
    pub cache_url: Option<String>,
    /// The port to listen on (127.0.0.1 unless `--bind` says otherwise).
    #[arg(
        long,
        env = "LARDER_PORT",
        hide_env_values = true,
        default_value_t = 3000
    )]
    pub port: u16,
    /// The address to listen on.
    #[arg(
        long,
        env = "LARDER_BIND",
        hide_env_values = true,
        default_value = "127.0.0.1"
    )]
    pub bind: std::net::IpAddr,
    /// This instance's name, shown on the status page and in the leader lease. Default:
    /// `<host>:<port>`.
    #[arg(long, env = "LARDER_INSTANCE", hide_env_values = true)]
    pub instance: Option<String>,
    /// Sessions expire this many seconds after they last changed (login, notes), give or
    /// take the quarter of it by which larder rate-limits moving the expiry; the app does
    /// not rewrite a session on requests that only read it.
    #[arg(
        long,
        env = "LARDER_SESSION_TTL_SECS",
        hide_env_values = true,
        default_value_t = 86_400
    )]
    pub session_ttl_secs: u64,
    /// How often the session expiry task runs (once per period across all instances).
    #[arg(
        long,
        env = "LARDER_EXPIRY_INTERVAL_MS",
        hide_env_values = true,
        default_value_t = 60_000
    )]
    pub expiry_interval_ms: u64,
    /// A key (at least 16 bytes) for tagging shared cache entries with an HMAC, the same on
    /// every instance. With a PostgreSQL database and no key given, the instances agree on
    /// a random key kept in the database; with the embedded defaults, entries are untagged.
    #[arg(long, env = "LARDER_CACHE_KEY", hide_env_values = true)]
    pub cache_key: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./larder-data"),
            database_url: None,
            cache_url: None,
            port: 3000,
            bind: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            instance: None,
            session_ttl_secs: 86_400,
            expiry_interval_ms: 60_000,
            cache_key: None,
        }
    }
}

/// Errors while starting the app.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Shared state of the request handlers.
#[derive(Debug)]
struct Shared {
    instance: String,
    database: String,
    cache: String,
    integrity: bool,
    store: Arc<dyn SessionStore>,
    stats: Arc<WriteThroughStats>,
    lease: Arc<Lease>,
    role: tokio::sync::watch::Receiver<Role>,
    scheduler: Arc<Scheduler>,
    expiry_runs: Arc<AtomicU64>,
    expired_removed: Arc<AtomicU64>,
    near: Option<Arc<Near>>,
}

/// A built app: the router plus the background coordination it started.
#[derive(Debug)]
pub struct App {
    router: Router,
    shared: Arc<Shared>,
    elector: Elector,
    scheduler_stop: tokio_util::sync::CancellationToken,
    scheduler_task: tokio::task::JoinHandle<()>,
}

fn absolute(p: &Path) -> PathBuf {
    let p = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    };
    // `/srv/./larder-data` reads better as `/srv/larder-data`.
    p.components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect()
}

/// The cache integrity key the instances on one database share: created once (a random
/// value, create-if-absent, so concurrent first starts agree) in the database's CAS store.
async fn shared_cache_key(kv: &DynBackend) -> Result<Vec<u8>, BoxError> {
    let key = larder::Key::new("larder-webapp:cache-integrity-key")?;
    let mut fresh = [0u8; 32];
    getrandom::fill(&mut fresh).map_err(|e| format!("no OS randomness for the cache key: {e}"))?;
    let value = larder::Bytes::copy_from_slice(&fresh);
    match kv.put(&key, value, None, larder::PutMode::Create).await {
        Ok(_) => Ok(fresh.to_vec()),
        Err(e) if e.kind() == larder::ErrorKind::Conflict => match e.into_current() {
            Some(entry) => Ok(entry.value.to_vec()),
            None => Err("the shared cache key vanished while it was read".into()),
        },
        Err(e) => Err(e.into()),
    }
}

impl App {
    /// Opens the database and the cache, starts the leader elector and the expiry
    /// scheduler, and builds the router. Must run inside a tokio runtime.
    pub async fn build(config: &Config) -> Result<App, BoxError> {
        // Metrics go to `/metrics` and the status page from the first operation on.
        telemetry::global();
        let data_dir = absolute(&config.data_dir);
        let needs_dir = config.database_url.is_none() || config.cache_url.is_none();
        if needs_dir {
            std::fs::create_dir_all(&data_dir).map_err(|e| {
                format!(
                    "cannot create the data directory {}: {e}",
                    data_dir.display()
                )
            })?;
        }
        let instance = config.instance.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "localhost".into());
            format!("{host}:{}", config.port)
        });

        // The authority: SQL, through the session crate's own constructor; coordination
        // state lives in the same database, in the SQL compare-and-swap store, opened by URL
        // like any backend.
        let db_url = match config.database_url.as_deref() {
            Some(url) => url.to_owned(),
            None => larder::backends::sql::sqlite_url(&data_dir.join("sessions.db")),
        };
        // Every database call is timed (`larder_session_db_op_seconds`); the expiry task's
        // sweeps are counted for the status page.
        let expiry_runs = Arc::new(AtomicU64::new(0));
        let sql = Arc::new(ObservedStore::new(
            larder::sessions::connect(&db_url).await?,
            expiry_runs.clone(),
        ));
        let kv = larder::connect(&db_url).await?;
        let database = format!("{} {}", kv.capabilities().name, redact(&db_url));

        // The cache in front of it.
        let cache_url = match &config.cache_url {
            Some(u) => u.clone(),
            None => format!("sled://{}", data_dir.join("cache").display()),
        };
        // A database other processes reach: the instances share the cache key through it.
        let multi_instance = larder::url::BackendUrl::parse(&db_url)?
            .scheme()
            .starts_with("postgres");
        let cache_scheme = larder::url::BackendUrl::parse(&cache_url)?
            .scheme()
            .to_owned();
        // Many instances on a shared Redis: a near cache in each process answers repeated
        // loads from memory, kept coherent by Redis client tracking (see `layer::Near`).
        let (cache_backend, near) = if multi_instance && cache_scheme.starts_with("redis") {
            let redis = larder::backends::redis::RedisBackend::connect(&cache_url).await?;
            let tracking = redis.tracking();
            let near = Arc::new(Near::builder(Arc::new(redis)).channel(tracking).build()?);
            (near.clone() as DynBackend, Some(near))
        } else {
            (larder::connect(&cache_url).await?, None)
        };
        let cache = format!(
            "{}{} {}",
            cache_backend.capabilities().name,
            if near.is_some() {
                " behind a near cache"
            } else {
                ""
            },
            redact(&cache_url)
        );
        // Cache operations are timed and counted (`larder_cache_*`) by the library's layer.
        let cache_backend: DynBackend = Arc::new(Instrumented::new(cache_backend));
        let mut cached = CachedStore::new(sql.clone(), cache_backend);
        let key = match &config.cache_key {
            Some(k) => Some(k.as_bytes().to_vec()),
            None if multi_instance => Some(shared_cache_key(&kv).await?),
            None => None,
        };
        let integrity = key.is_some();
        if let Some(key) = key {
            cached = cached.integrity_key(&key)?;
        }
        let stats = cached.stats();
        let store: Arc<dyn SessionStore> = Arc::new(cached);

        // Coordination: a leader lease, and the expiry task once per period across all
        // instances. In the SQL store, which keeps its records, so the default
        // `Durability::Required` holds: never on the cache (`--cache-url` may be a Redis
        // without an append-only file, which would lose them on a restart).
        let holder = HolderId::named(&instance);
        let lease = Arc::new(Lease::new(
            kv.clone(),
            LEADER_LEASE,
            holder.clone(),
            LeaseConfig::default(),
        )?);
        let elector = Elector::spawn(lease.clone());
        let every = Duration::from_millis(config.expiry_interval_ms.max(1));
        let expired_removed = Arc::new(AtomicU64::new(0));
        let poll = (every / 4).clamp(Duration::from_millis(50), Duration::from_millis(500));
        let scheduler = Arc::new(
            Scheduler::new(
                kv,
                holder,
                SchedulerConfig::default()
                    .process_name(instance.clone())
                    .poll(poll),
            )?
            .with_task(expiry_task(sql, every, 1000, expired_removed.clone()))?,
        );
        let (stop, scheduler_task) = scheduler.clone().spawn();

        let shared = Arc::new(Shared {
            instance,
            database,
            cache,
            integrity,
            store: store.clone(),
            stats,
            lease,
            role: elector.watch(),
            scheduler,
            expiry_runs,
            expired_removed,
            near,
        });
        let tower_store = TowerStore::new(store).principal_key(USER_KEY);
        let sessions = SessionManagerLayer::new(tower_store.clone())
            .with_secure(false)
            .with_expiry(Expiry::OnInactivity(
                tower_sessions::cookie::time::Duration::seconds(
                    i64::try_from(config.session_ttl_secs).unwrap_or(i64::MAX / 2),
                ),
            ));
        let router = Router::new()
            .route("/", get(index))
            .route("/login", post(login))
            .route("/logout", post(logout))
            .route("/logout-everywhere", post(logout_everywhere))
            .route("/counter", post(counter))
            .route("/whoami", get(whoami))
            .route("/notes", get(notes))
            .route("/notes/{key}", post(set_note).delete(remove_note))
            .route("/status", get(status_html))
            .route("/status.json", get(status_json))
            .route("/metrics", get(telemetry::metrics_text))
            .route_layer(axum::middleware::from_fn(telemetry::count_request))
            .layer(sessions)
            // The counter's atomic update runs on larder's own handle over the same store.
            .layer(axum::Extension(tower_store))
            .with_state(shared.clone());
        Ok(App {
            router,
            shared,
            elector,
            scheduler_stop: stop,
            scheduler_task,
        })
    }

    /// The router (for serving it in-process).
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// This instance's name.
    pub fn instance(&self) -> &str {
        &self.shared.instance
    }

    /// What the session database is, for display (`sqlite <path>`, `postgres <url>`).
    pub fn database(&self) -> &str {
        &self.shared.database
    }

    /// What the cache is, for display (`sled <url>`, `redis <url>`...).
    pub fn cache(&self) -> &str {
        &self.shared.cache
    }

    /// Stops the background coordination: the scheduler, then the elector (which releases
    /// the leader lease if held).
    pub async fn shutdown(self) {
        self.scheduler_stop.cancel();
        let _ = self.scheduler_task.await;
        self.elector.stop().await;
    }
}

/// Serves `config` until SIGTERM or ctrl-c, then shuts down cleanly.
pub async fn serve(config: Config) -> Result<(), BoxError> {
    let app = App::build(&config).await?;
    let addr = SocketAddr::new(config.bind, config.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let shown = if addr.ip().is_unspecified() {
        format!("http://127.0.0.1:{}", addr.port())
    } else {
        format!("http://{addr}")
    };
    println!(
        "larder-webapp listening on {shown} (instance {}, {}, {})",
        app.instance(),
        app.database(),
        app.cache()
    );
    axum::serve(listener, app.router())
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    app.shutdown().await;
    println!("larder-webapp stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

// ---------------------------------------------------------------------------------------
// Handlers

type AppState = State<Arc<Shared>>;

#[derive(Debug)]
struct AppError(String);

impl<E: std::fmt::Display> From<E> for AppError {
    fn from(e: E) -> Self {
        AppError(e.to_string())
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        tracing::warn!(error = %self.0, "request failed");
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("error: {}\n", self.0),
        )
            .into_response()
    }
}

type HResult<T> = std::result::Result<T, AppError>;

#[derive(Debug, Deserialize)]
struct FormatQuery {
    format: Option<String>,
}

fn wants_json(q: &FormatQuery, headers: &HeaderMap) -> bool {
    q.format.as_deref() == Some("json")
        || headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("application/json"))
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn page(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title>\
         <style>body{{font-family:sans-serif;max-width:40em;margin:2em auto}}\
         form{{display:inline-block;margin:0 .5em .5em 0}}td{{padding:0 1em 0 0}}</style>\
         </head><body>{body}</body></html>\n"
    ))
}

async fn index(State(s): AppState, session: Session) -> HResult<Html<String>> {
    let user: Option<String> = session.get(USER_KEY).await?;
    let body = match user {
        None => format!(
            "<h1>larder example</h1><p>Not logged in (instance <code>{inst}</code>).</p>\
             <form method=\"post\" action=\"/login\"><label>User \
             <input id=\"user\" name=\"user\" autofocus required></label> \
             <button id=\"login\" type=\"submit\">Log in</button></form>\
             <p><a href=\"/status\">status</a></p>",
            inst = escape(&s.instance)
        ),
        Some(user) => {
            let n: u64 = session.get(COUNTER_KEY).await?.unwrap_or(0);
            format!(
                "<h1>larder example</h1>\
                 <p>Who am I: <strong id=\"whoami\">{user}</strong> \
                 (served by instance <code>{inst}</code>)</p>\
                 <p>Counter: <strong id=\"counter\">{n}</strong></p>\
                 <form method=\"post\" action=\"/counter\"><button id=\"increment\" type=\"submit\">Increment</button></form>\
                 <form method=\"post\" action=\"/logout\"><button id=\"logout\" type=\"submit\">Log out</button></form>\
                 <form method=\"post\" action=\"/logout-everywhere\"><button id=\"logout-everywhere\" type=\"submit\">Log out everywhere</button></form>\
                 <p><a href=\"/status\">status</a></p>",
                user = escape(&user),
                inst = escape(&s.instance)
            )
        }
    };
    Ok(page("larder example", &body))
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    user: String,
}

async fn login(
    session: Session,
    q: Query<FormatQuery>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> HResult<Response> {
    let user = form.user.trim().to_owned();
    if user.is_empty() || user.len() > 200 {
        return Ok((StatusCode::BAD_REQUEST, "user must be 1 to 200 bytes\n").into_response());
    }
    // A new session id at login, against session fixation.
    session.cycle_id().await?;
    session.insert(USER_KEY, &user).await?;
    if wants_json(&q, &headers) {
        return Ok(Json(json!({ "user": user })).into_response());
    }
    Ok(Redirect::to("/").into_response())
}

async fn logout(session: Session) -> HResult<Redirect> {
    session.flush().await?;
    Ok(Redirect::to("/"))
}

async fn logout_everywhere(
    State(s): AppState,
    session: Session,
    q: Query<FormatQuery>,
    headers: HeaderMap,
) -> HResult<Response> {
    let user: Option<String> = session.get(USER_KEY).await?;
    let mut removed = 0;
    if let Some(user) = &user {
        removed = s.store.delete_principal(user).await?.len();
    }
    session.flush().await?;
    if wants_json(&q, &headers) {
        return Ok(Json(json!({ "user": user, "sessions_deleted": removed })).into_response());
    }
    Ok(Redirect::to("/").into_response())
}

async fn counter(
    State(s): AppState,
    session: Session,
    atomic: AtomicSession,
    q: Query<FormatQuery>,
    headers: HeaderMap,
) -> HResult<Response> {
    let json = wants_json(&q, &headers);
    let user: Option<String> = session.get(USER_KEY).await?;
    if user.is_none() {
        return Ok(if json {
            (
                StatusCode::UNAUTHORIZED,
                Json(json!({ "error": "not logged in" })),
            )
                .into_response()
        } else {
            Redirect::to("/").into_response()
        });
    }
    // An atomic update: if another request (on any instance) incremented in between, the
    // closure runs again on its value, so no increment is lost.
    let n = match atomic
        .update(COUNTER_KEY, |n: Option<u64>| n.unwrap_or(0) + 1)
        .await
    {
        Ok(n) => n,
        Err(e) => return Ok(session_error(e)),
    };
    if json {
        return Ok(
            Json(json!({ "user": user, "counter": n, "instance": s.instance })).into_response(),
        );
    }
    Ok(Redirect::to("/").into_response())
}

/// Session keys of notes start with this, so they never meet the user or the counter.
const NOTE_PREFIX: &str = "note:";

fn not_logged_in() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(json!({ "error": "not logged in" })),
    )
        .into_response()
}

fn valid_note_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 64
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `GET /notes`: the session's notes, as stored now, as a JSON object (tower-sessions
/// cannot list keys; larder's handle over the same store can).
async fn notes(session: Session, atomic: AtomicSession) -> HResult<Response> {
    if session.get::<String>(USER_KEY).await?.is_none() {
        return Ok(not_logged_in());
    }
    let mut out = serde_json::Map::new();
    if let Some(stored) = atomic.handle().await? {
        for key in stored.data().keys() {
            if let Some(name) = key.strip_prefix(NOTE_PREFIX) {
                if let Some(v) = stored.get::<Value>(key)? {
                    out.insert(name.to_owned(), v);
                }
            }
        }
    }
    Ok(Json(Value::Object(out)).into_response())
}

/// `POST /notes/{key}` with the value as the body: sets one note (a plain tower-sessions
/// insert: concurrent requests that set other notes keep theirs).
async fn set_note(
    session: Session,
    axum::extract::Path(key): axum::extract::Path<String>,
    body: String,
) -> HResult<Response> {
    if session.get::<String>(USER_KEY).await?.is_none() {
        return Ok(not_logged_in());
    }
    if !valid_note_key(&key) || body.len() > 4096 {
        return Ok((
            StatusCode::BAD_REQUEST,
            "note keys are 1 to 64 of [A-Za-z0-9_-]; values at most 4 KiB\n",
        )
            .into_response());
    }
    session
        .insert(&format!("{NOTE_PREFIX}{key}"), &body)
        .await?;
    Ok(Json(json!({ "key": key, "value": body })).into_response())
}

/// `DELETE /notes/{key}`: removes one note.
async fn remove_note(
    session: Session,
    axum::extract::Path(key): axum::extract::Path<String>,
) -> HResult<Response> {
    if session.get::<String>(USER_KEY).await?.is_none() {
        return Ok(not_logged_in());
    }
    let removed: Option<Value> = session.remove_value(&format!("{NOTE_PREFIX}{key}")).await?;
    Ok(Json(json!({ "key": key, "removed": removed.is_some() })).into_response())
}

fn session_error(e: SessionError) -> Response {
    e.into_response()
}

async fn whoami(
    State(s): AppState,
    session: Session,
    q: Query<FormatQuery>,
    headers: HeaderMap,
) -> HResult<Response> {
    let user: Option<String> = session.get(USER_KEY).await?;
    let n: u64 = session.get(COUNTER_KEY).await?.unwrap_or(0);
    if wants_json(&q, &headers) {
        return Ok(Json(json!({
            "user": user,
            "counter": n,
            "instance": s.instance,
        }))
        .into_response());
    }
    let text = match user {
        Some(u) => format!("{u}\n"),
        None => "not logged in\n".to_owned(),
    };
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

fn task_json(t: &TaskStatus) -> Value {
    let run = |r: &larder::coord::RunInfo| {
        json!({
            "period": r.period,
            "holder": r.holder,
            "token": r.token,
            "started_at_ms": r.started_at_ms,
            "finished_at_ms": r.finished_at_ms,
            "ok": r.outcome.as_ref().map(|o| o.is_ok()),
        })
    };
    json!({
        "name": t.name,
        "last_period": t.last_period,
        "token": t.token,
        "running": t.running.as_ref().map(run),
        "last_run": t.last_run.as_ref().map(run),
        "next_due_ms": t.next_due_ms,
        "paused": t.paused.as_ref().map(|p| json!({ "by": p.by, "at_ms": p.at_ms })),
    })
}

/// How many of a task's last runs the status shows.
const STATUS_HISTORY: usize = 10;

/// The last runs of a task, oldest first, as the status shows them.
fn history_json(h: &[larder::coord::HistoryEntry]) -> Value {
    let from = h.len().saturating_sub(STATUS_HISTORY);
    Value::Array(
        h[from..]
            .iter()
            .map(|r| {
                json!({
                    "request_id": r.trigger,
                    "period": r.period,
                    "holder": r.holder,
                    "token": r.token,
                    "started_at_ms": r.started_at_ms,
                    "finished_at_ms": r.finished_at_ms,
                    "outcome": r.outcome.name(),
                })
            })
            .collect(),
    )
}

async fn status_value(s: &Shared) -> Value {
    let st = s.stats.snapshot();
    let sessions = match s.store.count().await {
        Ok(n) => json!(n),
        Err(e) => json!({ "error": e.to_string() }),
    };
    let leader = match s.lease.observe().await {
        Ok(Some(r)) => json!({
            "holder": r.holder,
            "token": r.token,
            "released": r.released,
            "renewed_at_ms": r.renewed_at_ms,
        }),
        Ok(None) => Value::Null,
        Err(e) => json!({ "error": e.to_string() }),
    };
    let tasks = match s.scheduler.status().await {
        Ok(ts) => {
            let mut list = Vec::new();
            for t in &ts {
                let mut v = task_json(t);
                v["history"] = match s.scheduler.history(&t.name).await {
                    Ok(h) => history_json(&h),
                    Err(e) => json!({ "error": e.to_string() }),
                };
                list.push(v);
            }
            Value::Array(list)
        }
        Err(e) => json!({ "error": e.to_string() }),
    };
    let is_leader = matches!(&*s.role.borrow(), Role::Leader(_));
    json!({
        "instance": s.instance,
        "holder": s.lease.holder().as_str(),
        "database": s.database,
        "cache": s.cache,
        "cache_integrity": s.integrity,
        "cache_stats": {
            "hits": st.hits,
            "misses": st.misses,
            "errors": st.cache_errors,
            "invalidations": st.invalidations,
            "skipped": st.skipped,
            "integrity_failures": st.integrity_failures,
            "outbox_drained": st.outbox_drained,
            "log_evictions": st.log_evictions,
            "log_flushes": st.log_flushes,
        },
        "near_cache": s.near.as_ref().map(|n| {
            let ns = n.stats();
            json!({
                "channel": match n.channel_state() {
                    ChannelState::Up => "up",
                    ChannelState::Down => "down",
                    _ => "accepted staleness",
                },
                // Why the channel is down, as far as it said (`trigger_missing`, ...).
                "channel_fault": ns.channel_fault().map(|f| f.as_str()),
                "local_hits": ns.local_hits(),
                "shared_hits": ns.shared_hits(),
                "misses": ns.misses(),
                "invalidations": ns.invalidations(),
                "bypassed": ns.bypassed(),
                "flushes": ns.flushes(),
            })
        }),
        "sessions": sessions,
        "leader": leader,
        "this_instance_is_leader": is_leader,
        "tasks": tasks,
        "expiry_runs_here": s.expiry_runs.load(Ordering::Relaxed),
        "expired_removed_here": s.expired_removed.load(Ordering::Relaxed),
        "last_minute": last_minute_json(),
    })
}

async fn status_json(State(s): AppState) -> Json<Value> {
    Json(status_value(&s).await)
}

fn fmt_ms(ms: Option<i64>) -> String {
    match ms {
        None => "never".into(),
        Some(ms) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0);
            let d = ms - now;
            if d >= 0 {
                format!("in {:.1} s", d as f64 / 1000.0)
            } else {
                format!("{:.1} s ago", -d as f64 / 1000.0)
            }
        }
    }
}

async fn status_html(State(s): AppState) -> Html<String> {
    let v = status_value(&s).await;
    let str_of = |v: &Value| match v {
        Value::String(s) => escape(s),
        Value::Null => "none".into(),
        other => escape(&other.to_string()),
    };
    let c = &v["cache_stats"];
    let mut body = format!(
        "<h1>Status of instance <code>{inst}</code></h1>\
         <table><tr><td>database</td><td>{db}</td></tr>\
         <tr><td>cache</td><td>{cache}</td></tr>\
         <tr><td>live sessions</td><td id=\"sessions\">{sessions}</td></tr>\
         <tr><td>cache hits / misses / errors</td><td id=\"cache\">{h} / {m} / {e}</td></tr>\
         <tr><td>leader (lease \"{LEADER_LEASE}\")</td><td id=\"leader\">{lh} (token {lt}){me}</td></tr>",
        inst = str_of(&v["instance"]),
        db = str_of(&v["database"]),
        cache = str_of(&v["cache"]),
        sessions = str_of(&v["sessions"]),
        h = c["hits"],
        m = c["misses"],
        e = c["errors"],
        lh = str_of(&v["leader"]["holder"]),
        lt = str_of(&v["leader"]["token"]),
        me = if v["this_instance_is_leader"] == Value::Bool(true) {
            " &mdash; this instance"
        } else {
            ""
        },
    );
    let n = &v["near_cache"];
    if !n.is_null() {
        body.push_str(&format!(
            "<tr><td>near cache: channel / local hits / shared hits / invalidations received</td>\
             <td id=\"near\">{ch} / {lh} / {sh} / {inv}</td></tr>",
            ch = str_of(&n["channel"]),
            lh = n["local_hits"],
            sh = n["shared_hits"],
            inv = n["invalidations"],
        ));
    }
    if let Value::Array(tasks) = &v["tasks"] {
        for t in tasks {
            let lr = &t["last_run"];
            body.push_str(&format!(
                "<tr><td>task {name}</td><td>last run {last} by {holder} (token {token}), next due {next}</td></tr>",
                name = str_of(&t["name"]),
                last = fmt_ms(lr["started_at_ms"].as_i64()),
                holder = str_of(&lr["holder"]),
                token = str_of(&lr["token"]),
                next = fmt_ms(t["next_due_ms"].as_i64()),
            ));
        }
    }
    body.push_str(&format!(
        "<tr><td>expiry runs here</td><td>{}</td></tr></table>\
         <p><a href=\"/\">home</a> &middot; <a href=\"/status.json\">status.json</a></p>",
        v["expiry_runs_here"]
    ));
    body.push_str(&chart::section(&telemetry::global().window().read()));
    page("larder status", &body)
}

/// The status page's last-minute figures, per second and overall (times in seconds).
fn last_minute_json() -> Value {
    let m = telemetry::global().window().read();
    let pct = |p: Option<window::Percentiles>| {
        p.map(|p| json!({ "count": p.count, "p50": p.p50, "p99": p.p99 }))
    };
    json!({
        "hits": m.hits,
        "misses": m.misses,
        "hit_ratio": m.hit_ratio(),
        "cache_seconds": pct(m.cache),
        "database_seconds": pct(m.database),
        "seconds": m.seconds.iter().map(|s| json!({
            "age": s.age,
            "hits": s.hits,
            "misses": s.misses,
            "cache_seconds": pct(s.cache),
            "database_seconds": pct(s.database),
        })).collect::<Vec<_>>(),
    })
}
