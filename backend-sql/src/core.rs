//! The database side: the tables, the SQL of each operation, built from the few fragments in
//! which PostgreSQL and SQLite differ (the [`Dialect`], shared with the session store, and
//! this crate's migrations and version expression).
//!
//! # Stored layout
//!
//! One row per key in `larder_kv (key, value, version, expires_at, write_ids)` (`write_ids`:
//! see "Resent writes"); `expires_at` is in milliseconds since the Unix epoch by the
//! **database** clock (`NULL`: never), so every process agrees on expiry whatever its own
//! clock says. An expired row is absent for every
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
//! # Resent writes
//!
//! On PostgreSQL every write carries a write id stored in the same statement, so that a
//! write whose connection died after it was sent (the reply of a commit may be what was
//! lost) learns whether it committed before it is sent again: see [`write_id`]. SQLite runs
//! in the process: no reply is lost, nothing is resent.
//!
//! # Schema
//!
//! [`SqlKv::migrate`](crate::SqlKv::migrate) runs this crate's own migrations, tracked in
//! the table [`MIGRATIONS_TABLE`] rather than sqlx's default `_sqlx_migrations`, so that they
//! live beside the session migrations (or an application's) in one database. Every object is
//! created with `IF NOT EXISTS`: databases where an earlier `larder-session-persist` created
//! `larder_kv` and `larder_fences` keep them, rows included.

use std::sync::{Arc, OnceLock};

use larder_cache_api::{Bytes, Entry, Error, ErrorKind, Key, PutMode, Result, Ttl, Version};
use larder_sql_common::held::Held;
use larder_sql_common::{lost, Dialect, SqlDatabase};
use sqlx::migrate::Migrator;
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, Pool, Type};

use crate::error::{conflict, db_error};
use crate::write_id;

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
///
/// On PostgreSQL every write also carries a write id (see [`write_id`]): the last parameter
/// of `overwrite`, `create`, `update`, `delete` and `delete_if`. SQLite runs in the process:
/// no reply is ever lost, no write is resent, and its statements carry none.
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
    /// The row's write ids (PostgreSQL).
    put_written: String,
    /// Whether a delete's write id is recorded (PostgreSQL).
    delete_written: String,
}

impl Statements {
    fn of<D: Dialect>() -> Self {
        let (now, base, next) = (D::NOW_MS, D::EXPIRY_BASE_MS, next_version::<D>());
        // Expired only once the clock is past `expires_at`; the TTL added to a clock rounded
        // up (see the module docs: never early).
        let live = format!("(expires_at IS NULL OR expires_at >= {now})");
        let expiry = format!("CASE WHEN $3 IS NULL THEN NULL ELSE {base} + $3 END");
        let postgres = D::DATABASE == SqlDatabase::Postgres;
        let insert = if postgres {
            // One version drawn for the row and its write id entry ($4).
            format!(
                "INSERT INTO larder_kv (key, value, version, expires_at, write_ids) \
                 SELECT $1, $2, n.v, {expiry}, {entry} FROM (SELECT {next} AS v) n \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, \
                 version = excluded.version, expires_at = excluded.expires_at, \
                 write_ids = {kept}",
                entry = write_id::entry(4, "n.v"),
                kept = write_id::kept("excluded.write_ids || COALESCE(larder_kv.write_ids, '')"),
            )
        } else {
            format!(
                "INSERT INTO larder_kv (key, value, version, expires_at) VALUES ($1, $2, {next}, \
                 {expiry}) ON CONFLICT (key) DO UPDATE SET value = excluded.value, \
                 version = excluded.version, expires_at = excluded.expires_at"
            )
        };
        let update = if postgres {
            format!(
                "UPDATE larder_kv SET value = $2, version = n.v, expires_at = {expiry}, \
                 write_ids = {kept} FROM (SELECT {next} AS v) n \
                 WHERE key = $1 AND version = $4 AND {live} RETURNING n.v",
                kept = write_id::kept(&format!(
                    "{} || COALESCE(write_ids, '')",
                    write_id::entry(5, "n.v")
                )),
            )
        } else {
            format!(
                "UPDATE larder_kv SET value = $2, version = {next}, expires_at = {expiry} \
                 WHERE key = $1 AND version = $4 AND {live} RETURNING version"
            )
        };
        // A delete records its write id (the last parameter) in the same statement, and
        // clears a few ids past their ten minutes.
        let delete = |condition: &str, id: u8| {
            if postgres {
                format!(
                    "WITH gone AS (DELETE FROM larder_kv WHERE {condition} RETURNING key), \
                     aged AS (DELETE FROM larder_kv_deleted WHERE write_id IN \
                     (SELECT write_id FROM larder_kv_deleted WHERE deleted_at < {now} - 600000 \
                     ORDER BY deleted_at LIMIT 4 FOR UPDATE SKIP LOCKED)) \
                     INSERT INTO larder_kv_deleted (write_id, deleted_at) \
                     SELECT ${id}, {now} FROM gone"
                )
            } else {
                format!("DELETE FROM larder_kv WHERE {condition}")
            }
        };
        Statements {
            get: format!("SELECT value, version FROM larder_kv WHERE key = $1 AND {live}"),
            overwrite: format!("{insert} RETURNING version"),
            // Create-only replaces a row only if it has expired.
            create: format!(
                "{insert} WHERE larder_kv.expires_at IS NOT NULL \
                 AND larder_kv.expires_at < {now} RETURNING version"
            ),
            update,
            delete: delete(&format!("key = $1 AND {live}"), 2),
            delete_if: delete(&format!("key = $1 AND version = $2 AND {live}"), 3),
            touch: format!(
                "UPDATE larder_kv SET expires_at = CASE WHEN $1 IS NULL THEN NULL ELSE {base} + $1 END \
                 WHERE key = $2 AND {live}"
            ),
            purge: format!(
                "DELETE FROM larder_kv WHERE key IN (SELECT key FROM larder_kv \
                 WHERE expires_at IS NOT NULL AND expires_at < {now} LIMIT $1)"
            ),
            clock: format!("SELECT {now}"),
            // As bytes and a BIGINT: the types every other statement reads.
            put_written: "SELECT convert_to(COALESCE(write_ids, ''), 'UTF8') FROM larder_kv \
                          WHERE key = $1"
                .into(),
            delete_written: "SELECT deleted_at FROM larder_kv_deleted WHERE write_id = $1".into(),
        }
    }
}

