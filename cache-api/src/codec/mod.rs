//! Codecs turn serde values into bytes; the [envelope](crate::envelope) records which one did.

use std::fmt::Debug;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::Result;

mod postcard;
pub use self::postcard::Postcard;

#[cfg(feature = "bincode")]
mod bincode;
#[cfg(feature = "bincode")]
pub use self::bincode::Bincode;

#[cfg(feature = "json")]
mod json;
#[cfg(feature = "json")]
pub use self::json::Json;

/// A serde format with a stable id stored in every [envelope](crate::envelope) it writes.
///
/// Ids 1 to 127 are reserved for larder's codecs; pick 128 to 255 for your own.
///
/// ```
/// use larder_cache_api::codec::{Codec, Postcard};
///
/// let mut buf = Vec::new();
/// Postcard.encode(&("alice", 42u32), &mut buf)?;
/// let back: (String, u32) = Postcard.decode(&buf)?;
/// assert_eq!(back, ("alice".to_string(), 42));
/// # Ok::<(), larder_cache_api::Error>(())
/// ```
pub trait Codec: Debug + Clone + Default + Send + Sync + 'static {
    /// Id written into the envelope header.
    const ID: u8;
    /// Name used in error messages.
    const NAME: &'static str;

    /// Appends the encoding of `value` to `out`.
    fn encode<T: Serialize + ?Sized>(&self, value: &T, out: &mut Vec<u8>) -> Result<()>;

    /// Decodes all of `bytes` (trailing bytes are an error).
    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T>;
}

/// The name of a built-in codec id, for messages about foreign values.
pub(crate) fn name_of(id: u8) -> &'static str {
    match id {
        1 => "postcard",
        2 => "bincode",
        3 => "json",
        128.. => "a user codec",
        _ => "an unknown codec",
    }
}
