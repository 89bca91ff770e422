//! Peer session stores behind one axum app, driven over HTTP from the same process.
//!
//! One axum 0.8 app (the same handlers for every store) is served on 127.0.0.1:0 with
//! tower-sessions 0.15's `SessionManagerLayer` over each store in turn:
//!
//! * `sqlx-pg`: tower-sessions-sqlx-store's `PostgresStore` on PostgreSQL;
//! * `redis`: tower-sessions-redis-store's `RedisStore` (fred) on Redis;
//! * `caching`: tower-sessions' `CachingSessionStore`, that Redis store in front of that
//!   PostgreSQL store;
//! * `larder-pg`: larder's `TowerStore` over `PgStore`;
//! * `larder-pg+redis`: `TowerStore` over `CachedStore<PgStore>` with larder's Redis backend;
//! * `larder-pg+redis+near`: the same with a near cache (`layer::Near`) over that Redis
//!   backend, kept coherent by its Redis tracking channel, one per app instance.
//!
//! **Adapters.** The latest published peers (tower-sessions-sqlx-store 0.15,
//! tower-sessions-redis-store 0.16) implement tower-sessions-core **0.14**'s `SessionStore`;
//! none targets 0.15, which the app uses. [`Compat`] is a thin delegating adapter: it converts
//! `Record` and `Id` to the 0.14 types (identical fields) and calls the peer, nothing else.
//! Every store, larder's included, is also wrapped in [`Observed`], which only keeps the
//! first error messages so that failures under contention can be reported.
//!
//! Printed as `peers ...` lines on stdout, then a markdown table and `ratio` lines:
//!
//! 1. `read` and `write`, in [`ROUNDS`] rounds: each round runs every store, in an order
//!    rotated by one store per round, so that drift of this shared machine hits every store
//!    alike. 32 clients, each on its own session, loop `GET /read` (one session load), then
//!    `POST /write` (load, set one key, save), for 0.6 s each after 0.15 s of warm-up. The
//!    table shows per store the median over the rounds of requests/s, p50 and p99; the
//!    `ratio peers` lines the median (and range) of the per-round ratios larder / peer, for
//!    each larder store beside the fastest peer on the same servers (`sqlx-pg` for
//!    PostgreSQL alone, `caching` with Redis). The load average is printed after each round.
//!    `CPU µs app / PG` is the CPU time per request of this process (clients, app and store
//!    clients) and of the PostgreSQL server processes of the store's connections (told apart
//!    by `application_name`), from `/proc/<pid>/task/*/schedstat`: steadier than requests/s
//!    when other work shares the machine.
//! 2. Contention on ONE session, 20 clients × 50 requests each (each client sequential):
//!    `incr`, the naive `get` + 1 + `insert` of a counter, reports the final counter, lost
//!    updates (1000 − final) and errors; `own`, each client sets its own key `k<c>` to
//!    0..49, then `GET /dump`: keys whose final value is not 49 are lost. Both run through
//!    one app instance and through two (two servers, each with its own store object on the
//!    same PostgreSQL/Redis), a client's requests alternating between them. A run has a
//!    5 s budget: requests still pending at its end count as errors (timeouts).
//!
//! Settings for a profile or a quick look: `PEERS_STORES=sqlx-pg,larder-pg` (names as in the
//! table, `caching` for the caching store) runs only those stores, `PEERS_ROUNDS=n` sets the rounds, `PEERS_CONTENTION=0`
//! skips the contention runs, `PEERS_OPS=read` (or `write`) runs only those requests,
//! `PEERS_SQLX_CHECK=0` gives the sqlx peer's pool larder's setting of no liveness check
//! before each use.
//!
//! `errors` are requests without a 2xx and a whole body (timeouts included); `store errors`
//! are the errors the stores returned to tower-sessions (which answers those with a 500).
//! `GET /dump` lists the keys the app writes (tower-sessions cannot list a session's keys).
//!
//! PostgreSQL is the local server (`LARDER_TEST_POSTGRES` to change it), a fresh schema per store,
//! dropped at the end; Redis is a redis-server started on a free port. Client and servers
//! share one 2-worker runtime, so every store pays the same client cost. Every loop is
//! bounded by a count and a deadline; nothing here asserts a timing.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use larder_backend_redis::RedisBackend;
use larder_benches::harness;
use larder_cache_api::DynBackend;
use larder_near::{ChannelState, Near};
use larder_session_persist::{CachedStore, PgStore, TowerStore};
use larder_tests::server::ServerProcess;
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tower_sessions::session::{Id, Record};
use tower_sessions::session_store::{Error as StoreError, Result as StoreResult};
use tower_sessions::{CachingSessionStore, Session, SessionManagerLayer, SessionStore};
use tower_sessions_core_014 as core014;
use tower_sessions_redis_store::fred::prelude::{ClientLike, Config as FredConfig, Pool};
use tower_sessions_redis_store::RedisStore;
use tower_sessions_sqlx_store::PostgresStore;

