//! The tables the nodes write (terms, claims, fenced writes, the unfenced control), and the
//! test's reads of them.

use std::time::Duration;

use larder::coord::Lease;
use larder_tests::{eventually, Patience};
use sqlx::PgPool;

pub(crate) async fn create_tables(pool: &PgPool) {
    for sql in [
        "CREATE TABLE terms (holder TEXT NOT NULL, token BIGINT NOT NULL, won_at_ms BIGINT NOT NULL)",
        "CREATE TABLE claims (period BIGINT NOT NULL, holder TEXT NOT NULL, token BIGINT NOT NULL, at_ms BIGINT NOT NULL)",
        "CREATE TABLE control (id INT PRIMARY KEY, value BIGINT NOT NULL)",
        "INSERT INTO control (id, value) VALUES (1, 0)",
        "CREATE TABLE control_attempts (holder TEXT NOT NULL, period BIGINT NOT NULL, at_ms BIGINT NOT NULL)",
        "CREATE TABLE fenced (id BIGSERIAL PRIMARY KEY, token BIGINT NOT NULL, holder TEXT NOT NULL, period BIGINT NOT NULL, at_ms BIGINT NOT NULL)",
        "CREATE TABLE fenced_refused (token BIGINT NOT NULL, holder TEXT NOT NULL, period BIGINT NOT NULL, at_ms BIGINT NOT NULL)",
    ] {
        sqlx::query(sql).execute(pool).await.unwrap();
    }
}

pub(crate) async fn drop_schema(schema: &str) {
    let admin = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&larder_tests::db::postgres_url())
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
}

pub(crate) async fn latest_term(pool: &PgPool) -> Option<(String, i64, i64)> {
    sqlx::query_as("SELECT holder, token, won_at_ms FROM terms ORDER BY token DESC LIMIT 1")
        .fetch_optional(pool)
        .await
        .unwrap()
}

pub(crate) async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    let (n,): (i64,) = sqlx::query_as(sql).fetch_one(pool).await.unwrap();
    n
}

/// Waits up to 15 s for a leader and at least three runs, as `runs` counts them.
pub(crate) async fn warmed_up(pool: &PgPool, runs: &'static str) {
    let patience = Patience::new(Duration::from_secs(15)).every(Duration::from_millis(100));
    eventually(patience, "a leader and runs", async || {
        latest_term(pool).await.is_some() && count(pool, runs).await >= 3
    })
    .await;
}

/// The leader now: the latest recorded term, once the lease record confirms that its holder
/// still holds it (a term whose holder stepped down without a successor yet is no target).
pub(crate) async fn current_leader(pool: &PgPool, observer: &Lease) -> (String, i64) {
    let patience = Patience::new(Duration::from_secs(15)).every(Duration::from_millis(100));
    eventually(patience, "a settled leader", async || {
        match (latest_term(pool).await, observer.observe().await) {
            (Some((holder, token, _)), Ok(Some(rec)))
                if rec.holder == holder && rec.token as i64 == token && !rec.released =>
            {
                Some((holder, token))
            }
            _ => None,
        }
    })
    .await
}

/// `(period, holder, token, at_ms)`.
pub(crate) type Claim = (i64, String, i64, i64);
/// `(id, token, holder, at_ms)`.
pub(crate) type Fenced = (i64, i64, String, i64);
/// `(token, holder, at_ms)`.
pub(crate) type Refused = (i64, String, i64);

/// What the nodes wrote, once they are all gone.
pub(crate) struct Written {
    /// By period.
    pub(crate) claims: Vec<Claim>,
    /// In commit (id) order.
    pub(crate) fenced: Vec<Fenced>,
    pub(crate) refused: Vec<Refused>,
    pub(crate) control: i64,
    pub(crate) attempts: i64,
    pub(crate) terms: i64,
}

impl Written {
    pub(crate) async fn read(pool: &PgPool) -> Self {
        Written {
            claims: sqlx::query_as(
                "SELECT period, holder, token, at_ms FROM claims ORDER BY period",
            )
            .fetch_all(pool)
            .await
            .unwrap(),
            fenced: sqlx::query_as("SELECT id, token, holder, at_ms FROM fenced ORDER BY id")
                .fetch_all(pool)
                .await
                .unwrap(),
            refused: sqlx::query_as("SELECT token, holder, at_ms FROM fenced_refused")
                .fetch_all(pool)
                .await
                .unwrap(),
            control: count(pool, "SELECT value FROM control WHERE id = 1").await,
            attempts: count(pool, "SELECT count(*) FROM control_attempts").await,
            terms: count(pool, "SELECT count(*) FROM terms").await,
        }
    }
}
