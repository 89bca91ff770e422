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
        let (v, used) = bincode::serde::decode_from_slice(bytes, bincode::config::standard())
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
