//! The stored form of a cache entry: the envelope (postcard), then, when an integrity key is
//! configured, an HMAC-SHA256 tag over the cache key and the envelope, so an entry written
//! by anyone without the key, or moved to another key, is refused.

use bytes::Bytes;
use hmac::{Hmac, Mac};
use larder_cache_api::codec::Postcard;
use larder_cache_api::{envelope, Error, ErrorKind, Key, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::Sha256;

/// Length of the integrity tag appended to each entry.
const TAG_LEN: usize = 32;

/// Shortest integrity key accepted.
const MIN_KEY_LEN: usize = 16;

/// Why stored bytes were not opened.
#[derive(Debug)]
pub(crate) enum Unsealed {
    /// The integrity tag is missing or does not match.
    Forged,
    /// Not an entry of this format (foreign, corrupt or from another codec).
    Undecodable(Error),
}

/// Seals and opens cache entries, with or without an integrity key.
#[derive(Clone, Default)]
pub(crate) struct Sealer {
    mac: Option<Hmac<Sha256>>,
}

impl Sealer {
    /// Entries tagged with HMAC-SHA256 under `key` (at least 16 bytes).
    pub(crate) fn keyed(key: &[u8]) -> Result<Self> {
        if key.len() < MIN_KEY_LEN {
            return Err(Error::new(
                ErrorKind::Config,
                "the cache integrity key must be at least 16 bytes",
            ));
        }
        let mac = Hmac::<Sha256>::new_from_slice(key)
            .map_err(|_| Error::new(ErrorKind::Config, "unusable cache integrity key"))?;
        Ok(Sealer { mac: Some(mac) })
    }

    /// True if entries carry an integrity tag.
    pub(crate) fn is_keyed(&self) -> bool {
        self.mac.is_some()
    }

    /// The stored form of `value` under `key`: the envelope, then the tag if keyed.
    pub(crate) fn seal<T: Serialize>(&self, key: &Key, value: &T) -> Result<Bytes> {
        let sealed = envelope::seal(&Postcard, value)?;
        let Some(mac) = &self.mac else {
            return Ok(sealed);
        };
        let mut m = mac.clone();
        m.update(key.as_str().as_bytes());
        m.update(&sealed);
        let mut out = Vec::with_capacity(sealed.len() + TAG_LEN);
        out.extend_from_slice(&sealed);
        out.extend_from_slice(&m.finalize().into_bytes());
        Ok(Bytes::from(out))
    }

    /// Reads what [`seal`](Self::seal) stored under `key`.
    pub(crate) fn open<T: DeserializeOwned>(
        &self,
        key: &Key,
        raw: &[u8],
    ) -> std::result::Result<T, Unsealed> {
        let body = match &self.mac {
            None => raw,
            Some(mac) => {
                let ok = raw.len() >= TAG_LEN && {
                    let (body, tag) = raw.split_at(raw.len() - TAG_LEN);
                    let mut m = mac.clone();
                    m.update(key.as_str().as_bytes());
                    m.update(body);
                    m.verify_slice(tag).is_ok()
                };
                if !ok {
                    return Err(Unsealed::Forged);
                }
                &raw[..raw.len() - TAG_LEN]
            }
        };
        envelope::open::<_, T>(&Postcard, body).map_err(Unsealed::Undecodable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"sixteen bytes or more, shared";

    fn key(s: &str) -> Key {
        Key::new(s).unwrap()
    }

    #[test]
    fn entries_round_trip_with_and_without_a_key() {
        for sealer in [Sealer::default(), Sealer::keyed(SECRET).unwrap()] {
            let bytes = sealer.seal(&key("a"), &(7u32, "seven")).unwrap();
            let back: (u32, String) = sealer.open(&key("a"), &bytes).unwrap();
            assert_eq!(back, (7, "seven".to_owned()));
        }
    }

    #[test]
    fn a_keyed_sealer_refuses_untagged_moved_and_foreign_entries() {
        let keyed = Sealer::keyed(SECRET).unwrap();
        let other = Sealer::keyed(b"another key of sixteen bytes").unwrap();
        let plain = Sealer::default().seal(&key("a"), &1u32).unwrap();
        let tagged = keyed.seal(&key("a"), &1u32).unwrap();
        let refused = |r: std::result::Result<u32, Unsealed>| matches!(r, Err(Unsealed::Forged));
        assert!(refused(keyed.open(&key("a"), &plain)));
        // The tag covers the cache key: an entry copied under another key is refused.
        assert!(refused(keyed.open(&key("b"), &tagged)));
        assert!(refused(other.open(&key("a"), &tagged)));
        assert!(refused(keyed.open(&key("a"), &tagged[..TAG_LEN - 1])));
        let mut flipped = tagged.to_vec();
        flipped[0] ^= 1;
        assert!(refused(keyed.open(&key("a"), &flipped)));
    }

    #[test]
    fn undecodable_bytes_are_told_apart_from_forged_ones() {
        let r = Sealer::default().open::<u32>(&key("a"), b"not an envelope");
        assert!(matches!(r, Err(Unsealed::Undecodable(_))));
    }

    #[test]
    fn short_keys_are_refused() {
        let e = Sealer::keyed(b"short").err().unwrap();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(Sealer::keyed(&[0u8; MIN_KEY_LEN]).unwrap().is_keyed());
        assert!(!Sealer::default().is_keyed());
    }
}
