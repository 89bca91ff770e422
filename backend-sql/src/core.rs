//! The database side: the tables, the SQL of each operation, built from the few fragments in
//! which PostgreSQL and SQLite differ (the [`Dialect`], shared with the session store, and
//! this crate's migrations and version expression).
//!
//! # Stored layout
//!
//! One row per key in `larder_kv (key, value, version, expires_at)`; `expires_at` is in
//! milliseconds since the Unix epoch by the **database** clock (`NULL`: never), so every
//! process agrees on expiry whatever its own clock says. An expired row is absent for every
//! operation; [`SqlKv::purge_expired`](crate::SqlKv::purge_expired) removes such rows.
//!
//! # Expiry is never early
//!
//! A TTL never ends before it has fully passed by the database clock. A write stores
//! `expires_at` = the database clock **rounded up** to the millisecond plus the TTL
//! (`Dialect::EXPIRY_BASE_MS`), never rounded to nearest or truncated; a row counts as
//! expired only once the clock is **past** `expires_at` (`now > expires_at`, compared at the
//! clock's own precision, `Dialect::NOW_MS`), never when it merely reaches it. PostgreSQL's
//! clock has microseconds: `expires_at` is its ceiling in milliseconds, and `now >
//! expires_at` exactly when the ceiling of now is. SQLite's `'now'` is truncated to the
//! millisecond: the true time may be up to 1 ms later, so a write adds one millisecond, and a
//! row expires once the truncated clock is past `expires_at`. An entry can so outlive its TTL
//! by up to 2 ms, never fall short of it (tests `sql_kv::*_a_one_millisecond_ttl_is_never_early`:
//! a 1 ms TTL read 0.2 ms later, 10,000 times, never missing).
//! Fences are one row per resource in `larder_fences (name, token)`.
//!
//! # Versions
//!
//! Every write is **one statement** that draws the new version inside it, so a
//! compare-and-swap is a single round trip and the database serialises concurrent ones.
//! PostgreSQL draws versions from one sequence (`larder_kv_version`), so a key deleted and
//! created again never reuses one. SQLite has no sequences and no writes inside
//! expressions: a version is 63 random bits, and a repeat for one key has odds of 2^-63 per
//! write.
//!
//! # Schema
//!
//! [`SqlKv::migrate`](crate::SqlKv::migrate) runs this crate's own migrations, tracked in
//! the table [`MIGRATIONS_TABLE`] rather than sqlx's default `_sqlx_migrations`, so that they
//! live beside the session migrations (or an application's) in one database. Every object is
//! created with `IF NOT EXISTS`: databases where an earlier `larder-session-persist` created
//! `larder_kv` and `larder_fences` keep them, rows included.

use std::sync::OnceLock;

use larder_cache_api::{Bytes, Entry, Error, ErrorKind, Key, PutMode, Result, Ttl, Version};
use larder_sql_common::{Dialect, SqlDatabase};
use sqlx::migrate::Migrator;
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, Pool, Type};

use crate::error::{conflict, db_error};

/// The table in which this crate's migrations are tracked.
pub const MIGRATIONS_TABLE: &str = "_larder_kv_migrations";

/// This crate's migrations for the database, tracked in [`MIGRATIONS_TABLE`].
fn migrator<D: Dialect>() -> Migrator {
    let mut m = match D::DATABASE {
        SqlDatabase::Postgres => sqlx::migrate!("./migrations/postgres"),
        SqlDatabase::Sqlite => sqlx::migrate!("./migrations/sqlite"),
    };
    m.dangerous_set_table_name(MIGRATIONS_TABLE);
    m
}

/// An SQL expression for a fresh version, evaluated inside the statement that writes it.
fn next_version<D: Dialect>() -> &'static str {
    match D::DATABASE {
        SqlDatabase::Postgres => "nextval('larder_kv_version')",
        SqlDatabase::Sqlite => "(random() & 9223372036854775807)",
    }
}

