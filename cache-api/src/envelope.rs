//! The self-describing header in front of every value the typed [`Cache`](crate::Cache)
//! stores.
//!
//! ```text
//! byte 0-1  magic 0xF7 'L'   (0xF7 never starts UTF-8 text, JSON or a plain string)
//! byte 2    format version   (1)
//! byte 3    codec id         (see Codec::ID)
//! byte 4    flags            (none defined yet; unknown flags are refused)
//! byte 5..  payload
//! ```
//!
//! Bytes from another program, another codec or a newer format are reported as
//! [`ErrorKind::Decode`](crate::ErrorKind) and never decoded as something else.
//!
//! ```
//! use larder_cache_api::{envelope, codec::Postcard, ErrorKind};
//!
//! let bytes = envelope::seal(&Postcard, &vec![1u8, 2, 3])?;
//! let v: Vec<u8> = envelope::open(&Postcard, &bytes)?;
//! assert_eq!(v, [1, 2, 3]);
//! let err = envelope::open::<_, Vec<u8>>(&Postcard, b"hello").unwrap_err();
//! assert_eq!(err.kind(), ErrorKind::Decode);
//! # Ok::<(), larder_cache_api::Error>(())
//! ```

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::{name_of, Codec};
use crate::{Error, ErrorKind, Result};

/// The two magic bytes.
pub const MAGIC: [u8; 2] = [0xF7, b'L'];
/// The envelope format this version writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// Header length in bytes.
pub const HEADER_LEN: usize = 5;

/// Encodes `value` with `codec` behind a header.
pub fn seal<C: Codec, T: Serialize + ?Sized>(codec: &C, value: &T) -> Result<Bytes> {
    let mut buf = Vec::with_capacity(64);
    buf.extend_from_slice(&MAGIC);
    buf.push(FORMAT_VERSION);
    buf.push(C::ID);
    buf.push(0);
    codec.encode(value, &mut buf)?;
    Ok(Bytes::from(buf))
}

/// Checks the header of `bytes` and decodes the payload with `codec`.
pub fn open<C: Codec, T: DeserializeOwned>(codec: &C, bytes: &[u8]) -> Result<T> {
    let payload = check_header::<C>(bytes)?;
    codec.decode(payload)
}

