use serde::de::DeserializeOwned;
use serde::Serialize;

use super::Codec;
use crate::{Error, ErrorKind, Result};

/// bincode 2 (standard configuration). Offered because users ask for it; bincode is no
/// longer maintained, so prefer [`Postcard`](super::Postcard) for new data.
#[derive(Debug, Clone, Copy, Default)]
pub struct Bincode;

impl Codec for Bincode {
    const ID: u8 = 2;
    const NAME: &'static str = "bincode";

    fn encode<T: Serialize + ?Sized>(&self, value: &T, out: &mut Vec<u8>) -> Result<()> {
        bincode::serde::encode_into_std_write(value, out, bincode::config::standard())
            .map_err(|e| Error::new(ErrorKind::Encode, "bincode encode failed").with_source(e))?;
        Ok(())
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T> {
        let (v, used) = decode_bounded(bytes)
            .map_err(|e| Error::new(ErrorKind::Decode, "bincode decode failed").with_source(e))?;
        if used != bytes.len() {
            return Err(Error::new(
                ErrorKind::Decode,
                format!("bincode decode left {} trailing bytes", bytes.len() - used),
            ));
        }
        Ok(v)
    }
}

/// Decodes with a limit on what bincode may claim, chosen from the input's length.
///
/// bincode allocates a string's or byte buffer's length, as the bytes claim it, before
/// reading them: without a limit, six corrupt bytes make it allocate gigabytes. Through serde
/// it claims each primitive's in-memory size (at most 16 bytes, from at least 1 encoded byte)
/// and each string's or buffer's length (as many encoded bytes), so a valid encoding never
/// claims more than 16 times its length. The limit is a type parameter, hence the tiers: the
/// smallest one that fits 16 times the input is used (a few instantiations per type, not one
/// per length); only inputs over 16 MiB are decoded without a bound.
fn decode_bounded<T: DeserializeOwned>(
    bytes: &[u8],
) -> std::result::Result<(T, usize), bincode::error::DecodeError> {
    use bincode::config::standard;
    use bincode::serde::decode_from_slice;
    let need = bytes.len().saturating_mul(16);
    macro_rules! tiers {
        ($($limit:expr),*) => {
            $(if need <= $limit {
                return decode_from_slice(bytes, standard().with_limit::<{ $limit }>());
            })*
        };
    }
    tiers!(1 << 16, 1 << 20, 1 << 24, 1 << 28);
    decode_from_slice(bytes, standard().with_limit::<{ usize::MAX }>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope;

    /// Found by fuzzing `envelope::open`: a length prefix of 4 231 087 360 (varint `0xfc` then
    /// a u32) made bincode allocate 4 GiB before noticing the input was six bytes long.
    #[test]
    fn a_huge_length_prefix_is_a_decode_error_not_an_allocation() {
        let mut bytes = envelope::seal(&Bincode, &()).unwrap().to_vec();
        bytes.extend_from_slice(&[0x74, 0xfc, 0x00, 0x45, 0x31, 0xfc]);
        let e = envelope::open::<_, Vec<String>>(&Bincode, &bytes).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Decode);
        let e = Bincode
            .decode::<String>(&[0xfc, 0x00, 0x45, 0x31, 0xfc])
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Decode);
        let e = Bincode
            .decode::<Vec<u8>>(&[0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f])
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Decode);
    }

    #[test]
    fn values_that_decode_to_sixteen_times_their_size_still_decode() {
        // Each u128 below is one encoded byte and claims 16.
        let v: Vec<u128> = vec![7; 100_000];
        let mut buf = Vec::new();
        Bincode.encode(&v, &mut buf).unwrap();
        assert_eq!(Bincode.decode::<Vec<u128>>(&buf).unwrap(), v);
        let s = "x".repeat(3 << 20);
        let mut buf = Vec::new();
        Bincode.encode(&s, &mut buf).unwrap();
        assert_eq!(Bincode.decode::<String>(&buf).unwrap(), s);
    }
}
