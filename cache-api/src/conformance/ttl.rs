//! TTL semantics, the same on every backend.

use std::time::Duration;

use super::{key, short_ttl, unit, value};
use crate::{Bytes, DynBackend, ErrorKind, PutMode, Ttl};

pub async fn ttl_expires(b: DynBackend) {
    let k = key("ttl");
    let (ttl, wait) = short_ttl(b.capabilities());
    b.put(&k, Bytes::from_static(b"x"), Some(ttl), PutMode::Overwrite)
        .await
        .unwrap();
    assert!(value(&b, &k).await.is_some());
    tokio::time::sleep(wait).await;
    assert!(value(&b, &k).await.is_none());
}

/// A TTL with a part below the backend's precision is rounded up, never down.
pub async fn ttl_rounds_up_never_early(b: DynBackend) {
    let caps = b.capabilities().clone();
    let u = unit(&caps);
    let k = key("ttl-round");
    // 1.5 units: rounding down would expire at 1 unit.
    let ttl = Ttl::new(u + u / 2).unwrap();
    b.put(&k, Bytes::from_static(b"x"), Some(ttl), PutMode::Overwrite)
        .await
        .unwrap();
    tokio::time::sleep(u + u / 5).await;
    assert!(
        value(&b, &k).await.is_some(),
        "{}: expired before its TTL of {ttl:?}",
        caps.name
    );
    // Backends may add up to one precision step to stay never-early, and their clock may
    // tick on step boundaries: allow two steps of slack.
    tokio::time::sleep(u + 2 * caps.ttl_precision + Duration::from_millis(500)).await;
    assert!(value(&b, &k).await.is_none(), "expired in the end");
}

/// memcached reads a relative TTL above 30 days as a Unix time (1970, i.e. already past).
pub async fn ttl_over_30_days_is_kept(b: DynBackend) {
    let k = key("ttl-31d");
    b.put(
        &k,
        Bytes::from_static(b"x"),
        Some(Ttl::from_secs(31 * 24 * 3600).unwrap()),
        PutMode::Overwrite,
    )
    .await
    .unwrap();
    tokio::time::sleep(unit(b.capabilities()) + Duration::from_millis(100)).await;
    assert!(
        value(&b, &k).await.is_some(),
        "a 31-day TTL did not expire at once"
    );
    if b.capabilities().touch {
        assert!(b
            .touch(&k, Some(Ttl::from_secs(400 * 24 * 3600).unwrap()))
            .await
            .unwrap());
        tokio::time::sleep(unit(b.capabilities())).await;
        assert!(
            value(&b, &k).await.is_some(),
            "a 400-day touch did not expire at once"
        );
    }
}

/// Every write states its TTL: overwriting without one removes the old expiry, and
/// overwriting with one sets it.
pub async fn overwrite_restates_ttl(b: DynBackend) {
    let (ttl, wait) = short_ttl(b.capabilities());
    let a = key("restate-a");
    b.put(&a, Bytes::from_static(b"1"), Some(ttl), PutMode::Overwrite)
        .await
        .unwrap();
    b.put(&a, Bytes::from_static(b"2"), None, PutMode::Overwrite)
        .await
        .unwrap();
    let c = key("restate-c");
    b.put(&c, Bytes::from_static(b"1"), None, PutMode::Overwrite)
        .await
        .unwrap();
    b.put(&c, Bytes::from_static(b"2"), Some(ttl), PutMode::Overwrite)
        .await
        .unwrap();
    tokio::time::sleep(wait).await;
    assert_eq!(
        value(&b, &a).await.as_deref(),
        Some(&b"2"[..]),
        "no TTL after overwrite"
    );
    assert!(
        value(&b, &c).await.is_none(),
        "TTL of the overwrite applies"
    );
}

pub async fn conditional_write_states_ttl(b: DynBackend) {
    if !b.capabilities().cas {
        return super::capability::assert_cas_refused(&b).await;
    }
    let (ttl, wait) = short_ttl(b.capabilities());
    let k = key("cas-ttl");
    let v = b
        .put(&k, Bytes::from_static(b"1"), None, PutMode::Create)
        .await
        .unwrap();
    b.put(&k, Bytes::from_static(b"2"), Some(ttl), PutMode::Update(v))
        .await
        .unwrap();
    let keep = key("cas-keep");
    let v = b
        .put(&keep, Bytes::from_static(b"1"), Some(ttl), PutMode::Create)
        .await
        .unwrap();
    b.put(&keep, Bytes::from_static(b"2"), None, PutMode::Update(v))
        .await
        .unwrap();
    tokio::time::sleep(wait).await;
    assert!(
        value(&b, &k).await.is_none(),
        "CAS write with a TTL expires"
    );
    assert!(
        value(&b, &keep).await.is_some(),
        "CAS write without a TTL does not"
    );
}

pub async fn zero_ttl_rejected(_b: DynBackend) {
    assert_eq!(
        Ttl::from_millis(0).unwrap_err().kind(),
        ErrorKind::InvalidTtl
    );
    assert_eq!(
        Ttl::new(Duration::ZERO).unwrap_err().kind(),
        ErrorKind::InvalidTtl
    );
}

pub async fn absurd_ttl_rejected(_b: DynBackend) {
    let e = Ttl::from_secs(11 * 365 * 24 * 3600).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidTtl);
    assert!(e.to_string().contains("10 years"), "{e}");
    assert_eq!(
        Ttl::new(Duration::MAX).unwrap_err().kind(),
        ErrorKind::InvalidTtl
    );
}

pub async fn put_many_applies_ttl(b: DynBackend) {
    let (ttl, wait) = short_ttl(b.capabilities());
    let items = vec![
        (key("pm-ttl-1"), Bytes::from_static(b"1")),
        (key("pm-ttl-2"), Bytes::from_static(b"2")),
    ];
    b.put_many(&items, Some(ttl)).await.unwrap();
    assert!(value(&b, &items[1].0).await.is_some());
    tokio::time::sleep(wait).await;
    for (k, _) in &items {
        assert!(value(&b, k).await.is_none());
    }
}

/// Stamps this module's cases into the current module; used by
/// [`conformance_suite!`](crate::conformance_suite), which stamps every module.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_ttl {
    ($make:path) => {
        $crate::conformance_suite!(@cases $make;
            ttl::ttl_expires,
            ttl::ttl_rounds_up_never_early,
            ttl::ttl_over_30_days_is_kept,
            ttl::overwrite_restates_ttl,
            ttl::conditional_write_states_ttl,
            ttl::zero_ttl_rejected,
            ttl::absurd_ttl_rejected,
            ttl::put_many_applies_ttl,
        );
    };
}
