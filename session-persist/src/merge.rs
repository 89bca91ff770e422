//! What the web framework adapters share (tower-sessions, actix-session): frameworks that
//! hand a store whole records, kept from losing a concurrent request's keys.
//!
//! At load, a reserved entry ([`RESERVED_KEY`]) is added to the request's in-memory record:
//! the version loaded, its expiry, and a digest of each value, signed with a per-process key.
//! At save, only the keys whose digest changed (or that were removed) are replayed over the
//! stored record. The adapters convert their framework's map to [`SessionData`] whose values
//! are JSON text, the reserved entry included, and back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use larder_cache_api::{Error, ErrorKind, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::id::SessionId;
use crate::record::{Record, SessionData, Timestamp};
use crate::session::{Change, ConflictPolicy, SessionConfig, SessionManager, ValueFormat};
use crate::store::SessionStore;

/// The session key the framework adapters reserve for what a request loaded. It lives only
/// in the request's in-memory record: it is never stored, and a save whose entry was changed
/// or forged is refused.
pub const RESERVED_KEY: &str = "__larder_loaded";

/// The constructor, settings and `Debug` of an adapter struct whose one field is
/// `core: KeyMerge`; `$saves` names what the framework calls a save, for the docs.
macro_rules! adapter_methods {
    ($adapter:ident, $saves:literal) => {
        impl std::fmt::Debug for $adapter {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($adapter))
                    .field("store", self.core.store())
                    .field("principal_key", &self.core.principal_key())
                    .finish()
            }
        }

        impl $adapter {
            /// Adapts `store`.
            pub fn new(store: std::sync::Arc<dyn $crate::SessionStore>) -> Self {
                $adapter {
                    core: $crate::merge::KeyMerge::new(store),
                }
            }

            /// The session key whose string value is the session's principal.
            pub fn principal_key(mut self, key: impl Into<String>) -> Self {
                self.core.set_principal_key(key.into());
                self
            }

            #[doc = concat!(
                        "How long ", $saves, " may keep replaying its keys after lost races ",
                        "(default 10 s)."
                    )]
            pub fn save_deadline(mut self, d: std::time::Duration) -> Self {
                self.core.set_save_deadline(d);
                self
            }

            /// The larder store underneath.
            pub fn inner(&self) -> &std::sync::Arc<dyn $crate::SessionStore> {
                self.core.store()
            }

            /// larder's session handles over the same store, with the same JSON values: for
            /// code that needs an update that re-runs on a conflict.
            pub fn manager(&self) -> &$crate::SessionManager {
                self.core.manager()
            }
        }
    };
}
pub(crate) use adapter_methods;

/// What the reserved entry holds.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Loaded {
    /// The version loaded.
    v: i64,
    /// The expiry loaded (ms).
    e: i64,
    /// The principal loaded: a save keeps it unless the request changed the principal key
    /// (it may have been set through larder's handle, with no key in the data at all).
    #[serde(default)]
    p: Option<String>,
    /// A digest of each key's value.
    d: BTreeMap<String, String>,
    /// The signature of all of the above and the session id.
    t: String,
}

/// The shared engine of the adapters: larder's handles over the store (JSON values, last
/// writer wins on one key), the principal key, and the signer of the reserved entry.
#[derive(Clone)]
pub(crate) struct KeyMerge {
    manager: SessionManager,
    principal_key: Option<String>,
    /// Signs the reserved entry: it is written and checked in the same process (one
    /// request), so a per-process random key is enough, and no key is shared.
    signer: Hmac<Sha256>,
}

impl std::fmt::Debug for KeyMerge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyMerge")
            .field("store", self.manager.store())
            .field("principal_key", &self.principal_key)
            .finish()
    }
}

impl KeyMerge {
    pub(crate) fn new(store: Arc<dyn SessionStore>) -> Self {
        let config = SessionConfig::default()
            .value_format(ValueFormat::Json)
            .conflict_policy(ConflictPolicy::LastWriterWins)
            .save_deadline(Duration::from_secs(10));
        let mut secret = [0u8; 32];
        // Without OS randomness the signature still detects accidental changes; a forger
        // would have to predict this process's key.
        if getrandom::fill(&mut secret).is_err() {
            secret = Sha256::digest(format!("{:?}", std::time::Instant::now())).into();
        }
        KeyMerge {
            manager: SessionManager::with_config(store, config),
            principal_key: None,
            signer: Hmac::<Sha256>::new_from_slice(&secret).expect("HMAC takes any key length"),
        }
    }