/// The connection pool, the connections kept between statements, and one method per
/// statement, for any [`Dialect`].
#[derive(Debug)]
pub(crate) struct Core<DB: Database> {
    pub(crate) pool: Pool<DB>,
    /// Connections kept between statements (shared by clones): a statement is one round
    /// trip, without sqlx's check of every connection it gets back.
    held: Arc<Held<DB>>,
}

impl<DB: Database> Clone for Core<DB> {
    fn clone(&self) -> Self {
        Core {
            pool: self.pool.clone(),
            held: Arc::clone(&self.held),
        }
    }
}

impl<DB: Database> Core<DB> {
    pub(crate) fn new(pool: Pool<DB>) -> Self {
        Core {
            held: Held::new(&pool),
            pool,
        }
    }
}

/// Runs one statement (`$statement`, an sqlx query executed on `$conn`) once on a connection
/// from [`Held::take`] (`$checked`: one from sqlx's pool, checked) and keeps the connection
/// after a success. Evaluates to a future of `Result<_, sqlx::Error>`.
macro_rules! once {
    ($core:expr, $checked:expr, |$conn:ident| $statement:expr) => {
        async {
            let mut lent = $core.held.take(&$core.pool, $checked).await?;
            let $conn = &mut *lent;
            let done = $statement.await;
            if done.is_ok() {
                $core.held.give(&$core.pool, lent);
            }
            done
        }
    };
}

