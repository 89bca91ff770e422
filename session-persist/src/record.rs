//! What a session holds.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use larder_cache_api::codec::{Codec, Postcard};
use larder_cache_api::{envelope, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::id::SessionId;

/// Milliseconds since the Unix epoch: the one time unit of stored sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// Now, by this machine's clock.
    pub fn now() -> Self {
        Timestamp(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0),
        )
    }

    /// This time plus `d`.
    pub fn plus(self, d: Duration) -> Self {
        Timestamp(
            self.0
                .saturating_add(d.as_millis().min(i64::MAX as u128) as i64),
        )
    }

    /// Time left until `self` from `now` (zero if past).
    pub fn remaining_from(self, now: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(now.0).max(0) as u64)
    }
}

/// The key-value data of a session. Each value is encoded on its own (postcard), so that
/// changes can be recorded and merged key by key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionData(BTreeMap<String, Vec<u8>>);

impl SessionData {
    /// No keys.
    pub fn new() -> Self {
        Self::default()
    }

    /// The value under `key`, decoded.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        self.0.get(key).map(|b| Postcard.decode(b)).transpose()
    }

    /// Encodes and stores `value` under `key`.
    pub fn insert<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<()> {
        let mut buf = Vec::new();
        Postcard.encode(value, &mut buf)?;
        self.0.insert(key.to_owned(), buf);
        Ok(())
    }

    /// The encoded bytes under `key`.
    pub fn get_raw(&self, key: &str) -> Option<&[u8]> {
        self.0.get(key).map(Vec::as_slice)
    }

    /// Stores already-encoded bytes.
    pub fn insert_raw(&mut self, key: &str, bytes: Vec<u8>) {
        self.0.insert(key.to_owned(), bytes);
    }

    /// Removes `key`; true if it was there.
    pub fn remove(&mut self, key: &str) -> bool {
        self.0.remove(key).is_some()
    }

    /// The keys, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True if there are no keys.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The stored form: an envelope around the postcard map.
    pub fn to_bytes(&self) -> Result<Bytes> {
        envelope::seal(&Postcard, &self.0)
    }

    /// Reads the stored form; foreign or corrupt bytes are a `Decode` error.
    pub fn from_bytes(b: &[u8]) -> Result<Self> {
        envelope::open(&Postcard, b).map(SessionData)
    }
}

/// A stored session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its id.
    pub id: SessionId,
    /// Its data.
    pub data: SessionData,
    /// Who it belongs to, for "log out everywhere".
    pub principal: Option<String>,
    /// When it expires.
    pub expires_at: Timestamp,
    /// Its version: grows by one with every write (save, touch, rotation, deletion).
    pub version: i64,
}