/// Concurrent clients of the read and write runs, each on its own session.
const CLIENTS: usize = 32;
/// Rounds of the read and write runs (`PEERS_ROUNDS` to change): each round runs every
/// store once, in an order rotated by one store per round.
const ROUNDS: usize = 10;
const WARM_UP: Duration = Duration::from_millis(150);
const MEASURE: Duration = Duration::from_millis(600);
/// Bounds a client's loop even if the store answers faster than any realistic rate.
const MAX_REQUESTS_PER_CLIENT: usize = 200_000;
/// Clients and requests per client of the contention runs.
const CONTENDERS: usize = 20;
const PER_CONTENDER: usize = 50;
/// A contention run's whole budget: requests not sent by then are not sent (`sent` < 1000)
/// and requests still pending then are cut off (counted as timeouts).
const CONTENTION_BUDGET: Duration = Duration::from_secs(5);
/// Per-request timeout of the read and write runs.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections per store object, the same for every SQL pool (sqlx's default).
const PG_POOL: u32 = 10;
/// fred clients per pool, as in tower-sessions-redis-store's example.
const FRED_POOL: usize = 6;

// ---------------------------------------------------------------------------------------
// Adapters
// ---------------------------------------------------------------------------------------

/// A tower-sessions 0.15 store over a peer written for tower-sessions-core 0.14.
#[derive(Debug, Clone)]
struct Compat<S>(S);

fn to_014(r: &Record) -> core014::session::Record {
    core014::session::Record {
        id: core014::session::Id(r.id.0),
        data: r.data.clone(),
        expiry_date: r.expiry_date,
    }
}

fn from_014(r: core014::session::Record) -> Record {
    Record {
        id: Id(r.id.0),
        data: r.data,
        expiry_date: r.expiry_date,
    }
}

fn err_014(e: core014::session_store::Error) -> StoreError {
    use core014::session_store::Error as E;
    match e {
        E::Encode(s) => StoreError::Encode(s),
        E::Decode(s) => StoreError::Decode(s),
        E::Backend(s) => StoreError::Backend(s),
    }
}

#[async_trait]
impl<S: core014::SessionStore> SessionStore for Compat<S> {
    async fn create(&self, record: &mut Record) -> StoreResult<()> {
        let mut old = to_014(record);
        self.0.create(&mut old).await.map_err(err_014)?;
        // The peer may have picked another id on a collision.
        record.id = Id(old.id.0);
        Ok(())
    }

    async fn save(&self, record: &Record) -> StoreResult<()> {
        self.0.save(&to_014(record)).await.map_err(err_014)
    }

    async fn load(&self, id: &Id) -> StoreResult<Option<Record>> {
        let r = self.0.load(&core014::session::Id(id.0)).await;
        r.map(|o| o.map(from_014)).map_err(err_014)
    }

    async fn delete(&self, id: &Id) -> StoreResult<()> {
        self.0
            .delete(&core014::session::Id(id.0))
            .await
            .map_err(err_014)
    }
}

/// Store errors seen by one app instance: a count and the first few messages.
#[derive(Debug, Default)]
struct ErrorLog {
    /// A std mutex is enough: held only to push a string, never across an await.
    inner: std::sync::Mutex<(usize, Vec<String>)>,
}

impl ErrorLog {
    fn note(&self, op: &str, e: &StoreError) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.0 += 1;
        if g.1.len() < 3 {
            g.1.push(format!("{op}: {e}"));
        }
    }

    fn take(&self) -> (usize, Vec<String>) {
        std::mem::take(&mut *self.inner.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Delegates to the store and notes its errors (the same wrapper around every store).
#[derive(Debug, Clone)]
struct Observed<S> {
    inner: S,
    errors: Arc<ErrorLog>,
}

impl<S> Observed<S> {
    fn check<T>(&self, op: &str, r: StoreResult<T>) -> StoreResult<T> {
        if let Err(e) = &r {
            self.errors.note(op, e);
        }
        r
    }
}

#[async_trait]
impl<S: SessionStore> SessionStore for Observed<S> {
    async fn create(&self, record: &mut Record) -> StoreResult<()> {
        let r = self.inner.create(record).await;
        self.check("create", r)
    }

    async fn save(&self, record: &Record) -> StoreResult<()> {
        let r = self.inner.save(record).await;
        self.check("save", r)
    }

    async fn load(&self, id: &Id) -> StoreResult<Option<Record>> {
        let r = self.inner.load(id).await;
        self.check("load", r)
    }

    async fn delete(&self, id: &Id) -> StoreResult<()> {
        let r = self.inner.delete(id).await;
        self.check("delete", r)
    }
}

// ---------------------------------------------------------------------------------------
// The app
// ---------------------------------------------------------------------------------------

type Reply<T> = Result<T, StatusCode>;

fn internal<E>(_: E) -> StatusCode {
    StatusCode::INTERNAL_SERVER_ERROR
}

/// Creates the session; the response carries its cookie.
async fn login(session: Session) -> Reply<&'static str> {
    session.insert("user", "bench").await.map_err(internal)?;
    session.insert("value", "v0").await.map_err(internal)?;
    Ok("ok")
}

async fn read(session: Session) -> Reply<String> {
    let v: Option<String> = session.get("value").await.map_err(internal)?;
    v.ok_or(StatusCode::NOT_FOUND)
}

async fn write(session: Session, body: String) -> Reply<&'static str> {
    session.insert("value", body).await.map_err(internal)?;
    Ok("ok")
}

