//! How the memory backend reports a lost conditional write.

use larder_cache_api::{Entry, Error};

pub(crate) const BACKEND: &str = "memory";

pub(crate) fn exists(current: Entry) -> Error {
    Error::already_exists(current).with_backend(BACKEND)
}

pub(crate) fn version_mismatch(current: Option<Entry>) -> Error {
    Error::version_mismatch(current).with_backend(BACKEND)
}
