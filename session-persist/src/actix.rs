//! An `actix_session::storage::SessionStore` over larder sessions, so an actix-web app uses
//! larder with no glue code, and concurrent requests on one session keep each other's keys.

use std::collections::HashMap;
use std::time::Duration;

use actix_session::storage::{LoadError, SaveError, SessionKey, UpdateError};
use actix_web::cookie::time::Duration as TtlDuration;
use larder_cache_api::{Error, ErrorKind};

use crate::id::SessionId;
use crate::merge::{adapter_methods, KeyMerge};
use crate::record::{SessionData, Timestamp};

/// Adapts any larder [`SessionStore`](crate::SessionStore) (an SQL store, or a
/// [`CachedStore`](crate::CachedStore) over one) to actix-session, for
/// `actix_session::SessionMiddleware`.
///
/// What actix-session calls the session key is larder's session id: 128 bits from the OS
/// CSPRNG, chosen by larder at creation, of which only the SHA-256 is stored (in the
/// database and as the cache key). actix-session signs or encrypts the cookie around it.
///
/// # What holds on this path
///
/// The same as for the tower-sessions adapter ([`TowerStore`](crate::TowerStore), feature
/// `tower-sessions`), with the same machinery:
///
/// * **No lost key.** actix-session hands a store whole states, so at load the adapter notes
///   the version and a digest of each value in a reserved entry
///   ([`RESERVED_KEY`](crate::RESERVED_KEY)) of the request's state. An update writes only
///   the keys *this request* set or removed, over the stored record: one versioned statement
///   when nobody saved in between; otherwise the request's keys are replayed over the current
///   record (jittered back-off, up to 10 s), on any number of processes. Concurrent requests
///   that write different keys, or remove one while others write, all keep their effect. The
///   entry is never stored; an app that changes or forges it gets an error and nothing is
///   written.
/// * **Same key, read-modify-write is last writer wins**, as in every session system: two
///   requests that each `get` a counter and `insert` it + 1 (or call
///   `actix_session::Session::update`) may both write the same value. For an update that
///   re-runs on a conflict, use larder's own handle over the same store and values:
///   [`manager`](ActixStore::manager), with the id from the cookie.
/// * **No resurrection**: an update for a session deleted or expired meanwhile (a request
///   racing a logout) is dropped, never recreated, and logged. A cookie whose session is gone
///   loads as no session, so actix-session starts a new one under a new id.
/// * **TTL**: actix-session's `state_ttl` is the session's life after each write. A write
///   that changed no key, and `update_ttl` (actix-session's
///   `TtlExtensionPolicy::OnEveryRequest`), only move the expiry column, and only once at
///   least a quarter of the session's life has passed since the last extension. A zero or
///   negative TTL expires the session at once.
/// * **Malformed keys** (not a larder id) are no session: `load` answers `None`, and
///   `update`, `update_ttl` and `delete` do nothing. No query is made for them.
/// * **Clearing** (`Session::clear`) drops the reserved entry: the update then replaces the
///   whole stored record (last writer wins). `Session::renew` deletes the session and
///   stores its state under a new id; `Session::purge` deletes it (a tombstone keeps late
///   updates from recreating it).
/// * **Errors** reach actix-session as its own types (`LoadError::Other`,
///   `SaveError::Serialization` / `Other`, ...), which it answers with an opaque 500. They
///   carry larder's error (kind, message, cause), never the session key. A stored value that
///   is not JSON text (written by larder's handle in postcard) is a load error, not an empty
///   session: actix-session would otherwise let the request overwrite it.
///
/// actix-session values are JSON text, kept as they are inside larder's session data: the
/// same format as the tower-sessions adapter and a [`SessionManager`](crate::SessionManager) with
/// [`ValueFormat::Json`](crate::ValueFormat::Json). When
/// [`principal_key`](ActixStore::principal_key) is set, the string under that key is the
/// session's principal, so "log out everywhere"
/// ([`SessionStore::delete_principal`](crate::SessionStore::delete_principal)) works for
/// actix-web apps too. A save keeps the principal stored with the session unless the request
/// changed that key; without a principal key it never changes one (set through larder's
/// handle at login, say).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # actix_web::rt::System::new().block_on(async {
/// use std::sync::Arc;
/// use actix_session::{Session, SessionMiddleware};
/// use actix_web::{cookie::Key, test, web, App};
/// use larder_session_persist::{ActixStore, SessionStore, SqliteStore};
///
/// async fn counter(session: Session) -> actix_web::Result<String> {
///     let n = session.get::<u64>("n")?.unwrap_or(0) + 1;
///     session.insert("n", n)?;
///     Ok(n.to_string())
/// }
///
/// // Any larder store: here SQLite in memory (a `CachedStore` over PostgreSQL in production).
/// let sql = SqliteStore::connect("sqlite::memory:").await?;
/// let store = ActixStore::new(Arc::new(sql)).principal_key("user");
/// let app = test::init_service(
///     App::new()
///         .wrap(SessionMiddleware::new(store.clone(), Key::generate()))
///         .route("/counter", web::post().to(counter)),
/// )
/// .await;
///
/// let first = test::TestRequest::post().uri("/counter").to_request();
/// let res = test::call_service(&app, first).await;
/// let cookie = res.response().cookies().next().expect("a session cookie").into_owned();
/// assert_eq!(test::read_body(res).await, "1");
///
/// let again = test::TestRequest::post().uri("/counter").cookie(cookie).to_request();
/// assert_eq!(test::call_and_read_body(&app, again).await, "2");
/// assert_eq!(store.inner().count().await?, 1);
/// # Ok(()) }) }
/// ```
#[derive(Clone)]
pub struct ActixStore {
    core: KeyMerge,
}