    pub(crate) fn principal_key(&self) -> Option<&str> {
        self.principal_key.as_deref()
    }

    pub(crate) fn set_principal_key(&mut self, key: String) {
        self.principal_key = Some(key);
    }

    pub(crate) fn set_save_deadline(&mut self, d: Duration) {
        self.manager = SessionManager::with_config(
            Arc::clone(self.manager.store()),
            self.manager.config().clone().save_deadline(d),
        );
    }

    pub(crate) fn store(&self) -> &Arc<dyn SessionStore> {
        self.manager.store()
    }

    pub(crate) fn manager(&self) -> &SessionManager {
        &self.manager
    }

    /// The principal: the JSON string under the principal key.
    fn principal_of(&self, data: &SessionData) -> Option<String> {
        let raw = data.get_raw(self.principal_key.as_deref()?)?;
        serde_json::from_slice::<String>(raw).ok()
    }

    fn sign(&self, id: &SessionId, l: &Loaded) -> String {
        let Loaded { v, e, p, d, t: _ } = l;
        let mut m = self.signer.clone();
        m.update(id.as_bytes());
        m.update(&v.to_le_bytes());
        m.update(&e.to_le_bytes());
        // Length-prefixed, and told apart from no principal: a forged entry cannot move
        // bytes between the principal and the digests.
        match p {
            Some(p) => {
                m.update(&[1]);
                m.update(&(p.len() as u64).to_le_bytes());
                m.update(p.as_bytes());
            }
            None => m.update(&[0]),
        }
        for (k, h) in d {
            m.update(&(k.len() as u64).to_le_bytes());
            m.update(k.as_bytes());
            m.update(h.as_bytes());
        }
        hex(&m.finalize().into_bytes()[..16])
    }

    /// The reserved entry of `r` as loaded, signed; none for an empty session (an empty
    /// session stays empty, so a framework still treats it as such; its save then has
    /// nothing to replay and writes the whole record).
    fn entry_of(&self, r: &Record) -> Option<Loaded> {
        if r.data.is_empty() {
            return None;
        }
        let d: BTreeMap<String, String> = r
            .data
            .keys()
            .map(|k| (k.to_owned(), digest(r.data.get_raw(k).unwrap_or_default())))
            .collect();
        let mut l = Loaded {
            v: r.version,
            e: r.expires_at.0,
            p: r.principal.clone(),
            d,
            t: String::new(),
        };
        l.t = self.sign(&r.id, &l);
        Some(l)
    }

    /// `r` as the request sees it: with the reserved entry as JSON text, if it has one.
    fn with_entry(&self, mut r: Record) -> Record {
        if let Some(entry) = self.entry_of(&r) {
            // Serialising a struct of integers and string maps cannot fail.
            let bytes = serde_json::to_vec(&entry).unwrap_or_default();
            r.data.insert_raw(RESERVED_KEY, bytes);
        }
        r
    }

    /// The reserved entry as JSON text, checked: anything but what this process wrote for
    /// this session is refused.
    #[cfg(feature = "actix")]
    fn verify(&self, id: &SessionId, raw: &[u8]) -> Result<Loaded> {
        let l: Loaded = serde_json::from_slice(raw).map_err(|_| forged())?;
        self.check(id, l)
    }

