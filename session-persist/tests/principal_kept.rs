//! A save through any adapter keeps the principal stored with the session unless the request
//! changed it: a principal set through larder's handle survives a request through an adapter
//! configured without a principal key, so "log out everywhere" still reaches that session.
//! On a real SQLite store behind the write-through cache.
#![cfg(all(feature = "tower-sessions", feature = "axum", feature = "actix"))]
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::Arc;

use axum_core::extract::FromRequestParts as _;
use larder_session_persist::actix_session::storage::{SessionKey, SessionStore as _};
use larder_session_persist::tower_sessions::session::Id;
use larder_session_persist::tower_sessions::SessionStore as _;
use larder_session_persist::{
    ActixStore, AtomicSession, CachedStore, SessionId, SessionManager, SessionStore, SqliteStore,
    TowerStore, RESERVED_KEY,
};

async fn store(dir: &tempfile::TempDir) -> Arc<dyn SessionStore> {
    let sql = SqliteStore::open(&dir.path().join("s.db")).await.unwrap();
    let cache = Arc::new(larder_backend_memory::MemoryBackend::default());
    Arc::new(CachedStore::new(sql, cache))
}

/// A session with one JSON key whose principal `who` is set through larder's handle.
async fn logged_in(sessions: &SessionManager, who: &str) -> SessionId {
    let mut s = sessions.create().await.unwrap();
    s.insert("theme", "dark").unwrap();
    s.set_principal(Some(who.to_owned())).unwrap();
    s.save().await.unwrap();
    s.id().clone()
}

fn tower_id(id: &SessionId) -> Id {
    Id(i128::from_le_bytes(*id.as_bytes()))
}

/// The session still has `who` as its principal, and revoking `who` kills it.
async fn principal_kept_and_revocable(sessions: &SessionManager, id: &SessionId, who: &str) {
    let s = sessions.load_id(id).await.unwrap().expect("live");
    assert_eq!(s.principal(), Some(who), "the save kept the principal");
    assert_eq!(sessions.delete_principal(who).await.unwrap(), 1);
    assert!(sessions.load_id(id).await.unwrap().is_none(), "revoked");
}

#[tokio::test]
async fn tower_save_without_principal_key_keeps_the_principal() {
    let dir = tempfile::tempdir().unwrap();
    let tower = TowerStore::new(store(&dir).await);
    let sessions = tower.manager().clone();

    // A request that changes a key (the reserved entry of its load travels back).
    let id = logged_in(&sessions, "ada").await;
    let mut rec = tower.load(&tower_id(&id)).await.unwrap().unwrap();
    rec.data.insert("cart".to_owned(), serde_json::json!(3));
    tower.save(&rec).await.unwrap();
    principal_kept_and_revocable(&sessions, &id, "ada").await;

    // A request that cleared the session (no reserved entry: the whole record is written).
    let id = logged_in(&sessions, "grace").await;
    let mut rec = tower.load(&tower_id(&id)).await.unwrap().unwrap();
    rec.data.clear();
    rec.data.insert("cart".to_owned(), serde_json::json!(1));
    assert!(!rec.data.contains_key(RESERVED_KEY));
    tower.save(&rec).await.unwrap();
    let s = sessions.load_id(&id).await.unwrap().unwrap();
    assert!(s.get::<String>("theme").unwrap().is_none(), "cleared");
    principal_kept_and_revocable(&sessions, &id, "grace").await;
}

#[tokio::test]
async fn tower_save_with_principal_key_moves_it_only_when_the_key_changed() {
    let dir = tempfile::tempdir().unwrap();
    let tower = TowerStore::new(store(&dir).await).principal_key("user");
    let sessions = tower.manager().clone();

    // The key untouched: the principal from the handle stays.
    let id = logged_in(&sessions, "ada").await;
    let mut rec = tower.load(&tower_id(&id)).await.unwrap().unwrap();
    rec.data.insert("cart".to_owned(), serde_json::json!(3));
    tower.save(&rec).await.unwrap();
    let s = sessions.load_id(&id).await.unwrap().unwrap();
    assert_eq!(s.principal(), Some("ada"));

    // The key set: it becomes the principal.
    let mut rec = tower.load(&tower_id(&id)).await.unwrap().unwrap();
    rec.data.insert("user".to_owned(), serde_json::json!("bob"));
    tower.save(&rec).await.unwrap();
    let s = sessions.load_id(&id).await.unwrap().unwrap();
    assert_eq!(s.principal(), Some("bob"));
    assert_eq!(sessions.delete_principal("ada").await.unwrap(), 0);
    principal_kept_and_revocable(&sessions, &id, "bob").await;
}

