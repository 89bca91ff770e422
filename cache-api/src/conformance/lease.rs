//! The lease suite: run on every backend that qualifies for coordination.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::coord::{check_backend, HolderId, Lease, LeaseConfig};
use crate::layer::Restrict;
use crate::random::random_u64;
use crate::{Cache, DynBackend, ErrorKind, Key};

/// Short timings so the suite runs in seconds.
pub fn fast() -> LeaseConfig {
    LeaseConfig::new(
        Duration::from_millis(800),
        Duration::from_millis(500),
        Duration::from_millis(100),
    )
    .unwrap()
}

fn name() -> String {
    format!("lc-{:016x}", random_u64())
}

fn lease(b: &DynBackend, name: &str) -> Lease {
    Lease::new(b.clone(), name, HolderId::generate(), fast()).unwrap()
}

pub async fn lease_acquire_then_second_acquire_fails(b: DynBackend) {
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
    let (n1, n2) = (name(), name());
    assert!(lease(&b, &n1).try_acquire().await.unwrap().is_some());
    assert!(lease(&b, &n2).try_acquire().await.unwrap().is_some());
}

pub async fn lease_expiry_then_takeover_with_higher_token(b: DynBackend) {
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

pub async fn lease_refuses_backends_without_linearizable_cas(b: DynBackend) {
    let mut caps = b.capabilities().clone();
    caps.linearizable_cas = false;
    let weak: DynBackend = Arc::new(Restrict::new(b.clone(), caps).unwrap());
    let e = check_backend(&weak).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert!(Lease::new(weak, "x", HolderId::generate(), fast()).is_err());
    assert!(
        check_backend(&b).is_ok(),
        "{} qualifies",
        b.capabilities().name
    );
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

/// Stamps the lease suite into the current module.
#[macro_export]
macro_rules! lease_suite {
    ($make:path) => {
        $crate::conformance_suite!(@cases $make;
            lease::lease_acquire_then_second_acquire_fails,
            lease::lease_names_are_independent,
            lease::lease_expiry_then_takeover_with_higher_token,
            lease::lease_renewal_keeps_it,
            lease::lease_renew_after_expiry_fails,
            lease::lease_release_then_reacquire_at_once,
            lease::lease_stale_holder_renew_and_release_do_nothing,
            lease::lease_guarded_increments_8_tasks_100_each,
            lease::lease_refuses_backends_without_linearizable_cas,
        );
    };
}