/// The read-modify-write every tower-sessions counter does.
async fn incr(session: Session) -> Reply<String> {
    let n: u64 = session.get("counter").await.map_err(internal)?.unwrap_or(0) + 1;
    session.insert("counter", n).await.map_err(internal)?;
    Ok(n.to_string())
}

async fn own(session: Session, Path((client, n)): Path<(u32, u32)>) -> Reply<&'static str> {
    session
        .insert(&format!("k{client}"), n)
        .await
        .map_err(internal)?;
    Ok("ok")
}

/// The session as JSON. tower-sessions has no call that lists a session's keys, so this
/// reads every key the app ever writes.
async fn dump(session: Session) -> Reply<Json<HashMap<String, Value>>> {
    let mut out = HashMap::new();
    let keys = ["user", "value", "counter"]
        .into_iter()
        .map(str::to_owned)
        .chain((0..CONTENDERS).map(|c| format!("k{c}")));
    for k in keys {
        if let Some(v) = session.get_value(&k).await.map_err(internal)? {
            out.insert(k, v);
        }
    }
    Ok(Json(out))
}

/// One app instance serving on a free port.
struct Instance {
    base: String,
    errors: Arc<ErrorLog>,
    server: tokio::task::JoinHandle<()>,
    /// fred pools to close at the end (their connection tasks outlive the store).
    fred: Vec<Pool>,
}

async fn serve<S: SessionStore + Clone>(store: S, fred: Vec<Pool>) -> Instance {
    let errors = Arc::new(ErrorLog::default());
    let layer = SessionManagerLayer::new(Observed {
        inner: store,
        errors: errors.clone(),
    })
    .with_secure(false);
    let app = Router::new()
        .route("/login", post(login))
        .route("/read", get(read))
        .route("/write", post(write))
        .route("/incr", post(incr))
        .route("/own/{client}/{n}", post(own))
        .route("/dump", get(dump))
        .layer(layer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the app");
    let base = format!("http://{}", listener.local_addr().expect("app address"));
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Instance {
        base,
        errors,
        server,
        fred,
    }
}

impl Instance {
    async fn stop(self) {
        self.server.abort();
        for p in self.fred {
            let _ = p.quit().await;
        }
    }
}

// ---------------------------------------------------------------------------------------
// The stores
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Kind {
    SqlxPg,
    Redis,
    Caching,
    LarderPg,
    LarderPgRedis,
    LarderNear,
}

impl Kind {
    const ALL: [Kind; 6] = [
        Kind::SqlxPg,
        Kind::Redis,
        Kind::Caching,
        Kind::LarderPg,
        Kind::LarderPgRedis,
        Kind::LarderNear,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::SqlxPg => "sqlx-pg",
            Kind::Redis => "redis",
            Kind::Caching => "caching(redis,sqlx-pg)",
            Kind::LarderPg => "larder-pg",
            Kind::LarderPgRedis => "larder-pg+redis",
            Kind::LarderNear => "larder-pg+redis+near",
        }
    }

    /// larder's stores beside the peer each is compared with: the fastest peer on the same
    /// servers (the SQL store on PostgreSQL alone; the caching store when Redis is there).
    const PAIRS: [(Kind, Kind); 3] = [
        (Kind::LarderPg, Kind::SqlxPg),
        (Kind::LarderPgRedis, Kind::Caching),
        (Kind::LarderNear, Kind::Caching),
    ];

    /// The stores `PEERS_STORES` names (comma-separated names; `caching` for the caching
    /// store), else all of them.
    fn selected() -> Vec<Kind> {
        match std::env::var("PEERS_STORES") {
            Ok(list) if !list.trim().is_empty() => {
                let names: Vec<&str> = list.split(',').map(str::trim).collect();
                Kind::ALL
                    .into_iter()
                    // `caching` names `caching(redis,sqlx-pg)`, whose comma would split.
                    .filter(|k| {
                        names.iter().any(|n| {
                            k.name() == *n
                                || k.name().strip_prefix(n).is_some_and(|r| r.starts_with('('))
                        })
                    })
                    .collect()
            }
            _ => Kind::ALL.to_vec(),
        }
    }
}

