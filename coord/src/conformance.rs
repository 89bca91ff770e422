//! The coordination cases of the shared conformance suite, and the macros that stamp them
//! into a store's tests: [`coordination_cases!`](crate::coordination_cases) (these cases) and
//! [`conformance_suite!`](crate::conformance_suite) (the **whole** suite: every case of
//! `larder_cache_api::conformance`, the contract, and every case here).
//!
//! **Not a stable API**: cases are added as the contract is sharpened.
//!
//! Backends stamp only the contract's cases (`larder_cache_api::conformance_suite!`), so that
//! none of them depends on this crate; the coordination cases run over every store where the
//! crates meet, in the workspace's `tests/`.
//!
//! Each case reads the backend's declared [`Capabilities`] and decides what to check: on a
//! backend that declares linearizable compare-and-swap it exercises leases; on any other it
//! checks that coordination refuses the backend with the documented
//! [`ErrorKind::Unsupported`] error (see [`check_capabilities`](crate::check_capabilities)),
//! never skipping silently.
//!
//! The lease cases exercise the mechanics, so on a store that may lose its records (memory,
//! Redis without an append-only file) they opt in with [`Durability::AcceptLoss`]: the case
//! [`coordination_requires_durability_or_opt_in`] checks that without the opt-in such a store
//! is refused, and [`lease_tokens_grow_across_loss_of_the_record`] what the opt-in still
//! keeps.
//!
//! ```text
//! async fn backend() -> larder_cache_api::DynBackend {
//!     std::sync::Arc::new(MyBackend::connect("...").await.unwrap())
//! }
//! mod my_backend {
//!     larder_coord::conformance_suite!(super::backend);
//! }
//! ```
//!
//! The crate using it needs `tokio` with the `macros` and `rt-multi-thread` features as a
//! dev-dependency, and `larder-coord` with the `conformance` feature.
#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use larder_cache_api::layer::Restrict;
use larder_cache_api::{Cache, Capabilities, DynBackend, ErrorKind, Key};

use crate::random::random_u64;
use crate::{check_backend, Durability, HolderId, Lease, LeaseConfig, Scheduler, SchedulerConfig};

#[doc(hidden)]
pub use larder_cache_api as __cache_api;

/// Short timings so the suite runs in seconds; the store's loss of records is accepted (the
/// cases exercise the mechanics; see the module docs).
pub fn fast() -> LeaseConfig {
    LeaseConfig::new(
        Duration::from_millis(800),
        Duration::from_millis(500),
        Duration::from_millis(100),
    )
    .unwrap()
    .with_durability(Durability::AcceptLoss)
}

/// Whether the declaration says the store keeps coordination records.
pub fn keeps_records(caps: &Capabilities) -> bool {
    caps.persistent && !caps.may_evict
}

fn name() -> String {
    format!("lc-{:016x}", random_u64())
}

fn lease(b: &DynBackend, name: &str) -> Lease {
    Lease::new(b.clone(), name, HolderId::generate(), fast()).unwrap()
}

/// Whether the declaration allows coordination: linearizable compare-and-swap.
pub fn coordinates(caps: &Capabilities) -> bool {
    caps.cas && caps.linearizable_cas
}

/// Coordination refuses `b` with the documented error, built from its capabilities, and
/// writes nothing.
pub async fn assert_coordination_refused(b: &DynBackend) {
    let caps = b.capabilities().clone();
    // Refused whatever the durability setting: accepting loss does not make CAS linearizable.
    let e = check_backend(b, Durability::AcceptLoss).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    assert_eq!(e.backend(), Some(caps.name), "{e}");
    let lacks = if caps.cas {
        "not linearizable"
    } else {
        "no compare-and-swap"
    };
    assert!(e.message().contains(lacks), "says what is lacking: {e}");
    if caps.may_evict {
        assert!(e.message().contains("may evict"), "{e}");
    }
    if !caps.persistent {
        assert!(e.message().contains("not persistent"), "{e}");
    }
    let n = name();
    let l = Lease::new(b.clone(), &n, HolderId::generate(), fast());
    assert_eq!(l.unwrap_err().kind(), ErrorKind::Unsupported);
    let s = Scheduler::new(
        b.clone(),
        HolderId::generate(),
        SchedulerConfig::default().durability(Durability::AcceptLoss),
    );
    assert_eq!(s.unwrap_err().kind(), ErrorKind::Unsupported);
    let key = crate::Lease::key_for(&n).unwrap();
    assert!(
        b.get(&key).await.unwrap().is_none(),
        "a refusal writes nothing"
    );
}

