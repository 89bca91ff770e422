//! Every operation on present, absent and expired keys.

use super::{key, put, short_ttl, value};
use crate::{Bytes, DeleteMode, DynBackend, Entry, Key, PutMode, Result, Ttl};

pub async fn get_absent_is_none(b: DynBackend) {
    assert!(b.get(&key("absent")).await.unwrap().is_none());
}

pub async fn put_then_get_roundtrips(b: DynBackend) {
    let k = key("rt");
    let v = put(&b, &k, b"hello").await;
    let e = b.get(&k).await.unwrap().expect("stored entry");
    assert_eq!(e.value, Bytes::from_static(b"hello"));
    assert_eq!(e.version, v, "get returns the version put returned");
}

pub async fn overwrite_replaces_value_and_version(b: DynBackend) {
    let k = key("ow");
    let v1 = put(&b, &k, b"one").await;
    let v2 = put(&b, &k, b"two").await;
    assert_ne!(v1, v2, "every write gives a new version");
    let e = b.get(&k).await.unwrap().unwrap();
    assert_eq!(&e.value[..], b"two");
    assert_eq!(e.version, v2);
}

pub async fn empty_value_roundtrips(b: DynBackend) {
    let k = key("empty");
    put(&b, &k, b"").await;
    assert_eq!(
        value(&b, &k).await.as_deref(),
        Some(&b""[..]),
        "empty is not absent"
    );
}

pub async fn binary_value_roundtrips(b: DynBackend) {
    let k = key("bin");
    let all: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
    b.put(&k, Bytes::from(all.clone()), None, PutMode::Overwrite)
        .await
        .unwrap();
    assert_eq!(value(&b, &k).await.unwrap(), all);
}

pub async fn delete_present_returns_true(b: DynBackend) {
    let k = key("del");
    put(&b, &k, b"x").await;
    assert!(b.delete(&k, DeleteMode::Any).await.unwrap());
    assert!(b.get(&k).await.unwrap().is_none());
    assert!(
        !b.delete(&k, DeleteMode::Any).await.unwrap(),
        "second delete finds nothing"
    );
}

pub async fn delete_absent_returns_false(b: DynBackend) {
    assert!(!b.delete(&key("del-absent"), DeleteMode::Any).await.unwrap());
}

pub async fn delete_expired_returns_false(b: DynBackend) {
    let k = key("del-exp");
    let (ttl, wait) = short_ttl(b.capabilities());
    b.put(&k, Bytes::from_static(b"x"), Some(ttl), PutMode::Overwrite)
        .await
        .unwrap();
    tokio::time::sleep(wait).await;
    assert!(!b.delete(&k, DeleteMode::Any).await.unwrap());
}

pub async fn get_expired_is_none(b: DynBackend) {
    let k = key("get-exp");
    let (ttl, wait) = short_ttl(b.capabilities());
    b.put(&k, Bytes::from_static(b"x"), Some(ttl), PutMode::Overwrite)
        .await
        .unwrap();
    assert!(b.get(&k).await.unwrap().is_some(), "present before its TTL");
    tokio::time::sleep(wait).await;
    assert!(b.get(&k).await.unwrap().is_none(), "absent after its TTL");
}

pub async fn touch_present_extends_life(b: DynBackend) {
    if !b.capabilities().touch {
        return super::capability::assert_touch_refused(&b).await;
    }
    let k = key("touch");
    let (ttl, wait) = short_ttl(b.capabilities());
    b.put(&k, Bytes::from_static(b"x"), Some(ttl), PutMode::Overwrite)
        .await
        .unwrap();
    assert!(b
        .touch(&k, Some(Ttl::from_secs(3600).unwrap()))
        .await
        .unwrap());
    tokio::time::sleep(wait).await;
    assert_eq!(
        value(&b, &k).await.as_deref(),
        Some(&b"x"[..]),
        "touch extended the TTL"
    );
}

pub async fn touch_absent_returns_false(b: DynBackend) {
    if !b.capabilities().touch {
        return super::capability::assert_touch_refused(&b).await;
    }
    assert!(!b
        .touch(&key("touch-absent"), Some(Ttl::from_secs(10).unwrap()))
        .await
        .unwrap());
    assert!(!b.touch(&key("touch-absent2"), None).await.unwrap());
}