#[tokio::test]
async fn axum_request_without_principal_key_keeps_the_principal() {
    let dir = tempfile::tempdir().unwrap();
    let tower = TowerStore::new(store(&dir).await);
    let sessions = tower.manager().clone();
    let id = logged_in(&sessions, "ada").await;

    // One request as axum runs it: tower-sessions' session and the extractor side by side,
    // an atomic update, a plain insert, and tower-sessions' save at the end.
    let session = larder_session_persist::tower_sessions::Session::new(
        Some(tower_id(&id)),
        Arc::new(tower.clone()),
        None,
    );
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.extensions.insert(session.clone());
    parts.extensions.insert(tower.clone());
    let atomic = AtomicSession::from_request_parts(&mut parts, &())
        .await
        .unwrap();
    // The update first: tower-sessions then loads the version it wrote, so its save is
    // not a lost race that would reload the stored principal anyway.
    let n = atomic
        .update("visits", |n: Option<u64>| n.unwrap_or(0) + 1)
        .await
        .unwrap();
    assert_eq!(n, 1);
    session.insert("cart", 2).await.unwrap();
    session.save().await.unwrap();

    let s = sessions.load_id(&id).await.unwrap().unwrap();
    assert_eq!(s.get::<u64>("cart").unwrap(), Some(2));
    assert_eq!(s.get::<u64>("visits").unwrap(), Some(1));
    principal_kept_and_revocable(&sessions, &id, "ada").await;
}

#[tokio::test]
async fn actix_update_without_principal_key_keeps_the_principal() {
    let dir = tempfile::tempdir().unwrap();
    let actix = ActixStore::new(store(&dir).await);
    let sessions = actix.manager().clone();
    let ttl = actix_web::cookie::time::Duration::hours(1);

    let id = logged_in(&sessions, "ada").await;
    let key = SessionKey::try_from(id.as_str().to_owned()).unwrap();
    let mut state = actix.load(&key).await.unwrap().unwrap();
    state.insert("cart".to_owned(), "3".to_owned());
    actix.update(key, state, &ttl).await.unwrap();
    let s = sessions.load_id(&id).await.unwrap().unwrap();
    assert_eq!(s.get::<u64>("cart").unwrap(), Some(3));
    principal_kept_and_revocable(&sessions, &id, "ada").await;

    // A state without the reserved entry (`Session::purge` then inserts) replaces the
    // whole record and still keeps the principal.
    let id = logged_in(&sessions, "grace").await;
    let key = SessionKey::try_from(id.as_str().to_owned()).unwrap();
    let state = HashMap::from([("cart".to_owned(), "1".to_owned())]);
    actix.update(key, state, &ttl).await.unwrap();
    let s = sessions.load_id(&id).await.unwrap().unwrap();
    assert!(s.get::<String>("theme").unwrap().is_none(), "replaced");
    principal_kept_and_revocable(&sessions, &id, "grace").await;
}

#[tokio::test]
async fn handle_save_keeps_the_principal() {
    let dir = tempfile::tempdir().unwrap();
    let sessions = SessionManager::new(store(&dir).await);
    let id = logged_in(&sessions, "ada").await;
    let mut s = sessions.load_id(&id).await.unwrap().unwrap();
    s.update("visits", |n: Option<u64>| n.unwrap_or(0) + 1)
        .unwrap();
    s.save().await.unwrap();
    principal_kept_and_revocable(&sessions, &id, "ada").await;
}
