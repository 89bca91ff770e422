//! A `tower_sessions::SessionStore` over larder sessions, so an axum or tower app uses larder
//! with no glue code.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use larder_cache_api::ErrorKind;
use tower_sessions::session::{Id, Record as TowerRecord};
use tower_sessions::session_store::{Error as TowerError, Result as TowerResult};

use crate::id::SessionId;
use crate::record::{Record, SessionData, Timestamp};
use crate::store::SessionStore;

/// Adapts any larder [`SessionStore`] (an SQL store, or a [`CachedStore`](crate::CachedStore)
/// over one) to `tower_sessions`.
///
/// tower-sessions values are kept as JSON inside larder's session data. When
/// [`principal_key`](TowerStore::principal_key) is set, the string under that key is the
/// session's principal, so "log out everywhere"
/// ([`SessionStore::delete_principal`]) works for tower-sessions apps too.
///
/// A save for a session that was deleted meanwhile (a request racing a logout) is dropped,
/// never recreated, and logged.
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
#[derive(Debug, Clone)]
pub struct TowerStore {
    store: Arc<dyn SessionStore>,
    principal_key: Option<String>,
    max_save_attempts: u32,
}

impl TowerStore {
    /// Adapts `store`.
    pub fn new(store: Arc<dyn SessionStore>) -> Self {
        TowerStore {
            store,
            principal_key: None,
            max_save_attempts: 20,
        }
    }

    /// The session key whose string value is the session's principal.
    pub fn principal_key(mut self, key: impl Into<String>) -> Self {
        self.principal_key = Some(key.into());
        self
    }

    /// The larder store underneath.
    pub fn inner(&self) -> &Arc<dyn SessionStore> {
        &self.store
    }

    fn principal_of(&self, data: &HashMap<String, serde_json::Value>) -> Option<String> {
        let key = self.principal_key.as_deref()?;
        data.get(key)?.as_str().map(str::to_owned)
    }
}

fn to_larder_id(id: &Id) -> SessionId {
    SessionId::from_bytes(id.0.to_le_bytes())
}

fn to_tower_id(id: &SessionId) -> Id {
    Id(i128::from_le_bytes(*id.as_bytes()))
}

fn expiry(r: &TowerRecord) -> Timestamp {
    Timestamp((r.expiry_date.unix_timestamp_nanos() / 1_000_000) as i64)
}

fn encode(data: &HashMap<String, serde_json::Value>) -> TowerResult<SessionData> {
    let mut out = SessionData::new();
    for (k, v) in data {
        let bytes = serde_json::to_vec(v).map_err(|e| TowerError::Encode(e.to_string()))?;
        out.insert_raw(k, bytes);
    }
    Ok(out)
}

fn decode(data: &SessionData) -> TowerResult<HashMap<String, serde_json::Value>> {
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
        // larder picks the id itself (insert-if-absent, regenerated on collision).
        let created = self
            .store
            .create(
                encode(&record.data)?,
                self.principal_of(&record.data),
                expiry(record),
            )
            .await
            .map_err(to_tower_error)?;
        record.id = to_tower_id(&created.id);
        Ok(())
    }

    async fn save(&self, record: &TowerRecord) -> TowerResult<()> {
        let id = to_larder_id(&record.id);
        let data = encode(&record.data)?;
        let principal = self.principal_of(&record.data);
        let mut current = self.store.load(&id).await.map_err(to_tower_error)?;
        for _ in 0..self.max_save_attempts {
            let Some(cur) = current else {
                tracing::warn!("save for a deleted or expired session dropped (not recreated)");
                return Ok(());
            };
            let next = Record {
                id: id.clone(),
                data: data.clone(),
                principal: principal.clone(),
                expires_at: expiry(record),
                version: cur.version,
            };
            match self.store.save(&next).await {
                Ok(_) => return Ok(()),
                // tower-sessions writes whole records: the last writer wins.
                Err(e) if e.kind() == ErrorKind::Conflict => {
                    current = self
                        .store
                        .load_authoritative(&id)
                        .await
                        .map_err(to_tower_error)?;
                }
                Err(e) if e.kind() == ErrorKind::Gone => {
                    tracing::warn!("save for a deleted session dropped (not recreated)");
                    return Ok(());
                }
                Err(e) => return Err(to_tower_error(e)),
            }
        }
        Err(TowerError::Backend(
            "session save kept losing races with concurrent requests".into(),
        ))
    }

    async fn load(&self, session_id: &Id) -> TowerResult<Option<TowerRecord>> {
        let id = to_larder_id(session_id);
        let Some(r) = self.store.load(&id).await.map_err(to_tower_error)? else {
            return Ok(None);
        };
        let expiry_date =
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(r.expires_at.0) * 1_000_000)
                .map_err(|e| TowerError::Decode(e.to_string()))?;
        Ok(Some(TowerRecord {
            id: *session_id,
            data: decode(&r.data)?,
            expiry_date,
        }))
    }

    async fn delete(&self, session_id: &Id) -> TowerResult<()> {
        self.store
            .delete(&to_larder_id(session_id))
            .await
            .map_err(to_tower_error)?;
        Ok(())
    }
}
