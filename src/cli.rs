//! The operator command line `larder` (feature `cli`), as a library so that it can be run
//! in-process.
//!
//! ```text
//! larder [--database-url URL] [--cache-url URL] [--timeout SECS] <COMMAND>
//!
//!   sessions count                      live sessions
//!   sessions sweep [--batch N]          remove expired sessions and old tombstones
//!   sessions revoke --principal NAME    log NAME out everywhere
//!   tasks status [--lease NAME]... [--task NAME]... [--every DURATION] [--from database|cache]
//!   cache ping                          put/get/delete round trip of a scratch key
//!   cache stats                         what the backend is and promises
//! ```
//!
//! `--database-url` (`LARDER_DATABASE_URL`) is `postgres://...` or `sqlite://path`;
//! `--cache-url` (`LARDER_CACHE_URL`) is any URL [`connect`](crate::connect) accepts.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> larder::Result<()> {
//! let out = larder::cli::run(["larder", "--cache-url", "memory://", "cache", "ping"]).await?;
//! assert!(out.starts_with("OK"));
//! # Ok(()) }
//! ```

use std::fmt::Write as _;
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand, ValueEnum};
use larder_cache_api::{Cache, DynBackend, Error, ErrorKind, Key, Result, Ttl};
use larder_coord::{
    Candidacy, HolderId, LeaseRecord, RunInfo, Schedule, Scheduler, SchedulerConfig, TaskSpec,
};
use larder_session_persist::{CachedStore, PgStore, SessionStore, SqliteStore, EXPIRY_TASK};

/// The parsed command line. Build it with [`parse`]; run it with [`execute`].
#[derive(Debug, Parser)]
#[command(
    name = "larder",
    version,
    about = "Operate larder sessions, periodic tasks and caches."
)]
pub struct Cli {
    /// The session database: postgres://user@host/db or sqlite://path.
    #[arg(long, env = "LARDER_DATABASE_URL", global = true, value_name = "URL")]
    database_url: Option<String>,
    /// The cache backend: memory://, redis://, rediss://, redis+cluster://, memcache://, sled://.
    #[arg(long, env = "LARDER_CACHE_URL", global = true, value_name = "URL")]
    cache_url: Option<String>,
    /// Give up after this many seconds.
    #[arg(long, global = true, default_value_t = 30, value_name = "SECS")]
    timeout: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Sessions in the database (needs --database-url).
    #[command(subcommand)]
    Sessions(SessionsCmd),
    /// Leases and periodic tasks.
    #[command(subcommand)]
    Tasks(TasksCmd),
    /// The cache backend (needs --cache-url).
    #[command(subcommand)]
    Cache(CacheCmd),
}

#[derive(Debug, Subcommand)]
enum SessionsCmd {
    /// Prints the number of live sessions.
    Count,
    /// Removes expired sessions and old tombstones; prints how many rows went.
    Sweep {
        /// Rows removed per statement.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
        batch: u32,
    },
    /// Deletes every live session of a principal ("log out everywhere"). With --cache-url,
    /// cached copies are replaced by tombstones too.
    Revoke {
        /// The principal (user) whose sessions go.
        #[arg(long, value_name = "NAME")]
        principal: String,
    },
}

#[derive(Debug, Subcommand)]
enum TasksCmd {
    /// A table of leases and periodic tasks.
    Status(StatusArgs),
}

#[derive(Debug, Args)]
struct StatusArgs {
    /// Leases to show (default: leader).
    #[arg(long = "lease", value_name = "NAME")]
    leases: Vec<String>,
    /// Periodic tasks to show (default: larder.session-expiry).
    #[arg(long = "task", value_name = "NAME")]
    tasks: Vec<String>,
    /// The tasks' interval (e.g. 60s, 5m, 1h), to compute when each is next due.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    every: Option<Duration>,
    /// The interval in milliseconds, under the name the example web app reads
    /// (`LARDER_EXPIRY_INTERVAL_MS`); `--every` wins.
    #[arg(
        long,
        env = "LARDER_EXPIRY_INTERVAL_MS",
        value_name = "MS",
        hide = true
    )]
    expiry_interval_ms: Option<u64>,
    /// Where the coordination records live (default: the database if --database-url is
    /// given, else the cache).
    #[arg(long, value_enum)]
    from: Option<Source>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Source {
    /// The `larder_kv` table of --database-url.
    Database,
    /// The backend of --cache-url.
    Cache,
}

#[derive(Debug, Subcommand)]
enum CacheCmd {
    /// Connects and does a put/get/delete round trip of a scratch key, with latencies.
    Ping,
    /// The backend's capabilities and what it cheaply tells about itself.
    Stats,
}

