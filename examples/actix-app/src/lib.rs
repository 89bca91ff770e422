//! An actix-web app whose sessions live in larder: actix-session's `SessionMiddleware` over
//! [`ActixStore`], the SQL database (PostgreSQL or SQLite) as the authority, an in-process
//! write-through cache in front of it.
//!
//! Routes (plain text unless said otherwise):
//!
//! | route | does |
//! |---|---|
//! | `POST /login` (body: the user name) | renews the session id, stores `user` (the principal) |
//! | `GET /me` | the user, or `anonymous` |
//! | `POST /counter` | adds one to `counter`, answers the new value |
//! | `PUT /keys/{name}` (body: a value) | stores the value under `name` |
//! | `DELETE /keys/{name}` | removes `name` |
//! | `GET /keys` | the session's values as a JSON object |
//! | `POST /logout` | deletes the session and its cookie |
//!
//! Each request's changes are merged key by key with concurrent requests on the same session
//! (see [`ActixStore`]); the counter is a read-modify-write of one key, so concurrent
//! increments of it are last writer wins.

// actix-web runs each request on one worker thread: handler futures need not be `Send`, and
// cannot be with `actix_session::Session` (an `Rc`).
#![allow(clippy::future_not_send)]

use std::net::TcpListener;
use std::sync::Arc;

use actix_session::config::{PersistentSession, TtlExtensionPolicy};
use actix_session::{Session, SessionMiddleware};
use actix_web::cookie::{time, Key};
use actix_web::dev::{Server, ServerHandle};
use actix_web::{web, App, HttpResponse, HttpServer};
use larder::backends::memory::MemoryBackend;
use larder::sessions::{ActixStore, CachedStore, RESERVED_KEY};

/// The session cookie's name.
pub const COOKIE: &str = "id";

/// How long a session lives after its last write.
pub const SESSION_TTL: time::Duration = time::Duration::days(7);

/// The store of an app on `database_url` (`postgres://…` or `sqlite://…`; migrations run):
/// the database behind an in-process cache, the user as each session's principal.
pub async fn store(database_url: &str) -> larder::Result<ActixStore> {
    let sql = larder::sessions::connect(database_url).await?;
    let cache = Arc::new(MemoryBackend::default());
    Ok(ActixStore::new(Arc::new(CachedStore::new(sql, cache))).principal_key("user"))
}

/// The routes, for `App::configure`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/login", web::post().to(login))
        .route("/me", web::get().to(me))
        .route("/counter", web::post().to(counter))
        .route("/keys", web::get().to(keys))
        .route("/keys/{name}", web::put().to(put_key))
        .route("/keys/{name}", web::delete().to(remove_key))
        .route("/logout", web::post().to(logout));
}

/// The session middleware over `store`, its cookie sealed with `key`. `secure` sets the
/// cookie's `Secure` attribute (off only for plain-HTTP development and tests).
pub fn sessions(store: ActixStore, key: Key, secure: bool) -> SessionMiddleware<ActixStore> {
    SessionMiddleware::builder(store, key)
        .cookie_name(COOKIE.to_owned())
        .cookie_secure(secure)
        .session_lifecycle(
            PersistentSession::default()
                .session_ttl(SESSION_TTL)
                .session_ttl_extension_policy(TtlExtensionPolicy::OnEveryRequest),
        )
        .build()
}

/// The app served on `listener` with `workers` worker threads. Run the returned server in
/// an actix system (`actix_web::rt::System`); stop it through its handle.
pub fn server(
    store: ActixStore,
    key: Key,
    secure: bool,
    listener: TcpListener,
    workers: usize,
) -> std::io::Result<Server> {
    Ok(HttpServer::new(move || {
        App::new()
            .wrap(sessions(store.clone(), key.clone(), secure))
            .configure(routes)
    })
    .workers(workers)
    // Stopped through its handle (or killed): no signal handlers of its own, so several
    // servers can run in one process.
    .disable_signals()
    .listen(listener)?
    .run())
}

/// A server running on its own thread (its own actix system), for tests and embedding.
#[derive(Debug)]
pub struct Running {
    handle: ServerHandle,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl Running {
    /// Starts the app on `listener` with a store on `database_url`; returns once it serves.
    pub fn start(
        database_url: &str,
        key: Key,
        listener: TcpListener,
    ) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let url = database_url.to_owned();
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let started = async {
                    let store = store(&url).await.map_err(|e| e.to_string())?;
                    server(store, key, false, listener, 2).map_err(|e| e.to_string())
                };
                match started.await {
                    Ok(server) => {
                        let _ = tx.send(Ok(server.handle()));
                        server.await
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        Ok(())
                    }
                }
            })
        });
        let handle = rx.recv().map_err(|_| "the server thread ended")??;
        Ok(Running {
            handle,
            thread: Some(thread),
        })
    }

    /// Stops the server (gracefully: requests in flight finish) and waits for its thread;
    /// the store and its connections are dropped with it.
    pub async fn stop(mut self) {
        self.handle.stop(true).await;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn login(session: Session, body: String) -> actix_web::Result<&'static str> {
    // A new id at login, against session fixation.
    session.renew();
    session.insert("user", body.trim())?;
    Ok("logged in")
}

async fn me(session: Session) -> actix_web::Result<String> {
    Ok(session
        .get::<String>("user")?
        .unwrap_or_else(|| "anonymous".to_owned()))
}

async fn counter(session: Session) -> actix_web::Result<String> {
    let n = session.get::<u64>("counter")?.unwrap_or(0) + 1;
    session.insert("counter", n)?;
    Ok(n.to_string())
}

async fn put_key(
    session: Session,
    name: web::Path<String>,
    body: String,
) -> actix_web::Result<HttpResponse> {
    if name.as_str() == RESERVED_KEY {
        return Ok(HttpResponse::BadRequest().body("reserved name"));
    }
    session.insert(name.into_inner(), body)?;
    Ok(HttpResponse::NoContent().finish())
}

async fn remove_key(session: Session, name: web::Path<String>) -> HttpResponse {
    if name.as_str() == RESERVED_KEY {
        return HttpResponse::BadRequest().body("reserved name");
    }
    session.remove(&name);
    HttpResponse::NoContent().finish()
}

async fn keys(session: Session) -> HttpResponse {
    let values: serde_json::Map<String, serde_json::Value> = session
        .entries()
        .iter()
        .filter(|(k, _)| k.as_str() != RESERVED_KEY)
        .map(|(k, v)| {
            let v = serde_json::from_str(v).unwrap_or(serde_json::Value::Null);
            (k.clone(), v)
        })
        .collect();
    HttpResponse::Ok().json(values)
}

async fn logout(session: Session) -> &'static str {
    session.purge();
    "bye"
}
