//! Shared fixtures for larder's Criterion benchmarks: keys, values and the `Session` struct,
//! plus the async helpers of the networked benches ([`harness`]) and the raw Redis client they
//! are compared with ([`raw_redis`]).
//!
//! Not published. Run the benches with `cargo bench -p larder-benches`; see `README.md` in
//! this crate for options and `RESULTS.md` for the last recorded figures.

use std::collections::BTreeMap;

pub mod harness;
pub mod raw_redis;

use bytes::Bytes;
use larder_cache_api::Key;
use serde::{Deserialize, Serialize};

/// Entries pre-filled in the stores the memory benches read from.
pub const ENTRIES: usize = 10_000;

/// Value sizes the memory benches use, with a label for the bench id.
pub const VALUE_SIZES: [(usize, &str); 2] = [(128, "128B"), (4096, "4KiB")];

/// Value sizes of the backend benches (redis, memcached, sled), with a label for the id.
pub const BACKEND_SIZES: [(usize, &str); 3] = [(128, "128B"), (4096, "4KiB"), (65536, "64KiB")];

/// Keys per `get_many` in the backend benches.
pub const MANY: usize = 100;

/// Concurrent tasks in the throughput runs of the backend benches.
pub const TASKS: usize = 64;

/// `n` distinct keys of 28 bytes each (`session:user:00000042:state`), the shape of a typical
/// session or per-user cache key.
pub fn keys(n: usize) -> Vec<Key> {
    (0..n)
        .map(|i| Key::new(format!("session:user:{i:08}:state")).expect("bench keys are valid"))
        .collect()
}

/// An order in which to visit `n` keys: a fixed pseudo-random permutation, so that
/// successive lookups do not walk memory in insertion order. The same order is used for
/// larder and for the raw anchors.
pub fn visit_order(n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in (1..n).rev() {
        // xorshift64, then Fisher-Yates.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let j = (x % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

/// A value of `size` bytes whose content depends on `seed` (so values are distinct).
pub fn value(size: usize, seed: usize) -> Bytes {
    Bytes::from(
        (0..size)
            .map(|j| (j.wrapping_mul(31).wrapping_add(seed)) as u8)
            .collect::<Vec<u8>>(),
    )
}

/// A web session as an application would cache it: about 10 fields of the usual kinds,
/// about 300 bytes once encoded with postcard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Random session id (UUID text).
    pub id: String,
    /// Numeric user id.
    pub user_id: u64,
    /// Tenant the session belongs to.
    pub tenant: String,
    /// Name shown in the UI.
    pub display_name: String,
    /// The user's e-mail address.
    pub email: String,
    /// Creation time, Unix milliseconds.
    pub created_at_ms: u64,
    /// Roles granted for this session.
    pub roles: Vec<String>,
    /// Free-form attributes (locale, time zone, user agent, ...).
    pub attributes: BTreeMap<String, String>,
    /// Anti-CSRF token (base64 text).
    pub csrf_token: String,
    /// Whether the second factor was checked.
    pub mfa_verified: bool,
    /// Whether the user asked to stay signed in.
    pub remember_me: bool,
    /// The admin acting as this user, if any.
    pub impersonated_by: Option<u64>,
}

impl Session {
    /// A representative session, numbered `n` (fields that vary per user depend on it).
    pub fn sample(n: u64) -> Self {
        let attributes = [
            ("locale", "en-GB".to_string()),
            ("tz", "Europe/London".to_string()),
            (
                "ua",
                "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
                    .to_string(),
            ),
            ("theme", "dark".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Session {
            id: format!("3f2b8c1e-9d4a-4e7b-a6c5-{n:012x}"),
            user_id: 1_000_000 + n,
            tenant: "acme-corp".to_string(),
            display_name: format!("Alice Example {n}"),
            email: format!("alice.example+{n}@example.com"),
            created_at_ms: 1_767_225_600_000 + n,
            roles: vec!["user".into(), "billing:read".into(), "reports:write".into()],
            attributes,
            csrf_token: "q9Jx3Vb0Zr7Kp2Lm5Nc8Wd1Ye4Tf6Ug0Hs3Ia9Ob2Pc=".to_string(),
            mfa_verified: true,
            remember_me: false,
            impersonated_by: None,
        }
    }
}
