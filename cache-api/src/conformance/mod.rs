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
//! Backends stamp the whole suite (these cases and the coordination cases of
//! `larder-coord`) into their tests with one macro, `larder_coord::conformance_suite!`
//! (feature `conformance` of `larder-coord`), which makes one `#[tokio::test]` per case:
//!
//! ```text
//! async fn backend() -> larder_cache_api::DynBackend {
//!     std::sync::Arc::new(MyBackend::connect("...").await.unwrap())
//! }
//! mod my_backend {
//!     larder_coord::conformance_suite!(super::backend);
//! }
//! ```
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

/// Stamps every contract case into the current module as a `#[tokio::test]`; used by
/// `larder_coord::conformance_suite!`, which adds the coordination cases (call that one).
///
/// `$make` is the path of an `async fn() -> DynBackend`, called once per case.
#[doc(hidden)]
#[macro_export]
macro_rules! contract_cases {
    ($make:path) => {
        $crate::contract_cases!(@cases $make;
            basic::get_absent_is_none,
            basic::put_then_get_roundtrips,
            basic::overwrite_replaces_value_and_version,
            basic::empty_value_roundtrips,
            basic::binary_value_roundtrips,
            basic::delete_present_returns_true,
            basic::delete_absent_returns_false,
            basic::delete_expired_returns_false,
            basic::get_expired_is_none,
            basic::touch_present_extends_life,
            basic::touch_absent_returns_false,
            basic::touch_expired_returns_false,
            basic::touch_none_removes_expiry,
            basic::touch_keeps_version_and_value,
            cas::create_on_absent_succeeds,
            cas::create_on_present_conflicts_with_current,
            cas::create_on_expired_succeeds,
            cas::update_with_current_version_succeeds,
            cas::update_with_stale_version_conflicts_with_current,
            cas::update_on_absent_conflicts,
            cas::update_on_expired_conflicts,
            cas::delete_if_version_matches,
            cas::delete_if_version_stale_conflicts,
            cas::delete_if_version_absent_conflicts,
            cas::version_not_reused_after_delete,
            cas::cas_race_16_tasks_50_increments,
            cas::create_race_has_one_winner,
            ttl::ttl_expires,
            ttl::ttl_rounds_up_never_early,
            ttl::ttl_over_30_days_is_kept,
            ttl::overwrite_restates_ttl,
            ttl::conditional_write_states_ttl,
            ttl::zero_ttl_rejected,
            ttl::absurd_ttl_rejected,
            ttl::put_many_applies_ttl,
            keys::empty_key_rejected,
            keys::key_of_251_bytes_rejected,
            keys::key_at_declared_limit_roundtrips,
            keys::key_with_space_rejected,
            keys::key_with_newline_rejected,
            keys::key_with_control_byte_rejected,
            keys::hashed_long_key_roundtrips,
            keys::utf8_key_roundtrips,
            keys::similar_keys_are_distinct,
            values::value_at_limit_accepted,
            values::value_over_limit_rejected,
            values::oversized_write_keeps_old_value,
            values::typed_oversized_value_rejected_before_sending,
            envelope::foreign_bytes_give_decode_error,
            envelope::other_codec_bytes_give_decode_error,
            envelope::truncated_envelope_gives_decode_error,
            envelope::decode_error_as_miss_when_asked,
            envelope::decode_error_loses_nothing,
            namespace::namespaces_are_isolated,
            namespace::invalidate_hides_old_entries,
            namespace::invalidation_seen_by_other_handle,
            namespace::key_too_long_after_prefix_rejected,
            namespace::versions_not_reused_across_invalidation,
            typed::typed_struct_roundtrips,
            typed::single_flight_100_callers_one_load,
            typed::get_or_insert_with_hit_skips_loader,
            typed::loader_error_reaches_all_callers_and_caches_nothing,
            typed::update_creates_when_absent,
            typed::update_exhausted_returns_conflict,
            batch::get_many_duplicates_and_missing,
            batch::get_many_empty,
            batch::put_many_then_get_many,
            batch::typed_get_many,
            capability::capabilities_are_sane,
            capability::undeclared_capabilities_are_refused,
        );
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
