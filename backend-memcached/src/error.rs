//! How memcached client failures become larder errors.

use std::io;

use larder_cache_api::{Entry, Error, ErrorKind};
use memcache::exp::Error as McError;

pub(crate) const BACKEND: &str = "memcached";

/// Maps a client error, keeping it as the source.
pub(crate) fn from_client(e: McError) -> Error {
    let (kind, msg) = classify(&e);
    Error::new(kind, msg).with_backend(BACKEND).with_source(e)
}

fn classify(e: &McError) -> (ErrorKind, &'static str) {
    match e {
        McError::Io(io) => io_kind(io),
        McError::Timeout { .. } => (ErrorKind::Timeout, "memcached did not answer in time"),
        // Written in full but unanswered: the kind follows the cause; either way whether it
        // took effect is unknown, which Timeout/Unavailable callers must assume anyway.
        McError::Ambiguous { source, .. } => match classify(source) {
            (ErrorKind::Timeout, _) => (
                ErrorKind::Timeout,
                "memcached did not answer in time; the write may or may not have happened",
            ),
            (ErrorKind::Unavailable, _) => (
                ErrorKind::Unavailable,
                "connection to memcached lost; the write may or may not have happened",
            ),
            (kind, msg) => (kind, msg),
        },
        McError::Server(m) if m.contains("too large") => (
            ErrorKind::ValueTooLarge,
            "memcached refused the value as too large",
        ),
        McError::Server(_) => (ErrorKind::Backend, "memcached reported a server error"),
        McError::Rejected(_) => (ErrorKind::Backend, "memcached rejected the command"),
        McError::Protocol(_) => (ErrorKind::Backend, "unexpected reply from memcached"),
        _ => (ErrorKind::Backend, "memcached client error"),
    }
}

fn io_kind(e: &io::Error) -> (ErrorKind, &'static str) {
    if matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    ) {
        (ErrorKind::Timeout, "memcached did not answer in time")
    } else {
        (ErrorKind::Unavailable, "cannot reach memcached")
    }
}

/// An I/O failure of larder's own exchanges (the `stats` probe at connect).
pub(crate) fn from_io(e: io::Error, what: String) -> Error {
    let (kind, _) = io_kind(&e);
    Error::new(kind, what).with_backend(BACKEND).with_source(e)
}

/// A reply larder could not make sense of.
pub(crate) fn protocol(msg: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::new(ErrorKind::Backend, msg).with_backend(BACKEND)
}

pub(crate) fn exists(current: Entry) -> Error {
    Error::already_exists(current).with_backend(BACKEND)
}

pub(crate) fn version_mismatch(current: Option<Entry>) -> Error {
    Error::version_mismatch(current).with_backend(BACKEND)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        let refused = McError::Io(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert_eq!(from_client(refused).kind(), ErrorKind::Unavailable);
        let t = McError::Timeout { key: b"k".to_vec() };
        assert_eq!(from_client(t).kind(), ErrorKind::Timeout);
        let amb = McError::Ambiguous {
            key: b"k".to_vec(),
            source: Box::new(McError::Io(io::Error::from(io::ErrorKind::TimedOut))),
        };
        let e = from_client(amb);
        assert_eq!(e.kind(), ErrorKind::Timeout);
        assert!(e.is_retryable());
        let big = McError::Server("object too large for cache".into());
        assert_eq!(from_client(big).kind(), ErrorKind::ValueTooLarge);
        let e = from_client(McError::Protocol("x".into()));
        assert_eq!(e.kind(), ErrorKind::Backend);
        assert!(std::error::Error::source(&e).is_some(), "source kept");
    }
}
