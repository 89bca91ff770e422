//! How an entry is stored, and where its versions come from.
//!
//! # Stored layout
//!
//! Each entry is one Redis string: an 8-byte big-endian version followed by the value, so a
//! plain `GET`/`MGET` returns value and version in one round trip.
//!
//! # Versions
//!
//! Versions are 64 random bits drawn by the client (a CSPRNG-seeded thread-local generator)
//! for every write. A per-key counter cannot survive a delete (the counter would go with the
//! key, and re-creating it would restart at 1: an A-B-A), and a global counter key breaks
//! Redis Cluster, where a script may touch keys of one slot only. With random versions a
//! version reappears for a key only by a 2^-64 coincidence per write, and an update never
//! reuses the version it replaces (redrawn in that case).

use std::io::Write;

use larder_cache_api::{Bytes, Entry, Result, Version};
use redis::{RedisWrite, ToRedisArgs, Value};

use crate::error;

/// Bytes of the version header in front of every stored value.
const HEADER: usize = 8;

/// The stored string `version ‖ value`, written straight into the command buffer (one copy).
pub(crate) struct Stored<'a> {
    pub(crate) version: u64,
    pub(crate) value: &'a [u8],
}

impl ToRedisArgs for Stored<'_> {
    fn write_redis_args<W>(&self, out: &mut W)
    where
        W: ?Sized + RedisWrite,
    {
        let mut w = out.writer_for_next_arg();
        // Writing into the command's in-memory buffer cannot fail.
        let _ = w.write_all(&self.version.to_be_bytes());
        let _ = w.write_all(self.value);
    }
}

/// A fresh random version, never `not` (the version an update replaces).
pub(crate) fn new_version(not: Option<u64>) -> u64 {
    loop {
        let v: u64 = rand::random();
        if Some(v) != not {
            return v;
        }
    }
}

/// The entry in a reply to `op` (`GET`, one item of `MGET`): nil is a miss.
pub(crate) fn optional_entry(op: &'static str, v: Value) -> Result<Option<Entry>> {
    match v {
        Value::Nil => Ok(None),
        Value::BulkString(b) => decode(b).map(Some),
        other => Err(error::unexpected(op, &other)),
    }
}

/// Splits a stored string into version and value without copying the value.
pub(crate) fn decode(raw: Vec<u8>) -> Result<Entry> {
    let Some(head) = raw.get(..HEADER) else {
        return Err(error::foreign(raw.len()));
    };
    let mut v = [0u8; HEADER];
    v.copy_from_slice(head);
    let version = Version::from_raw(u64::from_be_bytes(v));
    let value = Bytes::from(raw).slice(HEADER..);
    Ok(Entry { value, version })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn layout_roundtrips() {
        let mut raw = 0x0102_0304_0506_0708u64.to_be_bytes().to_vec();
        raw.extend_from_slice(b"hello");
        let e = decode(raw).unwrap();
        assert_eq!(e.version.into_raw(), 0x0102_0304_0506_0708);
        assert_eq!(&e.value[..], b"hello");
        let e = decode(vec![0; 8]).unwrap();
        assert!(e.value.is_empty());
        assert_eq!(
            decode(b"short".to_vec()).unwrap_err().kind(),
            larder_cache_api::ErrorKind::Decode
        );
    }

    #[test]
    fn stored_is_one_argument() {
        let args = Stored {
            version: 1,
            value: b"ab",
        }
        .to_redis_args();
        assert_eq!(args, vec![vec![0, 0, 0, 0, 0, 0, 0, 1, b'a', b'b']]);
    }

    #[test]
    fn update_never_reuses_the_replaced_version() {
        for _ in 0..1000 {
            assert_ne!(new_version(Some(7)), 7);
        }
    }
}
