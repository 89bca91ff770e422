//! Foreign, corrupt or other-codec bytes are reported, never mis-decoded.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{key, value};
use crate::codec::{Codec, Postcard};
use crate::{Bytes, Cache, DynBackend, ErrorKind, PutMode, Result};

/// A codec with another id whose payload is plain postcard: only the envelope tells its
/// values apart, so reading one with postcard would "succeed" without it.
#[derive(Debug, Clone, Copy, Default)]
pub struct OtherCodec;

impl Codec for OtherCodec {
    const ID: u8 = 250;
    const NAME: &'static str = "other";
    fn encode<T: Serialize + ?Sized>(&self, v: &T, out: &mut Vec<u8>) -> Result<()> {
        Postcard.encode(v, out)
    }
    fn decode<T: DeserializeOwned>(&self, b: &[u8]) -> Result<T> {
        Postcard.decode(b)
    }
}

pub async fn foreign_bytes_give_decode_error(b: DynBackend) {
    let k = key("foreign");
    b.put(
        &k,
        Bytes::from_static(b"{\"user\":42}"),
        None,
        PutMode::Overwrite,
    )
    .await
    .unwrap();
    let err = Cache::new(b.clone()).get::<u64>(&k).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Decode, "{err}");
}

pub async fn other_codec_bytes_give_decode_error(b: DynBackend) {
    let k = key("other-codec");
    Cache::with_codec(b.clone(), OtherCodec)
        .set(&k, &(1u32, "x".to_string()), None)
        .await
        .unwrap();
    let err = Cache::new(b.clone())
        .get::<(u32, String)>(&k)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Decode);
    assert!(err.message().contains("codec"), "{err}");
    // The writer's own codec still reads it.
    let back = Cache::with_codec(b.clone(), OtherCodec)
        .get::<(u32, String)>(&k)
        .await
        .unwrap();
    assert_eq!(back, Some((1, "x".to_string())));
}

pub async fn truncated_envelope_gives_decode_error(b: DynBackend) {
    let k = key("truncated");
    let cache = Cache::new(b.clone());
    cache.set(&k, &"a string long enough", None).await.unwrap();
    let full = value(&b, &k).await.unwrap();
    for cut in [1, 4, full.len() - 3] {
        b.put(&k, full.slice(..cut), None, PutMode::Overwrite)
            .await
            .unwrap();
        let err = cache.get::<String>(&k).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Decode, "cut at {cut}");
    }
}

pub async fn decode_error_as_miss_when_asked(b: DynBackend) {
    let k = key("as-miss");
    b.put(&k, Bytes::from_static(b"garbage"), None, PutMode::Overwrite)
        .await
        .unwrap();
    let cache = Cache::new(b.clone()).decode_errors_as_miss(true);
    assert_eq!(cache.get::<u64>(&k).await.unwrap(), None);
    // get-or-compute replaces the undecodable value.
    let v: u64 = cache
        .get_or_insert_with(&k, None, || async { Ok::<_, std::io::Error>(9) })
        .await
        .unwrap();
    assert_eq!(v, 9);
    assert_eq!(Cache::new(b.clone()).get::<u64>(&k).await.unwrap(), Some(9));
}

/// A decode error does not delete or change what is stored.
pub async fn decode_error_loses_nothing(b: DynBackend) {
    let k = key("no-loss");
    b.put(
        &k,
        Bytes::from_static(b"\xF7Lnot-ours"),
        None,
        PutMode::Overwrite,
    )
    .await
    .unwrap();
    let cache = Cache::new(b.clone());
    assert_eq!(
        cache.get::<String>(&k).await.unwrap_err().kind(),
        ErrorKind::Decode
    );
    let err = cache
        .update(&k, None, |s: Option<String>| s.unwrap_or_default())
        .await;
    assert_eq!(
        err.unwrap_err().kind(),
        ErrorKind::Decode,
        "update refuses to overwrite"
    );
    assert_eq!(value(&b, &k).await.as_deref(), Some(&b"\xF7Lnot-ours"[..]));
}

/// Stamps this module's cases into the current module; used by
/// [`conformance_suite!`](crate::conformance_suite), which stamps every module.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_envelope {
    ($make:path) => {
        $crate::conformance_suite!(@cases $make;
            envelope::foreign_bytes_give_decode_error,
            envelope::other_codec_bytes_give_decode_error,
            envelope::truncated_envelope_gives_decode_error,
            envelope::decode_error_as_miss_when_asked,
            envelope::decode_error_loses_nothing,
        );
    };
}
