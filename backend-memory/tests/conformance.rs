//! The contract's conformance suite against the memory backend (the coordination cases run
//! over it in the workspace's `tests/tests/memory.rs`).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use larder_backend_memory::MemoryBackend;
use larder_cache_api::DynBackend;

async fn backend() -> DynBackend {
    Arc::new(MemoryBackend::default())
}

mod memory {
    larder_cache_api::conformance_suite!(super::backend);
}
