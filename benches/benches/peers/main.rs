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
//! none targets 0.15, which the app uses. [`Compat`](adapters::Compat) is a thin delegating adapter: it converts
//! `Record` and `Id` to the 0.14 types (identical fields) and calls the peer, nothing else.
//! Every store, larder's included, is also wrapped in [`Observed`](adapters::Observed), which only keeps the
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

mod adapters;
mod app;
mod load;
mod rounds;
mod stores;

use std::time::Duration;

use larder_benches::harness;
use larder_tests::server::ServerProcess;
use sqlx::postgres::PgPoolOptions;

use load::{http_client, Op};
use rounds::{load_average, print_ratios, run_races, run_rounds, table, Stand};
use stores::{sqlx_store, Env, Kind};

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
