#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod backend;
mod cache;
mod capability;
pub mod codec;
pub mod envelope;
mod error;
#[cfg(feature = "axum")]
mod http;
mod key;
pub mod layer;
// Shared with larder-coord (holder ids, jitter) so the workspace has one such helper; not a
// stable API.
#[doc(hidden)]
pub mod random;
pub mod retry;
mod single_flight;
mod ttl;
mod types;
pub mod url;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use backend::{CacheBackend, DynBackend};
pub use cache::Cache;
pub use capability::Capabilities;
pub use error::{BoxError, Error, ErrorKind, Result};
pub use key::Key;
pub use ttl::Ttl;
pub use types::{DeleteMode, Entry, PutMode, Version};

/// Re-exported so backends and users name the same `async_trait` and `Bytes`.
pub use async_trait::async_trait;
pub use bytes::Bytes;
