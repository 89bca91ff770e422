//! The session store contract.

use std::fmt::Debug;
use std::time::Duration;

use async_trait::async_trait;
use larder_cache_api::Result;

use crate::id::{IdHash, SessionId};
use crate::record::{Record, SessionData, Timestamp};

/// A change applied to a stored record by [`SessionStore::save_locked`].
pub type ApplyFn = dyn for<'r> Fn(&'r mut Record) -> Result<()> + Send + Sync;

/// What a versioned [`save`](SessionStore::save_or_current) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaveOutcome {
    /// Written; the stored record with its new version.
    Saved(Record),
    /// Another request saved first; nothing was written. The record as it is stored now,
    /// so the caller can re-apply its changes without loading again.
    Stale(Record),
}

/// Where sessions live. The SQL stores are the authority; [`CachedStore`](crate::CachedStore)
/// wraps any store with write-through caching and is a store itself.
///
/// # Contract
///
/// * An expired session is absent for every operation.
/// * [`save`](SessionStore::save) only ever updates: it never creates a row. A stale
///   version is [`Conflict`](larder_cache_api::ErrorKind::Conflict); a session that was
///   deleted, expired or never existed is [`NotFound`](larder_cache_api::ErrorKind::NotFound), so a
///   late save cannot resurrect a logged-out session.
/// * [`delete`](SessionStore::delete) leaves a short tombstone. A store with an
///   [`Outbox`](crate::Outbox) records the session in its change log in the same
///   transaction (so do rotation, [`delete_principal`](SessionStore::delete_principal) and
///   every save, with the version it wrote).
/// * Every change of data, principal or liveness moves the version forward by one;
///   [`touch`](SessionStore::touch) moves only the expiry and keeps the version, so a touch
///   never makes a concurrent save conflict.
#[async_trait]
pub trait SessionStore: Send + Sync + Debug {
    /// Creates a session with a fresh id (insert-if-absent; a colliding id is regenerated).
    async fn create(
        &self,
        data: SessionData,
        principal: Option<String>,
        expires_at: Timestamp,
    ) -> Result<Record>;

    /// The live session with this id, if any.
    async fn load(&self, id: &SessionId) -> Result<Option<Record>>;

    /// Like [`load`](SessionStore::load), but from the authority, skipping any cache: used
    /// after a conflict.
    async fn load_authoritative(&self, id: &SessionId) -> Result<Option<Record>> {
        self.load(id).await
    }

    /// Writes `record` if the stored version is still `record.version` (one statement);
    /// otherwise writes nothing and returns the stored record, so a retry needs no second
    /// load. A session that was deleted, expired or never existed is
    /// [`NotFound`](larder_cache_api::ErrorKind::NotFound).
    async fn save_or_current(&self, record: &Record) -> Result<SaveOutcome>;

    /// Applies `apply` to the stored record and writes it, holding the database's lock on
    /// the row in between, so no other save can come between: the answer to repeated lost
    /// races (a transaction costs more round trips than an optimistic save, but waits its
    /// turn instead of retrying). The expiry is moved to at least `expires_at`. A session
    /// that is gone is [`NotFound`](larder_cache_api::ErrorKind::NotFound).
    ///
    /// The default does optimistic attempts (stores without row locks).
    async fn save_locked(
        &self,
        id: &SessionId,
        apply: &ApplyFn,
        expires_at: Timestamp,
    ) -> Result<Record> {
        let gone = || {
            larder_cache_api::Error::new(
                larder_cache_api::ErrorKind::NotFound,
                "session was deleted or has expired; it is not recreated",
            )
        };
        let mut current = self.load_authoritative(id).await?.ok_or_else(gone)?;
        let mut tries = larder_cache_api::retry::Backoff::new(
            std::time::Duration::from_millis(1),
            std::time::Duration::from_millis(32),
        )
        .deadline(std::time::Duration::from_secs(10));
        while tries.next_attempt().await {
            let mut next = current.clone();
            apply(&mut next)?;
            next.expires_at = next.expires_at.max(expires_at);
            match self.save_or_current(&next).await? {
                SaveOutcome::Saved(r) => return Ok(r),
                SaveOutcome::Stale(fresh) => current = fresh,
            }
        }
        Err(larder_cache_api::Error::new(
            larder_cache_api::ErrorKind::Conflict,
            "session save kept losing races with concurrent requests",
        ))
    }

