//! Round trips per session operation, counted by the servers themselves: PostgreSQL's
//! committed transactions (`pg_stat_database.xact_commit`, on a database only this test
//! uses) and the commands Redis' `MONITOR` reports from clients (commands a script runs
//! inside the server are not round trips, and `MONITOR` marks them). The budget: a save is one SQL statement and one
//! cache command when uncontended, a lost race costs two more statements; a load on a
//! cache hit touches no database; a touch writes no cache.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use larder_session_persist::{
    CachedStore, PgStore, SessionConfig, SessionId, SessionManager, SessionStore, TowerStore,
};
use larder_tests::server::ServerProcess;
use larder_tests::{eventually, Patience};
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tower_sessions::session::{Id, Record as TowerRecord};
use tower_sessions::SessionStore as _;

const DB: &str = "larder_roundtrips";

/// (SQL statements, cache commands) per operation.
type Trips = (f64, f64);
const N: i64 = 5;

struct Counters {
    pool: PgPool,
    admin: PgPool,
    redis_commands: Arc<AtomicI64>,
    last: i64,
}

impl Counters {
    /// PostgreSQL commits of this database so far, once the store's connection has
    /// reported its statistics (the request to report counts one commit itself).
    async fn commits(&mut self) -> i64 {
        // The scan gives the backend relation statistics to report: without them it holds
        // back bare transaction counts until some later report.
        sqlx::query("SELECT pg_stat_force_next_flush(), (SELECT count(*) FROM larder_sessions)")
            .execute(&self.pool)
            .await
            .unwrap();
        let patience = Patience::new(Duration::from_secs(10)).every(Duration::from_millis(20));
        let last = self.last;
        let v = eventually(patience, "the statistics arrive", async || {
            let (v,): (i64,) =
                sqlx::query_as("SELECT xact_commit FROM pg_stat_database WHERE datname = $1")
                    .bind(DB)
                    .fetch_one(&self.admin)
                    .await
                    .unwrap();
            if v > last {
                Ok(v)
            } else {
                Err(format!("{v} <= {last}"))
            }
        })
        .await;
        self.last = v;
        v
    }

    /// Commands clients sent to Redis so far, once MONITOR has reported them.
    async fn redis_commands(&self) -> i64 {
        let mut last = self.redis_commands.load(Ordering::SeqCst);
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now = self.redis_commands.load(Ordering::SeqCst);
            if now == last {
                return now;
            }
            last = now;
        }
    }

    /// Runs `op` and returns (SQL statements, cache commands) per call of `n` calls.
    async fn count<F: std::future::Future<Output = ()>>(&mut self, n: i64, op: F) -> (f64, f64) {
        let before = self.commits().await;
        let cache_before = self.redis_commands().await;
        op.await;
        let cache = self.redis_commands().await - cache_before;
        let after = self.commits().await;
        // `commits` itself added one.
        (
            (after - before - 1) as f64 / n as f64,
            cache as f64 / n as f64,
        )
    }
}

async fn database() -> (PgPool, PgPool) {
    let base = larder_tests::db::postgres_url();
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&base)
        .await
        .unwrap();
    let exists: Option<(i32,)> = sqlx::query_as("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(DB)
        .fetch_optional(&admin)
        .await
        .unwrap();
    if exists.is_none() {
        // A concurrent first run may win the race; either way the database exists after.
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {DB}")))
            .execute(&admin)
            .await;
    }
    let opts: PgConnectOptions = base.parse().unwrap();
    let setup = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(opts.clone().database(DB))
        .await
        .unwrap();
    // Fresh tables each run, without autovacuum (its transactions would be counted).
    sqlx::query("DROP SCHEMA IF EXISTS rt CASCADE")
        .execute(&setup)
        .await
        .unwrap();
    sqlx::query("CREATE SCHEMA rt")
        .execute(&setup)
        .await
        .unwrap();
    setup.close().await;
    // One connection: every statement of the stores goes through it.
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(opts.database(DB).options([("search_path", "rt")]))
        .await
        .unwrap();
    PgStore::from_pool(pool.clone()).migrate().await.unwrap();
    for t in ["larder_sessions", "larder_session_outbox"] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "ALTER TABLE {t} SET (autovacuum_enabled = false)"
        )))
        .execute(&pool)
        .await
        .unwrap();
    }
    (pool, admin)
}

