//! A `tower_sessions::SessionStore` over larder sessions, so an axum or tower app uses larder
//! with no glue code, and concurrent requests on one session keep each other's keys.

use std::collections::HashMap;

use async_trait::async_trait;
use larder_cache_api::ErrorKind;
use serde_json::Value;
use tower_sessions::session::{Id, Record as TowerRecord};
use tower_sessions::session_store::{Error as TowerError, Result as TowerResult};

use crate::id::SessionId;
use crate::merge::{adapter_methods, KeyMerge, RESERVED_KEY};
use crate::record::{SessionData, Timestamp};

/// Adapts any larder [`SessionStore`](crate::SessionStore) (an SQL store, or a
/// [`CachedStore`](crate::CachedStore) over one) to `tower_sessions`.
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
/// ([`SessionStore::delete_principal`](crate::SessionStore::delete_principal)) works for
/// tower-sessions apps too. A save keeps the principal stored with the session unless the request
/// changed that key; without a principal key it never changes one (set through larder's
/// handle at login, say).
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
    core: KeyMerge,
}

adapter_methods!(TowerStore, "a save");

fn json_bytes(v: &Value) -> Vec<u8> {
    // Serialising a `Value` cannot fail (its map keys are strings).
    serde_json::to_vec(v).unwrap_or_default()
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
        // larder picks the id itself (insert-if-absent, regenerated on collision); the
        // reserved entry of a cycled session is never stored.
        let created = self
            .core
            .create(encode(&record.data), expiry(record))
            .await
            .map_err(to_tower_error)?;
        record.id = to_tower_id(&created.id);
        record.data.remove(RESERVED_KEY);
        if let Some(entry) = created.data.get_raw(RESERVED_KEY) {
            let entry =
                serde_json::from_slice(entry).map_err(|e| TowerError::Decode(e.to_string()))?;
            record.data.insert(RESERVED_KEY.to_owned(), entry);
        }
        Ok(())
    }

    async fn save(&self, record: &TowerRecord) -> TowerResult<()> {
        // The reserved entry goes back as the value `load` handed out, not as JSON text.
        let mut data = SessionData::new();
        let mut entry = None;
        for (k, v) in &record.data {
            if k == RESERVED_KEY {
                entry = Some(v);
            } else {
                data.insert_raw(k, json_bytes(v));
            }
        }
        self.core
            .save_value(to_larder_id(&record.id), data, entry, expiry(record))
            .await
            .map_err(to_tower_error)
    }

    async fn load(&self, session_id: &Id) -> TowerResult<Option<TowerRecord>> {
        let id = to_larder_id(session_id);
        let Some((r, entry)) = self.core.load_value(&id).await.map_err(to_tower_error)? else {
            return Ok(None);
        };
        let expiry_date =
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(r.expires_at.0) * 1_000_000)
                .map_err(|e| TowerError::Decode(e.to_string()))?;
        let mut data = decode(&r.data)?;
        if let Some(entry) = entry {
            data.insert(RESERVED_KEY.to_owned(), entry);
        }
        Ok(Some(TowerRecord {
            id: *session_id,
            data,
            expiry_date,
        }))
    }

    async fn delete(&self, session_id: &Id) -> TowerResult<()> {
        self.core
            .delete(&to_larder_id(session_id))
            .await
            .map_err(to_tower_error)
    }
}
