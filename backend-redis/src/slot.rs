//! Redis Cluster hash slots: the slot of a key, and a name in a key's slot for its delete
//! marker (the key a delete-if-version script leaves behind with its request id, so that a
//! resent delete can recognise its own success).

/// The name of `key`'s delete marker: in the same Redis Cluster hash
/// slot as `key`, so that one script can touch both, and never a valid
/// [`Key`](larder_cache_api::Key) (it holds a space), so that it cannot collide with an entry.
///
/// Redis hashes the part between the first `{` and the next `}` when that part is not
/// empty (the hash tag), else the whole key. Three shapes, told apart by their suffix:
///
/// * a key with a hash tag: `key ␠larder:del` (appending keeps the tag);
/// * a key without one and without `}`: `{key}␠larder:del:w` (the whole key becomes the tag);
/// * otherwise: `{t}␠larder:del:s␠key`, where `t` is a short tag of the key's slot.
pub(crate) fn marker_key(key: &[u8]) -> Vec<u8> {
    const TAGGED: &[u8] = b" larder:del";
    const WRAPPED: &[u8] = b" larder:del:w";
    const SLOTTED: &[u8] = b" larder:del:s ";
    let mut m = Vec::with_capacity(key.len() + 24);
    if hash_tag(key).is_some() {
        m.extend_from_slice(key);
        m.extend_from_slice(TAGGED);
    } else if !key.contains(&b'}') {
        m.push(b'{');
        m.extend_from_slice(key);
        m.push(b'}');
        m.extend_from_slice(WRAPPED);
    } else {
        m.push(b'{');
        m.extend_from_slice(slot_tag(slot(key)));
        m.push(b'}');
        m.extend_from_slice(SLOTTED);
        m.extend_from_slice(key);
    }
    m
}

/// The name of `key`'s write history (the versions of its last conditional writes, see
/// `scripts`): its delete marker's name and ` w`, so in the same hash slot (the tag, if
/// any, comes first and is kept), never a valid [`Key`](larder_cache_api::Key) (spaces),
/// and never another key's marker or history (no marker ends in ` w`).
pub(crate) fn writes_key(key: &[u8]) -> Vec<u8> {
    let mut w = marker_key(key);
    w.extend_from_slice(b" w");
    w
}

/// The hash tag of `key`, as Redis Cluster defines it.
fn hash_tag(key: &[u8]) -> Option<&[u8]> {
    let open = key.iter().position(|b| *b == b'{')?;
    let len = key[open + 1..].iter().position(|b| *b == b'}')?;
    let tag = &key[open + 1..open + 1 + len];
    (!tag.is_empty()).then_some(tag)
}

/// The Redis Cluster hash slot of `key`: CRC16 (XMODEM) of its hash tag or of the whole key,
/// modulo 16384.
fn slot(key: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in hash_tag(key).unwrap_or(key) {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc & 0x3FFF
}

/// A short string (letters and digits) whose slot is `slot`: the first such string in
/// length-then-alphabet order, from a table built on first use (16384 entries).
fn slot_tag(want: u16) -> &'static [u8] {
    static TABLE: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
        let mut table = vec![Vec::new(); 16384];
        let mut missing = table.len();
        let mut n: u64 = 0;
        while missing > 0 {
            // The n-th string in bijective base 62: every length, every string, once.
            let mut s = Vec::new();
            let mut i = n;
            loop {
                s.push(ALPHABET[(i % 62) as usize]);
                if i < 62 {
                    break;
                }
                i = i / 62 - 1;
            }
            n += 1;
            let t = &mut table[usize::from(slot(&s))];
            if t.is_empty() {
                *t = s;
                missing -= 1;
            }
        }
        table
    });
    &table[usize::from(want)]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn slot_matches_the_cluster_spec() {
        // The examples of the Redis Cluster specification, and CRC16("123456789") = 0x31C3.
        assert_eq!(slot(b"123456789"), 0x31C3 & 0x3FFF);
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_ne!(slot(b"foo{}{bar}"), slot(b"bar"));
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
        assert_eq!(slot(b"foo{bar}{zap}"), slot(b"bar"));
        assert_eq!(hash_tag(b"foo{}{bar}"), None);
        assert_eq!(hash_tag(b"foo{{bar}}zap"), Some(&b"{bar"[..]));
    }

    #[test]
    fn every_slot_has_a_short_tag() {
        for s in 0..16384u16 {
            let t = slot_tag(s);
            assert!(!t.is_empty() && t.len() <= 4, "slot {s}: {t:?}");
            assert!(t.iter().all(u8::is_ascii_alphanumeric));
            assert_eq!(slot(t), s);
        }
    }

    #[test]
    fn markers_share_the_slot_and_never_collide() {
        let keys: [&[u8]; 9] = [
            b"plain",
            b"{plain}",
            b"{user1}:profile",
            b"pre{tag}post{x}",
            b"closing}only",
            b"{}empty}",
            b"}{x",
            b"open{",
            b"{",
        ];
        let mut seen = std::collections::HashSet::new();
        for k in keys {
            for m in [marker_key(k), writes_key(k)] {
                assert_eq!(slot(&m), slot(k), "{:?}", String::from_utf8_lossy(k));
                assert!(m.contains(&b' '), "not a valid larder key");
                assert!(seen.insert(m), "{:?}", String::from_utf8_lossy(k));
            }
        }
    }

    #[cfg(feature = "cluster")]
    #[test]
    fn slot_agrees_with_the_cluster_client() {
        use redis::cluster_routing::Slot;
        for k in [
            &b"plain"[..],
            b"{a}b",
            b"a}b",
            b"{}x}",
            b"x{y",
            b"\xff{\x00}",
        ] {
            assert_eq!(Slot::for_key(k), Slot::new(slot(k)).unwrap());
            assert_eq!(Slot::for_key(marker_key(k)), Slot::for_key(k));
        }
    }
}
