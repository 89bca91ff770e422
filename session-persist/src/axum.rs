//! An axum extractor over larder's own session handle: updates that re-run on a conflict,
//! sharing the cookie and the store with tower-sessions.

use http::request::Parts;
use http::{header, StatusCode};
use larder_cache_api::{Error, ErrorKind};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::session::Session;
use crate::tower::{larder_id, TowerStore};

/// The request's session as larder's own [`Session`] handle, for updates that must not
/// lose a concurrent request's write (a counter, a list): the closure of
/// [`update`](AtomicSession::update) runs again on the fresh value after a lost race.
///
/// It composes with tower-sessions: the session is the one named by tower-sessions' cookie,
/// in the same store, with the same JSON values, so the same keys can be read through
/// `tower_sessions::Session` too. Add tower-sessions' `SessionManagerLayer` over a
/// [`TowerStore`] and the same `TowerStore` as an `axum::Extension`:
///
/// ```no_run
/// # async fn demo(store: larder_session_persist::TowerStore) {
/// use axum::{routing::post, Extension, Router};
/// use larder_session_persist::AtomicSession;
/// use tower_sessions::SessionManagerLayer;
///
/// async fn count(session: AtomicSession) -> Result<String, larder_session_persist::SessionError> {
///     let n = session.update("counter", |n: Option<u64>| n.unwrap_or(0) + 1).await?;
///     Ok(n.to_string())
/// }
///
/// let app: Router = Router::new()
///     .route("/counter", post(count))
///     .layer(SessionManagerLayer::new(store.clone()))
///     .layer(Extension(store));
/// # let _ = app; }
/// ```
///
/// A value updated here is written at once (one versioned statement, plus one per lost
/// race); tower-sessions' own copy of the record in the same request is not refreshed, and
/// its save does not write a key it did not change, so it cannot undo the update.
#[derive(Debug, Clone)]
pub struct AtomicSession {
    session: tower_sessions::Session,
    store: TowerStore,
}

impl<S: Send + Sync> axum_core::extract::FromRequestParts<S> for AtomicSession {
    type Rejection = (StatusCode, &'static str);

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let session = parts
            .extensions
            .get::<tower_sessions::Session>()
            .cloned()
            .ok_or((
                StatusCode::INTERNAL_SERVER_ERROR,
                "AtomicSession needs tower-sessions' SessionManagerLayer",
            ))?;
        let store = parts.extensions.get::<TowerStore>().cloned().ok_or((
            StatusCode::INTERNAL_SERVER_ERROR,
            "AtomicSession needs the TowerStore as an axum Extension",
        ))?;
        Ok(AtomicSession { session, store })
    }
}

impl AtomicSession {
    /// larder's handle of this request's session; `None` if the request has no session
    /// (no cookie, or the session was deleted or has expired).
    pub async fn handle(&self) -> Result<Option<Session>, SessionError> {
        let Some(id) = self.session.id() else {
            return Ok(None);
        };
        Ok(self.store.manager().load_id(&larder_id(&id)).await?)
    }

    /// Sets `key` to `f(current value)` and saves at once; if another request saved in
    /// between, `f` runs again on its value. Returns the value stored. A request without a
    /// session gets [`SessionError`] with kind [`ErrorKind::NotFound`].
    pub async fn update<T, F>(&self, key: &str, f: F) -> Result<T, SessionError>
    where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
        F: Fn(Option<T>) -> T + Send + Sync + 'static,
    {
        let mut s = self
            .handle()
            .await?
            .ok_or_else(|| Error::new(ErrorKind::NotFound, "the request has no session"))?;
        s.update(key, f)?;
        s.save_keeping_expiry().await?;
        s.get(key)?
            .ok_or_else(|| Error::new(ErrorKind::Decode, "updated value missing").into())
    }

    /// The value under `key` as stored now.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, SessionError> {
        match self.handle().await? {
            Some(s) => Ok(s.get(key)?),
            None => Ok(None),
        }
    }
}

/// A session error as an HTTP response: a save that kept losing races past its deadline is
/// `409 Conflict` with `Retry-After: 1` (safe to retry), a missing session `401`, a store
/// that is down `503`, anything else `500`. The message names the kind only; the cause is
/// logged.
#[derive(Debug)]
pub struct SessionError(pub Error);

impl From<Error> for SessionError {
    fn from(e: Error) -> Self {
        SessionError(e)
    }
}

impl std::fmt::Display for SessionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SessionError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

impl axum_core::response::IntoResponse for SessionError {
    fn into_response(self) -> axum_core::response::Response {
        let kind = self.0.kind();
        let status = match kind {
            ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::NotFound => StatusCode::UNAUTHORIZED,
            _ if self.0.is_retryable() => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        tracing::warn!(error = %self.0, "session request failed");
        let mut res = (status, format!("session error: {kind:?}\n")).into_response();
        if status == StatusCode::CONFLICT || status == StatusCode::SERVICE_UNAVAILABLE {
            res.headers_mut()
                .insert(header::RETRY_AFTER, http::HeaderValue::from_static("1"));
        }
        res
    }
}