    /// `l` if this process signed it for this session; else the "forged" error.
    fn check(&self, id: &SessionId, l: Loaded) -> Result<Loaded> {
        let want = self.sign(id, &l);
        // Constant-time comparison of the signatures.
        let ok = want.len() == l.t.len()
            && want
                .bytes()
                .zip(l.t.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if ok {
            Ok(l)
        } else {
            Err(forged())
        }
    }

    /// Like [`load`](Self::load), with the reserved entry handed back apart as a JSON value
    /// (for adapters whose records hold JSON values: no text is written and parsed again).
    pub(crate) async fn load_value(
        &self,
        id: &SessionId,
    ) -> Result<Option<(Record, Option<serde_json::Value>)>> {
        let Some(r) = self.load_plain(id).await? else {
            return Ok(None);
        };
        // Serialising a struct of integers and string maps cannot fail.
        let entry = self
            .entry_of(&r)
            .map(|e| serde_json::to_value(e).unwrap_or_default());
        Ok(Some((r, entry)))
    }

    /// Like [`save`](Self::save), with the request's reserved entry (if any) apart, as the
    /// JSON value [`load_value`](Self::load_value) handed out; `data` holds the rest.
    pub(crate) async fn save_value(
        &self,
        id: SessionId,
        data: SessionData,
        entry: Option<&serde_json::Value>,
        exp: Timestamp,
    ) -> Result<()> {
        let loaded = match entry {
            Some(v) => {
                let l = Loaded::deserialize(v).map_err(|_| forged())?;
                Some(self.check(&id, l)?)
            }
            None => None,
        };
        self.save_loaded(id, data, loaded, exp).await
    }

    /// The live session with the reserved entry added; a stored record that holds the
    /// reserved key itself is a [`Decode`](ErrorKind::Decode) error.
    #[cfg(feature = "actix")]
    pub(crate) async fn load(&self, id: &SessionId) -> Result<Option<Record>> {
        Ok(self.load_plain(id).await?.map(|r| self.with_entry(r)))
    }

    /// The live session as stored, which must not hold the reserved key.
    async fn load_plain(&self, id: &SessionId) -> Result<Option<Record>> {
        // Through the trait object itself: `Arc`'s own impl would box one more future.
        let Some(r) = self.store().as_ref().load(id).await? else {
            return Ok(None);
        };
        if r.data.get_raw(RESERVED_KEY).is_some() {
            return Err(Error::new(
                ErrorKind::Decode,
                format!("stored session holds the reserved key {RESERVED_KEY:?}"),
            ));
        }
        Ok(Some(r))
    }

    /// Stores a new session with `data` (a reserved entry in it, from a renewed session, is
    /// never stored) under a fresh id of larder's; returns it as the request sees it.
    pub(crate) async fn create(&self, mut data: SessionData, exp: Timestamp) -> Result<Record> {
        data.remove(RESERVED_KEY);
        let principal = self.principal_of(&data);
        let created = self.store().as_ref().create(data, principal, exp).await?;
        Ok(self.with_entry(created))
    }

    /// Saves what a request holds (`data`, with the reserved entry of its load, if any):
    /// only the keys it set or removed are written over the stored record; without a
    /// reserved entry (the app cleared the session) the whole record replaces the stored
    /// one. A session deleted or expired meanwhile is not recreated: the save is dropped
    /// and logged.
    #[cfg(feature = "actix")]
    pub(crate) async fn save(
        &self,
        id: SessionId,
        mut data: SessionData,
        exp: Timestamp,
    ) -> Result<()> {
        let loaded = match data.get_raw(RESERVED_KEY) {
            Some(raw) => Some(self.verify(&id, raw)?),
            None => None,
        };
        data.remove(RESERVED_KEY);
        self.save_loaded(id, data, loaded, exp).await
    }

    /// [`save`](Self::save) once the reserved entry is checked and out of `data`.
    async fn save_loaded(
        &self,
        id: SessionId,
        data: SessionData,
        loaded: Option<Loaded>,
        exp: Timestamp,
    ) -> Result<()> {
        let principal = self.principal_of(&data);
        let is_principal = |k: &str| self.principal_key.as_deref() == Some(k);

        let Some(loaded) = loaded else {
            let Some(mut base) = self.store().as_ref().load_authoritative(&id).await? else {
                dropped();
                return Ok(());
            };
            let mut changes: Vec<Change> = base
                .data
                .keys()
                .filter(|k| data.get_raw(k).is_none())
                .map(|k| Change::Remove(k.to_owned()))
                .collect();
            changes.extend(
                data.keys().map(|k| {
                    Change::Set(k.to_owned(), data.get_raw(k).unwrap_or_default().to_vec())
                }),
            );
            // Without a principal key the request cannot name a principal; with one, only a
            // changed value moves it: a principal set through larder's handle stays.
            if self.principal_key.is_some() && principal != self.principal_of(&base.data) {
                changes.push(Change::Principal(principal));
            }
            for c in &changes {
                c.apply(&mut base)?;
            }
            return self.commit(base, changes, exp).await;
        };

        let mut changes = Vec::new();
        let mut principal_touched = false;
        for k in data.keys() {
            let bytes = data.get_raw(k).unwrap_or_default();
            if loaded.d.get(k).map(String::as_str) != Some(digest(bytes).as_str()) {
                principal_touched |= is_principal(k);
                changes.push(Change::Set(k.to_owned(), bytes.to_vec()));
            }
        }
        for k in loaded.d.keys() {
            if data.get_raw(k).is_none() {
                principal_touched |= is_principal(k);
                changes.push(Change::Remove(k.clone()));
            }
        }
        if principal_touched {
            changes.push(Change::Principal(principal.clone()));
        }
        // The record as this request sees it: what it loaded, with its changes. The stored
        // principal stays unless the request changed the principal key.
        let record = Record {
            id,
            data,
            principal: if principal_touched {
                principal
            } else {
                loaded.p
            },
            expires_at: Timestamp(loaded.e),
            version: loaded.v,
        };
        self.commit(record, changes, exp).await
    }

    /// Moves the expiry of a live session to `exp`, only when that gains at least a quarter
    /// of its life (no data rewrite); a session that is gone stays gone. (actix-session asks
    /// for it; tower-sessions has no such call.)
    #[cfg(feature = "actix")]
    pub(crate) async fn touch(&self, id: &SessionId, exp: Timestamp) -> Result<()> {
        match self.store().as_ref().load(id).await? {
            Some(r) => self.commit(r, Vec::new(), exp).await,
            None => Ok(()),
        }
    }

    /// Deletes the session (its tombstone keeps late saves from recreating it).
    pub(crate) async fn delete(&self, id: &SessionId) -> Result<()> {
        self.store().as_ref().delete(id).await.map(drop)
    }

    /// Replays `changes` (already applied in `record`) with the request's expiry; a session
    /// gone meanwhile drops the save.
    async fn commit(&self, record: Record, changes: Vec<Change>, exp: Timestamp) -> Result<()> {
        match self.manager.save_replayed(record, changes, exp).await {
            Err(e) if e.kind() == ErrorKind::NotFound => {
                dropped();
                Ok(())
            }
            res => res,
        }
    }
}

fn forged() -> Error {
    Error::new(
        ErrorKind::Decode,
        format!(
            "the session's reserved entry {RESERVED_KEY:?} was changed by the application or \
             forged; nothing was saved"
        ),
    )
}

fn dropped() {
    tracing::warn!("save for a deleted or expired session dropped (not recreated)");
}

/// Lower-case hex of `b`, in one allocation (this runs for every key of every request).
fn hex(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(2 * b.len());
    for x in b {
        out.push(char::from(DIGITS[usize::from(x >> 4)]));
        out.push(char::from(DIGITS[usize::from(x & 0xf)]));
    }
    out
}

/// 128 bits of two seeded foldhash runs: change detection within one process (load and save
/// of a request), not a secret; a tenth of the cost of SHA-256 on every key of every request.
fn digest(bytes: &[u8]) -> String {
    use std::hash::BuildHasher as _;
    let a = foldhash::quality::FixedState::with_seed(0x6c61_7264_6572_0001).hash_one(bytes);
    let b = foldhash::quality::FixedState::with_seed(0x6c61_7264_6572_0002).hash_one(bytes);
    let mut both = [0u8; 16];
    both[..8].copy_from_slice(&a.to_be_bytes());
    both[8..].copy_from_slice(&b.to_be_bytes());
    hex(&both)
}

#[cfg(test)]
mod stored_form {
    use larder_cache_api::codec::{Bincode, Json, Postcard};
    use larder_cache_api::envelope;
    use proptest::prelude::*;

    use super::*;

    fn loaded() -> impl Strategy<Value = Loaded> {
        (
            any::<i64>(),
            any::<i64>(),
            proptest::option::of(".{0,12}"),
            proptest::collection::btree_map(".{0,8}", "[0-9a-f]{0,16}", 0..4),
            ".{0,16}",
        )
            .prop_map(|(v, e, p, d, t)| Loaded { v, e, p, d, t })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// The reserved entry reads back as it was written on every codec (the adapters keep
        /// it as a JSON value in the session).
        #[test]
        fn reserved_entries_open_as_sealed(l in loaded()) {
            let back: Loaded = serde_json::from_value(serde_json::to_value(&l).unwrap()).unwrap();
            prop_assert_eq!(&back, &l);
            let back: Loaded = envelope::open(&Postcard, &envelope::seal(&Postcard, &l).unwrap()).unwrap();
            prop_assert_eq!(&back, &l);
            let back: Loaded = envelope::open(&Json, &envelope::seal(&Json, &l).unwrap()).unwrap();
            prop_assert_eq!(&back, &l);
            let back: Loaded = envelope::open(&Bincode, &envelope::seal(&Bincode, &l).unwrap()).unwrap();
            prop_assert_eq!(&back, &l);
        }
    }
}
