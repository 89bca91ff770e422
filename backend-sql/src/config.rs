//! Configuration of the SQL backend, parsed from a URL.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use larder_cache_api::url::redact;
use larder_cache_api::{Error, ErrorKind, Result};

use crate::error::config;

/// Default size of the connection pool.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 8;

/// Which database a URL names (one enum with the [`Dialect`](crate::Dialect)).
pub use larder_sql_common::SqlDatabase;

/// How to reach the database of a [`SqlKv`](crate::SqlKv), and the size of its pool.
///
/// Parsed from a URL by [`SqlConfig::from_url`]:
///
/// ```text
/// postgres://[user[:password]@]host[:port]/database[?option=value&...]   (or postgresql://)
/// sqlite://relative/path.db[?option=value&...]
/// sqlite:///absolute/path.db[?option=value&...]
/// ```
///
/// The options are sqlx's (`sslmode`, `options=-c search_path=name` for PostgreSQL; `mode`,
/// `cache` for SQLite). An SQLite file is created if missing and opened in WAL mode with a
/// busy timeout, so that writers queue instead of failing with "database is locked".
/// [`sqlite_url`] turns a path into such a URL.
///
/// `Debug` never shows the password:
///
/// ```
/// use larder_backend_sql::{SqlConfig, SqlDatabase};
///
/// let c = SqlConfig::from_url("postgres://app:s3cret@db.internal/app")?;
/// assert_eq!(c.database, SqlDatabase::Postgres);
/// assert!(!format!("{c:?}").contains("s3cret"));
/// # Ok::<(), larder_cache_api::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SqlConfig {
    /// PostgreSQL or SQLite.
    pub database: SqlDatabase,
    url: String,
    /// Most connections the pool opens (default [`DEFAULT_MAX_CONNECTIONS`]).
    pub max_connections: u32,
    /// How long an operation waits for a free connection before it fails with
    /// [`ErrorKind::Unavailable`].
    pub acquire_timeout: Duration,
}

impl SqlConfig {
    /// Parses a database URL. An unknown scheme, or options sqlx rejects, are
    /// [`ErrorKind::Config`]; a database whose Cargo feature is off is
    /// [`ErrorKind::Unsupported`].
    pub fn from_url(url: &str) -> Result<Self> {
        let (scheme, rest) = url.split_once(':').unwrap_or(("", url));
        let scheme = scheme.to_ascii_lowercase();
        let database = match scheme.as_str() {
            "postgres" | "postgresql" => SqlDatabase::Postgres,
            "sqlite" => SqlDatabase::Sqlite,
            _ => {
                return Err(config(format!(
                    "{:?} is not a database URL (expected postgres://... or sqlite://path)",
                    redact(url)
                )))
            }
        };
        let config = SqlConfig {
            database,
            // sqlx matches the scheme case-sensitively.
            url: format!("{scheme}:{rest}"),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            acquire_timeout: match database {
                SqlDatabase::Postgres => Duration::from_secs(5),
                // Writers queue on SQLite's one write lock.
                SqlDatabase::Sqlite => Duration::from_secs(10),
            },
        };
        // Parse now, so that a bad URL fails here and not on first use.
        match database {
            #[cfg(feature = "postgres")]
            SqlDatabase::Postgres => {
                config.pg_options()?;
            }
            #[cfg(feature = "sqlite")]
            SqlDatabase::Sqlite => {
                config.sqlite_options()?;
            }
            #[allow(unreachable_patterns)]
            other => {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    format!(
                        "{} URLs need the `{}` feature of larder-backend-sql",
                        other.name(),
                        other.name()
                    ),
                ))
            }
        }
        Ok(config)
    }

    /// Sets the pool size (at least 1).
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// The URL with any password replaced by `***`.
    pub fn redacted_url(&self) -> String {
        redact(&self.url)
    }

    #[cfg(feature = "postgres")]
    pub(crate) fn pg_options(&self) -> Result<sqlx::postgres::PgConnectOptions> {
        use std::str::FromStr as _;
        sqlx::postgres::PgConnectOptions::from_str(&self.url).map_err(|_| {
            // sqlx's message quotes pieces of the URL, which may be the password.
            Error::new(
                ErrorKind::Config,
                format!("invalid PostgreSQL URL {}", self.redacted_url()),
            )
            .with_backend("postgres")
        })
    }

    #[cfg(feature = "sqlite")]
    pub(crate) fn sqlite_options(&self) -> Result<sqlx::sqlite::SqliteConnectOptions> {
        use std::str::FromStr as _;
        let options = sqlx::sqlite::SqliteConnectOptions::from_str(&self.url).map_err(|_| {
            // sqlx's message quotes pieces of the URL, which may be the password.
            Error::new(
                ErrorKind::Config,
                format!("invalid SQLite URL {}", self.redacted_url()),
            )
            .with_backend("sqlite")
        })?;
        Ok(sqlite_defaults(options))
    }
}

/// WAL lets readers run beside the one writer; the busy timeout makes writers queue instead
/// of failing with "database is locked".
#[cfg(feature = "sqlite")]
pub(crate) fn sqlite_defaults(
    options: sqlx::sqlite::SqliteConnectOptions,
) -> sqlx::sqlite::SqliteConnectOptions {
    options
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(10))
}

impl fmt::Debug for SqlConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlConfig")
            .field("database", &self.database)
            .field("url", &self.redacted_url())
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .finish()
    }
}

/// The `sqlite://` URL of a database file, for [`SqlConfig::from_url`] and
/// `larder::connect`: `%`, `?` and `#` in the path are percent-encoded.
///
/// ```
/// use std::path::Path;
///
/// assert_eq!(
///     larder_backend_sql::sqlite_url(Path::new("/srv/app data/kv#1.db")),
///     "sqlite:///srv/app data/kv%231.db"
/// );
/// ```
pub fn sqlite_url(path: &Path) -> String {
    let mut url = String::from("sqlite://");
    for c in path.to_string_lossy().chars() {
        match c {
            '%' => url.push_str("%25"),
            '?' => url.push_str("%3F"),
            '#' => url.push_str("%23"),
            c => url.push(c),
        }
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://app:pw@h:5432/db?x=1"),
            "postgres://app:***@h:5432/db?x=1"
        );
        assert_eq!(redact("postgres://app@h/db"), "postgres://app@h/db");
        assert_eq!(redact("sqlite:///tmp/a@b.db"), "sqlite:///tmp/a@b.db");
        assert_eq!(redact("no url"), "no url");
    }

    #[test]
    fn schemes_are_checked() {
        let e = SqlConfig::from_url("mysql://x/y").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(e.message().contains("not a database URL"), "{e}");
        #[cfg(feature = "sqlite")]
        assert_eq!(
            SqlConfig::from_url("SQLITE://x.db").unwrap().database,
            SqlDatabase::Sqlite
        );
        #[cfg(feature = "postgres")]
        assert_eq!(
            SqlConfig::from_url("postgresql://u@h/db")
                .unwrap()
                .max_connections(0)
                .max_connections,
            1
        );
    }
}
