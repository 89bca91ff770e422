//! The session handle request code uses ([`Session`]): typed values, dirty tracking, and
//! key-level merge of concurrent requests.
//!
//! One file, just over 600 lines: the handle and its manager share the replay that a save
//! which lost a race runs, and read best side by side.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use larder_cache_api::codec::{Codec, Postcard};
use larder_cache_api::retry::Backoff;
use larder_cache_api::{Error, ErrorKind, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::id::SessionId;
use crate::record::{Record, SessionData, Timestamp};
use crate::store::{SaveOutcome, SessionStore};

/// What happens when another request changed the same key in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConflictPolicy {
    /// This request's value wins (keys changed only by the other request keep its values).
    #[default]
    LastWriterWins,
    /// Return [`ErrorKind::Conflict`] and write nothing.
    Error,
}

/// How the handle encodes each value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ValueFormat {
    /// postcard (compact; the default).
    #[default]
    Postcard,
    /// JSON, the format of [`TowerStore`](crate::TowerStore): use it when the same session
    /// is also read and written through tower-sessions.
    Json,
}

impl ValueFormat {
    pub(crate) fn encode<T: Serialize + ?Sized>(self, value: &T) -> Result<Vec<u8>> {
        match self {
            ValueFormat::Postcard => {
                let mut buf = Vec::new();
                Postcard.encode(value, &mut buf)?;
                Ok(buf)
            }
            ValueFormat::Json => serde_json::to_vec(value).map_err(|e| {
                Error::new(ErrorKind::Encode, "session value is not JSON-encodable").with_source(e)
            }),
        }
    }

    pub(crate) fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T> {
        match self {
            ValueFormat::Postcard => Postcard.decode(bytes),
            ValueFormat::Json => serde_json::from_slice(bytes).map_err(|e| {
                Error::new(ErrorKind::Decode, "session value is not the expected JSON")
                    .with_source(e)
            }),
        }
    }
}

type UpdateFn = Arc<dyn Fn(Option<&[u8]>) -> Result<Vec<u8>> + Send + Sync>;

#[derive(Clone)]
pub(crate) enum Change {
    Set(String, Vec<u8>),
    Remove(String),
    Update(String, UpdateFn),
    Principal(Option<String>),
}

impl Change {
    fn key(&self) -> Option<&str> {
        match self {
            Change::Set(k, _) | Change::Remove(k) | Change::Update(k, _) => Some(k),
            Change::Principal(_) => None,
        }
    }

    pub(crate) fn apply(&self, rec: &mut Record) -> Result<()> {
        match self {
            Change::Set(k, v) => rec.data.insert_raw(k, v.clone()),
            Change::Remove(k) => {
                rec.data.remove(k);
            }
            Change::Update(k, f) => {
                let next = f(rec.data.get_raw(k))?;
                rec.data.insert_raw(k, next);
            }
            Change::Principal(p) => rec.principal.clone_from(p),
        }
        Ok(())
    }
}

/// Settings of a [`SessionManager`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SessionConfig {
    /// Life of a session after its last write or touch (default 24 h).
    pub ttl: Duration,
    /// A session is touched (expiry extended) only once this fraction of its TTL has
    /// passed since its last extension (default 0.25): at most one write per quarter TTL
    /// for a session that is only read.
    pub touch_after: f64,
    /// Attempts of a save that keeps losing races (default: no limit but the deadline).
    pub max_save_attempts: u32,
    /// How long a save may keep retrying after lost races (default 10 s); past it the save
    /// is [`ErrorKind::Conflict`].
    pub save_deadline: Duration,
    /// Same-key conflicts: last writer wins (default) or an error.
    pub conflict_policy: ConflictPolicy,
    /// How values are encoded (default postcard).
    pub value_format: ValueFormat,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            ttl: Duration::from_secs(24 * 3600),
            touch_after: 0.25,
            max_save_attempts: u32::MAX,
            save_deadline: Duration::from_secs(10),
            conflict_policy: ConflictPolicy::LastWriterWins,
            value_format: ValueFormat::Postcard,
        }
    }
}

impl SessionConfig {
    /// Sets the TTL.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }
    /// Sets the touch fraction (clamped to 0..=1).
    pub fn touch_after(mut self, f: f64) -> Self {
        self.touch_after = f.clamp(0.0, 1.0);
        self
    }
    /// Sets the save attempts.
    pub fn max_save_attempts(mut self, n: u32) -> Self {
        self.max_save_attempts = n.max(1);
        self
    }
    /// Sets the save deadline.
    pub fn save_deadline(mut self, d: Duration) -> Self {
        self.save_deadline = d;
        self
    }
    /// Sets the conflict policy.
    pub fn conflict_policy(mut self, p: ConflictPolicy) -> Self {
        self.conflict_policy = p;
        self
    }
    /// Sets the value format.
    pub fn value_format(mut self, f: ValueFormat) -> Self {
        self.value_format = f;
        self
    }