/// Where the servers are: the PostgreSQL URL and each store's schema, and Redis.
struct Env {
    pg_url: String,
    /// Each store's own fresh schema (so that no store reads a table another one bloats).
    schemas: Vec<(&'static str, String)>,
    redis_url: String,
    /// Reads `pg_stat_activity` for [`pg_cpu`].
    admin: sqlx::PgPool,
}

/// The `application_name` of the PostgreSQL connections of `kind`'s store objects, so that
/// the CPU time of their server processes can be told apart.
fn pg_application(kind: Kind) -> String {
    format!("peers {}", kind.name())
}

impl Env {
    fn schema(&self, kind: Kind) -> &str {
        self.schemas
            .iter()
            .find(|(k, _)| *k == kind.name())
            .map(|(_, s)| s.as_str())
            .expect("a schema per store")
    }
}

async fn sqlx_store(env: &Env, kind: Kind) -> PostgresStore {
    let opts: tower_sessions_sqlx_store::sqlx::postgres::PgConnectOptions =
        env.pg_url.parse().expect("postgres url");
    // `PEERS_SQLX_CHECK=0` turns off sqlx's check before each use for the peer too, to
    // see how much of a difference is that check.
    let check = std::env::var("PEERS_SQLX_CHECK").map_or(true, |v| v != "0");
    let pool = tower_sessions_sqlx_store::sqlx::postgres::PgPoolOptions::new()
        .max_connections(PG_POOL)
        .test_before_acquire(check)
        .connect_with(opts.application_name(&pg_application(kind)))
        .await
        .expect("sqlx 0.8 pool");
    PostgresStore::new(pool)
        .with_schema_name(env.schema(kind))
        .expect("schema name")
}

async fn fred_pool(env: &Env) -> Pool {
    let config = FredConfig::from_url(&env.redis_url).expect("fred config");
    let pool = Pool::new(config, None, None, None, FRED_POOL).expect("fred pool");
    // The connection tasks run in the background; `Instance::stop` quits them.
    let _connections = pool.init().await.expect("fred connects");
    pool
}

/// A larder `PgStore` with its own pool on the run's schema (migrated once in `main`), from
/// larder's pool settings as `PgStore::connect` uses them (the peer gets sqlx's defaults,
/// which is what its `PostgresStore::new(pool)` is documented with).
async fn larder_pg(env: &Env, kind: Kind) -> PgStore {
    let opts: PgConnectOptions = env.pg_url.parse().expect("postgres url");
    let pool = PgStore::pool_options()
        .max_connections(PG_POOL)
        .connect_with(
            opts.options([("search_path", env.schema(kind))])
                .application_name(&pg_application(kind)),
        )
        .await
        .expect("larder pool");
    PgStore::from_pool(pool)
}

/// A new app instance over a new store object of `kind`.
async fn instance(kind: Kind, env: &Env) -> Instance {
    match kind {
        Kind::SqlxPg => serve(Compat(sqlx_store(env, kind).await), vec![]).await,
        Kind::Redis => {
            let pool = fred_pool(env).await;
            serve(Compat(RedisStore::new(pool.clone())), vec![pool]).await
        }
        Kind::Caching => {
            let pool = fred_pool(env).await;
            let store = CachingSessionStore::new(
                Compat(RedisStore::new(pool.clone())),
                Compat(sqlx_store(env, kind).await),
            );
            serve(store, vec![pool]).await
        }
        Kind::LarderPg => {
            serve(
                TowerStore::new(Arc::new(larder_pg(env, kind).await)),
                vec![],
            )
            .await
        }
        Kind::LarderPgRedis => {
            let cache: DynBackend = Arc::new(
                RedisBackend::connect(&env.redis_url)
                    .await
                    .expect("larder redis backend"),
            );
            let store = CachedStore::new(larder_pg(env, kind).await, cache);
            serve(TowerStore::new(Arc::new(store)), vec![]).await
        }
        Kind::LarderNear => {
            let store = CachedStore::new(larder_pg(env, kind).await, near_redis(env).await);
            serve(TowerStore::new(Arc::new(store)), vec![]).await
        }
    }
}

/// A near cache over larder's Redis backend, kept coherent by its Redis tracking channel
/// (as the example web app builds it when several instances share Redis); returned once the
/// channel is up, so that the local tier is in use from the first request.
async fn near_redis(env: &Env) -> DynBackend {
    let redis = RedisBackend::connect(&env.redis_url)
        .await
        .expect("larder redis backend");
    let tracking = redis.tracking();
    let near = Near::builder(Arc::new(redis))
        .channel(tracking)
        .build()
        .expect("near cache");
    let deadline = Instant::now() + Duration::from_secs(10);
    while near.channel_state() != ChannelState::Up {
        assert!(Instant::now() < deadline, "Redis tracking never came up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Arc::new(near)
}

// ---------------------------------------------------------------------------------------
// The load
// ---------------------------------------------------------------------------------------

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(2 * CLIENTS)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("http client")
}

/// Logs in on `base`; returns the `id=...` cookie pair.
async fn new_session(client: &reqwest::Client, base: &str) -> String {
    let r = client
        .post(format!("{base}/login"))
        .send()
        .await
        .expect("login request");
    assert!(r.status().is_success(), "login: {}", r.status());
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("id="))
        .and_then(|v| v.split(';').next())
        .expect("session cookie")
        .to_owned()
}

/// Latencies and failures of a set of requests.
#[derive(Debug, Default, Clone)]
struct Tally {
    lat: Vec<Duration>,
    /// Requests without a 2xx and its whole body, timeouts included.
    errors: usize,
    /// Requests the client gave up on after `REQUEST_TIMEOUT`.
    timeouts: usize,
}

impl Tally {
    /// Sends one request, timing it until its whole body is read.
    async fn send(&mut self, req: reqwest::RequestBuilder) {
        let t = Instant::now();
        let (failed, timeout) = match req.send().await {
            Ok(r) => {
                let status_ok = r.status().is_success();
                match r.bytes().await {
                    Ok(_) => (!status_ok, false),
                    Err(e) => (true, e.is_timeout()),
                }
            }
            Err(e) => (true, e.is_timeout()),
        };
        self.lat.push(t.elapsed());
        self.errors += usize::from(failed);
        self.timeouts += usize::from(timeout);
    }