    /// Writes `record` if the stored version is still `record.version`; returns the stored
    /// record with its new version. A lost race is
    /// [`Conflict`](larder_cache_api::ErrorKind::Conflict).
    async fn save(&self, record: &Record) -> Result<Record> {
        match self.save_or_current(record).await? {
            SaveOutcome::Saved(r) => Ok(r),
            SaveOutcome::Stale(cur) => Err(larder_cache_api::Error::new(
                larder_cache_api::ErrorKind::Conflict,
                format!(
                    "session was saved by another request (version {}, this request loaded {})",
                    cur.version, record.version
                ),
            )),
        }
    }

    /// Moves the expiry to `expires_at` without rewriting the data and without changing the
    /// version; `None` if the session is gone.
    async fn touch(&self, id: &SessionId, expires_at: Timestamp) -> Result<Option<Record>>;

    /// Deletes the session, leaving a tombstone; true if a live session was deleted.
    async fn delete(&self, id: &SessionId) -> Result<bool>;

    /// Gives the session a new id atomically (data kept, old id dead); `None` if gone.
    async fn rotate(&self, id: &SessionId) -> Result<Option<Record>>;

    /// Deletes every live session of `principal` ("log out everywhere"); returns the hashes
    /// of the sessions deleted.
    async fn delete_principal(&self, principal: &str) -> Result<Vec<IdHash>>;

    /// Removes expired sessions and tombstones in batches of at most `batch` rows; returns
    /// how many rows were removed.
    async fn sweep(&self, batch: u32) -> Result<u64>;

    /// Live sessions now.
    async fn count(&self) -> Result<u64>;
}

/// How long a deleted session's tombstone is kept by default.
pub const DEFAULT_TOMBSTONE_TTL: Duration = Duration::from_secs(600);

#[async_trait]
impl<S: SessionStore + ?Sized> SessionStore for std::sync::Arc<S> {
    async fn create(
        &self,
        data: SessionData,
        principal: Option<String>,
        expires_at: Timestamp,
    ) -> Result<Record> {
        (**self).create(data, principal, expires_at).await
    }
    async fn load(&self, id: &SessionId) -> Result<Option<Record>> {
        (**self).load(id).await
    }
    async fn load_authoritative(&self, id: &SessionId) -> Result<Option<Record>> {
        (**self).load_authoritative(id).await
    }
    async fn save_or_current(&self, record: &Record) -> Result<SaveOutcome> {
        (**self).save_or_current(record).await
    }
    async fn save(&self, record: &Record) -> Result<Record> {
        (**self).save(record).await
    }
    async fn save_locked(
        &self,
        id: &SessionId,
        apply: &ApplyFn,
        expires_at: Timestamp,
    ) -> Result<Record> {
        (**self).save_locked(id, apply, expires_at).await
    }
    async fn touch(&self, id: &SessionId, expires_at: Timestamp) -> Result<Option<Record>> {
        (**self).touch(id, expires_at).await
    }
    async fn delete(&self, id: &SessionId) -> Result<bool> {
        (**self).delete(id).await
    }
    async fn rotate(&self, id: &SessionId) -> Result<Option<Record>> {
        (**self).rotate(id).await
    }
    async fn delete_principal(&self, principal: &str) -> Result<Vec<IdHash>> {
        (**self).delete_principal(principal).await
    }
    async fn sweep(&self, batch: u32) -> Result<u64> {
        (**self).sweep(batch).await
    }
    async fn count(&self) -> Result<u64> {
        (**self).count().await
    }
}