/// Checks the header and returns the payload.
fn check_header<C: Codec>(bytes: &[u8]) -> Result<&[u8]> {
    if bytes.len() < HEADER_LEN || bytes[..2] != MAGIC {
        return Err(Error::new(
            ErrorKind::Decode,
            "stored bytes have no larder envelope (written by another program?)",
        ));
    }
    if bytes[2] != FORMAT_VERSION {
        return Err(Error::new(
            ErrorKind::Decode,
            format!(
                "envelope format {} is not understood (this version reads {FORMAT_VERSION})",
                bytes[2]
            ),
        ));
    }
    if bytes[3] != C::ID {
        return Err(Error::new(
            ErrorKind::Decode,
            format!(
                "value was written by {} (codec id {}), this cache reads {} (id {})",
                name_of(bytes[3]),
                bytes[3],
                C::NAME,
                C::ID
            ),
        ));
    }
    if bytes[4] != 0 {
        return Err(Error::new(
            ErrorKind::Decode,
            format!("envelope flags {:#04x} are not understood", bytes[4]),
        ));
    }
    Ok(&bytes[HEADER_LEN..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Postcard;

    #[derive(Debug, Clone, Copy, Default)]
    struct Other;
    impl Codec for Other {
        const ID: u8 = 200;
        const NAME: &'static str = "other";
        fn encode<T: Serialize + ?Sized>(&self, v: &T, out: &mut Vec<u8>) -> Result<()> {
            Postcard.encode(v, out)
        }
        fn decode<T: DeserializeOwned>(&self, b: &[u8]) -> Result<T> {
            Postcard.decode(b)
        }
    }

    #[test]
    fn rejects_every_kind_of_foreign_bytes() {
        let good = seal(&Postcard, &7u32).unwrap();
        assert_eq!(open::<_, u32>(&Postcard, &good).unwrap(), 7);
        for bad in [&b""[..], &b"\xF7L\x01\x01"[..], &b"{\"a\":1}"[..]] {
            assert_eq!(
                open::<_, u32>(&Postcard, bad).unwrap_err().kind(),
                ErrorKind::Decode
            );
        }
        let mut newer = good.to_vec();
        newer[2] = 2;
        assert!(open::<_, u32>(&Postcard, &newer)
            .unwrap_err()
            .message()
            .contains("format 2"));
        let mut flagged = good.to_vec();
        flagged[4] = 1;
        assert_eq!(
            open::<_, u32>(&Postcard, &flagged).unwrap_err().kind(),
            ErrorKind::Decode
        );
        // Same payload bytes, other codec id: refused although postcard could decode them.
        let other = seal(&Other, &7u32).unwrap();
        let e = open::<_, u32>(&Postcard, &other).unwrap_err();
        assert!(e.message().contains("user codec"), "{e}");
        let mut trailing = good.to_vec();
        trailing.push(0);
        assert_eq!(
            open::<_, u32>(&Postcard, &trailing).unwrap_err().kind(),
            ErrorKind::Decode
        );
    }
}

#[cfg(test)]
mod props {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::codec::Postcard;

    type Value = (String, Vec<u8>, Option<i64>, BTreeMap<String, u32>);

    fn opens_or_decode_error<C: Codec>(
        codec: &C,
        bytes: &[u8],
    ) -> std::result::Result<(), TestCaseError> {
        match open::<C, Value>(codec, bytes) {
            Ok(v) => {
                let again: Value = open(codec, &seal(codec, &v).unwrap()).unwrap();
                prop_assert_eq!(again, v);
            }
            Err(e) => prop_assert_eq!(e.kind(), ErrorKind::Decode),
        }
        match open::<C, String>(codec, bytes) {
            Ok(_) => {}
            Err(e) => prop_assert_eq!(e.kind(), ErrorKind::Decode),
        }
        Ok(())
    }

    fn all_codecs(bytes: &[u8]) -> std::result::Result<(), TestCaseError> {
        opens_or_decode_error(&Postcard, bytes)?;
        #[cfg(feature = "json")]
        opens_or_decode_error(&crate::codec::Json, bytes)?;
        #[cfg(feature = "bincode")]
        opens_or_decode_error(&crate::codec::Bincode, bytes)?;
        Ok(())
    }

    fn header(id: u8) -> Vec<u8> {
        vec![MAGIC[0], MAGIC[1], FORMAT_VERSION, id, 0]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            all_codecs(&bytes)?;
        }

        #[test]
        fn arbitrary_payloads_behind_a_valid_header(
            id in prop_oneof![Just(1u8), Just(2), Just(3), any::<u8>()],
            payload in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut bytes = header(id);
            bytes.extend_from_slice(&payload);
            all_codecs(&bytes)?;
        }

        #[test]
        fn sealed_values_roundtrip(v in (
            "\\PC{0,24}",
            proptest::collection::vec(any::<u8>(), 0..48),
            any::<Option<i64>>(),
            proptest::collection::btree_map("\\PC{0,8}", any::<u32>(), 0..6),
        )) {
            let sealed = seal(&Postcard, &v).unwrap();
            prop_assert_eq!(open::<_, Value>(&Postcard, &sealed).unwrap(), v.clone());
            #[cfg(feature = "json")]
            {
                let sealed = seal(&crate::codec::Json, &v).unwrap();
                prop_assert_eq!(open::<_, Value>(&crate::codec::Json, &sealed).unwrap(), v.clone());
            }
            #[cfg(feature = "bincode")]
            {
                let sealed = seal(&crate::codec::Bincode, &v).unwrap();
                prop_assert_eq!(open::<_, Value>(&crate::codec::Bincode, &sealed).unwrap(), v);
            }
        }
    }
}
