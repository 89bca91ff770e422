//! How sqlx errors map onto larder's [`Error`].

use std::borrow::Cow;

use larder_cache_api::{Error, ErrorKind};

/// The kind of a database error: connection trouble (I/O, TLS, a pool that timed out or
/// closed, a crashed worker, a protocol error) is [`Unavailable`](ErrorKind::Unavailable),
/// which is retryable; anything else is [`Backend`](ErrorKind::Backend).
pub fn error_kind(e: &sqlx::Error) -> ErrorKind {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => ErrorKind::Unavailable,
        _ => ErrorKind::Backend,
    }
}

/// A database error of `backend` (`"postgres"`, `"sqlite"`) as larder's [`Error`]: its kind
/// by [`error_kind`], `message` saying what failed, the sqlx error kept as the source.
pub fn db_error(
    backend: &'static str,
    message: impl Into<Cow<'static, str>>,
    e: sqlx::Error,
) -> Error {
    Error::new(error_kind(&e), message)
        .with_backend(backend)
        .with_source(e)
}
