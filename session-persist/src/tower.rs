//! A `tower_sessions::SessionStore` over larder sessions, so an axum or tower app uses larder
//! with no glue code, and concurrent requests on one session keep each other's keys.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use larder_cache_api::ErrorKind;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tower_sessions::session::{Id, Record as TowerRecord};
use tower_sessions::session_store::{Error as TowerError, Result as TowerResult};

use crate::id::SessionId;
use crate::record::{Record, SessionData, Timestamp};
use crate::session::{Change, ConflictPolicy, SessionConfig, SessionManager, ValueFormat};
use crate::store::SessionStore;

/// The session key the adapter reserves for what a request loaded. It lives only in the
/// request's in-memory record: it is never stored, and a save whose entry was changed or
/// forged is refused.
pub const RESERVED_KEY: &str = "__larder_loaded";

/// Adapts any larder [`SessionStore`] (an SQL store, or a [`CachedStore`](crate::CachedStore)
/// over one) to `tower_sessions`.
///
/// # What holds on this path
///
/// * **No lost key.** tower-sessions hands a store whole records, so at load the adapter
///   notes the version and a digest of each value in a reserved entry
///   ([`RESERVED_KEY`]) of the request's record. A save writes only the keys *this
///   request* set or removed, over the stored record: one versioned statement when nobody
///   saved in between; otherwise the store hands back the current record and the request's
///   keys are replayed over it (jittered back-off, up to 10 s), on any number of processes.
///   Concurrent requests that write different keys, or remove one while others write, all
///   keep their effect.
/// * **Same key, read-modify-write is last writer wins**, as in every session system:
///   two requests that each `get` a counter and `insert` it + 1 may both write the same
///   value. For an update that re-runs on a conflict, use larder's own handle: the
///   [`AtomicSession`](crate::AtomicSession) axum extractor (feature `axum`) shares this
///   store and the cookie.
/// * **No resurrection**: a save for a session deleted meanwhile (a request racing a
///   logout) is dropped, never recreated, and logged.
/// * **Touch without rewrite**: a save that changed no key (tower-sessions'
///   `with_always_save`) only moves the expiry column, and only once at least a quarter of
///   the session's life has passed since the last extension.
/// * **Clearing** (`Session::clear`) drops the reserved entry: the save then replaces the
///   whole stored record (last writer wins).
///
/// tower-sessions values are kept as JSON inside larder's session data. When
/// [`principal_key`](TowerStore::principal_key) is set, the string under that key is the
/// session's principal, so "log out everywhere"
/// ([`SessionStore::delete_principal`]) works for tower-sessions apps too.
///
/// ```no_run
/// # async fn demo() -> larder_cache_api::Result<()> {
/// use std::sync::Arc;
/// use larder_session_persist::{CachedStore, SqliteStore, TowerStore};
/// use tower_sessions::SessionManagerLayer;
///
/// let sql = SqliteStore::connect("sqlite://sessions.db").await?;
/// let cache = Arc::new(larder_backend_memory::MemoryBackend::default());
/// let store = TowerStore::new(Arc::new(CachedStore::new(sql, cache))).principal_key("user");
/// let layer = SessionManagerLayer::new(store);
/// # let _ = layer; Ok(()) }
/// ```
#[derive(Clone)]
pub struct TowerStore {
    manager: SessionManager,
    principal_key: Option<String>,
    /// Signs the reserved entry: it is written and checked in the same process (one
    /// request), so a per-process random key is enough, and no key is shared.
    signer: Hmac<Sha256>,
}

impl std::fmt::Debug for TowerStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TowerStore")
            .field("store", self.manager.store())
            .field("principal_key", &self.principal_key)
            .finish()
    }
}

/// What the reserved entry holds.
#[derive(Debug, Serialize, Deserialize)]
struct Loaded {
    /// The version loaded.
    v: i64,
    /// The expiry loaded (ms).
    e: i64,
    /// A digest of each key's value.
    d: BTreeMap<String, String>,
    /// The signature of all of the above and the session id.
    t: String,
}

impl TowerStore {
    /// Adapts `store`.
    pub fn new(store: Arc<dyn SessionStore>) -> Self {
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
        TowerStore {
            manager: SessionManager::with_config(store, config),
            principal_key: None,
            signer: Hmac::<Sha256>::new_from_slice(&secret).expect("HMAC takes any key length"),
        }
    }

    /// The session key whose string value is the session's principal.
    pub fn principal_key(mut self, key: impl Into<String>) -> Self {
        self.principal_key = Some(key.into());
        self
    }

