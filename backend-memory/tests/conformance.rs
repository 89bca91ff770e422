//! The whole conformance suite against the memory backend, coordination cases included.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use larder_backend_memory::MemoryBackend;
use larder_cache_api::DynBackend;

async fn backend() -> DynBackend {
    Arc::new(MemoryBackend::default())
}

mod memory {
    larder_coord::conformance_suite!(super::backend);
}
