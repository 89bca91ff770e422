//! One node of the multi-process coordination fault test (`tests/coord_faults/`). Not a
//! user tool.
//!
//! It runs an [`Elector`] on the lease `leader` and a [`Scheduler`] with one task `tick`
//! (every second, at-most-once, overlap allowed, missed periods run up to three:
//! `MisfirePolicy::RunEach { max: 3 }`), and records
//! what it does in PostgreSQL tables that the test created in `<schema>`:
//!
//! * `terms(holder, token, won_at_ms)`: every term this node wins;
//! * `claims(period, holder, token, at_ms)`: every period it runs, first thing in the run;
//! * `control(value)` / `control_attempts`: an unfenced read, sleep 300 ms, write of a
//!   counter (the control that shows lost updates when runs overlap);
//! * `fenced(id, token, holder, period, at_ms)` / `fenced_refused(...)`: a write through
//!   the fence `tick` with the run's token, made after the sleep, so that a node paused
//!   mid-run makes it after resuming.
//!
//! The body of a run is spawned on its own tokio task: the scheduler drops a run's future
//! when it sees that the run is no longer the current one, and an effect that is already
//! under way in a real program (a request sent, a thread started) does not stop with it.
//! Running it detached makes the paused node really attempt its stale write, which only the
//! fence can refuse.
//!
//! Arguments: `<postgres url> <schema> <backend: postgres|redis> <redis url or -> <node name>
//! [accept-loss]`; with `accept-loss` the lease and the scheduler accept a store that may
//! lose their records (`Durability::AcceptLoss`). Prints `ready` once started; runs until
//! killed, or until its standard input closes (so that no node outlives the test that
//! started it). A store that coordination refuses makes it print `refused: <message>` and
//! exit with status 3.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use larder::coord::{
    Durability, Elector, HolderId, Lease, LeaseConfig, MisfirePolicy, Role, RunContext, RunMode,
    Schedule, Scheduler, SchedulerConfig, TaskSpec,
};
use larder::DynBackend;
use larder_backend_sql::PgKv;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Lease 2 s, renew deadline 1.2 s, retry 0.3 s: the timing the test's bounds assume.
fn lease_config() -> LeaseConfig {
    LeaseConfig::new(
        Duration::from_secs(2),
        Duration::from_millis(1200),
        Duration::from_millis(300),
    )
    .expect("valid lease timing")
}

/// The body of one run of `tick`.
async fn run_tick(pool: PgPool, kv: PgKv, holder: String, ctx: RunContext) {
    let token = ctx.token as i64;
    let period = ctx.period;
    // (a) The claim, first thing.
    if let Err(e) =
        sqlx::query("INSERT INTO claims (period, holder, token, at_ms) VALUES ($1, $2, $3, $4)")
            .bind(period)
            .bind(&holder)
            .bind(token)
            .bind(now_ms())
            .execute(&pool)
            .await
    {
        eprintln!("{holder}: claim record failed: {e}");
    }
    // (b) The unfenced control: read, sleep, write back + 1.
    let read: Result<(i64,), _> = sqlx::query_as("SELECT value FROM control WHERE id = 1")
        .fetch_one(&pool)
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    match read {
        Ok((v,)) => {
            let wrote = async {
                let mut tx = pool.begin().await?;
                sqlx::query("UPDATE control SET value = $1 WHERE id = 1")
                    .bind(v + 1)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "INSERT INTO control_attempts (holder, period, at_ms) VALUES ($1, $2, $3)",
                )
                .bind(&holder)
                .bind(period)
                .bind(now_ms())
                .execute(&mut *tx)
                .await?;
                tx.commit().await
            };
            if let Err(e) = wrote.await {
                eprintln!("{holder}: control write failed: {e}");
            }
        }
        Err(e) => eprintln!("{holder}: control read failed: {e}"),
    }
    // (c) The fenced write, after the sleep.
    let at = now_ms();
    let h2 = holder.clone();
    let written = kv
        .fence("tick")
        .run(ctx.token, move |tx| {
            Box::pin(async move {
                sqlx::query(
                    "INSERT INTO fenced (token, holder, period, at_ms) VALUES ($1, $2, $3, $4)",
                )
                .bind(token)
                .bind(&h2)
                .bind(period)
                .bind(at)
                .execute(&mut **tx)
                .await
                .map_err(|e| {
                    larder::Error::new(larder::ErrorKind::Backend, "fenced insert failed")
                        .with_source(e)
                })?;
                Ok(())
            })
        })
        .await;
    match written {
        Ok(Some(())) => {}
        Ok(None) => {
            let refused = sqlx::query(
                "INSERT INTO fenced_refused (token, holder, period, at_ms) VALUES ($1, $2, $3, $4)",
            )
            .bind(token)
            .bind(&holder)
            .bind(period)
            .bind(at)
            .execute(&pool)
            .await;
            if let Err(e) = refused {
                eprintln!("{holder}: refusal record failed: {e}");
            }
            eprintln!(
                "{holder}: fenced write of period {period} with token {token} refused (run cancelled by the scheduler: {})",
                ctx.cancel.is_cancelled()
            );
        }
        Err(e) => eprintln!("{holder}: fenced write failed: {e}"),
    }
}