/// Parses a command line (the first item is the program name). `--help`, `--version` and
/// usage errors come back as a [`clap::Error`]; call its `exit()` in a binary.
pub fn parse<I, T>(args: I) -> std::result::Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    Cli::try_parse_from(args)
}

/// Parses and runs a command line; returns what the command prints. A usage error is a
/// [`ErrorKind::Config`] error carrying clap's first line.
pub async fn run<I, T>(args: I) -> Result<String>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = parse(args).map_err(|e| {
        let text = e.to_string();
        let first = text
            .lines()
            .next()
            .unwrap_or("invalid command line")
            .to_owned();
        Error::new(ErrorKind::Config, first)
    })?;
    execute(cli).await
}

/// Runs a parsed command line within its `--timeout`; returns what the command prints.
pub async fn execute(cli: Cli) -> Result<String> {
    let limit = Duration::from_secs(cli.timeout.max(1));
    match tokio::time::timeout(limit, dispatch(&cli)).await {
        Ok(r) => r,
        Err(_) => Err(Error::new(
            ErrorKind::Timeout,
            format!("gave up after {}s (--timeout)", limit.as_secs()),
        )),
    }
}

/// An error as one line: kind, message and the chain of causes, newlines folded.
pub fn one_line(e: &Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    // Display already includes the direct source; add deeper causes not yet mentioned.
    while let Some(cause) = src {
        let c = cause.to_string();
        if !s.contains(&c) {
            let _ = write!(s, ": {c}");
        }
        src = cause.source();
    }
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

async fn dispatch(cli: &Cli) -> Result<String> {
    match &cli.command {
        Command::Sessions(cmd) => sessions(cli, cmd).await,
        Command::Tasks(TasksCmd::Status(args)) => tasks_status(cli, args).await,
        Command::Cache(CacheCmd::Ping) => cache_ping(cli).await,
        Command::Cache(CacheCmd::Stats) => cache_stats(cli).await,
    }
}

fn need<'a>(value: &'a Option<String>, flag: &str, env: &str) -> Result<&'a str> {
    value.as_deref().filter(|v| !v.is_empty()).ok_or_else(|| {
        Error::new(
            ErrorKind::Config,
            format!("this command needs {flag} (or the {env} environment variable)"),
        )
    })
}

/// The authoritative session store of a database URL.
enum Db {
    Pg(PgStore),
    Sqlite(SqliteStore),
}

impl Db {
    /// Opens the database the application uses. Unlike the stores' own `connect`, this
    /// never runs migrations: pointed at the wrong database, an operator gets an error, not
    /// a new set of empty tables. (The coordination records are opened afterwards through
    /// [`connect`](crate::connect), whose schema step creates only what is missing.)
    async fn open(url: &str) -> Result<Db> {
        use sqlx::Connection as _;
        let scheme = url.split_once(':').map(|(s, _)| s.to_ascii_lowercase());
        let unreachable = |backend: &'static str, e: sqlx::Error| {
            Error::new(ErrorKind::Unavailable, "cannot connect to the database")
                .with_backend(backend)
                .with_source(e)
        };
        let missing = |backend: &'static str| {
            Error::new(
                ErrorKind::Config,
                "no larder_sessions table in this database (wrong database or schema, or the \
                 application has not run its migrations yet)",
            )
            .with_backend(backend)
        };
        let query_failed = |backend: &'static str, e: sqlx::Error| {
            Error::new(ErrorKind::Backend, "checking for the larder tables failed")
                .with_backend(backend)
                .with_source(e)
        };
        match scheme.as_deref() {
            Some("postgres" | "postgresql") => {
                // sqlx's parse errors quote pieces of the URL (maybe the password).
                let opts = sqlx::postgres::PgConnectOptions::from_str(url).map_err(|_| {
                    Error::new(
                        ErrorKind::Config,
                        format!("invalid PostgreSQL URL {}", redact(url)),
                    )
                })?;
                // One direct connection first: its error says why (the pool's only says it
                // timed out).
                let mut probe = sqlx::postgres::PgConnection::connect_with(&opts)
                    .await
                    .map_err(|e| unreachable("postgres", e))?;
                let found: Option<String> =
                    sqlx::query_scalar("SELECT to_regclass('larder_sessions')::text")
                        .fetch_one(&mut probe)
                        .await
                        .map_err(|e| query_failed("postgres", e))?;
                let _ = probe.close().await;
                if found.is_none() {
                    return Err(missing("postgres"));
                }
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(2)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_lazy_with(opts);
                Ok(Db::Pg(PgStore::from_pool(pool)))
            }
            Some("sqlite") => {
                let opts = sqlx::sqlite::SqliteConnectOptions::from_str(url)
                    .map_err(|_| {
                        Error::new(
                            ErrorKind::Config,
                            format!("invalid SQLite URL {}", redact(url)),
                        )
                    })?
                    .create_if_missing(false)
                    .busy_timeout(Duration::from_secs(10));
                let pool = sqlx::sqlite::SqlitePoolOptions::new()
                    .max_connections(2)
                    .connect_with(opts)
                    .await
                    .map_err(|e| unreachable("sqlite", e))?;
                let found: Option<String> = sqlx::query_scalar(
                    "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'larder_sessions'",
                )
                .fetch_optional(&pool)
                .await
                .map_err(|e| query_failed("sqlite", e))?;
                if found.is_none() {
                    return Err(missing("sqlite"));
                }
                Ok(Db::Sqlite(SqliteStore::from_pool(pool)))
            }
            _ => Err(Error::new(
                ErrorKind::Config,
                format!(
                    "{:?} is not a database URL (expected postgres://... or sqlite://path)",
                    redact(url)
                ),
            )),
        }
    }

    fn store(&self) -> Arc<dyn SessionStore> {
        match self {
            Db::Pg(s) => Arc::new(s.clone()),
            Db::Sqlite(s) => Arc::new(s.clone()),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Db::Pg(_) => "postgres",
            Db::Sqlite(_) => "sqlite",
        }
    }
}

