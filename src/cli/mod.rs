//! The operator command line `larder` (feature `cli`), as a library so that it can be run
//! in-process.
//!
//! ```text
//! larder [--database-url URL] [--cache-url URL] [--timeout SECS] <COMMAND>
//!
//!   sessions count                      live sessions
//!   sessions sweep [--batch N]          remove expired sessions and old tombstones
//!   sessions revoke --principal NAME    log NAME out everywhere
//!   tasks status [--lease NAME]... [--task NAME]... [--every DURATION | --schedule SCHEDULE]
//!                [--from database|cache]
//!   tasks pause NAME [--by WHO]         stop claiming periods of NAME everywhere
//!   tasks resume NAME                   claim periods of NAME again
//!   tasks run NAME [--request-id ID] [--force] [--by WHO]
//!                                       run NAME once now, across the deployment
//!   tasks history NAME [--json]         the last runs of NAME that ended
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
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use larder_cache_api::{DynBackend, Error, ErrorKind, Result};

mod cache;
mod render;
mod sessions;
mod tasks;

/// The parsed command line. Build it with [`parse`]; run it with [`execute`].
#[derive(Debug, Parser)]
#[command(
    name = "larder",
    version,
    about = "Operate larder sessions, periodic tasks and caches."
)]
pub struct Cli {
    // Values from the environment are never shown by --help: a URL may carry a password.
    /// The session database: postgres://user@host/db or sqlite://path.
    #[arg(
        long,
        env = "LARDER_DATABASE_URL",
        hide_env_values = true,
        global = true,
        value_name = "URL"
    )]
    database_url: Option<String>,
    /// The cache backend, by any URL `larder::connect` knows (`larder cache stats` on an
    /// unknown scheme lists them).
    #[arg(
        long,
        env = "LARDER_CACHE_URL",
        hide_env_values = true,
        global = true,
        value_name = "URL"
    )]
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
    /// Pauses a task in every process: no period of it is claimed until it is resumed
    /// (runs in progress go on). Idempotent.
    Pause(PauseArgs),
    /// Resumes a paused task in every process: its next period is claimed as usual.
    /// Idempotent.
    Resume(TaskArgs),
    /// Runs a task once now, across the deployment: a process claims it within its
    /// schedulers' request check (5 s by default), after the run in progress unless the task
    /// allows overlap. A retry with the same --request-id never runs it twice.
    Run(RunArgs),
    /// The last runs of a task that ended (the task's history bound, 50 by default):
    /// period or request, holder, token, start, end, outcome.
    History(HistoryArgs),
}

#[derive(Debug, Args)]
struct HistoryArgs {
    #[command(flatten)]
    task: TaskArgs,
    /// One JSON array of runs, oldest first, instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    task: TaskArgs,
    /// The request's id: a request repeated with the same id runs once (default: a new one).
    #[arg(long, value_name = "ID")]
    request_id: Option<String>,
    /// Run even if the task is paused (otherwise refused).
    #[arg(long)]
    force: bool,
    /// Who asks (default: $USER, else "larder-cli").
    #[arg(long, value_name = "WHO")]
    by: Option<String>,
}

#[derive(Debug, Args)]
struct TaskArgs {
    /// The task, by the name its processes give it (an unknown name lists the known ones).
    name: String,
    /// Where the coordination records live (default: the database if --database-url is
    /// given, else the cache).
    #[arg(long, value_enum)]
    from: Option<Source>,
}

#[derive(Debug, Args)]
struct PauseArgs {
    #[command(flatten)]
    task: TaskArgs,
    /// Who pauses it, shown wherever the task is (default: $USER, else "larder-cli").
    #[arg(long, value_name = "WHO")]
    by: Option<String>,
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
    #[arg(long, value_name = "DURATION", value_parser = render::parse_duration)]
    every: Option<Duration>,
    /// The tasks' schedule, to compute when each is next due: an interval, or a cron
    /// expression with seconds, in UTC or after `CRON_TZ=<IANA zone>`
    /// (e.g. "CRON_TZ=Europe/Paris 0 30 2 * * *").
    #[arg(long, value_name = "SCHEDULE", value_parser = render::parse_schedule, conflicts_with = "every")]
    schedule: Option<larder_coord::Schedule>,
    /// The interval in milliseconds, under the name the example web app reads
    /// (`LARDER_EXPIRY_INTERVAL_MS`); `--every` wins.
    #[arg(
        long,
        env = "LARDER_EXPIRY_INTERVAL_MS",
        hide_env_values = true,
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
        Command::Sessions(cmd) => sessions::run(cli, cmd).await,
        Command::Tasks(TasksCmd::Status(args)) => tasks::status(cli, args).await,
        Command::Tasks(TasksCmd::Pause(args)) => tasks::pause(cli, args).await,
        Command::Tasks(TasksCmd::Resume(args)) => tasks::resume(cli, args).await,
        Command::Tasks(TasksCmd::Run(args)) => tasks::run_now(cli, args).await,
        Command::Tasks(TasksCmd::History(args)) => tasks::history(cli, args).await,
        Command::Cache(CacheCmd::Ping) => cache::ping(cli).await,
        Command::Cache(CacheCmd::Stats) => cache::stats(cli).await,
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

fn database_url(cli: &Cli) -> Result<&str> {
    need(&cli.database_url, "--database-url", "LARDER_DATABASE_URL")
}

async fn open_cache(cli: &Cli) -> Result<DynBackend> {
    crate::connect(need(&cli.cache_url, "--cache-url", "LARDER_CACHE_URL")?).await
}