/// The statements for `D`, built once from its fragments.
fn statements<D: Dialect>() -> &'static Statements {
    static POSTGRES: OnceLock<Statements> = OnceLock::new();
    static SQLITE: OnceLock<Statements> = OnceLock::new();
    let cell = match D::DATABASE {
        SqlDatabase::Postgres => &POSTGRES,
        SqlDatabase::Sqlite => &SQLITE,
    };
    cell.get_or_init(Statements::of::<D>)
}

/// The SQL of every operation for one dialect. Parameters are `$n` in both databases.
#[derive(Debug)]
struct Statements {
    get: String,
    overwrite: String,
    create: String,
    update: String,
    delete: String,
    delete_if: String,
    touch: String,
    purge: String,
    clock: String,
}

impl Statements {
    fn of<D: Dialect>() -> Self {
        let (now, base, next) = (D::NOW_MS, D::EXPIRY_BASE_MS, next_version::<D>());
        // Expired only once the clock is past `expires_at`; the TTL added to a clock rounded
        // up (see the module docs: never early).
        let live = format!("(expires_at IS NULL OR expires_at >= {now})");
        let expiry = format!("CASE WHEN $3 IS NULL THEN NULL ELSE {base} + $3 END");
        let insert = format!(
            "INSERT INTO larder_kv (key, value, version, expires_at) VALUES ($1, $2, {next}, \
             {expiry}) ON CONFLICT (key) DO UPDATE SET value = excluded.value, \
             version = excluded.version, expires_at = excluded.expires_at"
        );
        Statements {
            get: format!("SELECT value, version FROM larder_kv WHERE key = $1 AND {live}"),
            overwrite: format!("{insert} RETURNING version"),
            // Create-only replaces a row only if it has expired.
            create: format!(
                "{insert} WHERE larder_kv.expires_at IS NOT NULL \
                 AND larder_kv.expires_at < {now} RETURNING version"
            ),
            update: format!(
                "UPDATE larder_kv SET value = $2, version = {next}, expires_at = {expiry} \
                 WHERE key = $1 AND version = $4 AND {live} RETURNING version"
            ),
            delete: format!("DELETE FROM larder_kv WHERE key = $1 AND {live}"),
            delete_if: format!("DELETE FROM larder_kv WHERE key = $1 AND version = $2 AND {live}"),
            touch: format!(
                "UPDATE larder_kv SET expires_at = CASE WHEN $1 IS NULL THEN NULL ELSE {base} + $1 END \
                 WHERE key = $2 AND {live}"
            ),
            purge: format!(
                "DELETE FROM larder_kv WHERE key IN (SELECT key FROM larder_kv \
                 WHERE expires_at IS NOT NULL AND expires_at < {now} LIMIT $1)"
            ),
            clock: format!("SELECT {now}"),
        }
    }
}

/// The connection pool and one method per statement, for any [`Dialect`].
#[derive(Debug)]
pub(crate) struct Core<DB: Database> {
    pub(crate) pool: Pool<DB>,
}

impl<DB: Database> Clone for Core<DB> {
    fn clone(&self) -> Self {
        Core {
            pool: self.pool.clone(),
        }
    }
}

/// A TTL as the milliseconds the SQL adds to the database clock.
fn ttl_ms(ttl: Option<Ttl>) -> Option<i64> {
    ttl.map(|t| i64::try_from(t.as_millis()).unwrap_or(i64::MAX))
}

fn version(raw: i64) -> Version {
    Version::from_raw(raw as u64)
}

