//! Key rules: the same everywhere, checked before anything is sent.

use super::{key, value};
use crate::random::random_u64;
use crate::{Bytes, DeleteMode, DynBackend, Error, ErrorKind, Key, PutMode};

fn rejected(k: &str) {
    let e = Key::new(k).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidKey, "{k:?}");
    assert!(!e.message().is_empty());
}

pub async fn empty_key_rejected(_b: DynBackend) {
    rejected("");
}

pub async fn key_of_251_bytes_rejected(_b: DynBackend) {
    rejected(&"k".repeat(251));
}

/// A key as long as the backend declares ([`max_key_len`](crate::Capabilities::max_key_len))
/// roundtrips; where that is less than [`Key::MAX_LEN`] (a layer that prefixes keys), a key
/// one byte longer is refused with `InvalidKey` by every operation.
pub async fn key_at_declared_limit_roundtrips(b: DynBackend) {
    let caps = b.capabilities().clone();
    let prefix = format!("lc-{:016x}-", random_u64());
    let s = format!("{prefix}{}", "k".repeat(caps.max_key_len - prefix.len()));
    let k = Key::new(&s).unwrap();
    assert_eq!(k.len(), caps.max_key_len);
    b.put(&k, Bytes::from_static(b"long"), None, PutMode::Overwrite)
        .await
        .unwrap();
    assert_eq!(value(&b, &k).await.as_deref(), Some(&b"long"[..]));
    if caps.max_key_len >= Key::MAX_LEN {
        return;
    }
    let over = Key::new(format!("{s}k")).unwrap();
    let refused = |r: Result<(), Error>, op: &str| {
        let e = r.expect_err(op);
        assert_eq!(e.kind(), ErrorKind::InvalidKey, "{op}: {e}");
    };
    let v = Bytes::from_static(b"x");
    refused(b.get(&over).await.map(drop), "get");
    refused(
        b.get_many(&[k.clone(), over.clone()]).await.map(drop),
        "get_many",
    );
    refused(
        b.put(&over, v.clone(), None, PutMode::Overwrite)
            .await
            .map(drop),
        "put",
    );
    refused(
        b.put_many(&[(over.clone(), v)], None).await.map(drop),
        "put_many",
    );
    refused(b.delete(&over, DeleteMode::Any).await.map(drop), "delete");
    if caps.touch {
        refused(b.touch(&over, None).await.map(drop), "touch");
    }
}

pub async fn key_with_space_rejected(_b: DynBackend) {
    rejected("a b");
}

pub async fn key_with_newline_rejected(_b: DynBackend) {
    rejected("a\nb");
    rejected("a\r\nset x 0 0 1");
}

pub async fn key_with_control_byte_rejected(_b: DynBackend) {
    rejected("a\u{0}b");
    rejected("a\u{1}b");
    rejected("a\u{7f}b");
    rejected("a\tb");
}

pub async fn hashed_long_key_roundtrips(b: DynBackend) {
    let raw = format!("report:{:016x}:{}", random_u64(), "x y ".repeat(200));
    let k = Key::hashed(&raw);
    assert!(
        k.as_str().starts_with("report:"),
        "readable prefix kept: {k}"
    );
    assert!(k.len() <= Key::MAX_LEN);
    if k.len() > b.capabilities().max_key_len {
        let e = b
            .put(&k, Bytes::from_static(b"h"), None, PutMode::Overwrite)
            .await;
        assert_eq!(e.unwrap_err().kind(), ErrorKind::InvalidKey);
        return;
    }
    b.put(&k, Bytes::from_static(b"h"), None, PutMode::Overwrite)
        .await
        .unwrap();
    assert_eq!(
        value(&b, &Key::hashed(&raw)).await.as_deref(),
        Some(&b"h"[..])
    );
    let other = Key::hashed(&format!("{raw}!"));
    assert!(
        value(&b, &other).await.is_none(),
        "a different long key is a different key"
    );
}

pub async fn utf8_key_roundtrips(b: DynBackend) {
    let k = key("clé-ключ-鍵");
    b.put(&k, Bytes::from_static(b"u"), None, PutMode::Overwrite)
        .await
        .unwrap();
    assert_eq!(value(&b, &k).await.as_deref(), Some(&b"u"[..]));
}

pub async fn similar_keys_are_distinct(b: DynBackend) {
    let base = key("sim");
    let upper = Key::new(base.as_str().to_uppercase()).unwrap();
    let longer = Key::new(format!("{base}x")).unwrap();
    b.put(&base, Bytes::from_static(b"1"), None, PutMode::Overwrite)
        .await
        .unwrap();
    assert!(value(&b, &upper).await.is_none(), "keys are case-sensitive");
    assert!(value(&b, &longer).await.is_none());
}

/// Stamps this module's cases into the current module; used by
/// [`conformance_suite!`](crate::conformance_suite), which stamps every module.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_keys {
    ($make:path) => {
        $crate::conformance_suite!(@cases $make;
            keys::empty_key_rejected,
            keys::key_of_251_bytes_rejected,
            keys::key_at_declared_limit_roundtrips,
            keys::key_with_space_rejected,
            keys::key_with_newline_rejected,
            keys::key_with_control_byte_rejected,
            keys::hashed_long_key_roundtrips,
            keys::utf8_key_roundtrips,
            keys::similar_keys_are_distinct,
        );
    };
}
