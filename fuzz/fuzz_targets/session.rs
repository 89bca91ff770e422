//! What sessions read from outside: the id in a cookie, the stored record's bytes (from the
//! cache or the database), the values a tower-sessions app stored, and the reserved
//! `__larder_loaded` entry that comes back with the request's record. Malformed ids are
//! `InvalidInput`; corrupt bytes are a miss or a `Decode` error; a reserved entry this process
//! did not write is refused and nothing is saved; nothing panics.
#![no_main]

use std::collections::HashMap;
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use async_trait::async_trait;
use larder_cache_api::{envelope, DynBackend, Error, ErrorKind, Key, PutMode, Result};
use larder_session_persist::{
    CachedStore, IdHash, Invalidation, Outbox, Record, SaveOutcome, SessionData, SessionId,
    SessionStore, Timestamp, TowerStore, RESERVED_KEY,
};
use libfuzzer_sys::fuzz_target;
use parking_lot::Mutex;
use serde_json::Value;
use tower_sessions::session::{Id, Record as TowerRecord};
use tower_sessions::SessionStore as _;

/// A plain in-memory authority (no expiry, no tombstones): enough for the paths under test.
#[derive(Debug, Default)]
struct MemStore {
    rows: Mutex<HashMap<[u8; 16], Record>>,
    next: Mutex<u8>,
}

#[async_trait]
impl SessionStore for MemStore {
    async fn create(
        &self,
        data: SessionData,
        principal: Option<String>,
        expires_at: Timestamp,
    ) -> Result<Record> {
        let mut n = self.next.lock();
        *n = n.wrapping_add(1);
        let r = Record {
            id: SessionId::from_bytes([*n; 16]),
            data,
            principal,
            expires_at,
            version: 1,
        };
        self.rows.lock().insert(*r.id.as_bytes(), r.clone());
        Ok(r)
    }
    async fn load(&self, id: &SessionId) -> Result<Option<Record>> {
        Ok(self.rows.lock().get(id.as_bytes()).cloned())
    }
    async fn save_or_current(&self, record: &Record) -> Result<SaveOutcome> {
        let mut rows = self.rows.lock();
        let Some(cur) = rows.get_mut(record.id.as_bytes()) else {
            return Err(Error::new(ErrorKind::NotFound, "gone"));
        };
        if cur.version != record.version {
            return Ok(SaveOutcome::Stale(cur.clone()));
        }
        *cur = Record {
            version: record.version + 1,
            ..record.clone()
        };
        Ok(SaveOutcome::Saved(cur.clone()))
    }
    async fn touch(&self, id: &SessionId, expires_at: Timestamp) -> Result<Option<Record>> {
        let mut rows = self.rows.lock();
        Ok(rows.get_mut(id.as_bytes()).map(|r| {
            r.expires_at = expires_at;
            r.clone()
        }))
    }
    async fn delete(&self, id: &SessionId) -> Result<bool> {
        Ok(self.rows.lock().remove(id.as_bytes()).is_some())
    }
    async fn rotate(&self, _id: &SessionId) -> Result<Option<Record>> {
        Ok(None)
    }
    async fn delete_principal(&self, _principal: &str) -> Result<Vec<IdHash>> {
        Ok(Vec::new())
    }
    async fn sweep(&self, _batch: u32) -> Result<u64> {
        Ok(0)
    }
    async fn count(&self) -> Result<u64> {
        Ok(self.rows.lock().len() as u64)
    }
}

/// No change log (it stays empty): every delete here goes through the cache.
#[async_trait]
impl Outbox for MemStore {
    async fn log_after(&self, _after: i64, _limit: u32) -> Result<Vec<Invalidation>> {
        Ok(Vec::new())
    }
    async fn log_at(&self, _seqs: &[i64]) -> Result<Vec<Invalidation>> {
        Ok(Vec::new())
    }
    async fn log_start(&self, _before: Timestamp) -> Result<i64> {
        Ok(0)
    }
    fn log_retention(&self) -> std::time::Duration {
        std::time::Duration::MAX
    }
}

#[derive(Debug, Arbitrary)]
enum Forged<'a> {
    /// Any JSON text as the reserved entry.
    Json(&'a str),
    /// The entry's shape with made-up contents.
    Fields {
        v: i64,
        e: i64,
        d: Vec<(String, String)>,
        t: String,
    },
    /// The genuine entry with one field changed.
    Tampered(u8, i64),
    /// The genuine entry, as loaded.
    Genuine,
}

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    /// A cookie's session id.
    id_text: &'a str,
    /// The same as tower-sessions reads it (its own parser), then handed to the adapter.
    cookie: &'a str,
    /// Stored session data, as the database returns it.
    data_bytes: &'a [u8],
    /// A cache entry at the session's key (sealed behind a valid header if asked).
    cached: &'a [u8],
    cached_sealed: bool,
    /// The session's stored values (tower-sessions keeps JSON; these may be anything).
    values: Vec<(String, &'a [u8])>,
    /// The reserved entry the request hands back at save.
    forged: Forged<'a>,
    /// What the request sets before saving.
    set: Option<(String, i64)>,
}

fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime")
    })
}

/// The canonical text form, decided independently of the library: 22 characters of
/// base64url whose last one carries no stray bits (22 × 6 = 132 bits hold 128).
fn canonical(s: &str) -> bool {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    s.len() == SessionId::TEXT_LEN
        && s.bytes().all(|b| A.contains(&b))
        && A.iter()
            .position(|a| *a == s.as_bytes()[21])
            .is_some_and(|v| v & 0b1111 == 0)
}

