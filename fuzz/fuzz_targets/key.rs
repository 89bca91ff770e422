//! Keys as callers write them: any text is either a valid key that keeps its text, or an
//! `InvalidKey` error; `Key::hashed` always gives a valid key; prefixing checks the total.
#![no_main]

use larder_cache_api::{ErrorKind, Key};
use libfuzzer_sys::fuzz_target;

/// The documented rule, written independently of the library.
fn valid(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= Key::MAX_LEN
        && !s.chars().any(|c| c.is_ascii_whitespace() || c.is_control())
}

fn check(s: &str) {
    match Key::new(s) {
        Ok(k) => {
            assert!(valid(s), "accepted {s:?}");
            assert_eq!(k.as_str(), s);
            assert_eq!(k.len(), s.len());
            assert_eq!(Key::try_from(s).ok(), Some(k.clone()));
        }
        Err(e) => {
            assert!(!valid(s), "refused {s:?}: {e}");
            assert_eq!(e.kind(), ErrorKind::InvalidKey);
        }
    }
    let h = Key::hashed(s);
    assert!(
        Key::new(h.as_str()).is_ok(),
        "hashed {s:?} gave invalid {h:?}"
    );
    assert!(h.len() <= Key::MAX_LEN);
    if valid(s) {
        assert_eq!(h.as_str(), s);
    } else {
        assert_ne!(h.as_str(), s);
    }
}

fuzz_target!(|input: (&str, &str)| {
    let (prefix, rest) = input;
    check(prefix);
    check(rest);
    if let Ok(k) = Key::new(rest) {
        match k.prefixed(prefix) {
            Ok(p) => {
                assert!(valid(&format!("{prefix}{rest}")));
                assert_eq!(p.strip_prefix(prefix), Some(k.clone()));
            }
            Err(e) => assert_eq!(e.kind(), ErrorKind::InvalidKey),
        }
        if let Some(stripped) = k.strip_prefix(prefix) {
            assert!(Key::new(stripped.as_str()).is_ok());
            assert_eq!(format!("{prefix}{stripped}"), rest);
        }
    }
});
