//! Validated cache keys.

use std::fmt;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::{Error, ErrorKind, Result};

/// A validated cache key: 1 to [`Key::MAX_LEN`] bytes of UTF-8 with no ASCII whitespace and
/// no control bytes.
///
/// These are the rules of the strictest backend (memcached), applied everywhere, so a key
/// that works on one backend works on all of them. Cloning is cheap.
///
/// ```
/// use larder_cache_api::{ErrorKind, Key};
///
/// let k = Key::new("user:42:profile")?;
/// assert_eq!(k.as_str(), "user:42:profile");
/// assert_eq!(Key::new("").unwrap_err().kind(), ErrorKind::InvalidKey);
/// assert_eq!(Key::new("a b").unwrap_err().kind(), ErrorKind::InvalidKey);
///
/// // A long or free-form key can be hashed on request; a readable prefix is kept.
/// let long = format!("report:{}", "x".repeat(400));
/// let h = Key::hashed(&long);
/// assert!(h.as_str().starts_with("report:xxx"));
/// assert!(h.len() <= Key::MAX_LEN);
/// # Ok::<(), larder_cache_api::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(Arc<str>);

impl Key {
    /// Longest key in bytes, namespace prefix included.
    pub const MAX_LEN: usize = 250;

    /// Bytes of the original key kept readable by [`Key::hashed`].
    pub const HASHED_PREFIX_LEN: usize = 64;

    /// Validates `key`.
    pub fn new(key: impl AsRef<str>) -> Result<Self> {
        let key = key.as_ref();
        validate(key)?;
        Ok(Key(Arc::from(key)))
    }

