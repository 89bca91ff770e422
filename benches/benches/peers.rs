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
//! * `larder-pg+redis`: `TowerStore` over `CachedStore<PgStore>` with larder's Redis backend.
//!
//! **Adapters.** The latest published peers (tower-sessions-sqlx-store 0.15,
//! tower-sessions-redis-store 0.16) implement tower-sessions-core **0.14**'s `SessionStore`;
//! none targets 0.15, which the app uses. [`Compat`] is a thin delegating adapter: it converts
//! `Record` and `Id` to the 0.14 types (identical fields) and calls the peer, nothing else.
//! Every store, larder's included, is also wrapped in [`Observed`], which only keeps the
//! first error messages so that failures under contention can be reported.
//!
//! Per store, printed as `peers ...` lines on stdout, then a markdown table:
//!
//! 1. `read`: 32 clients, each on its own session, loop `GET /read` (one session load) for
//!    3 s after a 0.5 s warm-up; requests/s, p50/p99 latency, non-2xx responses.
//! 2. `write`: the same with `POST /write` (load, set one key, save).
//! 3. Contention on ONE session, 20 clients × 50 requests each (each client sequential):
//!    `incr`, the naive `get` + 1 + `insert` of a counter, reports the final counter, lost
//!    updates (1000 − final) and errors; `own`, each client sets its own key `k<c>` to
//!    0..49, then `GET /dump`: keys whose final value is not 49 are lost. Both run through
//!    one app instance and through two (two servers, each with its own store object on the
//!    same PostgreSQL/Redis), a client's requests alternating between them.
//!
//! PostgreSQL is the local server (`LARDER_TEST_POSTGRES` to change it) on a fresh schema,
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
const WARM_UP: Duration = Duration::from_millis(500);
const MEASURE: Duration = Duration::from_secs(3);
/// Bounds a client's loop even if the store answers faster than any realistic rate.
const MAX_REQUESTS_PER_CLIENT: usize = 200_000;
/// Clients and requests per client of the contention runs.
const CONTENDERS: usize = 20;
const PER_CONTENDER: usize = 50;
/// A contention run stops sending at this deadline (reported as fewer requests sent).
const CONTENTION_DEADLINE: Duration = Duration::from_secs(4);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
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
}

impl Kind {
    const ALL: [Kind; 5] = [
        Kind::SqlxPg,
        Kind::Redis,
        Kind::Caching,
        Kind::LarderPg,
        Kind::LarderPgRedis,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::SqlxPg => "sqlx-pg",
            Kind::Redis => "redis",
            Kind::Caching => "caching(redis,sqlx-pg)",
            Kind::LarderPg => "larder-pg",
            Kind::LarderPgRedis => "larder-pg+redis",
        }
    }
}

/// Where the servers are: the PostgreSQL URL and the fresh schema, and Redis.
struct Env {
    pg_url: String,
    schema: String,
    redis_url: String,
}

async fn sqlx_store(env: &Env) -> PostgresStore {
    let pool = tower_sessions_sqlx_store::sqlx::postgres::PgPoolOptions::new()
        .max_connections(PG_POOL)
        .connect(&env.pg_url)
        .await
        .expect("sqlx 0.8 pool");
    PostgresStore::new(pool)
        .with_schema_name(&env.schema)
        .expect("schema name")
}

async fn fred_pool(env: &Env) -> Pool {
    let config = FredConfig::from_url(&env.redis_url).expect("fred config");
    let pool = Pool::new(config, None, None, None, FRED_POOL).expect("fred pool");
    // The connection tasks run in the background; `Instance::stop` quits them.
    let _connections = pool.init().await.expect("fred connects");
    pool
}

/// A larder `PgStore` with its own pool on the run's schema (migrated once in `main`).
async fn larder_pg(env: &Env) -> PgStore {
    let opts: PgConnectOptions = env.pg_url.parse().expect("postgres url");
    let pool = PgPoolOptions::new()
        .max_connections(PG_POOL)
        .connect_with(opts.options([("search_path", env.schema.as_str())]))
        .await
        .expect("larder pool");
    PgStore::from_pool(pool)
}

