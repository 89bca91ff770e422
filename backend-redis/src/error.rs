//! How Redis client errors map onto larder's [`Error`].

use std::time::Duration;

use larder_cache_api::{Error, ErrorKind};
use redis::{ErrorKind as RK, RedisError, ServerErrorKind};

pub(crate) const BACKEND: &str = "redis";

/// Maps a client error of operation `op` (`"GET"`, `"connect"`, ...) to a larder error,
/// keeping the client error as the source. Messages never include credentials: the client's
/// errors carry server replies and I/O errors only.
pub(crate) fn map(op: &'static str, e: RedisError) -> Error {
    let (kind, what) = classify(&e);
    Error::new(kind, format!("{op}: {what}"))
        .with_backend(BACKEND)
        .with_source(e)
}

/// Like [`map`], for establishing a connection: a server that refuses the setup commands
/// (`AUTH`, `SELECT`) is refusing this configuration, so that is a configuration error.
pub(crate) fn map_connect(e: RedisError) -> Error {
    if matches!(
        e.kind(),
        RK::Server(ServerErrorKind::ResponseError) | RK::Extension
    ) && classify(&e).0 == ErrorKind::Backend
    {
        return Error::new(
            ErrorKind::Config,
            "connect: the server refused the connection setup (check the database number and credentials)",
        )
        .with_backend(BACKEND)
        .with_source(e);
    }
    // rustls reports an untrusted or mismatched certificate as invalid data; so does a
    // TLS client talking to a plain server. Neither heals by retrying.
    if io_kind(&e) == Some(std::io::ErrorKind::InvalidData) {
        return Error::new(
            ErrorKind::Config,
            "connect: TLS handshake failed (is the certificate trusted and the scheme right?)",
        )
        .with_backend(BACKEND)
        .with_source(e);
    }
    map("connect", e)
}

/// The kind of the I/O error inside `e`, if it is one.
pub(crate) fn io_kind(e: &RedisError) -> Option<std::io::ErrorKind> {
    type Shared = std::sync::Arc<dyn std::error::Error + Send + Sync>;
    let src = std::error::Error::source(e)?;
    let inner: &(dyn std::error::Error + 'static) = match src.downcast_ref::<Shared>() {
        Some(arc) => &**arc,
        None => src,
    };
    inner.downcast_ref::<std::io::Error>().map(|io| io.kind())
}

fn classify(e: &RedisError) -> (ErrorKind, &'static str) {
    if e.is_timeout() {
        return (ErrorKind::Timeout, "no reply in time");
    }
    match e.code() {
        Some("NOAUTH") | Some("WRONGPASS") => {
            return (
                ErrorKind::Config,
                "authentication failed; check the user and password in the Redis URL",
            )
        }
        Some("NOPERM") => {
            return (
                ErrorKind::Config,
                "the Redis user lacks permission for this command",
            )
        }
        _ => {}
    }
    match e.kind() {
        RK::AuthenticationFailed => (
            ErrorKind::Config,
            "authentication failed; check the user and password in the Redis URL",
        ),
        RK::InvalidClientConfig => (ErrorKind::Config, "invalid client configuration"),
        RK::Io | RK::ClusterConnectionNotFound => (ErrorKind::Unavailable, "server unreachable"),
        RK::Server(
            ServerErrorKind::ClusterDown
            | ServerErrorKind::MasterDown
            | ServerErrorKind::TryAgain
            | ServerErrorKind::BusyLoading,
        ) => (ErrorKind::Unavailable, "server not ready"),
        // A replica (a demoted primary, under Sentinel) refused the write: not applied.
        RK::Server(ServerErrorKind::ReadOnly) => {
            (ErrorKind::Unavailable, "server is a read-only replica")
        }
        _ if e.is_connection_dropped() || e.is_connection_refusal() => {
            (ErrorKind::Unavailable, "connection lost")
        }
        _ => (ErrorKind::Backend, "server error"),
    }
}

/// The operation did not finish within `deadline`, e.g. while waiting for a reconnect.
pub(crate) fn deadline(
    op: &'static str,
    deadline: Duration,
    e: tokio::time::error::Elapsed,
) -> Error {
    Error::new(
        ErrorKind::Timeout,
        format!("{op}: no reply within {deadline:?}"),
    )
    .with_backend(BACKEND)
    .with_source(e)
}

/// A stored string that larder did not write (shorter than the version header).
pub(crate) fn foreign(len: usize) -> Error {
    Error::new(
        ErrorKind::Decode,
        format!("stored string of {len} bytes has no larder version header"),
    )
    .with_backend(BACKEND)
}

/// A reply of an unexpected shape.
pub(crate) fn unexpected(op: &'static str, got: &redis::Value) -> Error {
    Error::new(
        ErrorKind::Backend,
        format!("{op}: unexpected reply {}", describe(got)),
    )
    .with_backend(BACKEND)
}

fn describe(v: &redis::Value) -> &'static str {
    match v {
        redis::Value::Nil => "nil",
        redis::Value::Int(_) => "integer",
        redis::Value::BulkString(_) => "bulk string",
        redis::Value::Array(_) => "array",
        redis::Value::SimpleString(_) => "simple string",
        redis::Value::Okay => "OK",
        _ => "of another type",
    }
}

pub(crate) fn exists(current: larder_cache_api::Entry) -> Error {
    Error::conflict("key already exists", Some(current)).with_backend(BACKEND)
}

pub(crate) fn version_mismatch(current: Option<larder_cache_api::Entry>) -> Error {
    let msg = if current.is_some() {
        "stored version differs"
    } else {
        "key is absent"
    };
    Error::conflict(msg, current).with_backend(BACKEND)
}
