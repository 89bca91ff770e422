//! Session ids: 128 random bits from the OS, URL-safe text, stored only as a hash.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use larder_cache_api::{Error, ErrorKind, Key, Result};
use sha2::{Digest, Sha256};

/// A session id: 16 bytes (128 bits) from the operating system's CSPRNG, written as 22
/// characters of unpadded base64url (the same text form as `tower_sessions::session::Id`).
///
/// Only its SHA-256 hash reaches the database and the cache, so a dump of either yields no
/// usable cookie. `Debug` shows only the first characters.
///
/// ```
/// use larder_session_persist::SessionId;
///
/// let id = SessionId::random()?;
/// assert_eq!(id.as_str().len(), SessionId::TEXT_LEN);
/// assert_eq!(SessionId::parse(id.as_str())?, id);
/// assert!(SessionId::parse("too-short").is_err());
/// # Ok::<(), larder_cache_api::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SessionId {
    bytes: [u8; 16],
    text: String,
}

impl SessionId {
    /// Length of the text form.
    pub const TEXT_LEN: usize = 22;

    /// A new id from the OS CSPRNG.
    pub fn random() -> Result<Self> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).map_err(|e| {
            Error::new(
                ErrorKind::Backend,
                format!("the OS random source failed: {e}"),
            )
        })?;
        Ok(Self::from_bytes(bytes))
    }

    /// The id with these 16 bytes.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        SessionId {
            text: URL_SAFE_NO_PAD.encode(bytes),
            bytes,
        }
    }

    /// Parses the text form, rejecting anything malformed before any query is made: wrong
    /// length, characters outside base64url, non-canonical encodings.
    pub fn parse(s: &str) -> Result<Self> {
        if s.len() != Self::TEXT_LEN {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "session id must be {} characters, got {}",
                    Self::TEXT_LEN,
                    s.len().min(10_000)
                ),
            ));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "session id has characters outside base64url",
            ));
        }
        let mut bytes = [0u8; 16];
        match URL_SAFE_NO_PAD.decode_slice(s.as_bytes(), &mut bytes) {
            Ok(16) => {}
            _ => {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    "session id is not a canonical 128-bit base64url value",
                ))
            }
        }
        let id = Self::from_bytes(bytes);
        // Reject non-canonical trailing bits so one session has exactly one id text.
        if id.text != s {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "session id is not in canonical form",
            ));
        }
        Ok(id)
    }

    /// The text form, for the cookie.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The 16 bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.bytes
    }

    /// SHA-256 of the id: the only form stored anywhere.
    pub fn hash(&self) -> IdHash {
        IdHash(Sha256::digest(self.bytes).into())
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({}…)", &self.text[..4])
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The stored form of a [`SessionId`]: its SHA-256.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct IdHash(pub(crate) [u8; 32]);

impl IdHash {
    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub(crate) fn from_slice(b: &[u8]) -> Result<Self> {
        <[u8; 32]>::try_from(b)
            .map(IdHash)
            .map_err(|_| Error::new(ErrorKind::Decode, "stored session id hash is not 32 bytes"))
    }

    /// The cache key of this session: `sess:` and the hash in base64url.
    pub fn cache_key(&self) -> Key {
        Key::hashed(&format!("sess:{}", URL_SAFE_NO_PAD.encode(self.0)))
    }
}

impl fmt::Debug for IdHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "IdHash({:02x}{:02x}{:02x}{:02x}…)",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

/// Where new session ids come from. The default is [`OsRandom`]; tests inject sources that
/// collide on purpose.
pub trait IdSource: Send + Sync + fmt::Debug {
    /// A fresh id.
    fn generate(&self) -> Result<SessionId>;
}

/// Ids from the OS CSPRNG.
#[derive(Debug, Clone, Copy, Default)]
pub struct OsRandom;

impl IdSource for OsRandom {
    fn generate(&self) -> Result<SessionId> {
        SessionId::random()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_ids_are_rejected() {
        let good = SessionId::random().unwrap();
        assert_eq!(SessionId::parse(good.as_str()).unwrap(), good);
        let huge = "a".repeat(1 << 20);
        let mut bad_char = good.as_str().to_string();
        bad_char.replace_range(0..1, "+");
        // 'B' as last char sets trailing bits that a canonical encoding leaves zero.
        let mut non_canonical = good.as_str()[..21].to_string();
        non_canonical.push(if good.as_str().ends_with('B') {
            'C'
        } else {
            'B'
        });
        for bad in ["", "short", &huge, &bad_char, &non_canonical, "ééééééééééé"] {
            let e = SessionId::parse(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{bad:.30}");
        }
    }

    #[test]
    fn debug_does_not_leak_the_id() {
        let id = SessionId::random().unwrap();
        assert!(!format!("{id:?}").contains(id.as_str()));
        assert_ne!(id.hash(), SessionId::random().unwrap().hash());
        assert!(!id.hash().cache_key().as_str().contains(id.as_str()));
    }
}

#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;

    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

    /// The canonical form, decided without the base64 crate: 22 characters of base64url
    /// whose last one leaves the 4 bits beyond the 128th zero.
    fn canonical(s: &str) -> bool {
        s.len() == SessionId::TEXT_LEN
            && s.bytes().all(|b| ALPHABET.contains(&b))
            && ALPHABET
                .iter()
                .position(|a| *a == s.as_bytes()[21])
                .is_some_and(|v| v & 0b1111 == 0)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn parse_accepts_exactly_the_canonical_form(
            s in prop_oneof!["[A-Za-z0-9_-]{22}", "[A-Za-z0-9_+/=-]{20,24}", "\\PC{0,30}", any::<String>()]
        ) {
            match SessionId::parse(&s) {
                Ok(id) => {
                    prop_assert!(canonical(&s), "accepted {s:?}");
                    prop_assert_eq!(id.as_str(), s.as_str());
                }
                Err(e) => {
                    prop_assert!(!canonical(&s), "refused {s:?}");
                    prop_assert_eq!(e.kind(), ErrorKind::InvalidInput);
                }
            }
        }

        #[test]
        fn every_id_roundtrips(bytes in any::<[u8; 16]>()) {
            let id = SessionId::from_bytes(bytes);
            prop_assert!(canonical(id.as_str()));
            prop_assert_eq!(SessionId::parse(id.as_str()).unwrap(), id);
        }
    }
}
