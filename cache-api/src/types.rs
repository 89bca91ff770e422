//! Entries, versions and write modes.

use std::fmt;

use bytes::Bytes;

/// An opaque version of a stored entry.
///
/// Every write gives the entry a new version; a version is never handed out twice for the
/// same key, not even after the key is deleted and created again (so compare-and-swap cannot
/// be fooled by an A-B-A sequence). Backends that declare
/// [`linearizable_cas`](crate::Capabilities::linearizable_cas) keep this across restarts;
/// the others only for the life of the server's data (memcached restarts its CAS counter
/// when it restarts, which is one reason coordination refuses it). Compare versions for
/// equality only: their order carries no meaning across backends.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Version(u64);

impl Version {
    /// Wraps a backend's raw version (a counter, a memcached CAS unique, ...).
    pub const fn from_raw(raw: u64) -> Self {
        Version(raw)
    }

    /// The backend's raw version.
    pub const fn into_raw(self) -> u64 {
        self.0
    }
}

impl fmt::Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Version({:#x})", self.0)
    }
}

/// A stored value and its version.
#[derive(Clone, PartialEq, Eq)]
pub struct Entry {
    /// The stored bytes (for the typed [`Cache`](crate::Cache): an envelope).
    pub value: Bytes,
    /// The version of this value.
    pub version: Version,
}

impl Entry {
    /// A new entry.
    pub fn new(value: impl Into<Bytes>, version: Version) -> Self {
        Entry {
            value: value.into(),
            version,
        }
    }
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("len", &self.value.len())
            .field("version", &self.version)
            .finish()
    }
}

/// How [`CacheBackend::put`](crate::CacheBackend::put) treats an existing entry.
///
/// A lost race is always an [`ErrorKind::Conflict`](crate::ErrorKind::Conflict) that carries
/// the entry stored now; never a silent overwrite, never an `Ok` that did nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode {
    /// Write whatever is there.
    Overwrite,
    /// Write only if the key is absent (or expired). Conflict otherwise.
    Create,
    /// Write only if the stored version is this one. Conflict otherwise, including when
    /// the key is absent.
    Update(Version),
}

/// How [`CacheBackend::delete`](crate::CacheBackend::delete) treats the existing entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteMode {
    /// Delete whatever is there; `Ok(false)` if nothing was.
    Any,
    /// Delete only if the stored version is this one. Conflict otherwise, including when the
    /// key is absent.
    IfVersion(Version),
}
