//! How the memory backend reports a lost conditional write.

use larder_cache_api::{Entry, Error};

pub(crate) const BACKEND: &str = "memory";

pub(crate) fn exists(current: Entry) -> Error {
    Error::conflict("key already exists", Some(current)).with_backend(BACKEND)
}

pub(crate) fn version_mismatch(current: Option<Entry>) -> Error {
    let msg = if current.is_some() {
        "stored version differs"
    } else {
        "key is absent"
    };
    Error::conflict(msg, current).with_backend(BACKEND)
}