    /// True if an expiry moved from `loaded` to `wanted` gains enough to be written: at
    /// least `touch_after` of the TTL (`wanted - now`).
    pub(crate) fn touch_due(&self, loaded: Timestamp, wanted: Timestamp) -> bool {
        let now = Timestamp::now();
        let ttl = wanted.remaining_from(now).as_secs_f64();
        let gained = wanted.remaining_from(loaded).as_secs_f64();
        gained > 0.0 && gained >= ttl * self.touch_after
    }
}

/// Creates and loads [`Session`]s over a store (usually a
/// [`CachedStore`](crate::CachedStore) over an SQL store).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> larder_cache_api::Result<()> {
/// # let dir = std::env::temp_dir().join(format!("larder-doc-mgr-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir).unwrap();
/// use std::sync::Arc;
/// use larder_session_persist::{CachedStore, SessionManager, SqliteStore};
///
/// let sql = SqliteStore::open(&dir.join("s.db")).await?;
/// let cache = Arc::new(larder_backend_memory::MemoryBackend::default());
/// let sessions = SessionManager::new(Arc::new(CachedStore::new(sql, cache)));
///
/// let mut s = sessions.create().await?;
/// s.insert("user", "ada")?;
/// s.update("visits", |n: Option<u32>| n.unwrap_or(0) + 1)?;
/// s.save().await?;
///
/// let again = sessions.load(s.id().as_str()).await?.expect("stored");
/// assert_eq!(again.get::<String>("user")?.as_deref(), Some("ada"));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SessionManager {
    store: Arc<dyn SessionStore>,
    config: SessionConfig,
}

impl fmt::Debug for SessionManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionManager")
            .field("store", &self.store)
            .field("config", &self.config)
            .finish()
    }
}

impl SessionManager {
    /// Sessions in `store`, default settings.
    pub fn new(store: Arc<dyn SessionStore>) -> Self {
        Self::with_config(store, SessionConfig::default())
    }

    /// Sessions in `store` with `config`.
    pub fn with_config(store: Arc<dyn SessionStore>, config: SessionConfig) -> Self {
        SessionManager { store, config }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn SessionStore> {
        &self.store
    }

    /// The settings.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    fn expiry(&self) -> Timestamp {
        Timestamp::now().plus(self.config.ttl)
    }

    /// A new, stored, empty session.
    pub async fn create(&self) -> Result<Session> {
        let record = self
            .store
            .create(SessionData::new(), None, self.expiry())
            .await?;
        Ok(self.wrap(record))
    }

    /// The session whose id is `id` (the cookie's text), or `None` if it does not exist or
    /// has expired. A malformed id is [`ErrorKind::InvalidInput`], checked before any query.
    pub async fn load(&self, id: &str) -> Result<Option<Session>> {
        let id = SessionId::parse(id)?;
        Ok(self.store.as_ref().load(&id).await?.map(|r| self.wrap(r)))
    }

    /// The session with this id, or `None` if it does not exist or has expired.
    pub async fn load_id(&self, id: &SessionId) -> Result<Option<Session>> {
        Ok(self.store.as_ref().load(id).await?.map(|r| self.wrap(r)))
    }

    /// Deletes every session of `principal` ("log out everywhere"); returns how many.
    pub async fn delete_principal(&self, principal: &str) -> Result<u64> {
        Ok(self.store.delete_principal(principal).await?.len() as u64)
    }

    fn wrap(&self, record: Record) -> Session {
        Session {
            manager: self.clone(),
            record,
            changes: Vec::new(),
            base: BTreeMap::new(),
        }
    }

    /// Writes `changes` made by a request elsewhere (through tower-sessions or
    /// actix-session), already applied in `record` on top of the version it loaded, with
    /// the expiry `exp`, as [`Session::save`] would; with no changes, only moves the expiry
    /// when due. The one way in for the adapters: the retries on lost races happen here.
    #[cfg(any(feature = "tower-sessions", feature = "actix"))]
    pub(crate) async fn save_replayed(
        &self,
        record: Record,
        changes: Vec<Change>,
        exp: Timestamp,
    ) -> Result<()> {
        let touch_only = changes.is_empty();
        let mut s = Session {
            manager: self.clone(),
            record,
            changes,
            base: BTreeMap::new(),
        };
        if touch_only {
            s.touch_until(exp).await
        } else {
            s.save_until(exp).await
        }
    }
}