/// Runs the rest of the case only where the capabilities allow coordination; elsewhere
/// checks the refusal instead.
macro_rules! require_coordination {
    ($b:expr) => {
        if !coordinates($b.capabilities()) {
            return assert_coordination_refused(&$b).await;
        }
    };
}

pub async fn lease_acquire_then_second_acquire_fails(b: DynBackend) {
    require_coordination!(b);
    let n = name();
    let (a, c) = (lease(&b, &n), lease(&b, &n));
    let held = a
        .try_acquire()
        .await
        .unwrap()
        .expect("free lease is acquired");
    assert!(held.token >= 1);
    assert!(c.try_acquire().await.unwrap().is_none(), "held by another");
    let rec = c.observe().await.unwrap().unwrap();
    assert_eq!(rec.holder, a.holder().as_str());
    assert_eq!(rec.token, held.token);
}

pub async fn lease_names_are_independent(b: DynBackend) {
    require_coordination!(b);
    let (n1, n2) = (name(), name());
    assert!(lease(&b, &n1).try_acquire().await.unwrap().is_some());
    assert!(lease(&b, &n2).try_acquire().await.unwrap().is_some());
}

pub async fn lease_expiry_then_takeover_with_higher_token(b: DynBackend) {
    require_coordination!(b);
    let n = name();
    let (a, c) = (lease(&b, &n), lease(&b, &n));
    let first = a.try_acquire().await.unwrap().unwrap();
    // The holder dies (never renews). The candidate must see the record unchanged for a
    // whole lease before taking over.
    assert!(c.try_acquire().await.unwrap().is_none());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        c.try_acquire().await.unwrap().is_none(),
        "not before a whole lease"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = c
        .try_acquire()
        .await
        .unwrap()
        .expect("taken over after the lease");
    assert!(
        second.token > first.token,
        "token grows on a change of holder"
    );
}

pub async fn lease_renewal_keeps_it(b: DynBackend) {
    require_coordination!(b);
    let n = name();
    let (a, c) = (lease(&b, &n), lease(&b, &n));
    let mut held = a.try_acquire().await.unwrap().unwrap();
    let token = held.token;
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        a.renew(&mut held).await.unwrap();
        assert!(
            c.try_acquire().await.unwrap().is_none(),
            "renewed lease is not taken"
        );
    }
    assert_eq!(held.token, token, "renewal keeps the token");
}

pub async fn lease_renew_after_expiry_fails(b: DynBackend) {
    require_coordination!(b);
    let n = name();
    let (a, c) = (lease(&b, &n), lease(&b, &n));
    let mut held = a.try_acquire().await.unwrap().unwrap();
    c.try_acquire().await.unwrap();
    // Paused past the renew deadline: renewing is refused locally even before anyone
    // took over.
    tokio::time::sleep(Duration::from_millis(550)).await;
    let e = a.renew(&mut held).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(c.try_acquire().await.unwrap().is_some());
}

pub async fn lease_release_then_reacquire_at_once(b: DynBackend) {
    require_coordination!(b);
    let n = name();
    let (a, c) = (lease(&b, &n), lease(&b, &n));
    let held = a.try_acquire().await.unwrap().unwrap();
    let t1 = held.token;
    a.release(held).await.unwrap();
    let rec = c
        .observe()
        .await
        .unwrap()
        .expect("release keeps the record");
    assert!(rec.released);
    let h2 = c
        .try_acquire()
        .await
        .unwrap()
        .expect("a released lease is taken at once");
    assert!(h2.token > t1);
    let h3 = {
        c.release(h2).await.unwrap();
        a.try_acquire().await.unwrap().unwrap()
    };
    assert!(h3.token > t1 + 1, "tokens keep growing across releases");
}

pub async fn lease_stale_holder_renew_and_release_do_nothing(b: DynBackend) {
    require_coordination!(b);
    let n = name();
    let (a, c) = (lease(&b, &n), lease(&b, &n));
    let mut stale = a.try_acquire().await.unwrap().unwrap();
    let stale_copy = stale.clone();
    c.try_acquire().await.unwrap();
    tokio::time::sleep(Duration::from_millis(900)).await;
    let fresh = c.try_acquire().await.unwrap().unwrap();
    // The paused holder wakes up: its renew and release change nothing.
    assert!(a.renew(&mut stale).await.is_err());
    assert_eq!(
        a.release(stale_copy).await.unwrap_err().kind(),
        ErrorKind::Conflict
    );
    let rec = c.observe().await.unwrap().unwrap();
    assert_eq!(
        (rec.holder.as_str(), rec.token, rec.released),
        (c.holder().as_str(), fresh.token, false)
    );
}