fn far_future() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() + time::Duration::hours(1)
}

async fn session_paths(input: Input<'_>) {
    // The cookie's id.
    match SessionId::parse(input.id_text) {
        Ok(id) => {
            assert!(canonical(input.id_text), "accepted {:?}", input.id_text);
            assert_eq!(id.as_str(), input.id_text);
            assert_eq!(SessionId::from_bytes(*id.as_bytes()), id);
        }
        Err(e) => {
            assert!(!canonical(input.id_text), "refused {:?}", input.id_text);
            assert_eq!(e.kind(), ErrorKind::InvalidInput);
        }
    }

    // tower-sessions parses the cookie; the adapter maps any id it yields (unknown here).
    if let Ok(cookie_id) = input.cookie.parse::<Id>() {
        let store = TowerStore::new(std::sync::Arc::new(MemStore::default()));
        assert!(matches!(store.load(&cookie_id).await, Ok(None)));
        assert!(store.delete(&cookie_id).await.is_ok());
    }

    // Stored data straight from the database.
    match SessionData::from_bytes(input.data_bytes) {
        Ok(d) => assert_eq!(
            SessionData::from_bytes(&d.to_bytes().expect("seal")).ok(),
            Some(d)
        ),
        Err(e) => assert_eq!(e.kind(), ErrorKind::Decode),
    }

    let mem = std::sync::Arc::new(MemStore::default());
    let cache: DynBackend = std::sync::Arc::new(larder_backend_memory::MemoryBackend::default());
    let cached = std::sync::Arc::new(CachedStore::new(mem.clone(), cache.clone()));
    let tower = TowerStore::new(cached.clone());

    // A session whose stored values are whatever the input says.
    let mut data = SessionData::new();
    for (k, v) in input.values.iter().take(8) {
        data.insert_raw(k, v.to_vec());
    }
    let expires = Timestamp::now().plus(std::time::Duration::from_secs(3600));
    let rec = mem.create(data, None, expires).await.expect("create");
    let id = rec.id.clone();
    let tower_id = Id(i128::from_le_bytes(*id.as_bytes()));

    // A cache entry at its key: corrupt, foreign, or a plausible envelope.
    let mut entry = Vec::new();
    if input.cached_sealed {
        entry.extend_from_slice(&envelope::MAGIC);
        entry.extend_from_slice(&[envelope::FORMAT_VERSION, 1, 0]);
    }
    entry.extend_from_slice(input.cached);
    let key: Key = id.hash().cache_key();
    cache
        .put(&key, entry.into(), None, PutMode::Overwrite)
        .await
        .expect("cache put");
    match cached.load(&id).await {
        Ok(_) => {}
        Err(e) => panic!("a corrupt cache entry must be a miss, not {e}"),
    }

    // Through tower-sessions: values that are not JSON are a decode error.
    let loaded = match tower.load(&tower_id).await {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(tower_sessions::session_store::Error::Decode(_)) => return,
        Err(e) => panic!("load: {e}"),
    };
    let genuine = loaded.data.get(RESERVED_KEY).cloned();
    let mut record = TowerRecord {
        id: loaded.id,
        data: loaded.data.clone(),
        expiry_date: far_future(),
    };
    let reserved = match (&input.forged, &genuine) {
        (Forged::Json(text), _) => serde_json::from_str::<Value>(text).ok(),
        (Forged::Fields { v, e, d, t }, _) => Some(serde_json::json!({
            "v": v, "e": e, "d": d.iter().cloned().collect::<HashMap<_, _>>(), "t": t
        })),
        (Forged::Tampered(which, by), Some(Value::Object(g))) => {
            let mut g = g.clone();
            let field = ["v", "e", "t", "d"][usize::from(*which) % 4];
            let changed = match g.get(field) {
                Some(Value::Number(n)) => {
                    Value::from(n.as_i64().unwrap_or(0).wrapping_add(*by.max(&1)))
                }
                Some(Value::String(s)) => Value::from(format!("{s}{by}")),
                _ => serde_json::json!({ "x": by }),
            };
            g.insert(field.to_owned(), changed);
            Some(Value::Object(g))
        }
        (_, g) => g.clone(),
    };
    let forged = reserved.is_some() && reserved != genuine;
    match reserved {
        Some(v) => record.data.insert(RESERVED_KEY.to_owned(), v),
        None => record.data.remove(RESERVED_KEY),
    };
    if let Some((k, v)) = &input.set {
        if k != RESERVED_KEY {
            record.data.insert(k.clone(), Value::from(*v));
        }
    }
    let before = mem.load(&id).await.expect("load").expect("present");
    match tower.save(&record).await {
        Ok(()) => assert!(!forged, "a forged reserved entry was accepted"),
        Err(tower_sessions::session_store::Error::Decode(_)) => {
            let after = mem.load(&id).await.expect("load").expect("present");
            assert_eq!(after, before, "a refused save wrote");
        }
        Err(e) => panic!("save: {e}"),
    }
    let after = mem.load(&id).await.expect("load").expect("present");
    assert!(
        !after.data.keys().any(|k| k == RESERVED_KEY),
        "reserved entry stored"
    );
}

fuzz_target!(|input: Input<'_>| {
    rt().block_on(session_paths(input));
});
