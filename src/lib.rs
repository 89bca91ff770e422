#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use larder_cache_api::*;

/// Backends compiled into this build, one module per Cargo feature.
pub mod backends {
    /// The in-process backend (feature `memory`, on by default).
    #[cfg(feature = "memory")]
    pub use larder_backend_memory as memory;
}

mod connect;
pub use connect::connect;
