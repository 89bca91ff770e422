//! Records, the expiry index and every operation, as blocking calls on sled.
//!
//! # Layout
//!
//! * Tree [`ENTRIES_TREE`]: `key → record`, where a record is a 28-byte header followed by
//!   the value: magic `b"lsd"`, format `1`, then big-endian `version` (u64), `stamp` (u64)
//!   and `expires_at` (u64, milliseconds since the Unix epoch, `0` = never).
//! * Tree [`EXPIRY_TREE`]: `expires_at ‖ stamp ‖ key → ()`, big-endian so that a range
//!   scan up to "now" yields exactly the entries that are due.
//!
//! `version` is what callers see; it comes from `Db::generate_id`, which sled documents as
//! monotonic across restarts, so a version never comes back for any key (A-B-A safe).
//! `stamp` is fresh for every physical write, `touch` included (which keeps `version`), so
//! every index entry belongs to exactly one record state.
//!
//! # Keeping the two trees consistent without transactions
//!
//! Every write of the entries tree is a `compare_and_swap` (or an atomic swap) on the full
//! record bytes, and follows one protocol:
//!
//! 1. insert the new record's index entry (if it expires),
//! 2. swap the record in,
//! 3. on success remove the old record's index entry; on failure remove our own.
//!
//! Index entries are unique per write, so step 3 never removes an entry another write
//! relies on. A crash between steps leaves at most an index entry without its record,
//! which is harmless: the sweeper only deletes a record whose current `stamp` and
//! `expires_at` match the index entry, with a `compare_and_swap` on the bytes it checked.
//! Independently of the index, reads check `expires_at`, so an expired entry is absent for
//! every operation even before the sweeper runs.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use larder_cache_api::{Bytes, DeleteMode, Entry, Key, PutMode, Result, Ttl, Version};
use sled::IVec;

use crate::error;

/// How long opening waits for the lock of a database that was just closed.
pub(crate) const LOCK_WAIT: Duration = Duration::from_secs(1);
const LOCK_RETRY: Duration = Duration::from_millis(20);

/// Name of the tree holding the records.
pub const ENTRIES_TREE: &str = "larder/entries";
/// Name of the tree holding the expiry index.
pub const EXPIRY_TREE: &str = "larder/expiry";

const MAGIC: [u8; 3] = *b"lsd";
const FORMAT: u8 = 1;
pub(crate) const HEADER_LEN: usize = 28;
const INDEX_PREFIX_LEN: usize = 16;
/// No expiry.
const NEVER: u64 = 0;
/// How long an index entry whose record does not match it is kept before the sweeper
/// drops it. Such an entry is normally left by a crash; within this window it may also
/// belong to a write between its steps 1 and 2, which must not lose its index entry.
const STALE_INDEX_GRACE_MS: u64 = 30_000;

/// A decoded record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    version: u64,
    stamp: u64,
    expires_at: u64,
}

impl Header {
    fn parse(raw: &[u8]) -> Result<Header> {
        if raw.len() < HEADER_LEN {
            return Err(error::corrupt("shorter than the header", raw.len()));
        }
        if raw[..3] != MAGIC {
            return Err(error::corrupt("bad magic", raw.len()));
        }
        if raw[3] != FORMAT {
            return Err(error::corrupt("unknown format version", raw.len()));
        }
        Ok(Header {
            version: be_u64(&raw[4..12]),
            stamp: be_u64(&raw[12..20]),
            expires_at: be_u64(&raw[20..28]),
        })
    }

    fn expired(&self, now: u64) -> bool {
        self.expires_at != NEVER && self.expires_at <= now
    }

    fn index_key(&self, key: &[u8]) -> Option<Vec<u8>> {
        (self.expires_at != NEVER).then(|| index_key(self.expires_at, self.stamp, key))
    }