/// A new app instance over a new store object of `kind`.
async fn instance(kind: Kind, env: &Env) -> Instance {
    match kind {
        Kind::SqlxPg => serve(Compat(sqlx_store(env).await), vec![]).await,
        Kind::Redis => {
            let pool = fred_pool(env).await;
            serve(Compat(RedisStore::new(pool.clone())), vec![pool]).await
        }
        Kind::Caching => {
            let pool = fred_pool(env).await;
            let store = CachingSessionStore::new(
                Compat(RedisStore::new(pool.clone())),
                Compat(sqlx_store(env).await),
            );
            serve(store, vec![pool]).await
        }
        Kind::LarderPg => serve(TowerStore::new(Arc::new(larder_pg(env).await)), vec![]).await,
        Kind::LarderPgRedis => {
            let cache: DynBackend = Arc::new(
                RedisBackend::connect(&env.redis_url)
                    .await
                    .expect("larder redis backend"),
            );
            let store = CachedStore::new(larder_pg(env).await, cache);
            serve(TowerStore::new(Arc::new(store)), vec![]).await
        }
    }
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

/// Sends one request; whether it got a 2xx with its whole body.
async fn ok(req: reqwest::RequestBuilder) -> bool {
    match req.send().await {
        Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
        Err(_) => false,
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
}

/// Each client loops `op` on its own session; only requests started after the warm-up
/// count.
async fn drive(client: &reqwest::Client, base: &str, cookies: &[String], op: Op) -> Load {
    let start = Instant::now();
    let warm_end = start + WARM_UP;
    let end = warm_end + MEASURE;
    let tasks: Vec<_> = cookies
        .iter()
        .enumerate()
        .map(|(c, cookie)| {
            let (client, base, cookie) = (client.clone(), base.to_owned(), cookie.clone());
            tokio::spawn(async move {
                let (mut lat, mut errors) = (Vec::with_capacity(8192), 0usize);
                let mut n = 0usize;
                while n < MAX_REQUESTS_PER_CLIENT && Instant::now() < end {
                    let req = match op {
                        Op::Read => client.get(format!("{base}/read")),
                        Op::Write => client
                            .post(format!("{base}/write"))
                            .body(format!("v{c}-{n}")),
                    };
                    let t = Instant::now();
                    let good = ok(req.header("cookie", &cookie)).await;
                    if t >= warm_end {
                        lat.push(t.elapsed());
                        errors += usize::from(!good);
                    }
                    n += 1;
                }
                (lat, errors, Instant::now())
            })
        })
        .collect();
    let (mut lat, mut errors, mut last) = (Vec::new(), 0, warm_end);
    for t in tasks {
        let (l, e, done) = t.await.expect("client task");
        lat.extend(l);
        errors += e;
        last = last.max(done);
    }
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Load {
        rps: lat.len() as f64 / last.duration_since(warm_end).as_secs_f64().max(1e-9),
        p50: pct(0.50),
        p99: pct(0.99),
        requests: lat.len(),
        errors,
    }
}

#[derive(Debug, Clone, Copy)]
enum Race {
    /// `POST /incr`: get + 1 + insert of one counter.
    Incr,
    /// `POST /own/{c}/{n}`: each client its own key.
    Own,
}

#[derive(Debug, Default, Clone, Copy)]
struct Contention {
    sent: usize,
    errors: usize,
    /// Lost updates (incr: 1000 − final counter) or lost keys (own: keys not at 49);
    /// `None` if the final `GET /dump` failed.
    lost: Option<usize>,
    /// The final counter (incr only).
    last: Option<u64>,
    secs: f64,
}

/// `CONTENDERS` clients × `PER_CONTENDER` requests on one new session; client `c`'s request
/// `n` goes to `bases[(c + n) % bases.len()]`.
async fn contend(client: &reqwest::Client, bases: &[String], race: Race) -> Contention {
    let cookie = new_session(client, &bases[0]).await;
    let start = Instant::now();
    let deadline = start + CONTENTION_DEADLINE;
    let tasks: Vec<_> = (0..CONTENDERS)
        .map(|c| {
            let (client, bases, cookie) = (client.clone(), bases.to_vec(), cookie.clone());
            tokio::spawn(async move {
                let (mut sent, mut errors) = (0usize, 0usize);
                for n in 0..PER_CONTENDER {
                    if Instant::now() >= deadline {
                        break;
                    }
                    let base = &bases[(c + n) % bases.len()];
                    let url = match race {
                        Race::Incr => format!("{base}/incr"),
                        Race::Own => format!("{base}/own/{c}/{n}"),
                    };
                    sent += 1;
                    errors += usize::from(!ok(client.post(url).header("cookie", &cookie)).await);
                }
                (sent, errors)
            })
        })
        .collect();
    let mut out = Contention::default();
    for t in tasks {
        let (s, e) = t.await.expect("contention task");
        out.sent += s;
        out.errors += e;
    }
    out.secs = start.elapsed().as_secs_f64();
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
// One store, and the report
// ---------------------------------------------------------------------------------------

struct Row {
    kind: Kind,
    read: Load,
    write: Load,
    /// incr then own, each through one and two instances.
    races: [(Race, usize, Contention); 4],
    store_errors: usize,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn run_store(kind: Kind, env: &Env) -> Row {
    let started = Instant::now();
    let a = instance(kind, env).await;
    let b = instance(kind, env).await;
    let client = http_client();
    let mut cookies = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        cookies.push(new_session(&client, &a.base).await);
    }
    let name = kind.name();
    let read = drive(&client, &a.base, &cookies, Op::Read).await;
    let write = drive(&client, &a.base, &cookies, Op::Write).await;
    for (what, l) in [("read", read), ("write", write)] {
        println!(
            "peers {name:<24} {what:<5} {CLIENTS} clients  {:>8.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  \
             requests {}  errors {}",
            l.rps,
            ms(l.p50),
            ms(l.p99),
            l.requests,
            l.errors
        );
    }
    let one = [a.base.clone()];
    let two = [a.base.clone(), b.base.clone()];
    let mut races = [(Race::Incr, 1, Contention::default()); 4];
    for (i, (race, bases)) in [
        (Race::Incr, &one[..]),
        (Race::Incr, &two[..]),
        (Race::Own, &one[..]),
        (Race::Own, &two[..]),
    ]
    .into_iter()
    .enumerate()
    {
        let c = contend(&client, bases, race).await;
        races[i] = (race, bases.len(), c);
        let lost = c.lost.map_or("?".to_owned(), |l| l.to_string());
        let detail = match race {
            Race::Incr => format!(
                "final {}  lost updates {lost}",
                c.last.map_or("?".to_owned(), |v| v.to_string())
            ),
            Race::Own => format!("lost keys {lost}/{CONTENDERS}"),
        };
        println!(
            "peers {name:<24} {:<5} {} instance(s)  {CONTENDERS}x{PER_CONTENDER} on one session  \
             sent {}  {detail}  errors {}  ({:.2} s)",
            match race {
                Race::Incr => "incr",
                Race::Own => "own",
            },
            bases.len(),
            c.sent,
            c.errors,
            c.secs
        );
    }
    let mut store_errors = 0;
    for (which, inst) in [("a", &a), ("b", &b)] {
        let (n, first) = inst.errors.take();
        store_errors += n;
        for m in first {
            println!("peers {name:<24} store error (instance {which}, {n} in all): {m}");
        }
    }
    drop(client);
    a.stop().await;
    b.stop().await;
    eprintln!(
        "peers {name} done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Row {
        kind,
        read,
        write,
        races,
        store_errors,
    }
}

fn table(rows: &[Row]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| store | read req/s | read p50 / p99 ms | write req/s | write p50 / p99 ms | \
         incr lost / errors, 1 inst | incr lost / errors, 2 inst | \
         own lost keys / errors, 1 inst | own lost keys / errors, 2 inst | store errors |"
    );
    let _ = writeln!(t, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for r in rows {
        let race = |i: usize| {
            let c = r.races[i].2;
            let lost = c.lost.map_or("?".to_owned(), |l| l.to_string());
            let of = match r.races[i].0 {
                Race::Incr => CONTENDERS * PER_CONTENDER,
                Race::Own => CONTENDERS,
            };
            format!("{lost}/{of} / {}", c.errors)
        };
        let _ = writeln!(
            t,
            "| {} | {:.0} | {:.2} / {:.2} | {:.0} | {:.2} / {:.2} | {} | {} | {} | {} | {} |",
            r.kind.name(),
            r.read.rps,
            ms(r.read.p50),
            ms(r.read.p99),
            r.write.rps,
            ms(r.write.p50),
            ms(r.write.p99),
            race(0),
            race(1),
            race(2),
            race(3),
            r.store_errors
        );
    }
    t
}

fn main() {
    // `cargo bench --no-run` builds; `--list`/`--test` (cargo test --benches) do not run it.
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let redis = ServerProcess::redis();
    let rt = harness::multi_thread();
    rt.block_on(async {
        // A fresh schema with larder's tables; the peer's table goes into the same schema.
        let (migrated, schema) = larder_tests::db::pg_store().await;
        drop(migrated);
        let env = Env {
            pg_url: larder_tests::db::postgres_url(),
            schema,
            redis_url: format!("redis://{}", redis.addr()),
        };
        sqlx_store(&env)
            .await
            .migrate()
            .await
            .expect("tower-sessions-sqlx-store migration");
        let mut rows = Vec::new();
        for kind in Kind::ALL {
            rows.push(run_store(kind, &env).await);
        }
        println!("\n{}", table(&rows));
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(&env.pg_url)
            .await
            .expect("admin connection");
        let drop_schema = format!("DROP SCHEMA {} CASCADE", env.schema);
        if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(drop_schema))
            .execute(&admin)
            .await
        {
            eprintln!("note: could not drop schema {}: {e}", env.schema);
        }
    });
    drop(redis);
}
