//! Batch reads and writes.

use super::{key, put};
use crate::{Bytes, Cache, DynBackend, Key};

pub async fn get_many_duplicates_and_missing(b: DynBackend) {
    let (a, c, m1, m2) = (key("gm-a"), key("gm-c"), key("gm-m1"), key("gm-m2"));
    let va = put(&b, &a, b"A").await;
    let vc = put(&b, &c, b"C").await;
    let got = b
        .get_many(&[a.clone(), m1, a.clone(), c.clone(), m2, c])
        .await
        .unwrap();
    let got: Vec<Option<(Vec<u8>, _)>> = got
        .into_iter()
        .map(|e| e.map(|e| (e.value.to_vec(), e.version)))
        .collect();
    assert_eq!(
        got,
        vec![
            Some((b"A".to_vec(), va)),
            None,
            Some((b"A".to_vec(), va)),
            Some((b"C".to_vec(), vc)),
            None,
            Some((b"C".to_vec(), vc)),
        ]
    );
}

pub async fn get_many_empty(b: DynBackend) {
    assert!(b.get_many(&[]).await.unwrap().is_empty());
    assert!(b.put_many(&[], None).await.unwrap().is_empty());
}

pub async fn put_many_then_get_many(b: DynBackend) {
    let items: Vec<(Key, Bytes)> = (0..50)
        .map(|i| (key(&format!("pm{i}")), Bytes::from(format!("value-{i}"))))
        .collect();
    let versions = b.put_many(&items, None).await.unwrap();
    assert_eq!(versions.len(), 50);
    let keys: Vec<Key> = items.iter().map(|(k, _)| k.clone()).collect();
    let got = b.get_many(&keys).await.unwrap();
    for (i, (e, v)) in got.iter().zip(&versions).enumerate() {
        let e = e.as_ref().unwrap_or_else(|| panic!("item {i} missing"));
        assert_eq!(e.value, items[i].1);
        assert_eq!(e.version, *v);
    }
}

pub async fn typed_get_many(b: DynBackend) {
    let cache = Cache::new(b.clone());
    let (k1, k2, k3) = (key("tgm1"), key("tgm2"), key("tgm3"));
    cache.set(&k1, &"one", None).await.unwrap();
    cache.set(&k3, &"three", None).await.unwrap();
    let got = cache.get_many::<String>(&[k1, k2, k3]).await.unwrap();
    assert_eq!(got, vec![Some("one".into()), None, Some("three".into())]);
}

/// Stamps this module's cases into the current module; used by
/// [`conformance_suite!`](crate::conformance_suite), which stamps every module.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_batch {
    ($make:path) => {
        $crate::conformance_suite!(@cases $make;
            batch::get_many_duplicates_and_missing,
            batch::get_many_empty,
            batch::put_many_then_get_many,
            batch::typed_get_many,
        );
    };
}
