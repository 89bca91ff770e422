//! What differs between the databases larder's SQL runs on.

use sqlx::migrate::Migrate;
use sqlx::{Database, IntoArguments};

/// Which database: PostgreSQL or SQLite.
///
/// Not `#[non_exhaustive]`: the set is closed by the sealed [`Dialect`], and the crates that
/// keep SQL per database match on it exhaustively, so a new database shows every place that
/// needs its SQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SqlDatabase {
    /// PostgreSQL (`postgres://`, `postgresql://`; feature `postgres`).
    Postgres,
    /// An SQLite file (`sqlite://`; feature `sqlite`).
    Sqlite,
}

impl SqlDatabase {
    /// The backend name: `"postgres"` or `"sqlite"`.
    pub fn name(self) -> &'static str {
        match self {
            SqlDatabase::Postgres => "postgres",
            SqlDatabase::Sqlite => "sqlite",
        }
    }
}

mod sealed {
    pub trait Sealed {}
    #[cfg(feature = "postgres")]
    impl Sealed for sqlx::Postgres {}
    #[cfg(feature = "sqlite")]
    impl Sealed for sqlx::Sqlite {}
}

/// What differs between the databases larder's SQL runs on: the name, a few SQL fragments,
/// and how a statement reports the rows it changed. Implemented for [`sqlx::Postgres`]
/// (feature `postgres`) and [`sqlx::Sqlite`] (feature `sqlite`); sealed.
///
/// The statements and migrations of each crate stay in that crate, chosen by
/// [`DATABASE`](Dialect::DATABASE); what is here is about the database, not about any
/// table.
pub trait Dialect:
    Database<Connection: Migrate, Arguments: IntoArguments<Self>> + sealed::Sealed
{
    /// Which database this is.
    const DATABASE: SqlDatabase;
    /// The name in [`Capabilities`](larder_cache_api::Capabilities) and errors:
    /// `"postgres"` or `"sqlite"`.
    const BACKEND: &'static str;
    /// An SQL expression for the database clock, in whole milliseconds since the Unix epoch,
    /// such that `NOW_MS > expires_at` exactly when the clock (at its own precision) is past
    /// `expires_at`: what reads compare with.
    const NOW_MS: &'static str;
    /// An SQL expression for whole milliseconds since the Unix epoch never before the
    /// database clock (its ceiling): the base to which writes add a TTL.
    const EXPIRY_BASE_MS: &'static str;
    /// Whether the database can tell other connections about changes (PostgreSQL
    /// `LISTEN`/`NOTIFY`).
    const NOTIFIES: bool;
    /// How a transaction that writes starts.
    const BEGIN_WRITE: &'static str;
    /// `SELECT ... FOR UPDATE` where the database has it: how a read locks the row it will
    /// write (appended to the `SELECT`).
    const LOCK_ROW: &'static str;

    /// The rows a statement changed.
    fn rows_affected(result: &Self::QueryResult) -> u64;
}

#[cfg(feature = "postgres")]
impl Dialect for sqlx::Postgres {
    const DATABASE: SqlDatabase = SqlDatabase::Postgres;
    const BACKEND: &'static str = "postgres";
    // clock_timestamp(), not now(): now() is frozen at the start of the transaction. EXTRACT
    // gives an exact numeric with microseconds; its ceiling in milliseconds is above the
    // clock only when the clock is past the millisecond below (`::BIGINT` alone rounds to
    // nearest, which could end a TTL up to 0.5 ms early).
    const NOW_MS: &'static str = "CEIL(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT";
    const EXPIRY_BASE_MS: &'static str =
        "CEIL(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT";
    const NOTIFIES: bool = true;
    const BEGIN_WRITE: &'static str = "BEGIN";
    const LOCK_ROW: &'static str = " FOR UPDATE";

    fn rows_affected(result: &sqlx::postgres::PgQueryResult) -> u64 {
        result.rows_affected()
    }
}

#[cfg(feature = "sqlite")]
impl Dialect for sqlx::Sqlite {
    const DATABASE: SqlDatabase = SqlDatabase::Sqlite;
    const BACKEND: &'static str = "sqlite";
    // SQLite's 'now' is a whole number of milliseconds (the true time truncated); as a Julian
    // day in a double it comes back a few hundredths of a millisecond off, so it is rounded
    // back to that whole number (a plain CAST truncates it, up to 1 ms early). The true time
    // may be up to 1 ms past it: a write adds that millisecond.
    const NOW_MS: &'static str =
        "CAST(ROUND((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER)";
    const EXPIRY_BASE_MS: &'static str =
        "(CAST(ROUND((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER) + 1)";
    const NOTIFIES: bool = false;
    // The write lock at once: two such transactions queue instead of failing.
    const BEGIN_WRITE: &'static str = "BEGIN IMMEDIATE";
    const LOCK_ROW: &'static str = "";

    fn rows_affected(result: &sqlx::sqlite::SqliteQueryResult) -> u64 {
        result.rows_affected()
    }
}