// What sqlx needs to run these statements on `DB`; PostgreSQL and SQLite provide all of it.
impl<DB> Core<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> &'q [u8]: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<i64>: Encode<'q, DB>,
    for<'r> Vec<u8>: Decode<'r, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
{
    pub(crate) async fn migrate(&self) -> Result<()> {
        migrator::<DB>().run(&self.pool).await.map_err(|e| {
            Error::new(
                ErrorKind::Backend,
                "running the larder_kv migrations failed",
            )
            .with_backend(DB::BACKEND)
            .with_source(e)
        })
    }

    pub(crate) async fn get(&self, key: &Key) -> Result<Option<Entry>> {
        let row: Option<(Vec<u8>, i64)> = sqlx::query_as(statements::<DB>().get.as_str())
            .bind(key.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error(DB::BACKEND, "get", e))?;
        Ok(row.map(|(value, v)| Entry::new(value, version(v))))
    }

    /// One statement writes or refuses; a refusal reads what is stored to put it in the
    /// conflict (read right after the refused write: it may already have moved on again).
    ///
    /// That read is a second instant, which is harmless for an update (the expected version,
    /// gone at the refusal, never comes back, so the conflict holds at the read too) but not
    /// for a create: if the entry that refused it was deleted before the read, the conflict
    /// would say "absent", which no order of the operations explains (a create loses only to
    /// a present entry). The create is then simply tried again; it can only go round while
    /// deletes keep landing between the two statements.
    pub(crate) async fn put(
        &self,
        key: &Key,
        value: &Bytes,
        ttl: Option<Ttl>,
        mode: PutMode,
    ) -> Result<Version> {
        const CREATE_ATTEMPTS: u32 = 8;
        let sql = statements::<DB>();
        let mut attempt = 1;
        loop {
            let query = match mode {
                PutMode::Overwrite => sqlx::query_as(sql.overwrite.as_str()),
                PutMode::Create => sqlx::query_as(sql.create.as_str()),
                PutMode::Update(_) => sqlx::query_as(sql.update.as_str()),
            }
            .bind(key.as_str())
            .bind(&value[..])
            .bind(ttl_ms(ttl));
            let query = match mode {
                PutMode::Update(expected) => query.bind(expected.into_raw() as i64),
                PutMode::Overwrite | PutMode::Create => query,
            };
            let written: Option<(i64,)> = query
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| db_error(DB::BACKEND, "put", e))?;
            if let Some((v,)) = written {
                return Ok(version(v));
            }
            let current = self.get(key).await?;
            let create = matches!(mode, PutMode::Create);
            if create && current.is_none() && attempt < CREATE_ATTEMPTS {
                attempt += 1;
                continue;
            }
            return Err(conflict(DB::BACKEND, create, current));
        }
    }

    pub(crate) async fn delete(&self, key: &Key) -> Result<bool> {
        let done = sqlx::query(statements::<DB>().delete.as_str())
            .bind(key.as_str())
            .execute(&self.pool)
            .await
            .map_err(|e| db_error(DB::BACKEND, "delete", e))?;
        Ok(DB::rows_affected(&done) > 0)
    }

    pub(crate) async fn delete_if(&self, key: &Key, expected: Version) -> Result<bool> {
        let done = sqlx::query(statements::<DB>().delete_if.as_str())
            .bind(key.as_str())
            .bind(expected.into_raw() as i64)
            .execute(&self.pool)
            .await
            .map_err(|e| db_error(DB::BACKEND, "delete", e))?;
        if DB::rows_affected(&done) > 0 {
            return Ok(true);
        }
        Err(conflict(DB::BACKEND, false, self.get(key).await?))
    }

    pub(crate) async fn touch(&self, key: &Key, ttl: Option<Ttl>) -> Result<bool> {
        let done = sqlx::query(statements::<DB>().touch.as_str())
            .bind(ttl_ms(ttl))
            .bind(key.as_str())
            .execute(&self.pool)
            .await
            .map_err(|e| db_error(DB::BACKEND, "touch", e))?;
        Ok(DB::rows_affected(&done) > 0)
    }

    pub(crate) async fn purge_expired(&self, batch: u32) -> Result<u64> {
        let batch = u64::from(batch.max(1));
        let mut total = 0;
        loop {
            let done = sqlx::query(statements::<DB>().purge.as_str())
                .bind(batch as i64)
                .execute(&self.pool)
                .await
                .map_err(|e| db_error(DB::BACKEND, "purge", e))?;
            let n = DB::rows_affected(&done);
            total += n;
            if n < batch {
                return Ok(total);
            }
        }
    }

    pub(crate) async fn now_ms(&self) -> Result<i64> {
        let (now,): (i64,) = sqlx::query_as(statements::<DB>().clock.as_str())
            .fetch_one(&self.pool)
            .await
            .map_err(|e| db_error(DB::BACKEND, "clock", e))?;
        Ok(now)
    }
}