/// 8 tasks × 100 increments, each made by a plain read and write while holding the lease:
/// an exact count proves one holder at a time.
pub async fn lease_guarded_increments_8_tasks_100_each(b: DynBackend) {
    require_coordination!(b);
    let n = name();
    let counter = Key::new(format!("{n}-counter")).unwrap();
    let cache = Cache::new(b.clone());
    cache.set(&counter, &0u64, None).await.unwrap();
    let acquisitions = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (b, n, counter, cache, acq) = (
            b.clone(),
            n.clone(),
            counter.clone(),
            cache.clone(),
            acquisitions.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let l = lease(&b, &n);
            let mut done = 0;
            while done < 100 {
                let Some(held) = l.try_acquire().await.unwrap() else {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                };
                acq.fetch_add(1, Ordering::SeqCst);
                let v: u64 = cache.get(&counter).await.unwrap().unwrap();
                tokio::task::yield_now().await;
                cache.set(&counter, &(v + 1), None).await.unwrap();
                done += 1;
                l.release(held).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(cache.get::<u64>(&counter).await.unwrap(), Some(800));
    assert_eq!(acquisitions.load(Ordering::SeqCst), 800);
}

/// Coordination is allowed exactly where the capabilities say so: the backend as declared
/// qualifies or is refused accordingly, and the same backend restricted to CAS that is not
/// linearizable, or to no CAS at all, is always refused.
pub async fn coordination_follows_capabilities(b: DynBackend) {
    let caps = b.capabilities().clone();
    if coordinates(&caps) {
        assert!(
            check_backend(&b, Durability::AcceptLoss).is_ok(),
            "{} qualifies",
            caps.name
        );
        assert_eq!(
            check_backend(&b, Durability::Required).is_ok(),
            keeps_records(&caps),
            "{} qualifies without the opt-in exactly when it keeps its records",
            caps.name
        );
    } else {
        assert_coordination_refused(&b).await;
    }
    let mut weak = caps.clone();
    weak.linearizable_cas = false;
    let weak: DynBackend = Arc::new(Restrict::new(b.clone(), weak).unwrap());
    assert_coordination_refused(&weak).await;
    let mut none = caps;
    none.cas = false;
    none.linearizable_cas = false;
    let none: DynBackend = Arc::new(Restrict::new(b, none).unwrap());
    assert_coordination_refused(&none).await;
}

/// A store that may lose its records (as declared, or narrowed by `Restrict` to not
/// persistent, or to evicting) is refused with the documented error unless the loss is
/// accepted, by [`Lease::new`] and [`Scheduler::new`] alike; the message names the property,
/// quotes the backend's note and says how to opt in.
pub async fn coordination_requires_durability_or_opt_in(b: DynBackend) {
    require_coordination!(b);
    let caps = b.capabilities().clone();
    let mut volatile = caps.clone();
    volatile.persistent = false;
    volatile.persistence_note = Some("narrowed for the test".into());
    let mut evicting = caps.clone();
    evicting.may_evict = true;
    evicting.eviction_note = Some("narrowed for the test".into());
    let mut cases: Vec<(DynBackend, Capabilities)> = vec![
        (
            Arc::new(Restrict::new(b.clone(), volatile.clone()).unwrap()),
            volatile,
        ),
        (
            Arc::new(Restrict::new(b.clone(), evicting.clone()).unwrap()),
            evicting,
        ),
    ];
    if !keeps_records(&caps) {
        cases.push((b.clone(), caps));
    }
    for (store, caps) in cases {
        let e = check_backend(&store, Durability::Required).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
        assert_eq!(e.backend(), Some(caps.name), "{e}");
        let m = e.message();
        if !caps.persistent {
            assert!(m.contains("not persistent"), "{e}");
            if let Some(note) = &caps.persistence_note {
                assert!(m.contains(note.as_ref()), "quotes the backend's note: {e}");
            }
        }
        if caps.may_evict {
            assert!(m.contains("may evict"), "{e}");
            if let Some(note) = &caps.eviction_note {
                assert!(m.contains(note.as_ref()), "quotes the backend's note: {e}");
            }
        }
        assert!(m.contains("claimed twice"), "says what is at stake: {e}");
        assert!(
            m.contains("Durability::AcceptLoss"),
            "says how to opt in: {e}"
        );
        let n = name();
        let strict = fast().with_durability(Durability::Required);
        let l = Lease::new(store.clone(), &n, HolderId::generate(), strict);
        assert_eq!(l.unwrap_err().kind(), ErrorKind::Unsupported);
        let s = Scheduler::new(
            store.clone(),
            HolderId::generate(),
            SchedulerConfig::default().lease(strict),
        );
        assert_eq!(s.unwrap_err().kind(), ErrorKind::Unsupported);
        // Opted in: the same store holds leases and runs tasks.
        let l = Lease::new(store.clone(), &n, HolderId::generate(), fast()).unwrap();
        assert!(l.try_acquire().await.unwrap().is_some());
        Scheduler::new(
            store,
            HolderId::generate(),
            SchedulerConfig::default().durability(Durability::AcceptLoss),
        )
        .unwrap();
    }
}

/// A lease record starts at a time-based token (`now_ms << 20`), so when the record is lost
/// (deleted here, as a restart without persistence or an eviction would) the next holder's
/// token is still above every earlier one.
pub async fn lease_tokens_grow_across_loss_of_the_record(b: DynBackend) {
    require_coordination!(b);
    let n = name();
    let (a, c) = (lease(&b, &n), lease(&b, &n));
    let before_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let first = a.try_acquire().await.unwrap().unwrap();
    assert!(
        first.token >= before_ms << 20,
        "the first token {} is time-based (>= {before_ms} << 20)",
        first.token
    );
    assert!(
        i64::try_from(first.token).is_ok(),
        "fits a SQL BIGINT fence"
    );
    let mut last = first.token;
    a.release(first).await.unwrap();
    for i in 0..4 {
        let who = if i % 2 == 0 { &c } else { &a };
        let h = who.try_acquire().await.unwrap().unwrap();
        assert_eq!(h.token, last + 1, "one per change of holder");
        last = h.token;
        who.release(h).await.unwrap();
    }
    // The store loses the record.
    tokio::time::sleep(Duration::from_millis(2)).await;
    let key = crate::Lease::key_for(&n).unwrap();
    assert!(b
        .delete(&key, larder_cache_api::DeleteMode::Any)
        .await
        .unwrap());
    let after = c
        .try_acquire()
        .await
        .unwrap()
        .expect("a lost lease is free");
    assert!(
        after.token > last,
        "token after the loss {} is above every earlier one (last {last})",
        after.token
    );
}

/// Lease timings are validated whatever the backend.
pub async fn lease_config_is_validated(_b: DynBackend) {
    for (l, r, p) in [(5, 5, 1), (5, 4, 4), (5, 4, 2), (0, 0, 0)] {
        let e = LeaseConfig::new(
            Duration::from_secs(l),
            Duration::from_secs(r),
            Duration::from_secs(p),
        )
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config, "{l} {r} {p}");
    }
}

/// Stamps every case of the conformance suite into the current module as a
/// `#[tokio::test]`: the contract's cases (`larder_cache_api::conformance_suite!`) and the
/// coordination cases of this module ([`coordination_cases!`](crate::coordination_cases)).
/// Each case picks what to check from the backend's declared capabilities.
///
/// `$make` is the path of an `async fn() -> DynBackend`, called once per case.
#[macro_export]
macro_rules! conformance_suite {
    ($make:path) => {
        $crate::conformance::__cache_api::conformance_suite!($make);
        $crate::coordination_cases!($make);
    };
}

/// Stamps the coordination cases of this module into the current module as a
/// `#[tokio::test]` each, for a store whose contract cases run elsewhere (a backend's own
/// tests stamp `larder_cache_api::conformance_suite!`).
///
/// `$make` is the path of an `async fn() -> DynBackend`, called once per case.
#[macro_export]
macro_rules! coordination_cases {
    ($make:path) => {
        $crate::coordination_cases!(@cases $make;
            lease_acquire_then_second_acquire_fails,
            lease_names_are_independent,
            lease_expiry_then_takeover_with_higher_token,
            lease_renewal_keeps_it,
            lease_renew_after_expiry_fails,
            lease_release_then_reacquire_at_once,
            lease_stale_holder_renew_and_release_do_nothing,
            lease_guarded_increments_8_tasks_100_each,
            coordination_follows_capabilities,
            coordination_requires_durability_or_opt_in,
            lease_tokens_grow_across_loss_of_the_record,
            lease_config_is_validated,
        );
    };
    (@cases $make:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let backend: $crate::conformance::__cache_api::DynBackend = $make().await;
                $crate::conformance::$case(backend).await;
            }
        )*
    };
}
