//! The shared conformance suite's contract cases: every backend runs every case.
//!
//! **Not a stable API**: cases are added as the contract is sharpened.
//!
//! Each case is a plain `async fn(DynBackend)` that panics on a violation. Cases use fresh
//! random keys, so they run in parallel against one shared server. Timings derive from the
//! backend's declared [`Capabilities::ttl_precision`](crate::Capabilities), so a
//! second-precision backend gets second-scale TTLs. Each case reads the declared
//! capabilities and decides what to check: a capability a backend does not declare is
//! checked for refusal ([`ErrorKind::Unsupported`](crate::ErrorKind)), never skipped.
//!
//! A backend stamps the whole suite into its tests with one macro,
//! [`conformance_suite!`](crate::conformance_suite) (feature `conformance`), which makes one
//! `#[tokio::test]` per case:
//!
//! ```text
//! async fn backend() -> larder_cache_api::DynBackend {
//!     std::sync::Arc::new(MyBackend::connect("...").await.unwrap())
//! }
//! mod my_backend {
//!     larder_cache_api::conformance_suite!(super::backend);
//! }
//! ```
//!
//! The coordination cases (leases on the same contract) belong to `larder-coord`; they are
//! stamped over every store where the crates meet, in the workspace's `tests/`, with
//! `larder_coord::conformance_suite!` (these cases and the coordination ones), so that no
//! backend depends on `larder-coord`.
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::Duration;

use crate::random::random_u64;
use crate::{Bytes, Capabilities, DynBackend, Key, PutMode, Ttl, Version};

pub mod basic;
pub mod batch;
pub mod capability;
pub mod cas;
pub mod envelope;
pub mod keys;
pub mod linearizability;
pub mod namespace;
pub mod ttl;
pub mod typed;
pub mod values;

/// A fresh key no other case (or run) uses.
pub fn key(tag: &str) -> Key {
    Key::new(format!("lc-{:016x}-{tag}", random_u64())).unwrap()
}

/// The time unit of TTL cases: the backend's precision, at least 200 ms (so that a slow
/// write, an fsync say, does not eat the margins of the never-early checks).
pub fn unit(caps: &Capabilities) -> Duration {
    caps.ttl_precision.max(Duration::from_millis(200))
}

/// A short TTL (two units) and how long to wait until it has surely passed.
pub fn short_ttl(caps: &Capabilities) -> (Ttl, Duration) {
    let u = unit(caps);
    let ttl = Ttl::new(2 * u).unwrap();
    (
        ttl,
        3 * u + 2 * caps.ttl_precision + Duration::from_millis(250),
    )
}

/// Overwrites `key` with `value`, no TTL.
pub async fn put(b: &DynBackend, key: &Key, value: &'static [u8]) -> Version {
    b.put(key, Bytes::from_static(value), None, PutMode::Overwrite)
        .await
        .unwrap_or_else(|e| panic!("{}: put {key} failed: {e}", b.capabilities().name))
}

/// The value under `key`, if any.
pub async fn value(b: &DynBackend, key: &Key) -> Option<Bytes> {
    b.get(key)
        .await
        .unwrap_or_else(|e| panic!("{}: get {key} failed: {e}", b.capabilities().name))
        .map(|e| e.value)
}

/// Stamps every contract case into the current module as a `#[tokio::test]`, one per case,
/// so that a failure reads `my_backend::cas_race`.
///
/// `$make` is the path of an `async fn() -> DynBackend`, called once per case. Each module
/// of the suite lists its own cases next to them (a hidden macro per module). The crate using
/// it needs `tokio` with the `macros` and `rt-multi-thread` features as a dev-dependency, and
/// `larder-cache-api` with the `conformance` feature.
#[macro_export]
macro_rules! conformance_suite {
    ($make:path) => {
        $crate::__conformance_basic!($make);
        $crate::__conformance_cas!($make);
        $crate::__conformance_linearizability!($make);
        $crate::__conformance_ttl!($make);
        $crate::__conformance_keys!($make);
        $crate::__conformance_values!($make);
        $crate::__conformance_envelope!($make);
        $crate::__conformance_namespace!($make);
        $crate::__conformance_typed!($make);
        $crate::__conformance_batch!($make);
        $crate::__conformance_capability!($make);
    };
    (@cases $make:path; $($module:ident :: $case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let backend: $crate::DynBackend = $make().await;
                $crate::conformance::$module::$case(backend).await;
            }
        )*
    };
}