    /// How long a save may keep replaying its keys after lost races (default 10 s).
    pub fn save_deadline(mut self, d: Duration) -> Self {
        self.manager = SessionManager::with_config(
            Arc::clone(self.manager.store()),
            self.manager.config().clone().save_deadline(d),
        );
        self
    }

    /// The larder store underneath.
    pub fn inner(&self) -> &Arc<dyn SessionStore> {
        self.manager.store()
    }

    /// larder's session handles over the same store, with the same JSON values: for code
    /// that needs an update that re-runs on a conflict.
    pub fn manager(&self) -> &SessionManager {
        &self.manager
    }

    fn principal_of(&self, data: &HashMap<String, Value>) -> Option<String> {
        let key = self.principal_key.as_deref()?;
        data.get(key)?.as_str().map(str::to_owned)
    }

    fn sign(&self, id: &SessionId, v: i64, e: i64, d: &BTreeMap<String, String>) -> String {
        let mut m = self.signer.clone();
        m.update(id.as_bytes());
        m.update(&v.to_le_bytes());
        m.update(&e.to_le_bytes());
        for (k, h) in d {
            m.update(&(k.len() as u64).to_le_bytes());
            m.update(k.as_bytes());
            m.update(h.as_bytes());
        }
        hex(&m.finalize().into_bytes()[..16])
    }

    fn loaded_entry(&self, id: &SessionId, r: &Record, data: &HashMap<String, Value>) -> Value {
        let d: BTreeMap<String, String> = data
            .iter()
            .map(|(k, v)| (k.clone(), digest(&json_bytes(v))))
            .collect();
        let t = self.sign(id, r.version, r.expires_at.0, &d);
        serde_json::to_value(Loaded {
            v: r.version,
            e: r.expires_at.0,
            d,
            t,
        })
        .unwrap_or(Value::Null)
    }

