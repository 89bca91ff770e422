use serde::de::DeserializeOwned;
use serde::Serialize;

use super::Codec;
use crate::{Error, ErrorKind, Result};

/// postcard 1.x: compact, maintained, with a documented stable wire format. The default.
#[derive(Debug, Clone, Copy, Default)]
pub struct Postcard;

impl Codec for Postcard {
    const ID: u8 = 1;
    const NAME: &'static str = "postcard";

    fn encode<T: Serialize + ?Sized>(&self, value: &T, out: &mut Vec<u8>) -> Result<()> {
        let buf = std::mem::take(out);
        *out = postcard::to_extend(value, buf)
            .map_err(|e| Error::new(ErrorKind::Encode, "postcard encode failed").with_source(e))?;
        Ok(())
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T> {
        let (v, rest) = postcard::take_from_bytes(bytes)
            .map_err(|e| Error::new(ErrorKind::Decode, "postcard decode failed").with_source(e))?;
        if !rest.is_empty() {
            return Err(Error::new(
                ErrorKind::Decode,
                format!("postcard decode left {} trailing bytes", rest.len()),
            ));
        }
        Ok(v)
    }
}