    /// A key for any string: returned as is when it is valid, otherwise a readable prefix
    /// (invalid bytes replaced by `_`) followed by `#` and 32 hex digits (128 bits) of the
    /// SHA-256 of the whole input.
    pub fn hashed(raw: &str) -> Self {
        if validate(raw).is_ok() {
            return Key(Arc::from(raw));
        }
        let mut prefix = String::with_capacity(Self::HASHED_PREFIX_LEN + 33);
        for c in raw.chars() {
            if prefix.len() + c.len_utf8() > Self::HASHED_PREFIX_LEN {
                break;
            }
            if c.is_ascii_whitespace() || c.is_control() {
                prefix.push('_');
            } else {
                prefix.push(c);
            }
        }
        let digest = Sha256::digest(raw.as_bytes());
        prefix.push('#');
        for b in &digest[..16] {
            prefix.push_str(&format!("{b:02x}"));
        }
        Key(Arc::from(prefix))
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key as bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false: a key is never empty. Present for API symmetry.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// This key with `prefix` in front, validated again (the result must still fit).
    pub fn prefixed(&self, prefix: &str) -> Result<Key> {
        let mut s = String::with_capacity(prefix.len() + self.len());
        s.push_str(prefix);
        s.push_str(self.as_str());
        if s.len() > Self::MAX_LEN {
            return Err(Error::new(
                ErrorKind::InvalidKey,
                format!(
                    "key is {} bytes once prefixed with {prefix:?}; the limit is {} (use Key::hashed for long keys)",
                    s.len(),
                    Self::MAX_LEN
                ),
            ));
        }
        Key::new(s)
    }

    /// This key without `prefix`, if it starts with it.
    pub fn strip_prefix(&self, prefix: &str) -> Option<Key> {
        self.as_str()
            .strip_prefix(prefix)
            .filter(|s| !s.is_empty())
            .map(|s| Key(Arc::from(s)))
    }
}

fn validate(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::new(ErrorKind::InvalidKey, "key is empty"));
    }
    if key.len() > Key::MAX_LEN {
        return Err(Error::new(
            ErrorKind::InvalidKey,
            format!(
                "key is {} bytes; the limit is {} (use Key::hashed for long keys)",
                key.len(),
                Key::MAX_LEN
            ),
        ));
    }
    if let Some(pos) = key
        .bytes()
        .position(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(Error::new(
            ErrorKind::InvalidKey,
            format!(
                "key has whitespace or a control byte (0x{:02x}) at byte {pos}",
                key.as_bytes()[pos]
            ),
        ));
    }
    // Unicode controls beyond ASCII (U+0080..U+009F) break memcached's text protocol too.
    if key.chars().any(char::is_control) {
        return Err(Error::new(
            ErrorKind::InvalidKey,
            "key has a control character",
        ));
    }
    Ok(())
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Key {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for Key {
    type Error = Error;
    fn try_from(s: &str) -> Result<Self> {
        Key::new(s)
    }
}

impl TryFrom<String> for Key {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Key::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules() {
        assert!(Key::new("a").is_ok());
        assert!(Key::new("é:ü").is_ok());
        assert!(Key::new("x".repeat(250)).is_ok());
        for bad in ["", "a b", "a\nb", "a\tb", "a\u{1}b", "a\u{7f}b", "a\u{85}b"] {
            assert_eq!(
                Key::new(bad).unwrap_err().kind(),
                ErrorKind::InvalidKey,
                "{bad:?}"
            );
        }
        assert_eq!(
            Key::new("x".repeat(251)).unwrap_err().kind(),
            ErrorKind::InvalidKey
        );
    }

    #[test]
    fn hashed_is_stable_valid_and_distinct() {
        let a = Key::hashed(&"a".repeat(300));
        let b = Key::hashed(&format!("{}b", "a".repeat(299)));
        assert_ne!(a, b);
        assert_eq!(a, Key::hashed(&"a".repeat(300)));
        assert!(Key::new(a.as_str()).is_ok());
        let spaced = Key::hashed("hello world");
        assert!(spaced.as_str().starts_with("hello_world#"));
        assert_eq!(Key::hashed("fine"), Key::new("fine").unwrap());
        // Multi-byte characters are never cut in half.
        let k = Key::hashed(&"é".repeat(200));
        assert!(k.len() <= Key::MAX_LEN);
    }

    #[test]
    fn prefixed_checks_total_length() {
        let k = Key::new("x".repeat(245)).unwrap();
        assert_eq!(k.prefixed("ns:").unwrap().len(), 248);
        assert_eq!(
            k.prefixed("ns:1234:").unwrap_err().kind(),
            ErrorKind::InvalidKey
        );
        assert_eq!(k.prefixed("ns:").unwrap().strip_prefix("ns:").unwrap(), k);
    }
}

#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;

    /// The documented rule, written independently of `validate`.
    fn rule(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= Key::MAX_LEN
            && !s.chars().any(|c| c.is_ascii_whitespace() || c.is_control())
    }

    /// Mostly printable text, with whitespace and controls (ASCII and C1) mixed in.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            "\\PC{0,260}",
            "[a-z:é\u{2603} \t\n\u{0}\u{7f}\u{85}\u{9f}]{0,20}",
            any::<String>(),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn new_accepts_exactly_the_rule(s in text()) {
            match Key::new(&s) {
                Ok(k) => {
                    prop_assert!(rule(&s), "accepted {s:?}");
                    prop_assert_eq!(k.as_str(), s.as_str());
                }
                Err(e) => {
                    prop_assert!(!rule(&s), "refused {s:?}");
                    prop_assert_eq!(e.kind(), ErrorKind::InvalidKey);
                }
            }
        }

        #[test]
        fn hashed_is_always_a_valid_key(s in text()) {
            let h = Key::hashed(&s);
            prop_assert!(Key::new(h.as_str()).is_ok(), "{s:?} -> {h:?}");
            prop_assert!(h.len() <= Key::MAX_LEN);
            prop_assert_eq!(h.as_str() == s, rule(&s));
        }

        #[test]
        fn prefix_roundtrip(prefix in "[a-z:]{0,12}", s in "\\PC{1,250}") {
            if let Ok(k) = Key::new(&s) {
                match k.prefixed(&prefix) {
                    Ok(p) => {
                        prop_assert_eq!(p.len(), prefix.len() + k.len());
                        prop_assert_eq!(p.strip_prefix(&prefix), Some(k));
                    }
                    Err(e) => {
                        prop_assert_eq!(e.kind(), ErrorKind::InvalidKey);
                        prop_assert!(prefix.len() + s.len() > Key::MAX_LEN);
                    }
                }
            }
        }
    }
}
