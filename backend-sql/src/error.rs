//! How database errors map onto larder's [`Error`].

use larder_cache_api::{Entry, Error, ErrorKind};

/// Maps a database error of operation `op` (the mapping shared with the session store:
/// connection trouble is [`Unavailable`](ErrorKind::Unavailable), the rest
/// [`Backend`](ErrorKind::Backend); the sqlx error is kept as the source).
pub(crate) fn db_error(backend: &'static str, op: &'static str, e: sqlx::Error) -> Error {
    larder_sql_common::db_error(backend, format!("{op} failed"), e)
}

/// The [`Conflict`](ErrorKind::Conflict) of a refused write: a create-only write that found
/// the key live, or a conditional write or delete that found another version (or nothing).
pub(crate) fn conflict(backend: &'static str, create: bool, current: Option<Entry>) -> Error {
    let msg = match (create, &current) {
        (true, _) => "key already exists",
        (false, Some(_)) => "stored version differs",
        (false, None) => "key is absent",
    };
    Error::conflict(msg, current).with_backend(backend)
}

/// A URL this backend cannot use.
pub(crate) fn config(message: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::new(ErrorKind::Config, message)
}

/// A fencing token the database cannot store (they are `BIGINT`).
pub(crate) fn token_too_large(backend: &'static str) -> Error {
    Error::new(
        ErrorKind::Config,
        "fencing token too large for the database",
    )
    .with_backend(backend)
}