    fn merge(&mut self, o: Tally) {
        self.lat.extend(o.lat);
        self.errors += o.errors;
        self.timeouts += o.timeouts;
    }

    /// The `p` quantile of the latencies (0 when there are none); sorts them.
    fn quantile(&mut self, p: f64) -> Duration {
        self.lat.sort_unstable();
        let i = ((self.lat.len() as f64 * p) as usize).min(self.lat.len().saturating_sub(1));
        self.lat.get(i).copied().unwrap_or_default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Read,
    Write,
}

#[derive(Debug, Default, Clone, Copy)]
struct Load {
    rps: f64,
    p50: Duration,
    p99: Duration,
    requests: usize,
    errors: usize,
    timeouts: usize,
    /// CPU time of this whole process (clients, app, store clients; not the servers) per
    /// request, warm-up included: steadier than requests/s on a shared machine.
    cpu_per_request: Duration,
    /// CPU time of the PostgreSQL server processes serving this store, per request.
    pg_cpu_per_request: Duration,
}

/// CPU time used so far by the live threads of process `pid` (`/proc/<pid>/task/*/schedstat`,
/// nanoseconds; zero where that does not exist).
fn cpu_of(pid: &str) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Duration::ZERO;
    };
    let ns: u64 = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(ns)
}

fn process_cpu() -> Duration {
    cpu_of("self")
}

/// CPU time used so far by the PostgreSQL server processes of `kind`'s connections (found by
/// their `application_name`; the server runs on this machine).
async fn pg_cpu(admin: &sqlx::PgPool, kind: Kind) -> Duration {
    let pids: Vec<(i32,)> =
        sqlx::query_as("SELECT pid FROM pg_stat_activity WHERE application_name = $1")
            .bind(pg_application(kind))
            .fetch_all(admin)
            .await
            .unwrap_or_default();
    pids.iter().map(|(p,)| cpu_of(&p.to_string())).sum()
}

/// Each client loops `op` on its own session; only requests started after the warm-up
/// count.
async fn drive(client: &reqwest::Client, stand: &Stand, admin: &sqlx::PgPool, op: Op) -> Load {
    let (base, cookies) = (stand.a.base.as_str(), &stand.cookies);
    let pg_start = pg_cpu(admin, stand.kind).await;
    let cpu_start = process_cpu();
    let start = Instant::now();
    let warm_end = start + WARM_UP;
    let end = warm_end + MEASURE;
    let tasks: Vec<_> = cookies
        .iter()
        .enumerate()
        .map(|(c, cookie)| {
            let (client, base, cookie) = (client.clone(), base.to_owned(), cookie.clone());
            tokio::spawn(async move {
                let (mut warm, mut measured) = (Tally::default(), Tally::default());
                let mut n = 0usize;
                while n < MAX_REQUESTS_PER_CLIENT && Instant::now() < end {
                    let req = match op {
                        Op::Read => client.get(format!("{base}/read")),
                        Op::Write => client
                            .post(format!("{base}/write"))
                            .body(format!("v{c}-{n}")),
                    };
                    let req = req.header("cookie", &cookie);
                    if Instant::now() < warm_end {
                        warm.send(req).await;
                    } else {
                        measured.send(req).await;
                    }
                    n += 1;
                }
                (measured, n, Instant::now())
            })
        })
        .collect();
    let (mut all, mut last, mut sent) = (Tally::default(), warm_end, 0);
    for t in tasks {
        let (tally, n, done) = t.await.expect("client task");
        all.merge(tally);
        sent += n;
        last = last.max(done);
    }
    let cpu = process_cpu().saturating_sub(cpu_start);
    let pg = pg_cpu(admin, stand.kind).await.saturating_sub(pg_start);
    let sent = u32::try_from(sent.max(1)).unwrap_or(u32::MAX);
    Load {
        cpu_per_request: cpu / sent,
        pg_cpu_per_request: pg / sent,
        rps: all.lat.len() as f64 / last.duration_since(warm_end).as_secs_f64().max(1e-9),
        p50: all.quantile(0.50),
        p99: all.quantile(0.99),
        requests: all.lat.len(),
        errors: all.errors,
        timeouts: all.timeouts,
    }
}

