//! An axum app on tower-sessions with larder as its store, driven over real HTTP:
//! login sets a value, later requests (even after a restart) see it, logout removes it.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use larder_backend_memory::MemoryBackend;
use larder_session_persist::{CachedStore, SessionStore, SqliteStore, TowerStore};
use tower_sessions::{Session, SessionManagerLayer};

async fn login(session: Session, body: String) -> String {
    session.cycle_id().await.unwrap();
    session.insert("user", body.trim()).await.unwrap();
    "logged in".into()
}

async fn me(session: Session) -> String {
    session
        .get::<String>("user")
        .await
        .unwrap()
        .unwrap_or_else(|| "anonymous".into())
}

async fn incr(session: Session) -> String {
    let n: u64 = session.get("n").await.unwrap().unwrap_or(0) + 1;
    session.insert("n", n).await.unwrap();
    n.to_string()
}

async fn logout(session: Session) -> String {
    session.flush().await.unwrap();
    "bye".into()
}

/// Serves the app on a free port; returns its base URL and the server task.
async fn serve(store: Arc<dyn SessionStore>) -> (String, tokio::task::JoinHandle<()>) {
    let layer =
        SessionManagerLayer::new(TowerStore::new(store).principal_key("user")).with_secure(false);
    let app = Router::new()
        .route("/login", post(login))
        .route("/me", get(me))
        .route("/incr", post(incr))
        .route("/logout", post(logout))
        .layer(layer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (url, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_counter_restart_logout_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sessions.db");
    let store = |cache: Arc<MemoryBackend>| {
        let db = db.clone();
        async move {
            let sql = SqliteStore::open(&db).await.unwrap();
            Arc::new(CachedStore::new(sql, cache)) as Arc<dyn SessionStore>
        }
    };
    let (url, server) = serve(store(Arc::new(MemoryBackend::default())).await).await;
    let client = reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .unwrap();
    let text = |r: reqwest::Response| async move { r.text().await.unwrap() };

    assert_eq!(
        text(client.get(format!("{url}/me")).send().await.unwrap()).await,
        "anonymous"
    );
    let r = client
        .post(format!("{url}/login"))
        .body("ada")
        .send()
        .await
        .unwrap();
    let cookie = r
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert_eq!(text(r).await, "logged in");
    assert_eq!(
        text(client.get(format!("{url}/me")).send().await.unwrap()).await,
        "ada"
    );
    for i in 1..=3 {
        let n = text(client.post(format!("{url}/incr")).send().await.unwrap()).await;
        assert_eq!(n, i.to_string());
    }

    // Restart: a new server, a new (empty) cache, the same database.
    server.abort();
    let (url, server) = serve(store(Arc::new(MemoryBackend::default())).await).await;
    let cookie_pair = cookie.split(';').next().unwrap().to_string();
    let me_with = |c: String| {
        let url = url.clone();
        async move {
            reqwest::Client::new()
                .get(format!("{url}/me"))
                .header("cookie", c)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    assert_eq!(
        me_with(cookie_pair.clone()).await,
        "ada",
        "still logged in after a restart"
    );
    let client2 = reqwest::Client::new();
    let n = client2
        .post(format!("{url}/incr"))
        .header("cookie", cookie_pair.clone())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(n, "4", "the counter kept its value");

    // Logout deletes the session; the old cookie is worthless afterwards.
    client2
        .post(format!("{url}/logout"))
        .header("cookie", cookie_pair.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(me_with(cookie_pair).await, "anonymous");
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_out_everywhere_through_the_principal_key() {
    let dir = tempfile::tempdir().unwrap();
    let sql = SqliteStore::open(&dir.path().join("s.db")).await.unwrap();
    let store: Arc<dyn SessionStore> = Arc::new(sql);
    let (url, server) = serve(store.clone()).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let c = reqwest::Client::builder()
            .cookie_store(true)
            .build()
            .unwrap();
        c.post(format!("{url}/login"))
            .body("grace")
            .send()
            .await
            .unwrap();
        assert_eq!(
            c.get(format!("{url}/me"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
            "grace"
        );
        clients.push(c);
    }
    assert_eq!(store.delete_principal("grace").await.unwrap().len(), 3);
    for c in &clients {
        assert_eq!(
            c.get(format!("{url}/me"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
            "anonymous"
        );
    }
    server.abort();
}
