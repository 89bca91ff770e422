//! The axum app every store is served by: the handlers, and one served instance.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::Value;
use tower_sessions::{Session, SessionManagerLayer, SessionStore};
use tower_sessions_redis_store::fred::prelude::{ClientLike, Pool};

use crate::adapters::{ErrorLog, Observed};
use crate::CONTENDERS;

type Reply<T> = Result<T, StatusCode>;

fn internal<E>(_: E) -> StatusCode {
    StatusCode::INTERNAL_SERVER_ERROR
}

/// Creates the session; the response carries its cookie.
pub(crate) async fn login(session: Session) -> Reply<&'static str> {
    session.insert("user", "bench").await.map_err(internal)?;
    session.insert("value", "v0").await.map_err(internal)?;
    Ok("ok")
}

pub(crate) async fn read(session: Session) -> Reply<String> {
    let v: Option<String> = session.get("value").await.map_err(internal)?;
    v.ok_or(StatusCode::NOT_FOUND)
}

pub(crate) async fn write(session: Session, body: String) -> Reply<&'static str> {
    session.insert("value", body).await.map_err(internal)?;
    Ok("ok")
}

/// The read-modify-write every tower-sessions counter does.
pub(crate) async fn incr(session: Session) -> Reply<String> {
    let n: u64 = session.get("counter").await.map_err(internal)?.unwrap_or(0) + 1;
    session.insert("counter", n).await.map_err(internal)?;
    Ok(n.to_string())
}

pub(crate) async fn own(
    session: Session,
    Path((client, n)): Path<(u32, u32)>,
) -> Reply<&'static str> {
    session
        .insert(&format!("k{client}"), n)
        .await
        .map_err(internal)?;
    Ok("ok")
}

/// The session as JSON. tower-sessions has no call that lists a session's keys, so this
/// reads every key the app ever writes.
pub(crate) async fn dump(session: Session) -> Reply<Json<HashMap<String, Value>>> {
    let mut out = HashMap::new();
    let keys = ["user", "value", "counter"]
        .into_iter()
        .map(str::to_owned)
        .chain((0..CONTENDERS).map(|c| format!("k{c}")));
    for k in keys {
        if let Some(v) = session.get_value(&k).await.map_err(internal)? {
            out.insert(k, v);
        }
    }
    Ok(Json(out))
}

/// One app instance serving on a free port.
pub(crate) struct Instance {
    pub(crate) base: String,
    pub(crate) errors: Arc<ErrorLog>,
    pub(crate) server: tokio::task::JoinHandle<()>,
    /// fred pools to close at the end (their connection tasks outlive the store).
    pub(crate) fred: Vec<Pool>,
}

pub(crate) async fn serve<S: SessionStore + Clone>(store: S, fred: Vec<Pool>) -> Instance {
    let errors = Arc::new(ErrorLog::default());
    let layer = SessionManagerLayer::new(Observed {
        inner: store,
        errors: errors.clone(),
    })
    .with_secure(false);
    let app = Router::new()
        .route("/login", post(login))
        .route("/read", get(read))
        .route("/write", post(write))
        .route("/incr", post(incr))
        .route("/own/{client}/{n}", post(own))
        .route("/dump", get(dump))
        .layer(layer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the app");
    let base = format!("http://{}", listener.local_addr().expect("app address"));
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Instance {
        base,
        errors,
        server,
        fred,
    }
}

impl Instance {
    pub(crate) async fn stop(self) {
        self.server.abort();
        for p in self.fred {
            let _ = p.quit().await;
        }
    }
}