/// A URL with any password replaced, for messages.
use crate::url::redact;

async fn open_cache(cli: &Cli) -> Result<DynBackend> {
    let url = need(&cli.cache_url, "--cache-url", "LARDER_CACHE_URL")?;
    crate::connect(url).await
}

async fn sessions(cli: &Cli, cmd: &SessionsCmd) -> Result<String> {
    let url = need(&cli.database_url, "--database-url", "LARDER_DATABASE_URL")?;
    let db = Db::open(url).await?;
    let store = db.store();
    match cmd {
        SessionsCmd::Count => Ok(format!("{}\n", store.count().await?)),
        SessionsCmd::Sweep { batch } => {
            let n = store.sweep(*batch).await?;
            Ok(format!("removed {n} expired session row(s)\n"))
        }
        SessionsCmd::Revoke { principal } => {
            if cli.cache_url.as_deref().is_some_and(|u| !u.is_empty()) {
                let cached = CachedStore::new(store, open_cache(cli).await?);
                let gone = cached.delete_principal(principal).await?;
                let failed = cached.pending_invalidations();
                let mut out = format!(
                    "revoked {} session(s) of {principal:?} (database and cache)\n",
                    gone.len()
                );
                if failed > 0 {
                    let _ = writeln!(
                        out,
                        "warning: {failed} cache tombstone(s) could not be written; \
                         those cached copies expire on their own (at most 10 minutes)"
                    );
                }
                Ok(out)
            } else {
                let gone = store.delete_principal(principal).await?;
                Ok(format!(
                    "revoked {} session(s) of {principal:?} (database only: pass --cache-url \
                     if the application caches sessions)\n",
                    gone.len()
                ))
            }
        }
    }
}