    fn encode(&self, value: &[u8]) -> IVec {
        let mut v = Vec::with_capacity(HEADER_LEN + value.len());
        v.extend_from_slice(&MAGIC);
        v.push(FORMAT);
        v.extend_from_slice(&self.version.to_be_bytes());
        v.extend_from_slice(&self.stamp.to_be_bytes());
        v.extend_from_slice(&self.expires_at.to_be_bytes());
        v.extend_from_slice(value);
        IVec::from(v)
    }
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

fn index_key(expires_at: u64, stamp: u64, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(INDEX_PREFIX_LEN + key.len());
    k.extend_from_slice(&expires_at.to_be_bytes());
    k.extend_from_slice(&stamp.to_be_bytes());
    k.extend_from_slice(key);
    k
}

/// Wall-clock milliseconds since the Unix epoch, rounded down. Wall clock, not a monotonic
/// one, because expiry times are stored and must mean the same after a restart.
fn now_floor() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// When an entry written now with `ttl` expires. "Now" is rounded up and expiry is checked
/// against "now" rounded down, so an entry never expires before its full TTL.
fn deadline(ttl: Option<Ttl>) -> u64 {
    let Some(ttl) = ttl else { return NEVER };
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let ceil = d.as_millis() as u64 + u64::from(d.subsec_nanos() % 1_000_000 != 0);
    ceil.saturating_add(ttl.as_millis()).max(1)
}

fn entry(raw: IVec, h: &Header) -> Entry {
    // Zero-copy: the Bytes keeps sled's buffer alive and views the value part of it.
    let value = Bytes::from_owner(raw).slice(HEADER_LEN..);
    Entry::new(value, Version::from_raw(h.version))
}

/// What is stored under a key, read once.
enum Current {
    Absent,
    /// Present but expired: absent for the caller, but the swap must expect these bytes.
    Expired(IVec),
    Live(IVec, Header),
}

impl Current {
    fn raw(&self) -> Option<&IVec> {
        match self {
            Current::Absent => None,
            Current::Expired(raw) | Current::Live(raw, _) => Some(raw),
        }
    }