#[derive(Debug, Clone, Copy)]
enum Race {
    /// `POST /incr`: get + 1 + insert of one counter.
    Incr,
    /// `POST /own/{c}/{n}`: each client its own key.
    Own,
}

impl Race {
    fn name(self) -> &'static str {
        match self {
            Race::Incr => "incr",
            Race::Own => "own",
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Contention {
    sent: usize,
    errors: usize,
    timeouts: usize,
    /// Lost updates (incr: 1000 − final counter) or lost keys (own: keys not at 49);
    /// `None` if the final `GET /dump` failed.
    lost: Option<usize>,
    /// The final counter (incr only).
    last: Option<u64>,
    p50: Duration,
    max: Duration,
    secs: f64,
}

/// `CONTENDERS` clients × `PER_CONTENDER` requests on one new session; client `c`'s request
/// `n` goes to `bases[(c + n) % bases.len()]`.
async fn contend(client: &reqwest::Client, bases: &[String], race: Race) -> Contention {
    let cookie = new_session(client, &bases[0]).await;
    let start = Instant::now();
    let deadline = start + CONTENTION_BUDGET;
    let tasks: Vec<_> = (0..CONTENDERS)
        .map(|c| {
            let (client, bases, cookie) = (client.clone(), bases.to_vec(), cookie.clone());
            tokio::spawn(async move {
                let mut tally = Tally::default();
                for n in 0..PER_CONTENDER {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    let base = &bases[(c + n) % bases.len()];
                    let url = match race {
                        Race::Incr => format!("{base}/incr"),
                        Race::Own => format!("{base}/own/{c}/{n}"),
                    };
                    let req = client.post(url).header("cookie", &cookie).timeout(left);
                    tally.send(req).await;
                }
                tally
            })
        })
        .collect();
    let mut all = Tally::default();
    for t in tasks {
        all.merge(t.await.expect("contention task"));
    }
    let mut out = Contention {
        sent: all.lat.len(),
        errors: all.errors,
        timeouts: all.timeouts,
        p50: all.quantile(0.5),
        max: all.quantile(1.0),
        secs: start.elapsed().as_secs_f64(),
        ..Contention::default()
    };
    let dump: Option<HashMap<String, Value>> = match client
        .get(format!("{}/dump", bases[0]))
        .header("cookie", &cookie)
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => r
            .bytes()
            .await
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok()),
        _ => None,
    };
    if let Some(d) = dump {
        match race {
            Race::Incr => {
                let last = d.get("counter").and_then(Value::as_u64).unwrap_or(0);
                out.last = Some(last);
                out.lost = Some((CONTENDERS * PER_CONTENDER).saturating_sub(last as usize));
            }
            Race::Own => {
                let want = (PER_CONTENDER - 1) as u64;
                let lost = (0..CONTENDERS)
                    .filter(|c| d.get(&format!("k{c}")).and_then(Value::as_u64) != Some(want))
                    .count();
                out.lost = Some(lost);
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// The rounds, and the report
// ---------------------------------------------------------------------------------------

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The median of `v` (0 when empty); sorts it.
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// The 1-, 5- and 15-minute load averages as `/proc/loadavg` shows them (`?` elsewhere).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".to_owned())
}

/// One store under test: its first app instance (serving every round) and the sessions of
/// the read and write clients.
struct Stand {
    kind: Kind,
    a: Instance,
    cookies: Vec<String>,
    reads: Vec<Load>,
    writes: Vec<Load>,
}

impl Stand {
    async fn new(kind: Kind, env: &Env, client: &reqwest::Client) -> Stand {
        let a = instance(kind, env).await;
        let mut cookies = Vec::with_capacity(CLIENTS);
        for _ in 0..CLIENTS {
            cookies.push(new_session(client, &a.base).await);
        }
        Stand {
            kind,
            a,
            cookies,
            reads: Vec::new(),
            writes: Vec::new(),
        }
    }

    /// The median over the rounds of requests/s, p50 and p99, and all the errors.
    fn summary(loads: &[Load]) -> Load {
        let pick = |f: &dyn Fn(&Load) -> f64| median(&mut loads.iter().map(f).collect::<Vec<_>>());
        Load {
            rps: pick(&|l| l.rps),
            p50: Duration::from_secs_f64(pick(&|l| l.p50.as_secs_f64())),
            p99: Duration::from_secs_f64(pick(&|l| l.p99.as_secs_f64())),
            requests: loads.iter().map(|l| l.requests).sum(),
            errors: loads.iter().map(|l| l.errors).sum(),
            timeouts: loads.iter().map(|l| l.timeouts).sum(),
            cpu_per_request: Duration::from_secs_f64(pick(&|l| l.cpu_per_request.as_secs_f64())),
            pg_cpu_per_request: Duration::from_secs_f64(pick(&|l| {
                l.pg_cpu_per_request.as_secs_f64()
            })),
        }
    }
}

fn print_load(name: &str, what: &str, round: usize, l: &Load) {
    println!(
        "peers {name:<22} {what:<5} round {round}  {CLIENTS} clients  {:>8.0} req/s  \
         p50 {:>6.2} ms  p99 {:>6.2} ms  CPU µs/req: this process {:>4.0}, PostgreSQL {:>4.0}  \
         requests {}  errors {} (timeouts {})",
        l.rps,
        ms(l.p50),
        ms(l.p99),
        l.cpu_per_request.as_secs_f64() * 1e6,
        l.pg_cpu_per_request.as_secs_f64() * 1e6,
        l.requests,
        l.errors,
        l.timeouts
    );
}

/// Reads then writes on every stand, `rounds` times, the order rotated by one stand per
/// round so that no store always runs first or right after the same one.
async fn run_rounds(
    client: &reqwest::Client,
    admin: &sqlx::PgPool,
    stands: &mut [Stand],
    rounds: usize,
    ops: &[Op],
) {
    let n = stands.len();
    for round in 0..rounds {
        for i in 0..n {
            let s = &mut stands[(i + round) % n];
            for &op in ops {
                let load = drive(client, s, admin, op).await;
                match op {
                    Op::Read => {
                        print_load(s.kind.name(), "read", round, &load);
                        s.reads.push(load);
                    }
                    Op::Write => {
                        print_load(s.kind.name(), "write", round, &load);
                        s.writes.push(load);
                    }
                }
            }
        }
        println!("peers load average after round {round}: {}", load_average());
    }
}

/// larder / peer per round for each pair present, then the median of those ratios (and
/// their range), printed as `ratio` lines.
fn print_ratios(stands: &[Stand]) {
    let find = |k: Kind| stands.iter().find(|s| s.kind.name() == k.name());
    for (larder, peer) in Kind::PAIRS {
        let (Some(l), Some(p)) = (find(larder), find(peer)) else {
            continue;
        };
        for (what, lv, pv) in [
            ("read", &l.reads, &p.reads),
            ("write", &l.writes, &p.writes),
        ] {
            let per = |f: fn(&Load) -> Duration| {
                let mut r: Vec<f64> = lv
                    .iter()
                    .zip(pv)
                    // A side that used (next to) no CPU there has no ratio.
                    .filter(|(_, b)| f(b) >= Duration::from_micros(1))
                    .map(|(a, b)| f(a).as_secs_f64() / f(b).as_secs_f64())
                    .collect();
                if r.is_empty() {
                    "–".to_owned()
                } else {
                    format!("{:.3}", median(&mut r))
                }
            };
            let mut r: Vec<f64> = lv
                .iter()
                .zip(pv)
                .map(|(a, b)| a.rps / b.rps.max(1e-9))
                .collect();
            let each = r.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>();
            let med = median(&mut r);
            println!(
                "ratio peers {what:<5} {:>22} / {:<22} median {med:.3}  range {:.2}–{:.2}  \
                 per round [{}]",
                larder.name(),
                peer.name(),
                r.first().copied().unwrap_or(0.0),
                r.last().copied().unwrap_or(0.0),
                each.join(" ")
            );
            println!(
                "ratio peers {what:<5} {:>22} / {:<22} CPU per request, median: this process \
                 {}, PostgreSQL {}",
                larder.name(),
                peer.name(),
                per(|l| l.cpu_per_request),
                per(|l| l.pg_cpu_per_request)
            );
        }
    }
}

/// The contention results of one store: incr then own, each through one and two instances.
struct Races {
    runs: [(Race, usize, Contention); 4],
    /// Errors the store returned to tower-sessions over the whole run, both instances.
    store_errors: usize,
}

/// The four contention runs on `stand`, with a second instance (its own store object)
/// started for the two-instance runs and stopped after.
async fn run_races(client: &reqwest::Client, stand: &Stand, env: &Env) -> Races {
    let b = instance(stand.kind, env).await;
    let name = stand.kind.name();
    let one = [stand.a.base.clone()];
    let two = [stand.a.base.clone(), b.base.clone()];
    let mut runs = [(Race::Incr, 1, Contention::default()); 4];
    for (i, (race, bases)) in [
        (Race::Incr, &one[..]),
        (Race::Incr, &two[..]),
        (Race::Own, &one[..]),
        (Race::Own, &two[..]),
    ]
    .into_iter()
    .enumerate()
    {
        let c = contend(client, bases, race).await;
        runs[i] = (race, bases.len(), c);
        let lost = c.lost.map_or("?".to_owned(), |l| l.to_string());
        let detail = match race {
            Race::Incr => format!(
                "final {}  lost updates {lost}",
                c.last.map_or("?".to_owned(), |v| v.to_string())
            ),
            Race::Own => format!("lost keys {lost}/{CONTENDERS}"),
        };
        println!(
            "peers {name:<22} {:<5} {} instance(s)  {CONTENDERS}x{PER_CONTENDER} on one session  \
             sent {}  {detail}  errors {} (timeouts {})  p50 {:.2} ms  max {:.0} ms  ({:.2} s)",
            race.name(),
            bases.len(),
            c.sent,
            c.errors,
            c.timeouts,
            ms(c.p50),
            ms(c.max),
            c.secs
        );
    }
    let mut store_errors = 0;
    for (which, inst) in [("a", &stand.a), ("b", &b)] {
        let (n, first) = inst.errors.take();
        store_errors += n;
        for m in first {
            println!("peers {name:<22} store error (instance {which}, {n} in all): {m}");
        }
    }
    b.stop().await;
    Races { runs, store_errors }
}

fn table(stands: &[Stand], races: &[Option<Races>]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| store | read req/s | read p50 / p99 ms | read CPU µs app / PG | write req/s | \
         write p50 / p99 ms | write CPU µs app / PG | \
         incr lost of 1000, 1 / 2 inst | own lost keys of {CONTENDERS}, 1 / 2 inst | \
         HTTP errors | store errors |"
    );
    let _ = writeln!(t, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for (s, r) in stands.iter().zip(races) {
        let (read, write) = (Stand::summary(&s.reads), Stand::summary(&s.writes));
        let lost = |i: usize| {
            r.as_ref().map_or("–".to_owned(), |r| {
                r.runs[i].2.lost.map_or("?".to_owned(), |l| l.to_string())
            })
        };
        let http_errors = read.errors
            + write.errors
            + r.as_ref()
                .map_or(0, |r| r.runs.iter().map(|x| x.2.errors).sum::<usize>());
        let _ = writeln!(
            t,
            "| {} | {:.0} | {:.2} / {:.2} | {:.0} / {:.0} | {:.0} | {:.2} / {:.2} | {:.0} / {:.0} | \
             {} / {} | {} / {} | {} | {} |",
            s.kind.name(),
            read.rps,
            ms(read.p50),
            ms(read.p99),
            read.cpu_per_request.as_secs_f64() * 1e6,
            read.pg_cpu_per_request.as_secs_f64() * 1e6,
            write.rps,
            ms(write.p50),
            ms(write.p99),
            write.cpu_per_request.as_secs_f64() * 1e6,
            write.pg_cpu_per_request.as_secs_f64() * 1e6,
            lost(0),
            lost(1),
            lost(2),
            lost(3),
            http_errors,
            r.as_ref().map_or("–".to_owned(), |r| r.store_errors.to_string()),
        );
    }
    t
}

fn main() {
    // `cargo bench --no-run` builds; `--list`/`--test` (cargo test --benches) do not run it.
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let kinds = Kind::selected();
    assert!(!kinds.is_empty(), "PEERS_STORES names no store");
    let rounds = std::env::var("PEERS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(ROUNDS)
        .max(1);
    let contention = std::env::var("PEERS_CONTENTION").map_or(true, |v| v != "0");
    let ops = match std::env::var("PEERS_OPS").as_deref() {
        Ok("read") => vec![Op::Read],
        Ok("write") => vec![Op::Write],
        _ => vec![Op::Read, Op::Write],
    };
    let redis = ServerProcess::redis();
    let rt = harness::multi_thread();
    rt.block_on(async {
        // A fresh schema per store with larder's tables; the peer's table goes into the
        // schemas of the peers that use it.
        let mut schemas = Vec::new();
        for kind in &kinds {
            let (migrated, schema) = larder_tests::db::pg_store().await;
            drop(migrated);
            schemas.push((kind.name(), schema));
        }
        let env = Env {
            pg_url: larder_tests::db::postgres_url(),
            schemas,
            redis_url: format!("redis://{}", redis.addr()),
            admin: PgPoolOptions::new()
                .max_connections(1)
                .connect(&larder_tests::db::postgres_url())
                .await
                .expect("admin connection"),
        };
        for kind in &kinds {
            if matches!(kind, Kind::SqlxPg | Kind::Caching) {
                sqlx_store(&env, *kind)
                    .await
                    .migrate()
                    .await
                    .expect("tower-sessions-sqlx-store migration");
            }
        }
        println!("peers load average at start: {}", load_average());
        let client = http_client();
        let mut stands = Vec::new();
        for kind in kinds {
            stands.push(Stand::new(kind, &env, &client).await);
        }
        run_rounds(&client, &env.admin, &mut stands, rounds, &ops).await;
        let mut races = Vec::new();
        for s in &stands {
            races.push(if contention {
                Some(run_races(&client, s, &env).await)
            } else {
                None
            });
        }
        println!("peers load average at end: {}", load_average());
        println!(
            "\nMedians over {rounds} rounds ({CLIENTS} clients, {} ms each after {} ms of \
             warm-up):\n\n{}",
            MEASURE.as_millis(),
            WARM_UP.as_millis(),
            table(&stands, &races)
        );
        print_ratios(&stands);
        drop(client);
        for s in stands {
            s.a.stop().await;
        }
        for (_, schema) in &env.schemas {
            let drop_schema = format!("DROP SCHEMA {schema} CASCADE");
            if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(drop_schema))
                .execute(&env.admin)
                .await
            {
                eprintln!("note: could not drop schema {schema}: {e}");
            }
        }
    });
    drop(redis);
}