/// One session, as a request sees it. Changes are kept in memory and written by
/// [`save`](Session::save); an unchanged session is not written (only touched when due).
pub struct Session {
    manager: SessionManager,
    record: Record,
    changes: Vec<Change>,
    /// The value of each changed key when this request first changed it.
    base: BTreeMap<String, Option<Vec<u8>>>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.record.id)
            .field("version", &self.record.version)
            .field("keys", &self.record.data.len())
            .field("changes", &self.changes.len())
            .finish()
    }
}

impl Session {
    /// The id (for the cookie).
    pub fn id(&self) -> &SessionId {
        &self.record.id
    }

    /// The stored version this session is based on.
    pub fn version(&self) -> i64 {
        self.record.version
    }

    /// When it expires.
    pub fn expires_at(&self) -> Timestamp {
        self.record.expires_at
    }

    /// The principal (user) it belongs to.
    pub fn principal(&self) -> Option<&str> {
        self.record.principal.as_deref()
    }

    /// The data as stored (read-only).
    pub fn data(&self) -> &SessionData {
        &self.record.data
    }

    /// The value under `key`.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        let format = self.manager.config.value_format;
        self.record
            .data
            .get_raw(key)
            .map(|b| format.decode(b))
            .transpose()
    }

    /// True if there are changes not yet saved.
    pub fn is_modified(&self) -> bool {
        !self.changes.is_empty()
    }

    fn record_change(&mut self, change: Change) -> Result<()> {
        if let Some(k) = change.key() {
            if !self.base.contains_key(k) {
                let before = self.record.data.get_raw(k).map(<[u8]>::to_vec);
                self.base.insert(k.to_owned(), before);
            }
        }
        change.apply(&mut self.record)?;
        self.changes.push(change);
        Ok(())
    }

    /// Sets `key` to `value`.
    pub fn insert<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<()> {
        let buf = self.manager.config.value_format.encode(value)?;
        self.record_change(Change::Set(key.to_owned(), buf))
    }

    /// Removes `key`; true if it was there.
    pub fn remove(&mut self, key: &str) -> Result<bool> {
        let had = self.record.data.get_raw(key).is_some();
        self.record_change(Change::Remove(key.to_owned()))?;
        Ok(had)
    }

    /// Sets `key` to `f(current value)`. If another request saved in between, `f` runs
    /// again on its value: counters and lists never lose an update.
    pub fn update<T, F>(&mut self, key: &str, f: F) -> Result<()>
    where
        T: Serialize + DeserializeOwned,
        F: Fn(Option<T>) -> T + Send + Sync + 'static,
    {
        let format = self.manager.config.value_format;
        let f: UpdateFn = Arc::new(move |cur: Option<&[u8]>| {
            let cur = cur.map(|b| format.decode::<T>(b)).transpose()?;
            format.encode(&f(cur))
        });
        self.record_change(Change::Update(key.to_owned(), f))
    }

    /// Sets the principal (e.g. the user id at login).
    pub fn set_principal(&mut self, principal: Option<String>) -> Result<()> {
        self.record_change(Change::Principal(principal))
    }

    /// Writes the changes (optimistically, with the version this session was loaded at).
    /// If another request saved in between, reloads and re-applies this request's changes
    /// key by key. With no changes, only extends the expiry when due.
    ///
    /// Errors: [`ErrorKind::NotFound`] if the session was deleted meanwhile (it is not
    /// recreated); [`ErrorKind::Conflict`] if the policy is
    /// [`ConflictPolicy::Error`] and a changed key was changed by another request, or the
    /// attempts ran out.
    pub async fn save(&mut self) -> Result<()> {
        if self.changes.is_empty() {
            return self.touch_if_due().await;
        }
        let expires_at = self.manager.expiry();
        self.save_until(expires_at).await
    }

    /// Saves the changes without moving the expiry.
    #[cfg(feature = "axum")]
    pub(crate) async fn save_keeping_expiry(&mut self) -> Result<()> {
        let keep = self.record.expires_at;
        self.save_until(keep).await
    }

    /// [`save`](Session::save) with a given expiry. One statement when nobody saved in
    /// between; each lost race costs one more (the store hands back the current record).
    async fn save_until(&mut self, expires_at: Timestamp) -> Result<()> {
        let store = Arc::clone(&self.manager.store);
        let cfg = self.manager.config.clone();
        let mut tries = Backoff::new(Duration::from_millis(1), Duration::from_millis(32))
            .max_attempts(cfg.max_save_attempts)
            .deadline(cfg.save_deadline);
        tries.next_attempt_now();
        let mut lost = 0u32;
        loop {
            // The expiry moves only when due (as a touch would): a save that leaves the
            // indexed expiry as it is lets PostgreSQL update the row in place (HOT). It is
            // set on the record itself (no copy of the data per save) and put back unless
            // the save succeeds.
            let loaded_expiry = self.record.expires_at;
            if cfg.touch_due(loaded_expiry, expires_at) {
                self.record.expires_at = expires_at;
            }
            let outcome = store.as_ref().save_or_current(&self.record).await;
            if !matches!(outcome, Ok(SaveOutcome::Saved(_))) {
                self.record.expires_at = loaded_expiry;
            }
            match outcome? {
                SaveOutcome::Saved(saved) => {
                    self.record = saved;
                    self.changes.clear();
                    self.base.clear();
                    return Ok(());
                }
                SaveOutcome::Stale(fresh) => {
                    metrics::counter!("larder_session_save_conflicts_total").increment(1);
                    lost += 1;
                    if lost <= 2 && tries.next_attempt_now() {
                        // Retry at once on the record the lost race handed back: it is as
                        // fresh as a reload.
                        self.rebase(fresh, cfg.conflict_policy)?;
                        continue;
                    }
                    // A hot session: stop racing and wait for the row's lock instead, so
                    // every writer gets its turn (optimistic retries can starve one).
                    let id = self.record.id.clone();
                    return self
                        .save_under_lock(&id, expires_at, cfg.conflict_policy)
                        .await;
                }
            }
        }
    }

    /// Saves by re-applying this request's changes to the stored record under the
    /// database's row lock.
    async fn save_under_lock(
        &mut self,
        id: &SessionId,
        expires_at: Timestamp,
        policy: ConflictPolicy,
    ) -> Result<()> {
        let changes = self.changes.clone();
        let base = self.base.clone();
        let apply = move |rec: &mut Record| -> Result<()> {
            if policy == ConflictPolicy::Error {
                for (k, before) in &base {
                    if rec.data.get_raw(k) != before.as_deref() {
                        return Err(Error::new(
                            ErrorKind::Conflict,
                            format!("session key {k:?} was changed by another request"),
                        ));
                    }
                }
            }
            for c in &changes {
                c.apply(rec)?;
            }
            Ok(())
        };
        let saved = tokio::time::timeout(
            self.manager.config.save_deadline,
            self.manager
                .store
                .as_ref()
                .save_locked(id, &apply, expires_at),
        )
        .await
        .map_err(|_| {
            Error::new(
                ErrorKind::Conflict,
                "session save waited too long for concurrent requests",
            )
        })??;
        self.record = saved;
        self.changes.clear();
        self.base.clear();
        Ok(())
    }

    /// Re-applies this request's changes on top of `fresh`.
    fn rebase(&mut self, fresh: Record, policy: ConflictPolicy) -> Result<()> {
        if policy == ConflictPolicy::Error {
            for (k, before) in &self.base {
                if fresh.data.get_raw(k) != before.as_deref() {
                    return Err(Error::new(
                        ErrorKind::Conflict,
                        format!("session key {k:?} was changed by another request"),
                    ));
                }
            }
        }
        // The stored values are the new base for conflict detection: a later lost race is
        // judged against what this attempt built on, not against this request's own values.
        for (k, before) in self.base.iter_mut() {
            *before = fresh.data.get_raw(k).map(<[u8]>::to_vec);
        }
        let mut rec = fresh;
        for c in &self.changes {
            c.apply(&mut rec)?;
        }
        self.record = rec;
        Ok(())
    }

    /// Extends the expiry if at least `touch_after` of the TTL has passed since the last
    /// extension.
    pub async fn touch_if_due(&mut self) -> Result<()> {
        let wanted = self.manager.expiry();
        self.touch_until(wanted).await
    }

    /// Moves the expiry to `wanted` (expiry only: no data rewrite, no cache write) if that
    /// gains at least `touch_after` of the TTL.
    async fn touch_until(&mut self, wanted: Timestamp) -> Result<()> {
        if !self
            .manager
            .config
            .touch_due(self.record.expires_at, wanted)
        {
            return Ok(());
        }
        match self
            .manager
            .store
            .as_ref()
            .touch(&self.record.id, wanted)
            .await?
        {
            Some(r) => {
                self.record = r;
                Ok(())
            }
            None => Err(Error::new(
                ErrorKind::NotFound,
                "session was deleted or has expired",
            )),
        }
    }

    /// Gives the session a new id, keeping its data (call at login, against session
    /// fixation). Unsaved changes are saved first.
    pub async fn rotate(&mut self) -> Result<()> {
        self.save().await?;
        match self.manager.store.rotate(&self.record.id).await? {
            Some(r) => {
                self.record = r;
                Ok(())
            }
            None => Err(Error::new(
                ErrorKind::NotFound,
                "session was deleted or has expired",
            )),
        }
    }

    /// Deletes the session (logout); true if it was live.
    pub async fn delete(self) -> Result<bool> {
        self.manager.store.delete(&self.record.id).await
    }
}