async fn tasks_status(cli: &Cli, args: &StatusArgs) -> Result<String> {
    let has_db = cli.database_url.as_deref().is_some_and(|u| !u.is_empty());
    let source = args.from.unwrap_or(if has_db {
        Source::Database
    } else {
        Source::Cache
    });
    let (backend, where_) = match source {
        Source::Database => {
            let url = need(&cli.database_url, "--database-url", "LARDER_DATABASE_URL")?;
            // Refuses a database without larder's tables before the store's own schema
            // step could create anything in it.
            let db = Db::open(url).await?;
            (
                crate::connect(url).await?,
                format!("{} larder_kv", db.name()),
            )
        }
        Source::Cache => {
            let b = open_cache(cli).await?;
            let name = b.capabilities().name;
            (b, format!("cache ({name})"))
        }
    };
    let cache = Cache::new(backend.clone());
    let leases = if args.leases.is_empty() {
        vec!["leader".to_owned()]
    } else {
        args.leases.clone()
    };
    let tasks = if args.tasks.is_empty() {
        vec![EXPIRY_TASK.to_owned()]
    } else {
        args.tasks.clone()
    };
    let now = now_ms();
    let mut out = format!("coordination records in {where_}, now {}\n\n", ts(now));

    let mut rows = vec![vec![
        "LEASE".to_owned(),
        "HOLDER".to_owned(),
        "TOKEN".to_owned(),
        "STATE".to_owned(),
        "ACQUIRED".to_owned(),
        "RENEWED".to_owned(),
        "LEASE MS".to_owned(),
    ]];
    for name in &leases {
        let key = Key::new(format!("larder:lease:{name}"))?;
        match cache.get::<LeaseRecord>(&key).await? {
            None => rows.push(vec![
                name.clone(),
                "-".into(),
                "-".into(),
                "never held".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ]),
            Some(r) => {
                let state = if r.released {
                    "released"
                } else if now.saturating_sub(r.renewed_at_ms) > r.lease_ms as i64 {
                    // Wall clocks of different machines: a hint, not a judgement.
                    "held? (not renewed within lease)"
                } else {
                    "held"
                };
                rows.push(vec![
                    name.clone(),
                    r.holder,
                    r.token.to_string(),
                    state.into(),
                    ts(r.acquired_at_ms),
                    ts(r.renewed_at_ms),
                    r.lease_ms.to_string(),
                ]);
            }
        }
    }
    table(&mut out, &rows);
    out.push('\n');

    // The scheduler's own status view computes "next due" exactly as the running processes
    // do; this one never claims anything (Candidacy::Never) and has no job to run.
    let schedule = args
        .every
        .or(args
            .expiry_interval_ms
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis))
        .map(Schedule::Every);
    let mut scheduler = Scheduler::new(
        backend,
        HolderId::named("larder-cli"),
        SchedulerConfig::default().candidacy(Candidacy::Never),
    )?;
    for name in &tasks {
        let spec = TaskSpec::new(
            name,
            schedule
                .clone()
                .unwrap_or(Schedule::Every(Duration::from_secs(60))),
            |_| async { Ok(()) },
        );
        scheduler = scheduler.with_task(spec)?;
    }
    let mut rows = vec![vec![
        "TASK".to_owned(),
        "TOKEN".to_owned(),
        "LAST PERIOD".to_owned(),
        "RUNNING".to_owned(),
        "LAST RUN (HOLDER TOKEN START END OUTCOME)".to_owned(),
        "NEXT DUE".to_owned(),
    ]];
    let statuses = scheduler.status().await?;
    let now = now_ms();
    for st in statuses {
        let next = match (schedule.is_some(), st.next_due_ms) {
            (false, _) => "? (pass --every)".to_owned(),
            (true, Some(t)) if t <= now => "now".to_owned(),
            (true, Some(t)) => ts(t),
            (true, None) => "-".to_owned(),
        };
        rows.push(vec![
            st.name,
            if st.last_period.is_none() && st.token == 0 {
                "-".to_owned()
            } else {
                st.token.to_string()
            },
            st.last_period.map_or("never".to_owned(), ts),
            st.running.as_ref().map_or("-".to_owned(), run_info),
            st.last_run.as_ref().map_or("-".to_owned(), run_info),
            next,
        ]);
    }
    table(&mut out, &rows);
    Ok(out)
}

fn run_info(r: &RunInfo) -> String {
    let outcome = match &r.outcome {
        None => "running".to_owned(),
        Some(Ok(())) => "ok".to_owned(),
        Some(Err(e)) => format!(
            "failed: {}",
            e.split_whitespace().collect::<Vec<_>>().join(" ")
        ),
    };
    format!(
        "{} #{} {} {} {}",
        r.holder,
        r.token,
        ts(r.started_at_ms),
        r.finished_at_ms.map_or("-".to_owned(), ts),
        outcome
    )
}

fn table(out: &mut String, rows: &[Vec<String>]) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = widths[c]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

async fn cache_ping(cli: &Cli) -> Result<String> {
    let t0 = Instant::now();
    let backend = open_cache(cli).await?;
    let connect = t0.elapsed();
    let name = backend.capabilities().name;
    let cache = Cache::new(backend);
    let key = Key::new(format!(
        "larder:cli:ping:{}:{}",
        std::process::id(),
        now_ms()
    ))?;
    let value = format!("ping {}", now_ms());
    let ttl = Ttl::from_secs(60)?;

    let t = Instant::now();
    cache.set(&key, value.as_str(), Some(ttl)).await?;
    let put = t.elapsed();
    let t = Instant::now();
    let got: Option<String> = cache.get(&key).await?;
    let get = t.elapsed();
    let t = Instant::now();
    let deleted = cache.delete(&key).await?;
    let del = t.elapsed();

    if got.as_deref() != Some(value.as_str()) {
        return Err(Error::new(
            ErrorKind::Backend,
            format!("{name}: read back {got:?} right after writing {value:?}"),
        ));
    }
    if !deleted {
        return Err(Error::new(
            ErrorKind::Backend,
            format!("{name}: the scratch key was gone before it was deleted"),
        ));
    }
    Ok(format!(
        "OK {name}: connect {}, put {}, get {}, delete {}\n",
        ms(connect),
        ms(put),
        ms(get),
        ms(del)
    ))
}

