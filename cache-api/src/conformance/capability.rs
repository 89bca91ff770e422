//! Declared capabilities hold; undeclared ones are refused, never silently skipped.

use std::sync::Arc;
use std::time::Duration;

use super::{key, put};
use crate::layer::Restrict;
use crate::{Bytes, DeleteMode, DynBackend, ErrorKind, Key, PutMode, Ttl, Version};

pub async fn capabilities_are_sane(b: DynBackend) {
    let c = b.capabilities();
    assert!(!c.name.is_empty());
    assert!(c.ttl_precision > Duration::ZERO && c.ttl_precision <= Duration::from_secs(1));
    assert!(
        (1024..=64 * 1024 * 1024).contains(&c.max_value_size),
        "declared value limit {} is within 1 KiB..64 MiB",
        c.max_value_size
    );
    assert!(!c.linearizable_cas || c.cas, "linearizable CAS implies CAS");
    assert!(
        (1..=Key::MAX_LEN).contains(&c.max_key_len),
        "declared key limit {} is within 1..{}",
        c.max_key_len,
        Key::MAX_LEN
    );
}

pub(crate) async fn assert_cas_refused(b: &DynBackend) {
    let k = key("refuse-cas");
    let v = put(b, &k, b"x").await;
    for mode in [PutMode::Create, PutMode::Update(v)] {
        let e = b
            .put(&k, Bytes::from_static(b"y"), None, mode)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported, "{mode:?} refused: {e}");
    }
    let e = b.delete(&k, DeleteMode::IfVersion(v)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert_eq!(
        super::value(b, &k).await.as_deref(),
        Some(&b"x"[..]),
        "nothing changed"
    );
}

pub(crate) async fn assert_touch_refused(b: &DynBackend) {
    let k = key("refuse-touch");
    put(b, &k, b"x").await;
    let e = b
        .touch(&k, Some(Ttl::from_secs(1).unwrap()))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
}

/// Every capability the backend lacks is refused; and the same backend restricted by the
/// [`Restrict`] layer refuses what it no longer declares, so this case always checks
/// refusals, even on a backend that declares everything.
pub async fn undeclared_capabilities_are_refused(b: DynBackend) {
    let caps = b.capabilities().clone();
    if !caps.cas {
        assert_cas_refused(&b).await;
    }
    if !caps.touch {
        assert_touch_refused(&b).await;
    }
    let mut less = caps.clone();
    less.cas = false;
    less.linearizable_cas = false;
    less.touch = false;
    less.max_value_size = 1024;
    less.max_key_len = less.max_key_len.min(100);
    let r: DynBackend = Arc::new(Restrict::new(b.clone(), less).unwrap());
    assert_cas_refused(&r).await;
    assert_touch_refused(&r).await;
    let e = r
        .put(
            &key("restricted-big"),
            Bytes::from(vec![0u8; 1025]),
            None,
            PutMode::Overwrite,
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ValueTooLarge);
    let long = Key::new(format!("{}{}", key("restricted-long"), "k".repeat(100))).unwrap();
    let e = r
        .put(&long, Bytes::from_static(b"x"), None, PutMode::Overwrite)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidKey, "{e}");
    assert_eq!(
        r.get(&long).await.unwrap_err().kind(),
        ErrorKind::InvalidKey
    );
    // Overwrite is always offered.
    let k = key("restricted-ok");
    let v: Version = put(&r, &k, b"ok").await;
    assert_eq!(b.get(&k).await.unwrap().map(|e| e.version), Some(v));
    let mut more = caps.clone();
    more.max_value_size += 1;
    assert_eq!(
        Restrict::new(b.clone(), more).unwrap_err().kind(),
        ErrorKind::Config,
        "Restrict cannot widen"
    );
    let mut longer = caps;
    longer.max_key_len += 1;
    assert_eq!(
        Restrict::new(b, longer).unwrap_err().kind(),
        ErrorKind::Config,
        "Restrict cannot widen the key limit"
    );
}

/// Stamps this module's cases into the current module; used by
/// [`conformance_suite!`](crate::conformance_suite), which stamps every module.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_capability {
    ($make:path) => {
        $crate::conformance_suite!(@cases $make;
            capability::capabilities_are_sane,
            capability::undeclared_capabilities_are_refused,
        );
    };
}
