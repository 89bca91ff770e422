//! `larder tasks status`: leases and periodic tasks, read through the coordination crate
//! (key names and the "next due" computation are its own); `larder tasks
//! pause|resume|run|history`, through its `TaskAdmin`.

use std::time::Duration;

use larder_cache_api::{Cache, DynBackend, Result};
use larder_coord::{
    check_backend, Candidacy, Durability, HolderId, Lease, LeaseRecord, Outcome, Pause, Schedule,
    Scheduler, SchedulerConfig, TaskAdmin, TaskSpec,
};
use larder_session_persist::{open_existing, EXPIRY_TASK};

use super::render::{now_ms, run_info, running, table, ts};
use super::{
    database_url, open_cache, Cli, HistoryArgs, PauseArgs, RunArgs, Source, StatusArgs, TaskArgs,
};

pub(super) async fn status(cli: &Cli, args: &StatusArgs) -> Result<String> {
    let (backend, where_) = coord_backend(cli, args.from).await?;
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
    let mut out = format!("coordination records in {where_}, now {}\n", ts(now));
    // A store the running processes could only use by accepting the loss of records: say
    // so above the tables, which may then show records re-created after a loss.
    if let Err(e) = check_backend(&backend, Durability::Required) {
        if e.kind() == larder_cache_api::ErrorKind::Unsupported
            && check_backend(&backend, Durability::AcceptLoss).is_ok()
        {
            out.push_str(&format!("warning: {}\n", e.message()));
        }
    }
    out.push('\n');

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
        let key = Lease::key_for(name)?;
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
    // do; this one never claims anything (Candidacy::Never) and has no job to run. It only
    // reads, so the store's durability does not matter to it: it accepts a store that may
    // lose records (the warning above tells the operator), and still refuses one without
    // linearizable CAS, whose records no process could have written.
    let schedule = args.schedule.clone().or_else(|| {
        args.every
            .or(args
                .expiry_interval_ms
                .filter(|ms| *ms > 0)
                .map(Duration::from_millis))
            .map(Schedule::Every)
    });
    let mut scheduler = Scheduler::new(
        backend,
        HolderId::named("larder-cli"),
        SchedulerConfig::default()
            .candidacy(Candidacy::Never)
            .durability(Durability::AcceptLoss),
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
        "PAUSED".to_owned(),
        "NEXT DUE".to_owned(),
    ]];
    let statuses = scheduler.status().await?;
    let now = now_ms();
    for st in statuses {
        let next = match (schedule.is_some(), st.next_due_ms) {
            (false, _) => "? (pass --every or --schedule)".to_owned(),
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
            running(st.running.as_ref(), &st.overlapping),
            st.last_run.as_ref().map_or("-".to_owned(), run_info),
            st.paused.as_ref().map_or("-".to_owned(), paused),
            next,
        ]);
    }
    table(&mut out, &rows);
    Ok(out)
}

/// The store of the coordination records: the database if `--database-url` is given (or
/// `--from database`), else the cache; with how to name it.
async fn coord_backend(cli: &Cli, from: Option<Source>) -> Result<(DynBackend, String)> {
    let has_db = cli.database_url.as_deref().is_some_and(|u| !u.is_empty());
    let source = from.unwrap_or(if has_db {
        Source::Database
    } else {
        Source::Cache
    });
    Ok(match source {
        Source::Database => {
            let url = database_url(cli)?;
            // Refuses a database without larder's tables before the store's own schema
            // step could create anything in it.
            open_existing(url).await?;
            let b = crate::connect(url).await?;
            let name = b.capabilities().name;
            (b, format!("{name} larder_kv"))
        }
        Source::Cache => {
            let b = open_cache(cli).await?;
            let name = b.capabilities().name;
            (b, format!("cache ({name})"))
        }
    })
}

/// "by WHO at TIME".
fn paused(p: &Pause) -> String {
    format!("by {} at {}", p.by, ts(p.at_ms))
}

async fn admin(cli: &Cli, args: &TaskArgs) -> Result<TaskAdmin> {
    let (backend, _) = coord_backend(cli, args.from).await?;
    TaskAdmin::new(backend)
}

/// Who acts: `--by`, else `$USER`, else "larder-cli".
fn who(by: &Option<String>) -> String {
    by.clone()
        .or_else(|| std::env::var("USER").ok())
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| "larder-cli".to_owned())
}

pub(super) async fn run_now(cli: &Cli, args: &RunArgs) -> Result<String> {
    let name = &args.task.name;
    let id = args
        .request_id
        .clone()
        .unwrap_or_else(|| format!("cli-{}", HolderId::generate().as_str()));
    let (request, made) = admin(cli, &args.task)
        .await?
        .run_now(name, &id, &who(&args.by), args.force)
        .await?;
    let state = match request.token {
        Some(token) => format!("claimed, token {token}"),
        None => "waiting for a process".to_owned(),
    };
    Ok(if made {
        format!("requested a run of {name} (request {id}): {state}\n")
    } else {
        format!(
            "request {id} for {name} was already made by {} at {}: {state}\n",
            request.by,
            ts(request.at_ms)
        )
    })
}

pub(super) async fn pause(cli: &Cli, args: &PauseArgs) -> Result<String> {
    let by = who(&args.by);
    let name = &args.task.name;
    let (p, now_paused) = admin(cli, &args.task).await?.pause(name, &by).await?;
    Ok(if now_paused {
        format!("paused {name} {}\n", paused(&p))
    } else {
        format!("{name} was already paused {}\n", paused(&p))
    })
}

pub(super) async fn resume(cli: &Cli, args: &TaskArgs) -> Result<String> {
    let name = &args.name;
    Ok(match admin(cli, args).await?.resume(name).await? {
        Some(p) => format!("resumed {name} (paused {})\n", paused(&p)),
        None => format!("{name} was not paused\n"),
    })
}

pub(super) async fn history(cli: &Cli, args: &HistoryArgs) -> Result<String> {
    let name = &args.task.name;
    let runs = admin(cli, &args.task).await?.history(name).await?;
    if args.json {
        let list: Vec<serde_json::Value> = runs
            .iter()
            .map(|h| {
                serde_json::json!({
                    "trigger": h.trigger.as_ref().map_or("period", |_| "request"),
                    "request_id": h.trigger,
                    "period_ms": h.period,
                    "holder": h.holder,
                    "token": h.token,
                    "started_at_ms": h.started_at_ms,
                    "finished_at_ms": h.finished_at_ms,
                    "outcome": h.outcome.name(),
                    "error": match &h.outcome {
                        Outcome::Error(e) => Some(e.as_str()),
                        _ => None,
                    },
                })
            })
            .collect();
        return Ok(format!("{}\n", serde_json::Value::Array(list)));
    }
    let mut rows = vec![["TRIGGER", "HOLDER", "TOKEN", "START", "END", "OUTCOME"]
        .map(str::to_owned)
        .to_vec()];
    for h in &runs {
        let outcome = match &h.outcome {
            Outcome::Error(e) => format!(
                "error: {}",
                e.split_whitespace().collect::<Vec<_>>().join(" ")
            ),
            o => o.name().to_owned(),
        };
        rows.push(vec![
            h.trigger.as_ref().map_or_else(
                || format!("period {}", ts(h.period)),
                |id| format!("request {id}"),
            ),
            h.holder.clone(),
            h.token.to_string(),
            ts(h.started_at_ms),
            ts(h.finished_at_ms),
            outcome,
        ]);
    }
    let mut out = format!("{} runs of {name}, oldest first\n", runs.len());
    table(&mut out, &rows);
    Ok(out)
}
