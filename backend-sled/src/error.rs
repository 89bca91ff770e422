//! How sled failures and lost conditional writes become larder errors.

use std::path::Path;

use larder_cache_api::{Entry, Error, ErrorKind};

pub(crate) const BACKEND: &str = "sled";

/// The text sled 0.34 puts in the I/O error it returns when another open database holds
/// the directory's lock file (`Config::try_lock`).
const LOCK_MESSAGE: &str = "could not acquire lock";

/// A sled failure during an operation.
pub(crate) fn sled(op: &'static str, e: sled::Error) -> Error {
    let kind = match &e {
        // No network here: an I/O failure is the disk's, and retrying rarely helps.
        sled::Error::Io(_)
        | sled::Error::Corruption { .. }
        | sled::Error::ReportableBug(_)
        | sled::Error::Unsupported(_)
        | sled::Error::CollectionNotFound(_) => ErrorKind::Backend,
    };
    Error::new(kind, format!("sled {op} failed"))
        .with_source(e)
        .with_backend(BACKEND)
}

/// Whether opening failed because another open database holds the directory's lock.
pub(crate) fn lock_held(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains(LOCK_MESSAGE))
}

/// A failure to open the database in `dir`. A directory held by another process (or by
/// another open backend in this process) is [`ErrorKind::Unavailable`]: it becomes
/// available again when the holder closes it.
pub(crate) fn open(dir: &Path, e: sled::Error) -> Error {
    if lock_held(&e) {
        return Error::new(
            ErrorKind::Unavailable,
            format!(
                "sled database directory {} is already open in another process or in this one \
                 (sled allows one open database per directory)",
                dir.display()
            ),
        )
        .with_source(e)
        .with_backend(BACKEND);
    }
    Error::new(
        ErrorKind::Backend,
        format!("cannot open sled database in {}", dir.display()),
    )
    .with_source(e)
    .with_backend(BACKEND)
}

/// Stored bytes that are not a larder sled record.
pub(crate) fn corrupt(what: &'static str, len: usize) -> Error {
    Error::new(
        ErrorKind::Decode,
        format!("stored sled record is not a larder record ({what}, {len} bytes)"),
    )
    .with_backend(BACKEND)
}

pub(crate) fn exists(current: Entry) -> Error {
    Error::already_exists(current).with_backend(BACKEND)
}

pub(crate) fn version_mismatch(current: Option<Entry>) -> Error {
    Error::version_mismatch(current).with_backend(BACKEND)
}

/// A blocking task that did not complete (the runtime shut down, or it panicked).
pub(crate) fn join(e: tokio::task::JoinError) -> Error {
    Error::new(ErrorKind::Backend, "sled operation did not complete")
        .with_source(e)
        .with_backend(BACKEND)
}