pub async fn touch_expired_returns_false(b: DynBackend) {
    if !b.capabilities().touch {
        return super::capability::assert_touch_refused(&b).await;
    }
    let k = key("touch-exp");
    let (ttl, wait) = short_ttl(b.capabilities());
    b.put(&k, Bytes::from_static(b"x"), Some(ttl), PutMode::Overwrite)
        .await
        .unwrap();
    tokio::time::sleep(wait).await;
    assert!(!b
        .touch(&k, Some(Ttl::from_secs(10).unwrap()))
        .await
        .unwrap());
    assert!(
        b.get(&k).await.unwrap().is_none(),
        "touch did not revive it"
    );
}

pub async fn touch_none_removes_expiry(b: DynBackend) {
    if !b.capabilities().touch {
        return super::capability::assert_touch_refused(&b).await;
    }
    let k = key("touch-none");
    let (ttl, wait) = short_ttl(b.capabilities());
    b.put(&k, Bytes::from_static(b"x"), Some(ttl), PutMode::Overwrite)
        .await
        .unwrap();
    assert!(b.touch(&k, None).await.unwrap());
    tokio::time::sleep(wait).await;
    assert!(
        b.get(&k).await.unwrap().is_some(),
        "no expiry after touch(None)"
    );
}

pub async fn touch_keeps_version_and_value(b: DynBackend) {
    if !b.capabilities().touch {
        return super::capability::assert_touch_refused(&b).await;
    }
    let k = key("touch-ver");
    let v = b
        .put(
            &k,
            Bytes::from_static(b"keep"),
            Some(Ttl::from_secs(60).unwrap()),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    assert!(b
        .touch(&k, Some(Ttl::from_secs(120).unwrap()))
        .await
        .unwrap());
    let e = b.get(&k).await.unwrap().unwrap();
    assert_eq!(&e.value[..], b"keep");
    assert_eq!(e.version, v, "touch does not change the version");
    if b.capabilities().cas {
        // A CAS with the pre-touch version still wins.
        b.put(&k, Bytes::from_static(b"next"), None, PutMode::Update(v))
            .await
            .unwrap();
    }
}

/// `get_now`, where it answers, answers what `get` answers, and so does `lookup`.
async fn same_answers(b: &DynBackend, k: &Key, what: &str) {
    let kind = |r: Result<Option<Entry>>| r.map_err(|e| e.kind());
    let now = b.get_now(k).map(kind);
    let looked_up = kind(b.lookup(k).await);
    let later = kind(b.get(k).await);
    assert_eq!(looked_up, later, "{what}: lookup and get disagree");
    if let Some(now) = &now {
        assert_eq!(now, &later, "{what}: get_now and get disagree");
    }
}

/// The synchronous lookup agrees with `get` for a key present (read twice, so that a near
/// cache answers from memory), overwritten, deleted, expired, never written, and too long.
pub async fn get_now_agrees_with_get(b: DynBackend) {
    let k = key("now");
    put(&b, &k, b"one").await;
    for _ in 0..2 {
        same_answers(&b, &k, "present").await;
    }
    put(&b, &k, b"two").await;
    for _ in 0..2 {
        same_answers(&b, &k, "overwritten").await;
    }
    b.delete(&k, DeleteMode::Any).await.unwrap();
    same_answers(&b, &k, "deleted").await;
    same_answers(&b, &key("now-absent"), "absent").await;
    let (ttl, wait) = short_ttl(b.capabilities());
    let e = key("now-exp");
    b.put(&e, Bytes::from_static(b"x"), Some(ttl), PutMode::Overwrite)
        .await
        .unwrap();
    same_answers(&b, &e, "before expiry").await;
    tokio::time::sleep(wait).await;
    same_answers(&b, &e, "expired").await;
    let max = b.capabilities().max_key_len;
    if max < Key::MAX_LEN {
        let long = Key::new("n".repeat(max + 1)).unwrap();
        same_answers(&b, &long, "too long").await;
    }
}

/// Stamps this module's cases into the current module; used by
/// [`conformance_suite!`](crate::conformance_suite), which stamps every module.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_basic {
    ($make:path) => {
        $crate::conformance_suite!(@cases $make;
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
            basic::get_now_agrees_with_get,
        );
    };
}