    fn live_entry(&self) -> Option<Entry> {
        match self {
            Current::Live(raw, h) => Some(entry(raw.clone(), h)),
            _ => None,
        }
    }
}

/// The open database and its two trees.
pub(crate) struct Core {
    pub(crate) db: sled::Db,
    entries: sled::Tree,
    expiry: sled::Tree,
    pub(crate) path: PathBuf,
}

impl Core {
    /// Opens the database, waiting up to [`LOCK_WAIT`] for a lock that a database closed
    /// a moment ago still holds: sled drops its flusher thread, which holds the lock,
    /// after `Db::drop` returns (spacejam/sled#1234), so closing and reopening a directory
    /// would otherwise fail now and then. A directory held by a live database stays held
    /// far longer than the wait, and still fails.
    pub(crate) fn open(path: PathBuf, config: sled::Config) -> Result<Core> {
        let started = Instant::now();
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                Err(e) if error::lock_held(&e) && started.elapsed() < LOCK_WAIT => {
                    std::thread::sleep(LOCK_RETRY);
                }
                Err(e) => return Err(error::open(&path, e)),
            }
        };
        let entries = db
            .open_tree(ENTRIES_TREE)
            .map_err(|e| error::open(&path, e))?;
        let expiry = db
            .open_tree(EXPIRY_TREE)
            .map_err(|e| error::open(&path, e))?;
        Ok(Core {
            db,
            entries,
            expiry,
            path,
        })
    }

    fn read(&self, key: &Key, now: u64) -> Result<Current> {
        let raw = self
            .entries
            .get(key.as_bytes())
            .map_err(|e| error::sled("get", e))?;
        self.classify(raw, now)
    }

    fn classify(&self, raw: Option<IVec>, now: u64) -> Result<Current> {
        let Some(raw) = raw else {
            return Ok(Current::Absent);
        };
        let h = Header::parse(&raw)?;
        Ok(if h.expired(now) {
            Current::Expired(raw)
        } else {
            Current::Live(raw, h)
        })
    }

    fn new_id(&self) -> Result<u64> {
        self.db
            .generate_id()
            .map_err(|e| error::sled("generate_id", e))
    }

    fn index(&self, key: &[u8], h: &Header) -> Result<Option<Vec<u8>>> {
        let Some(ik) = h.index_key(key) else {
            return Ok(None);
        };
        self.expiry
            .insert(&ik[..], &[][..])
            .map_err(|e| error::sled("insert (expiry index)", e))?;
        Ok(Some(ik))
    }

    fn unindex(&self, ik: Option<Vec<u8>>) -> Result<()> {
        if let Some(ik) = ik {
            self.expiry
                .remove(ik)
                .map_err(|e| error::sled("remove (expiry index)", e))?;
        }
        Ok(())
    }

    /// Removes the index entry of a record that was just replaced or removed.
    fn unindex_raw(&self, key: &[u8], old: &[u8]) -> Result<()> {
        match Header::parse(old) {
            Ok(h) => self.unindex(h.index_key(key)),
            // Foreign bytes were never indexed.
            Err(_) => Ok(()),
        }
    }

    /// Swaps `old` for `new` under `key`; `Ok(false)` if the stored bytes changed meanwhile.
    fn swap(&self, key: &Key, old: Option<&IVec>, new: Option<IVec>) -> Result<bool> {
        let r = self
            .entries
            .compare_and_swap(key.as_bytes(), old, new)
            .map_err(|e| error::sled("compare_and_swap", e))?;
        if r.is_err() {
            return Ok(false);
        }
        if let Some(old) = old {
            self.unindex_raw(key.as_bytes(), old)?;
        }
        Ok(true)
    }

    /// Lazily removes an expired record (if it is still the one stored).
    fn drop_expired(&self, key: &Key, raw: &IVec) -> Result<()> {
        self.swap(key, Some(raw), None).map(drop)
    }

    pub(crate) fn get(&self, key: &Key) -> Result<Option<Entry>> {
        let now = now_floor();
        match self.read(key, now)? {
            Current::Absent => Ok(None),
            Current::Live(raw, h) => Ok(Some(entry(raw, &h))),
            Current::Expired(raw) => {
                self.drop_expired(key, &raw)?;
                Ok(None)
            }
        }
    }

    pub(crate) fn put(
        &self,
        key: &Key,
        value: &[u8],
        ttl: Option<Ttl>,
        mode: PutMode,
    ) -> Result<Version> {
        let version = self.new_id()?;
        let h = Header {
            version,
            stamp: version,
            expires_at: deadline(ttl),
        };
        let new = h.encode(value);
        let ik = self.index(key.as_bytes(), &h)?;
        match self.put_record(key, new, mode) {
            Ok(()) => Ok(Version::from_raw(version)),
            Err(e) => {
                // Our index entry is ours alone (fresh stamp): nobody else relies on it.
                self.unindex(ik)?;
                Err(e)
            }
        }
    }

    fn put_record(&self, key: &Key, new: IVec, mode: PutMode) -> Result<()> {
        if mode == PutMode::Overwrite {
            let old = self
                .entries
                .insert(key.as_bytes(), new)
                .map_err(|e| error::sled("insert", e))?;
            if let Some(old) = old {
                self.unindex_raw(key.as_bytes(), &old)?;
            }
            return Ok(());
        }
        let mut raw = self
            .entries
            .get(key.as_bytes())
            .map_err(|e| error::sled("get", e))?;
        loop {
            let cur = self.classify(raw, now_floor())?;
            match (mode, &cur) {
                (PutMode::Create, Current::Live(raw, h)) => {
                    return Err(error::exists(entry(raw.clone(), h)))
                }
                (PutMode::Update(v), Current::Live(_, h)) if h.version == v.into_raw() => {}
                (PutMode::Update(_), _) => return Err(error::version_mismatch(cur.live_entry())),
                _ => {}
            }
            let r = self
                .entries
                .compare_and_swap(key.as_bytes(), cur.raw(), Some(new.clone()))
                .map_err(|e| error::sled("compare_and_swap", e))?;
            match r {
                Ok(()) => {
                    if let Some(old) = cur.raw() {
                        self.unindex_raw(key.as_bytes(), old)?;
                    }
                    return Ok(());
                }
                // The record changed between our read and our swap: decide again on what
                // is there now.
                Err(lost) => raw = lost.current,
            }
        }
    }

    pub(crate) fn delete(&self, key: &Key, mode: DeleteMode) -> Result<bool> {
        match mode {
            DeleteMode::Any => {
                let old = self
                    .entries
                    .remove(key.as_bytes())
                    .map_err(|e| error::sled("remove", e))?;
                let Some(old) = old else { return Ok(false) };
                self.unindex_raw(key.as_bytes(), &old)?;
                // An expired record was absent for the caller; undecodable bytes were there.
                Ok(Header::parse(&old).map_or(true, |h| !h.expired(now_floor())))
            }
            DeleteMode::IfVersion(v) => loop {
                match self.read(key, now_floor())? {
                    Current::Live(raw, h) if h.version == v.into_raw() => {
                        if self.swap(key, Some(&raw), None)? {
                            return Ok(true);
                        }
                    }
                    cur => return Err(error::version_mismatch(cur.live_entry())),
                }
            },
        }
    }

    pub(crate) fn touch(&self, key: &Key, ttl: Option<Ttl>) -> Result<bool> {
        loop {
            let (raw, h) = match self.read(key, now_floor())? {
                Current::Absent => return Ok(false),
                Current::Expired(raw) => {
                    self.drop_expired(key, &raw)?;
                    return Ok(false);
                }
                Current::Live(raw, h) => (raw, h),
            };
            // Same version and value; a fresh stamp so the new index entry is ours alone.
            let new_h = Header {
                version: h.version,
                stamp: self.new_id()?,
                expires_at: deadline(ttl),
            };
            let new = new_h.encode(&raw[HEADER_LEN..]);
            let ik = self.index(key.as_bytes(), &new_h)?;
            if self.swap(key, Some(&raw), Some(new))? {
                return Ok(true);
            }
            self.unindex(ik)?;
        }
    }

    /// Removes expired records found through the expiry index, `batch` index entries at a
    /// time, until none is due or `stop` is set. Returns how many records were removed.
    pub(crate) fn sweep(&self, batch: usize, stop: &AtomicBool) -> Result<usize> {
        let now = now_floor();
        // Index keys below `(now + 1) ‖ …` are exactly those with expires_at <= now.
        let end = now.saturating_add(1).to_be_bytes();
        let mut from: Vec<u8> = Vec::new();
        let mut removed = 0;
        loop {
            let keys = self
                .expiry
                .range(from.as_slice()..&end[..])
                .keys()
                .take(batch)
                .collect::<std::result::Result<Vec<IVec>, _>>()
                .map_err(|e| error::sled("range (expiry index)", e))?;
            for ik in &keys {
                removed += usize::from(self.sweep_one(ik, now)?);
            }
            match keys.last() {
                Some(last) if keys.len() == batch && !stop.load(Ordering::Relaxed) => {
                    // The smallest key after `last`.
                    from.clear();
                    from.extend_from_slice(last);
                    from.push(0);
                }
                _ => return Ok(removed),
            }
        }
    }

    /// Handles one due index entry; true if it removed a record.
    fn sweep_one(&self, ik: &IVec, now: u64) -> Result<bool> {
        let remove_index = || {
            self.expiry
                .remove(ik)
                .map(drop)
                .map_err(|e| error::sled("remove (expiry index)", e))
        };
        if ik.len() <= INDEX_PREFIX_LEN {
            remove_index()?;
            return Ok(false);
        }
        let (expires_at, stamp) = (be_u64(&ik[..8]), be_u64(&ik[8..16]));
        let key = &ik[INDEX_PREFIX_LEN..];
        let raw = self.entries.get(key).map_err(|e| error::sled("get", e))?;
        let matching = raw.filter(|raw| {
            Header::parse(raw).is_ok_and(|h| h.stamp == stamp && h.expires_at == expires_at)
        });
        match matching {
            Some(raw) => {
                let r = self
                    .entries
                    .compare_and_swap(key, Some(&raw), None::<IVec>)
                    .map_err(|e| error::sled("compare_and_swap", e))?;
                // If it lost, whoever replaced the record removes this index entry.
                if r.is_ok() {
                    remove_index()?;
                }
                Ok(r.is_ok())
            }
            None => {
                if expires_at.saturating_add(STALE_INDEX_GRACE_MS) <= now {
                    remove_index()?;
                }
                Ok(false)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn header_roundtrip_and_rejects() {
        let h = Header {
            version: 7,
            stamp: 9,
            expires_at: 1234,
        };
        let raw = h.encode(b"value");
        assert_eq!(raw.len(), HEADER_LEN + 5);
        assert_eq!(Header::parse(&raw).unwrap(), h);
        assert_eq!(&raw[HEADER_LEN..], b"value");
        for bad in [&b""[..], &b"lsd\x01short"[..], &[0u8; 40][..]] {
            let e = Header::parse(bad).unwrap_err();
            assert_eq!(e.kind(), larder_cache_api::ErrorKind::Decode);
        }
        let mut future = raw.to_vec();
        future[3] = 2;
        assert!(Header::parse(&future).is_err());
    }

    #[test]
    fn deadline_never_early_and_ordered_index() {
        let before = now_floor();
        let d = deadline(Some(Ttl::from_millis(5).unwrap()));
        assert!(d >= before + 5);
        assert_eq!(deadline(None), NEVER);
        // Big-endian keys sort by expiry first, whatever the key.
        assert!(index_key(255, 0, b"zzz") < index_key(256, 0, b"a"));
    }
}