    /// The reserved entry, checked: anything but what this process wrote for this session
    /// is refused.
    fn verify(&self, id: &SessionId, v: Value) -> TowerResult<Loaded> {
        let forged = || {
            TowerError::Decode(format!(
                "the session's reserved entry {RESERVED_KEY:?} was changed by the application \
                 or forged; nothing was saved"
            ))
        };
        let l: Loaded = serde_json::from_value(v).map_err(|_| forged())?;
        let want = self.sign(id, l.v, l.e, &l.d);
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

    /// Replays `changes` (already applied in `record`) with the request's expiry.
    async fn commit(
        &self,
        record: Record,
        changes: Vec<Change>,
        exp: Timestamp,
    ) -> TowerResult<()> {
        let touch_only = changes.is_empty();
        let mut s = self.manager.replay(record, changes);
        let res = if touch_only {
            s.touch_until(exp).await
        } else {
            s.save_until(exp).await
        };
        match res {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::Gone => {
                tracing::warn!("save for a deleted or expired session dropped (not recreated)");
                Ok(())
            }
            Err(e) => Err(to_tower_error(e)),
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn json_bytes(v: &Value) -> Vec<u8> {
    // Serialising a `Value` cannot fail (its map keys are strings).
    serde_json::to_vec(v).unwrap_or_default()
}

/// 128 bits of two seeded foldhash runs: change detection within one process (load and save
/// of a request), not a secret; a tenth of the cost of SHA-256 on every key of every request.
fn digest(bytes: &[u8]) -> String {
    use std::hash::BuildHasher as _;
    let a = foldhash::quality::FixedState::with_seed(0x6c61_7264_6572_0001).hash_one(bytes);
    let b = foldhash::quality::FixedState::with_seed(0x6c61_7264_6572_0002).hash_one(bytes);
    format!("{a:016x}{b:016x}")
}

fn to_larder_id(id: &Id) -> SessionId {
    SessionId::from_bytes(id.0.to_le_bytes())
}

fn to_tower_id(id: &SessionId) -> Id {
    Id(i128::from_le_bytes(*id.as_bytes()))
}

#[cfg(feature = "axum")]
pub(crate) fn larder_id(id: &Id) -> SessionId {
    to_larder_id(id)
}

fn expiry(r: &TowerRecord) -> Timestamp {
    Timestamp((r.expiry_date.unix_timestamp_nanos() / 1_000_000) as i64)
}

fn encode(data: &HashMap<String, Value>) -> SessionData {
    let mut out = SessionData::new();
    for (k, v) in data {
        out.insert_raw(k, json_bytes(v));
    }
    out
}

fn decode(data: &SessionData) -> TowerResult<HashMap<String, Value>> {
    data.keys()
        .map(|k| {
            let raw = data.get_raw(k).unwrap_or_default();
            serde_json::from_slice(raw)
                .map(|v| (k.to_owned(), v))
                .map_err(|e| TowerError::Decode(format!("session key {k:?}: {e}")))
        })
        .collect()
}

fn to_tower_error(e: larder_cache_api::Error) -> TowerError {
    match e.kind() {
        ErrorKind::Decode => TowerError::Decode(e.to_string()),
        ErrorKind::Encode => TowerError::Encode(e.to_string()),
        _ => TowerError::Backend(e.to_string()),
    }
}

#[async_trait]
impl tower_sessions::SessionStore for TowerStore {
    async fn create(&self, record: &mut TowerRecord) -> TowerResult<()> {
        // The reserved entry of a cycled session is never stored.
        let mut data = record.data.clone();
        data.remove(RESERVED_KEY);
        // larder picks the id itself (insert-if-absent, regenerated on collision).
        let created = self
            .inner()
            .create(encode(&data), self.principal_of(&data), expiry(record))
            .await
            .map_err(to_tower_error)?;
        record.id = to_tower_id(&created.id);
        record.data.remove(RESERVED_KEY);
        if !data.is_empty() {
            let entry = self.loaded_entry(&created.id, &created, &data);
            record.data.insert(RESERVED_KEY.to_owned(), entry);
        }
        Ok(())
    }

    async fn save(&self, record: &TowerRecord) -> TowerResult<()> {
        let id = to_larder_id(&record.id);
        let mut data = record.data.clone();
        let loaded = data.remove(RESERVED_KEY);
        let exp = expiry(record);
        let encoded = encode(&data);
        let principal = self.principal_of(&data);
        let principal_changed = |k: &str| self.principal_key.as_deref() == Some(k);

        let Some(loaded) = loaded else {
            // No record of what this request loaded (the app cleared the session): the
            // whole record replaces the stored one, last writer wins.
            let Some(mut base) = self
                .inner()
                .load_authoritative(&id)
                .await
                .map_err(to_tower_error)?
            else {
                tracing::warn!("save for a deleted or expired session dropped (not recreated)");
                return Ok(());
            };
            let mut changes: Vec<Change> = base
                .data
                .keys()
                .filter(|k| encoded.get_raw(k).is_none())
                .map(|k| Change::Remove(k.to_owned()))
                .collect();
            changes.extend(encoded.keys().map(|k| {
                Change::Set(
                    k.to_owned(),
                    encoded.get_raw(k).unwrap_or_default().to_vec(),
                )
            }));
            changes.push(Change::Principal(principal));
            for c in &changes {
                c.apply(&mut base).map_err(to_tower_error)?;
            }
            return self.commit(base, changes, exp).await;
        };

        let loaded = self.verify(&id, loaded)?;
        let mut changes = Vec::new();
        let mut principal_touched = false;
        for k in encoded.keys() {
            let bytes = encoded.get_raw(k).unwrap_or_default();
            if loaded.d.get(k).map(String::as_str) != Some(digest(bytes).as_str()) {
                principal_touched |= principal_changed(k);
                changes.push(Change::Set(k.to_owned(), bytes.to_vec()));
            }
        }
        for k in loaded.d.keys() {
            if encoded.get_raw(k).is_none() {
                principal_touched |= principal_changed(k);
                changes.push(Change::Remove(k.clone()));
            }
        }
        if principal_touched {
            changes.push(Change::Principal(principal.clone()));
        }
        // The record as this request sees it: what it loaded, with its changes.
        let record = Record {
            id,
            data: encoded,
            principal,
            expires_at: Timestamp(loaded.e),
            version: loaded.v,
        };
        self.commit(record, changes, exp).await
    }

    async fn load(&self, session_id: &Id) -> TowerResult<Option<TowerRecord>> {
        let id = to_larder_id(session_id);
        let Some(r) = self.inner().load(&id).await.map_err(to_tower_error)? else {
            return Ok(None);
        };
        let expiry_date =
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(r.expires_at.0) * 1_000_000)
                .map_err(|e| TowerError::Decode(e.to_string()))?;
        let mut data = decode(&r.data)?;
        if data.contains_key(RESERVED_KEY) {
            return Err(TowerError::Decode(format!(
                "stored session holds the reserved key {RESERVED_KEY:?}"
            )));
        }
        // An empty session stays empty, so tower-sessions still treats it as such; its
        // save then has nothing to replay and writes the whole (new) record.
        if !data.is_empty() {
            let entry = self.loaded_entry(&id, &r, &data);
            data.insert(RESERVED_KEY.to_owned(), entry);
        }
        Ok(Some(TowerRecord {
            id: *session_id,
            data,
            expiry_date,
        }))
    }

    async fn delete(&self, session_id: &Id) -> TowerResult<()> {
        self.inner()
            .delete(&to_larder_id(session_id))
            .await
            .map_err(to_tower_error)?;
        Ok(())
    }
}
