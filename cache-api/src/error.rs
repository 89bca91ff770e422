//! The one error type of larder, with a [`ErrorKind`] to match on.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;

use crate::Entry;

/// A boxed error kept as the source of an [`Error`].
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// `Result` with larder's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, coarsely enough to decide what to do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The key is empty, too long, or holds whitespace or control bytes.
    InvalidKey,
    /// The value is larger than the backend accepts.
    ValueTooLarge,
    /// The TTL is zero, or longer than [`Ttl::MAX`](crate::Ttl::MAX).
    InvalidTtl,
    /// The backend cannot be reached (connection refused, reset, server gone).
    Unavailable,
    /// The operation did not finish within its deadline. Whether it took effect is unknown.
    Timeout,
    /// A conditional write lost: the entry was not in the expected state.
    /// [`Error::current`] carries the entry that is there now, if any.
    Conflict,
    /// Stored bytes could not be decoded: foreign bytes, another codec, a newer format.
    Decode,
    /// Encoding a value failed (a type the codec cannot represent).
    Encode,
    /// The backend does not offer this operation; see its
    /// [`Capabilities`](crate::Capabilities).
    Unsupported,
    /// A configuration or URL is invalid.
    Config,
    /// The loader passed to [`Cache::get_or_insert_with`](crate::Cache::get_or_insert_with) failed.
    Loader,
    /// The operation needs something to exist and it does not: deleted, expired or never
    /// created. The operation creates nothing (a save after a delete must not bring the
    /// thing back). Reads of an absent key are not errors: they return `None`.
    NotFound,
    /// An argument other than a key, a value or a TTL is malformed (an identifier of the
    /// wrong length or alphabet, say); checked before any I/O.
    InvalidInput,
    /// Any other failure reported by the backend.
    Backend,
}

// The kinds are the contract's: general enough for any store or layer built on it, so that
// one `Error` serves the whole family. Sessions report a save after logout as `NotFound` and a
// malformed session id as `InvalidInput`; the names they had before stay as aliases.
#[allow(non_upper_case_globals)]
impl ErrorKind {
    /// Former name of [`NotFound`](ErrorKind::NotFound).
    #[deprecated(note = "renamed `ErrorKind::NotFound`")]
    pub const Gone: ErrorKind = ErrorKind::NotFound;
    /// Former name of [`InvalidInput`](ErrorKind::InvalidInput).
    #[deprecated(note = "renamed `ErrorKind::InvalidInput`")]
    pub const InvalidId: ErrorKind = ErrorKind::InvalidInput;

    /// A short, stable, lower-case name, used in metrics labels and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidKey => "invalid_key",
            ErrorKind::ValueTooLarge => "value_too_large",
            ErrorKind::InvalidTtl => "invalid_ttl",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Decode => "decode",
            ErrorKind::Encode => "encode",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Config => "config",
            ErrorKind::Loader => "loader",
            ErrorKind::NotFound => "not_found",
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::Backend => "backend",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of every larder operation.
///
/// Match on [`kind`](Error::kind); the underlying cause stays reachable through
/// [`std::error::Error::source`].
///
/// ```
/// use larder_cache_api::{Error, ErrorKind, Key};
///
/// let err: Error = Key::new("has space").unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::InvalidKey);
/// assert!(!err.is_retryable());
/// ```
pub struct Error {
    kind: ErrorKind,
    message: Cow<'static, str>,
    backend: Option<&'static str>,
    retryable: bool,
    current: Option<Box<Entry>>,
    source: Option<BoxError>,
}

impl Error {
    /// A new error of `kind` with a human-readable message.
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Error {
            kind,
            message: message.into(),
            backend: None,
            retryable: matches!(kind, ErrorKind::Unavailable | ErrorKind::Timeout),
            current: None,
            source: None,
        }
    }

    /// A [`ErrorKind::Conflict`] carrying the entry that is stored now (`None`: absent).
    pub fn conflict(message: impl Into<Cow<'static, str>>, current: Option<Entry>) -> Self {
        let mut e = Error::new(ErrorKind::Conflict, message);
        e.current = current.map(Box::new);
        e
    }

    /// The [`ErrorKind::Conflict`] of a create-only write that found `current` stored.
    pub fn already_exists(current: Entry) -> Self {
        Error::conflict("key already exists", Some(current))
    }

    /// The [`ErrorKind::Conflict`] of a conditional write or delete that found another
    /// version stored (`Some`) or nothing (`None`).
    pub fn version_mismatch(current: Option<Entry>) -> Self {
        let msg = if current.is_some() {
            "stored version differs"
        } else {
            "key is absent"
        };
        Error::conflict(msg, current)
    }

    /// An [`ErrorKind::Unsupported`] error naming the capability the backend lacks.
    pub fn unsupported(what: &'static str) -> Self {
        Error::new(
            ErrorKind::Unsupported,
            format!("this backend does not support {what}"),
        )
    }

    /// Keeps `source` as the cause.
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Names the backend that raised the error (`"redis"`, `"memory"`, ...).
    pub fn with_backend(mut self, backend: &'static str) -> Self {
        self.backend = Some(backend);
        self
    }

    /// Overrides whether retrying the same operation may succeed.
    pub fn with_retryable(mut self, retryable: bool) -> Self {
        self.retryable = retryable;
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message, without the kind, backend or source.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The backend that raised the error, when known.
    pub fn backend(&self) -> Option<&'static str> {
        self.backend
    }

    /// Whether the same operation may succeed if retried later: true for
    /// [`Unavailable`](ErrorKind::Unavailable) and [`Timeout`](ErrorKind::Timeout), and for
    /// backend errors the backend marked as transient.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// For a [`Conflict`](ErrorKind::Conflict): the entry stored now, if there is one.
    pub fn current(&self) -> Option<&Entry> {
        self.current.as_deref()
    }

    /// For a [`Conflict`](ErrorKind::Conflict): takes the current entry out of the error.
    pub fn into_current(self) -> Option<Entry> {
        self.current.map(|b| *b)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind).field("message", &self.message);
        if let Some(b) = self.backend {
            d.field("backend", &b);
        }
        if let Some(c) = &self.current {
            d.field("current_version", &c.version);
        }
        if let Some(s) = &self.source {
            d.field("source", s);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(b) = self.backend {
            write!(f, "{b}: ")?;
        }
        write!(f, "{}: {}", self.kind, self.message)?;
        if let Some(s) = &self.source {
            write!(f, ": {s}")?;
        }
        Ok(())
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_ref()
            .map(|s| s.as_ref() as &(dyn StdError + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_is_kept_not_flattened() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = Error::new(ErrorKind::Unavailable, "connect").with_source(io);
        let src = e.source().expect("source kept");
        let io = src.downcast_ref::<std::io::Error>().expect("io error");
        assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused);
        assert!(e.is_retryable());
        assert_eq!(e.to_string(), "unavailable: connect: refused");
    }

    #[test]
    fn retryable_by_kind_and_override() {
        assert!(Error::new(ErrorKind::Timeout, "t").is_retryable());
        assert!(!Error::new(ErrorKind::Decode, "d").is_retryable());
        assert!(Error::new(ErrorKind::Backend, "b")
            .with_retryable(true)
            .is_retryable());
    }
}
