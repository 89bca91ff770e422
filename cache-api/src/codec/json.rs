use serde::de::DeserializeOwned;
use serde::Serialize;

use super::Codec;
use crate::{Error, ErrorKind, Result};

/// JSON (serde_json): larger and slower, but readable by people and other languages.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json;

impl Codec for Json {
    const ID: u8 = 3;
    const NAME: &'static str = "json";

    fn encode<T: Serialize + ?Sized>(&self, value: &T, out: &mut Vec<u8>) -> Result<()> {
        serde_json::to_writer(out, value)
            .map_err(|e| Error::new(ErrorKind::Encode, "json encode failed").with_source(e))
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T> {
        serde_json::from_slice(bytes)
            .map_err(|e| Error::new(ErrorKind::Decode, "json decode failed").with_source(e))
    }
}
