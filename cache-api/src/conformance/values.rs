//! The value size limit the backend declares.

use super::{key, put, value};
use crate::{Bytes, Cache, DynBackend, ErrorKind, PutMode};

pub async fn value_at_limit_accepted(b: DynBackend) {
    let max = b.capabilities().max_value_size;
    let k = key("at-limit");
    let v = Bytes::from(vec![7u8; max]);
    b.put(&k, v, None, PutMode::Overwrite)
        .await
        .unwrap_or_else(|e| panic!("a value of exactly {max} bytes is accepted: {e}"));
    assert_eq!(value(&b, &k).await.map(|v| v.len()), Some(max));
}

pub async fn value_over_limit_rejected(b: DynBackend) {
    let max = b.capabilities().max_value_size;
    let k = key("over-limit");
    let err = b
        .put(
            &k,
            Bytes::from(vec![7u8; max + 1]),
            None,
            PutMode::Overwrite,
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ValueTooLarge, "{err}");
    assert!(b.get(&k).await.unwrap().is_none(), "nothing stored");
    let err = b
        .put_many(&[(key("over-many"), Bytes::from(vec![0u8; max + 1]))], None)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ValueTooLarge);
}

/// A refused write loses nothing: the previous value stays.
pub async fn oversized_write_keeps_old_value(b: DynBackend) {
    let max = b.capabilities().max_value_size;
    let k = key("keep-old");
    put(&b, &k, b"precious").await;
    let err = b
        .put(
            &k,
            Bytes::from(vec![0u8; max + 1]),
            None,
            PutMode::Overwrite,
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ValueTooLarge);
    assert_eq!(value(&b, &k).await.as_deref(), Some(&b"precious"[..]));
}

pub async fn typed_oversized_value_rejected_before_sending(b: DynBackend) {
    let max = b.capabilities().max_value_size;
    let cache = Cache::new(b.clone());
    let k = key("typed-big");
    // The envelope adds a header, so a payload of `max` bytes no longer fits.
    let err = cache.set(&k, &vec![1u8; max], None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ValueTooLarge);
    assert!(b.get(&k).await.unwrap().is_none());
}

/// Stamps this module's cases into the current module; used by
/// [`conformance_suite!`](crate::conformance_suite), which stamps every module.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_values {
    ($make:path) => {
        $crate::conformance_suite!(@cases $make;
            values::value_at_limit_accepted,
            values::value_over_limit_rejected,
            values::oversized_write_keeps_old_value,
            values::typed_oversized_value_rejected_before_sending,
        );
    };
}