adapter_methods!(ActixStore, "an update");

/// larder's id in actix-session's key, or `None` (logged) for anything else.
fn parse(key: &SessionKey) -> Option<SessionId> {
    match SessionId::parse(key.as_ref()) {
        Ok(id) => Some(id),
        Err(_) => {
            tracing::debug!("session key is not a larder session id: no session");
            None
        }
    }
}

/// The expiry `ttl` from now (a negative TTL is zero).
fn expiry(ttl: &TtlDuration) -> Timestamp {
    let ms = ttl.whole_milliseconds().clamp(0, i128::from(u64::MAX)) as u64;
    Timestamp::now().plus(Duration::from_millis(ms))
}

fn encode(state: HashMap<String, String>) -> SessionData {
    let mut data = SessionData::new();
    for (k, v) in state {
        data.insert_raw(&k, v.into_bytes());
    }
    data
}

fn decode(data: &SessionData) -> larder_cache_api::Result<HashMap<String, String>> {
    data.keys()
        .map(|k| {
            let raw = data.get_raw(k).unwrap_or_default();
            let text = std::str::from_utf8(raw)
                .ok()
                .filter(|t| serde_json::from_str::<serde::de::IgnoredAny>(t).is_ok())
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::Decode,
                        format!(
                            "the session value under {k:?} is not JSON text (written by \
                             larder's handle in postcard?); actix-session cannot read it"
                        ),
                    )
                })?;
            Ok((k.to_owned(), text.to_owned()))
        })
        .collect()
}

/// A larder error as actix-session's: an encoding failure as `serialization`, anything else
/// as `other`.
fn mapped<E>(
    serialization: fn(anyhow::Error) -> E,
    other: fn(anyhow::Error) -> E,
) -> impl Fn(Error) -> E {
    move |e| match e.kind() {
        ErrorKind::Encode => serialization(e.into()),
        _ => other(e.into()),
    }
}

fn to_key(id: &SessionId) -> Result<SessionKey, anyhow::Error> {
    // 22 characters: always within actix-session's limit.
    SessionKey::try_from(id.as_str().to_owned()).map_err(anyhow::Error::new)
}

impl actix_session::storage::SessionStore for ActixStore {
    async fn load(
        &self,
        session_key: &SessionKey,
    ) -> Result<Option<HashMap<String, String>>, LoadError> {
        let Some(id) = parse(session_key) else {
            return Ok(None);
        };
        // Every failure is `Other`: on `Deserialization` actix-session would carry on with
        // an empty state under the same key, whose update would replace the stored data.
        let Some(r) = self
            .core
            .load(&id)
            .await
            .map_err(|e| LoadError::Other(e.into()))?
        else {
            return Ok(None);
        };
        decode(&r.data)
            .map(Some)
            .map_err(|e| LoadError::Other(e.into()))
    }

    async fn save(
        &self,
        session_state: HashMap<String, String>,
        ttl: &TtlDuration,
    ) -> Result<SessionKey, SaveError> {
        let created = self
            .core
            .create(encode(session_state), expiry(ttl))
            .await
            .map_err(mapped(SaveError::Serialization, SaveError::Other))?;
        to_key(&created.id).map_err(SaveError::Other)
    }

    async fn update(
        &self,
        session_key: SessionKey,
        session_state: HashMap<String, String>,
        ttl: &TtlDuration,
    ) -> Result<SessionKey, UpdateError> {
        let Some(id) = parse(&session_key) else {
            // No session has this key: nothing to update, and nothing is created under a
            // key larder did not choose.
            return Ok(session_key);
        };
        self.core
            .save(id, encode(session_state), expiry(ttl))
            .await
            .map_err(mapped(UpdateError::Serialization, UpdateError::Other))?;
        Ok(session_key)
    }

    async fn update_ttl(&self, session_key: &SessionKey, ttl: &TtlDuration) -> anyhow::Result<()> {
        match parse(session_key) {
            Some(id) => Ok(self.core.touch(&id, expiry(ttl)).await?),
            None => Ok(()),
        }
    }

    async fn delete(&self, session_key: &SessionKey) -> anyhow::Result<()> {
        match parse(session_key) {
            Some(id) => Ok(self.core.delete(&id).await?),
            None => Ok(()),
        }
    }
}