/// [`once!`], and once more on a checked connection if the first one turned out dead: for
/// statements whose repetition is harmless (reads, `touch`, purges).
macro_rules! statement {
    ($core:expr, |$conn:ident| $statement:expr) => {
        async {
            match once!($core, false, |$conn| $statement).await {
                Err(e) if lost::is_lost(&e) => {
                    lost::note();
                    once!($core, true, |$conn| $statement).await
                }
                done => done,
            }
        }
    };
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
        let row: Option<(Vec<u8>, i64)> = statement!(self, |conn| {
            sqlx::query_as(statements::<DB>().get.as_str())
                .bind(key.as_str())
                .fetch_optional(conn)
        })
        .await
        .map_err(|e| db_error(DB::BACKEND, "get", e))?;
        Ok(row.map(|(value, v)| Entry::new(value, version(v))))
    }

    /// A fresh write id for a write that may be resent (PostgreSQL), `None` for SQLite (see
    /// [`Statements`]).
    fn write_id() -> Result<Option<String>> {
        match DB::DATABASE {
            SqlDatabase::Postgres => write_id::fresh().map(Some),
            SqlDatabase::Sqlite => Ok(None),
        }
    }

    /// The version the put `own` wrote, if it committed (and fewer than
    /// [`KEPT`](write_id::KEPT) writes to `key` followed it).
    async fn put_written(&self, key: &Key, own: &str) -> Result<Option<Version>> {
        let row: Option<(Vec<u8>,)> = statement!(self, |conn| {
            sqlx::query_as(statements::<DB>().put_written.as_str())
                .bind(key.as_str())
                .fetch_optional(conn)
        })
        .await
        .map_err(|e| db_error(DB::BACKEND, "put", e))?;
        Ok(row.and_then(|(ids,)| write_id::written(&ids, own)))
    }

    /// Whether the delete `own` committed.
    async fn delete_written(&self, own: &str) -> Result<bool> {
        let row: Option<(i64,)> = statement!(self, |conn| {
            sqlx::query_as(statements::<DB>().delete_written.as_str())
                .bind(own)
                .fetch_optional(conn)
        })
        .await
        .map_err(|e| db_error(DB::BACKEND, "delete", e))?;
        Ok(row.is_some())
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
    ///
    /// A write whose connection died (PostgreSQL) may have committed with its reply lost: its
    /// write id tells. It is sent again on a checked connection only if it did not commit,
    /// and a refused resend looks once more (the first attempt may have committed meanwhile).
    pub(crate) async fn put(
        &self,
        key: &Key,
        value: &Bytes,
        ttl: Option<Ttl>,
        mode: PutMode,
    ) -> Result<Version> {
        const CREATE_ATTEMPTS: u32 = 8;
        let sql = statements::<DB>();
        let own = Self::write_id()?;
        let mut resent = false;
        let mut attempt = 1;
        loop {
            let written: sqlx::Result<Option<(i64,)>> = once!(self, resent, |conn| {
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
                match &own {
                    Some(own) => query.bind(own.as_str()),
                    None => query,
                }
                .fetch_optional(conn)
            })
            .await;
            match (written, &own) {
                (Ok(Some((v,))), _) => return Ok(version(v)),
                (Ok(None), _) => {}
                (Err(e), Some(own)) if !resent && lost::is_lost(&e) => {
                    lost::note();
                    resent = true;
                    match self.put_written(key, own).await? {
                        Some(v) => return Ok(v),
                        None => continue,
                    }
                }
                // The resend's reply was lost too: one more look (`None` if that fails).
                (Err(e), Some(own)) if resent && lost::is_lost(&e) => {
                    if let Ok(Some(v)) = self.put_written(key, own).await {
                        return Ok(v);
                    }
                    return Err(db_error(DB::BACKEND, "put", e));
                }
                (Err(e), _) => return Err(db_error(DB::BACKEND, "put", e)),
            }
            if let (true, Some(own)) = (resent, &own) {
                if let Some(v) = self.put_written(key, own).await? {
                    return Ok(v);
                }
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

    /// Deletes the live row of `key` (at version `expected` if given): whether one was
    /// deleted. A delete whose connection died is sent again only if its write id says it
    /// did not commit (PostgreSQL; see [`put`](Self::put)).
    async fn remove(&self, key: &Key, expected: Option<Version>) -> Result<bool> {
        let sql = statements::<DB>();
        let own = Self::write_id()?;
        let mut resent = false;
        loop {
            let done = once!(self, resent, |conn| {
                let query = match expected {
                    Some(v) => sqlx::query(sql.delete_if.as_str())
                        .bind(key.as_str())
                        .bind(v.into_raw() as i64),
                    None => sqlx::query(sql.delete.as_str()).bind(key.as_str()),
                };
                match &own {
                    Some(own) => query.bind(own.as_str()),
                    None => query,
                }
                .execute(conn)
            })
            .await;
            match (done, &own) {
                (Ok(done), _) if DB::rows_affected(&done) > 0 => return Ok(true),
                (Ok(_), Some(own)) if resent => return self.delete_written(own).await,
                (Ok(_), _) => return Ok(false),
                (Err(e), Some(own)) if !resent && lost::is_lost(&e) => {
                    lost::note();
                    resent = true;
                    if self.delete_written(own).await? {
                        return Ok(true);
                    }
                }
                (Err(e), Some(own)) if resent && lost::is_lost(&e) => {
                    if let Ok(true) = self.delete_written(own).await {
                        return Ok(true);
                    }
                    return Err(db_error(DB::BACKEND, "delete", e));
                }
                (Err(e), _) => return Err(db_error(DB::BACKEND, "delete", e)),
            }
        }
    }

    pub(crate) async fn delete(&self, key: &Key) -> Result<bool> {
        self.remove(key, None).await
    }

    pub(crate) async fn delete_if(&self, key: &Key, expected: Version) -> Result<bool> {
        if self.remove(key, Some(expected)).await? {
            return Ok(true);
        }
        Err(conflict(DB::BACKEND, false, self.get(key).await?))
    }

    pub(crate) async fn touch(&self, key: &Key, ttl: Option<Ttl>) -> Result<bool> {
        let done = statement!(self, |conn| {
            sqlx::query(statements::<DB>().touch.as_str())
                .bind(ttl_ms(ttl))
                .bind(key.as_str())
                .execute(conn)
        })
        .await
        .map_err(|e| db_error(DB::BACKEND, "touch", e))?;
        Ok(DB::rows_affected(&done) > 0)
    }

    pub(crate) async fn purge_expired(&self, batch: u32) -> Result<u64> {
        let batch = u64::from(batch.max(1));
        let mut total = 0;
        loop {
            let done = statement!(self, |conn| {
                sqlx::query(statements::<DB>().purge.as_str())
                    .bind(batch as i64)
                    .execute(conn)
            })
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
        let (now,): (i64,) = statement!(self, |conn| {
            sqlx::query_as(statements::<DB>().clock.as_str()).fetch_one(conn)
        })
        .await
        .map_err(|e| db_error(DB::BACKEND, "clock", e))?;
        Ok(now)
    }
}