/// Coordination refused the store: say why on stdout (where the test reads `ready`), exit 3.
fn refused(e: larder::Error) -> ! {
    println!("refused: {}", e.message());
    std::process::exit(3);
}

async fn node(
    pg: &str,
    schema: &str,
    backend: &str,
    redis_url: &str,
    name: &str,
    durability: Durability,
) {
    let opts: PgConnectOptions = pg.parse().expect("postgres url");
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(
            opts.options([("search_path", schema)])
                .application_name(&format!("coord_node {schema} {name}")),
        )
        .await
        .expect("connect postgres");
    // The parent ran the store's migrations.
    let kv = PgKv::from_pool(pool.clone());
    let coord: DynBackend = match backend {
        "postgres" => Arc::new(kv.clone()),
        "redis" => larder::connect(redis_url).await.expect("connect redis"),
        other => panic!("unknown backend {other:?} (postgres or redis)"),
    };
    let holder = HolderId::named(name);
    let cfg = lease_config().with_durability(durability);

    let lease = Arc::new(
        Lease::new(coord.clone(), "leader", holder.clone(), cfg).unwrap_or_else(|e| refused(e)),
    );
    let elector = Elector::spawn(lease);
    let mut roles = elector.watch();
    let terms_pool = pool.clone();
    let me = holder.as_str().to_owned();
    tokio::spawn(async move {
        loop {
            let role = roles.borrow_and_update().clone();
            if let Role::Leader(term) = role {
                let recorded =
                    sqlx::query("INSERT INTO terms (holder, token, won_at_ms) VALUES ($1, $2, $3)")
                        .bind(&me)
                        .bind(term.token as i64)
                        .bind(ms(term.since))
                        .execute(&terms_pool)
                        .await;
                if let Err(e) = recorded {
                    eprintln!("{me}: term record failed: {e}");
                }
            }
            if roles.changed().await.is_err() {
                return;
            }
        }
    });

    let (p2, s2, h2) = (pool.clone(), kv.clone(), holder.as_str().to_owned());
    let task = TaskSpec::new(
        "tick",
        Schedule::Every(Duration::from_secs(1)),
        move |ctx| {
            let body = tokio::spawn(run_tick(p2.clone(), s2.clone(), h2.clone(), ctx));
            async move { body.await.map_err(|e| e.to_string()) }
        },
    )
    .mode(RunMode::AtMostOnce)
    .allow_overlap(true)
    .misfire(MisfirePolicy::RunEach { max: 3 });
    let config = SchedulerConfig::default()
        .process_name(name)
        .poll(Duration::from_millis(100))
        .lease(cfg);
    let scheduler = Arc::new(
        Scheduler::new(coord, holder, config)
            .unwrap_or_else(|e| refused(e))
            .with_task(task)
            .expect("task"),
    );
    let (_stop, _handle) = scheduler.spawn();
    println!("ready");
    std::future::pending::<()>().await;
    drop(elector);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (durability, args) = match &args[..] {
        [rest @ .., last] if last == "accept-loss" => (Durability::AcceptLoss, rest),
        all => (Durability::Required, all),
    };
    let [pg, schema, backend, redis_url, name] = args else {
        eprintln!(
            "usage: coord_node <postgres url> <schema> <postgres|redis> <redis url or -> <node name> [accept-loss]"
        );
        std::process::exit(2);
    };
    larder_tests::child::exit_with_parent();
    larder_tests::child::block_on(node(pg, schema, backend, redis_url, name, durability));
}