async fn cache_stats(cli: &Cli) -> Result<String> {
    let url = need(&cli.cache_url, "--cache-url", "LARDER_CACHE_URL")?;
    let backend = crate::connect(url).await?;
    let c = backend.capabilities();
    let yn = |b: bool| if b { "yes" } else { "no" };
    let mut out = String::new();
    let _ = writeln!(out, "backend            {}", c.name);
    let _ = writeln!(out, "url                {}", redact(url));
    let _ = writeln!(out, "cas                {}", yn(c.cas));
    let _ = writeln!(out, "linearizable cas   {}", yn(c.linearizable_cas));
    let _ = writeln!(out, "touch              {}", yn(c.touch));
    let _ = writeln!(out, "may evict          {}", yn(c.may_evict));
    let _ = writeln!(out, "persistent         {}", yn(c.persistent));
    let _ = writeln!(out, "shared             {}", yn(c.shared));
    let _ = writeln!(out, "ttl precision      {}", ms(c.ttl_precision));
    let _ = writeln!(out, "max value size     {} bytes", c.max_value_size);
    let _ = writeln!(
        out,
        "coordination       {}",
        match larder_coord::check_backend(&backend) {
            Ok(()) => "yes (leases and periodic tasks)".to_owned(),
            Err(e) => format!("no: {}", e.message()),
        }
    );
    let scheme = url
        .split_once("://")
        .map(|(s, _)| s.to_ascii_lowercase())
        .unwrap_or_default();
    match scheme.as_str() {
        "memory" => {
            let cfg = larder_backend_memory::MemoryBackend::from_url(url)?;
            let cfg = cfg.config();
            let _ = writeln!(out, "capacity           {} entries", cfg.max_entries);
            let _ = writeln!(out, "max bytes          {}", cfg.max_bytes);
            let _ = writeln!(
                out,
                "note               memory:// lives inside one process: this command sees a \
                 new, empty instance, not your application's (use its metrics: \
                 larder::layer::Instrumented)"
            );
        }
        "redis" | "rediss" | "redis+cluster" | "rediss+cluster" => {
            let cfg = larder_backend_redis::RedisConfig::from_url(url)?;
            let nodes: Vec<String> = cfg.nodes.iter().map(|(h, p)| format!("{h}:{p}")).collect();
            let _ = writeln!(out, "topology           {:?}", cfg.topology);
            let _ = writeln!(out, "nodes              {}", nodes.join(","));
            let _ = writeln!(out, "db                 {}", cfg.db);
            let _ = writeln!(out, "tls                {}", yn(cfg.tls));
            let _ = writeln!(out, "connect timeout    {}", ms(cfg.connect_timeout));
            let _ = writeln!(out, "response timeout   {}", ms(cfg.response_timeout));
            let t = Instant::now();
            let probe = Key::new("larder:cli:stats-probe")?;
            backend.get(&probe).await?;
            let _ = writeln!(out, "round trip         {}", ms(t.elapsed()));
            let _ = writeln!(
                out,
                "note               hit/miss counters live in the application \
                 (larder::layer::Instrumented, CachedStore::stats()); server figures: \
                 redis-cli INFO"
            );
        }
        _ => {
            let _ = writeln!(
                out,
                "note               hit/miss counters live in the application \
                 (larder::layer::Instrumented, CachedStore::stats())"
            );
        }
    }
    Ok(out)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Milliseconds since the epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC).
fn ts(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let milli = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{milli:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// `500ms`, `30s`, `5m`, `2h`, `1d`, or plain seconds.
fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 500ms, 30s, 5m, 1h)"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        "d" => Duration::from_secs(n * 86_400),
        _ => return Err(format!("unknown unit in {s:?} (ms, s, m, h, d)")),
    };
    if d.is_zero() {
        return Err("the interval must be positive".to_owned());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc() {
        assert_eq!(ts(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(ts(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(ts(1_700_000_000_000), "2023-11-14T22:13:20.000Z");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("redis://:hunter2@host:6379/0"),
            "redis://:***@host:6379/0"
        );
    }
}
