//! The whole conformance suite, coordination cases included, on the memory backend, and the
//! same backend restricted to compare-and-swap that is not linearizable (which coordination
//! must refuse).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use larder_backend_memory::MemoryBackend;
use larder_cache_api::layer::Restrict;
use larder_cache_api::{CacheBackend, DynBackend};

async fn memory() -> DynBackend {
    Arc::new(MemoryBackend::default())
}

async fn not_linearizable() -> DynBackend {
    let b = MemoryBackend::default();
    let mut caps = b.capabilities().clone();
    caps.linearizable_cas = false;
    Arc::new(Restrict::new(Arc::new(b), caps).unwrap())
}

mod memory {
    larder_coord::conformance_suite!(super::memory);
}

mod not_linearizable {
    larder_coord::conformance_suite!(super::not_linearizable);
}