/// Counts the commands clients send to the Redis at `addr`, by `MONITOR` (scripts' own
/// commands, marked `lua`, and the client's health-check `PING`s are not counted).
async fn monitor(addr: &str) -> Arc<AtomicI64> {
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"MONITOR\r\n").await.unwrap();
    let mut lines = BufReader::new(conn).lines();
    assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("+OK"));
    let count = Arc::new(AtomicI64::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.starts_with('+') && !line.contains(" lua]") && !line.contains("\"PING\"") {
                c.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    count
}

fn hours(h: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() + time::Duration::hours(h)
}

/// Counts load, save, conflicted save, touch and delete through the tower adapter and the
/// handle over `store`; returns the figures by operation.
async fn measure(
    c: &mut Counters,
    store: Arc<dyn SessionStore>,
) -> HashMap<&'static str, (f64, f64)> {
    let tower = TowerStore::new(store.clone());
    let m = SessionManager::with_config(store.clone(), SessionConfig::default().touch_after(0.0));
    let mut out = HashMap::new();
    let mut ids = Vec::new();
    for i in 0..N {
        let mut r = TowerRecord {
            id: Id::default(),
            data: HashMap::from([("user".to_owned(), json!(format!("u{i}")))]),
            expiry_date: hours(1),
        };
        tower.create(&mut r).await.unwrap();
        ids.push(r.id);
    }
    // Warm-up: every statement prepared once, the outbox drained once.
    for id in &ids {
        let r = tower.load(id).await.unwrap().unwrap();
        tower.save(&r).await.unwrap();
    }

    let mut loaded = Vec::new();
    out.insert(
        "tower load",
        c.count(N, async {
            for id in &ids {
                loaded.push(tower.load(id).await.unwrap().unwrap());
            }
        })
        .await,
    );
    out.insert(
        "tower save",
        c.count(N, async {
            for r in &mut loaded {
                r.data.insert("n".into(), json!(1));
                tower.save(r).await.unwrap();
            }
        })
        .await,
    );
    let mut loaded: Vec<TowerRecord> = Vec::new();
    for id in &ids {
        loaded.push(tower.load(id).await.unwrap().unwrap());
    }
    out.insert(
        "tower touch",
        c.count(N, async {
            for r in &mut loaded {
                r.expiry_date = hours(10);
                tower.save(r).await.unwrap();
            }
        })
        .await,
    );

    // The handle.
    let lids: Vec<SessionId> = ids
        .iter()
        .map(|id| SessionId::from_bytes(id.0.to_le_bytes()))
        .collect();
    let mut handles = Vec::new();
    out.insert(
        "handle load",
        c.count(N, async {
            for id in &lids {
                handles.push(m.load_id(id).await.unwrap().unwrap());
            }
        })
        .await,
    );
    out.insert(
        "handle save",
        c.count(N, async {
            for s in &mut handles {
                s.insert("h", &1u8).unwrap();
                s.save().await.unwrap();
            }
        })
        .await,
    );
    // Two requests loaded the same version; the second one's save loses the race once.
    let mut pairs = Vec::new();
    for id in &lids {
        pairs.push((
            m.load_id(id).await.unwrap().unwrap(),
            m.load_id(id).await.unwrap().unwrap(),
        ));
    }
    for (first, _) in &mut pairs {
        first.insert("first", &1u8).unwrap();
        first.save().await.unwrap();
    }
    out.insert(
        "handle save after a lost race",
        c.count(N, async {
            for (_, second) in &mut pairs {
                second.insert("second", &1u8).unwrap();
                second.save().await.unwrap();
            }
        })
        .await,
    );
    let mut handles: Vec<_> = Vec::new();
    for id in &lids {
        handles.push(m.load_id(id).await.unwrap().unwrap());
    }
    out.insert(
        "handle touch",
        c.count(N, async {
            for s in &mut handles {
                s.touch_if_due().await.unwrap();
            }
        })
        .await,
    );
    out.insert(
        "tower delete",
        c.count(N, async {
            for id in &ids {
                tower.delete(id).await.unwrap();
            }
        })
        .await,
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trips_per_operation_stay_within_budget() {
    let (pool, admin) = database().await;
    let redis = ServerProcess::redis();
    let mut c = Counters {
        pool: pool.clone(),
        admin,
        redis_commands: monitor(&redis.addr()).await,
        last: 0,
    };

    // PostgreSQL alone; the first pass prepares every statement on the connection.
    let _ = measure(&mut c, Arc::new(PgStore::from_pool(pool.clone()))).await;
    let sql_only = measure(&mut c, Arc::new(PgStore::from_pool(pool.clone()))).await;
    // PostgreSQL with Redis in front (the outbox drained in the warm-up, not per request).
    let cached = CachedStore::new(
        PgStore::from_pool(pool.clone()),
        larder::connect(&format!("redis://{}", redis.addr()))
            .await
            .unwrap(),
    )
    .drain_interval(Duration::from_secs(3600));
    // The first pass also loads the scripts into Redis (a first EVALSHA is answered NOSCRIPT).
    let cached: Arc<dyn SessionStore> = Arc::new(cached);
    let _ = measure(&mut c, cached.clone()).await;
    let with_cache = measure(&mut c, cached).await;

    for (name, figures) in [
        ("PostgreSQL", &sql_only),
        ("PostgreSQL + Redis", &with_cache),
    ] {
        let mut rows: Vec<_> = figures.iter().collect();
        rows.sort_by_key(|(op, _)| **op);
        for (op, (sql, cache)) in rows {
            eprintln!("{name:>20} | {op:<30} | {sql:.1} SQL | {cache:.1} cache");
        }
    }
    let budget: [(&str, Trips, Trips); 8] = [
        // operation, (SQL, cache) on PostgreSQL alone, (SQL, cache) with Redis
        ("tower load", (1.0, 0.0), (0.0, 1.0)),
        ("tower save", (1.0, 0.0), (1.0, 1.0)),
        ("tower touch", (1.0, 0.0), (1.0, 0.0)),
        ("tower delete", (1.0, 0.0), (1.0, 1.0)),
        ("handle load", (1.0, 0.0), (0.0, 1.0)),
        ("handle save", (1.0, 0.0), (1.0, 1.0)),
        ("handle save after a lost race", (3.0, 0.0), (3.0, 1.0)),
        ("handle touch", (1.0, 0.0), (1.0, 0.0)),
    ];
    for (op, alone, cached) in budget {
        assert_eq!(sql_only[op], alone, "{op} on PostgreSQL alone");
        assert_eq!(with_cache[op], cached, "{op} on PostgreSQL + Redis");
    }
}
