//! The namespace layer over this backend.

use std::sync::Arc;
use std::time::Duration;

use super::key;
use crate::layer::Namespace;
use crate::random::random_u64;
use crate::{Cache, DynBackend, ErrorKind, Key};

fn ns_name() -> String {
    format!("ns{:012x}", random_u64() & 0xffff_ffff_ffff)
}

pub async fn namespaces_are_isolated(b: DynBackend) {
    let (n1, n2) = (ns_name(), ns_name());
    let a = Cache::new(Arc::new(Namespace::new(b.clone(), &n1).unwrap()));
    let c = Cache::new(Arc::new(Namespace::new(b.clone(), &n2).unwrap()));
    let k = key("shared-name");
    a.set(&k, &1u32, None).await.unwrap();
    c.set(&k, &2u32, None).await.unwrap();
    assert_eq!(a.get::<u32>(&k).await.unwrap(), Some(1));
    assert_eq!(c.get::<u32>(&k).await.unwrap(), Some(2));
    assert_eq!(
        Cache::new(b.clone()).get::<u32>(&k).await.unwrap(),
        None,
        "raw key untouched"
    );
}

pub async fn invalidate_hides_old_entries(b: DynBackend) {
    let name = ns_name();
    let ns = Arc::new(Namespace::new(b.clone(), &name).unwrap());
    let other = Cache::new(Arc::new(Namespace::new(b.clone(), &ns_name()).unwrap()));
    let cache = Cache::new(ns.clone());
    let keys: Vec<Key> = (0..20).map(|i| key(&format!("inv{i}"))).collect();
    for k in &keys {
        cache.set(k, &"v", None).await.unwrap();
        other.set(k, &"o", None).await.unwrap();
    }
    ns.invalidate().await.unwrap();
    for k in &keys {
        assert_eq!(cache.get::<String>(k).await.unwrap(), None, "invalidated");
        assert_eq!(
            other.get::<String>(k).await.unwrap().as_deref(),
            Some("o"),
            "other namespace kept"
        );
    }
    cache.set(&keys[0], &"new", None).await.unwrap();
    assert_eq!(
        cache.get::<String>(&keys[0]).await.unwrap().as_deref(),
        Some("new")
    );
}

pub async fn invalidation_seen_by_other_handle(b: DynBackend) {
    let name = ns_name();
    let h1 = Arc::new(
        Namespace::new(b.clone(), &name)
            .unwrap()
            .refresh(Duration::ZERO),
    );
    let h2 = Arc::new(
        Namespace::new(b.clone(), &name)
            .unwrap()
            .refresh(Duration::ZERO),
    );
    let (c1, c2) = (Cache::new(h1.clone()), Cache::new(h2.clone()));
    let k = key("two-handles");
    c1.set(&k, &5u8, None).await.unwrap();
    assert_eq!(
        c2.get::<u8>(&k).await.unwrap(),
        Some(5),
        "same namespace, same data"
    );
    h1.invalidate().await.unwrap();
    assert_eq!(
        c2.get::<u8>(&k).await.unwrap(),
        None,
        "other handle sees the invalidation"
    );
}

pub async fn key_too_long_after_prefix_rejected(b: DynBackend) {
    let ns = Namespace::new(b.clone(), &ns_name()).unwrap();
    let cache = Cache::new(Arc::new(ns));
    let k = Key::new("k".repeat(240)).unwrap();
    let err = cache.set(&k, &1u8, None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidKey);
    assert!(err.message().contains("prefixed"), "{err}");
    assert_eq!(
        Namespace::new(b.clone(), "has:colon").unwrap_err().kind(),
        ErrorKind::InvalidKey
    );
}

/// Invalidation is a delete of every entry: a version read before it is never accepted after
/// it, even for the same key written again.
pub async fn versions_not_reused_across_invalidation(b: DynBackend) {
    let ns = Arc::new(Namespace::new(b.clone(), &ns_name()).unwrap());
    let cache = Cache::new(ns.clone());
    let k = key("ns-aba");
    let old = cache.set(&k, &1u32, None).await.unwrap();
    ns.invalidate().await.unwrap();
    let new = cache.set(&k, &1u32, None).await.unwrap();
    assert_ne!(old, new, "a version is never handed out twice for a key");
    if b.capabilities().cas {
        let e = cache.replace(&k, &2u32, None, old).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Conflict);
        assert_eq!(cache.get::<u32>(&k).await.unwrap(), Some(1));
    }
}

/// Stamps this module's cases into the current module; used by
/// [`conformance_suite!`](crate::conformance_suite), which stamps every module.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_namespace {
    ($make:path) => {
        $crate::conformance_suite!(@cases $make;
            namespace::namespaces_are_isolated,
            namespace::invalidate_hides_old_entries,
            namespace::invalidation_seen_by_other_handle,
            namespace::key_too_long_after_prefix_rejected,
            namespace::versions_not_reused_across_invalidation,
        );
    };
}
