//! Fenced writes: an SQL effect that commits only if its fencing token is not older than
//! the newest token already seen for the resource.
//!
//! A lease alone never guarantees mutual exclusion: a holder paused past its lease (GC,
//! SIGSTOP, a slow disk) wakes up still believing it holds it. Run the effect in the same
//! transaction as [`advance`](Fence::advance) and the database itself refuses the stale
//! holder's write.

use std::future::Future;
use std::pin::Pin;

use larder_cache_api::Result;
use sqlx::{Database, Decode, Encode, Executor, Transaction, Type};

use crate::core::Core;
use crate::error::{db_error, token_too_large};
use crate::Dialect;

/// The fence of one resource (a row of `larder_fences`): get one with
/// [`SqlKv::fence`](crate::SqlKv::fence).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> larder_cache_api::Result<()> {
/// # let dir = tempfile::tempdir().expect("temp dir");
/// let kv = larder_backend_sql::SqliteKv::open(&dir.path().join("kv.db")).await?;
/// let fence = kv.fence("nightly-report");
/// let wrote = fence
///     .run(7, |tx| {
///         Box::pin(async move {
///             // The effect, in the fence's transaction: `sqlx::query(...).execute(&mut **tx)`.
///             Ok("written")
///         })
///     })
///     .await?;
/// assert_eq!(wrote, Some("written"));
/// // A paused holder with an older token writes nothing.
/// assert_eq!(fence.run(6, |_| Box::pin(async { Ok(()) })).await?, None);
/// assert_eq!(fence.current().await?, Some(7));
/// # Ok(()) }
/// ```
pub struct Fence<DB: Database> {
    core: Core<DB>,
    resource: String,
}

/// A fence in PostgreSQL (feature `postgres`).
#[cfg(feature = "postgres")]
pub type PgFence = Fence<sqlx::Postgres>;

/// A fence in SQLite (feature `sqlite`).
#[cfg(feature = "sqlite")]
pub type SqliteFence = Fence<sqlx::Sqlite>;

impl<DB: Database> Clone for Fence<DB> {
    fn clone(&self) -> Self {
        Fence {
            core: self.core.clone(),
            resource: self.resource.clone(),
        }
    }
}

impl<DB: Database> std::fmt::Debug for Fence<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fence")
            .field("database", &DB::NAME)
            .field("resource", &self.resource)
            .finish_non_exhaustive()
    }
}

/// An effect run inside a fence's transaction.
pub type Effect<'t, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 't>>;

// What sqlx needs to run the fence's SQL on `DB`; PostgreSQL and SQLite provide all of it.
impl<DB> Fence<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    pub(crate) fn new(core: Core<DB>, resource: &str) -> Self {
        Fence {
            core,
            resource: resource.to_owned(),
        }
    }

    /// The resource this fence guards.
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// Records `token` for the resource and returns `true` if it is at least the newest token
    /// seen (`UPDATE ... WHERE token <= $token`); `false` means a newer holder has written:
    /// roll the transaction back and stop.
    pub async fn advance(&self, tx: &mut Transaction<'static, DB>, token: u64) -> Result<bool> {
        let token = i64::try_from(token).map_err(|_| token_too_large(DB::BACKEND))?;
        let row: Option<(i64,)> = sqlx::query_as(
            "INSERT INTO larder_fences (name, token) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET token = excluded.token \
             WHERE larder_fences.token <= excluded.token RETURNING token",
        )
        .bind(self.resource.as_str())
        .bind(token)
        .fetch_optional(&mut **tx)
        .await
        .map_err(|e| db_error(DB::BACKEND, "fence", e))?;
        Ok(row.is_some())
    }

    /// Runs `effect` in a transaction guarded by the fence: it commits only if `token` is
    /// not stale. Returns `Ok(None)` (and writes nothing) if it is.
    pub async fn run<T, F>(&self, token: u64, effect: F) -> Result<Option<T>>
    where
        F: for<'t> FnOnce(&'t mut Transaction<'static, DB>) -> Effect<'t, T>,
    {
        let mut tx = self
            .core
            .pool
            .begin()
            .await
            .map_err(|e| db_error(DB::BACKEND, "fence", e))?;
        if !self.advance(&mut tx, token).await? {
            tx.rollback()
                .await
                .map_err(|e| db_error(DB::BACKEND, "fence", e))?;
            return Ok(None);
        }
        let out = effect(&mut tx).await?;
        tx.commit()
            .await
            .map_err(|e| db_error(DB::BACKEND, "fence", e))?;
        Ok(Some(out))
    }

    /// The newest token seen for the resource.
    pub async fn current(&self) -> Result<Option<u64>> {
        let row: Option<(i64,)> = sqlx::query_as("SELECT token FROM larder_fences WHERE name = $1")
            .bind(self.resource.as_str())
            .fetch_optional(&self.core.pool)
            .await
            .map_err(|e| db_error(DB::BACKEND, "fence", e))?;
        Ok(row.map(|(t,)| t as u64))
    }
}
