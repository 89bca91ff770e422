//! The actix-web example app over real HTTP on PostgreSQL (login, counter, restart, logout,
//! concurrent requests on one session, malformed cookies, a failing database), and the
//! actix-session adapter `ActixStore` called directly (no resurrection, forged entries, TTLs,
//! error mapping).
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Instant;

use actix_session::storage::{LoadError, SessionKey, SessionStore as _, UpdateError};
use actix_web::cookie::{time, Cookie, CookieJar, Key};
use larder::sessions::{
    ActixStore, PgStore, SessionId, SessionManager, SessionStore, RESERVED_KEY,
};
use larder_actix_app::{Running, COOKIE};
use reqwest::cookie::{CookieStore as _, Jar};
use reqwest::StatusCode;

fn bind(port: u16) -> TcpListener {
    TcpListener::bind(("127.0.0.1", port)).unwrap()
}

/// The `name=value` pair of the session cookie in a `Cookie` header.
fn session_cookie(header: &str) -> String {
    header
        .split("; ")
        .find(|c| c.starts_with(&format!("{COOKIE}=")))
        .expect("a session cookie")
        .to_owned()
}

/// The larder id sealed in a session cookie (`name=value`).
fn id_in(key: &Key, cookie: &str) -> String {
    let mut jar = CookieJar::new();
    jar.add_original(Cookie::parse_encoded(cookie.to_owned()).unwrap());
    jar.private(key).get(COOKIE).unwrap().value().to_owned()
}

/// A session cookie holding `content`, sealed with `key` as the app seals its own.
fn sealed(key: &Key, content: &str) -> String {
    let mut jar = CookieJar::new();
    jar.private_mut(key)
        .add(Cookie::new(COOKIE, content.to_owned()));
    jar.get(COOKIE).unwrap().encoded().to_string()
}

async fn text(r: reqwest::RequestBuilder) -> String {
    let r = r.send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.text().await.unwrap()
}

/// The app serving on a free port, on a new PostgreSQL schema (`db`, and `pool` in it).
struct Served {
    db: String,
    pool: sqlx::PgPool,
    key: Key,
    port: u16,
    base: String,
    app: Running,
}

async fn serve() -> Served {
    let schema = larder_tests::db::pg_schema().await;
    let pool = larder_tests::db::pg_pool_in(&schema).await;
    let db = larder_tests::db::schema_url(&schema);
    let key = Key::generate();
    let listener = bind(0);
    let port = listener.local_addr().unwrap().port();
    let app = Running::start(&db, key.clone(), listener).unwrap();
    Served {
        db,
        pool,
        key,
        port,
        base: format!("http://127.0.0.1:{port}"),
        app,
    }
}

/// Logs `user` in with a client of its own; the session cookie (`name=value`).
async fn login(base: &str, user: &str) -> String {
    let r = reqwest::Client::new()
        .post(format!("{base}/login"))
        .body(user.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    session_cookie(r.headers()["set-cookie"].to_str().unwrap())
}

/// `req` sent with the session cookie `cookie`.
async fn with_cookie(req: reqwest::RequestBuilder, cookie: &str) -> reqwest::Response {
    req.header("cookie", cookie).send().await.unwrap()
}

async fn live_rows(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM larder_sessions WHERE NOT deleted")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_counter_restart_logout_over_http() {
    let Served {
        db,
        pool,
        key,
        port,
        base,
        app,
    } = serve().await;
    let url: reqwest::Url = base.parse().unwrap();
    let jar = Arc::new(Jar::default());
    let client = reqwest::Client::builder()
        .cookie_provider(jar.clone())
        .build()
        .unwrap();

    // No state, no session: nothing stored, no cookie.
    assert_eq!(text(client.get(format!("{base}/me"))).await, "anonymous");
    assert!(jar.cookies(&url).is_none());
    assert_eq!(live_rows(&pool).await, 0);

    assert_eq!(
        text(client.post(format!("{base}/login")).body("ada")).await,
        "logged in"
    );
    let cookie = session_cookie(jar.cookies(&url).unwrap().to_str().unwrap());
    let id = id_in(&key, &cookie);
    assert_eq!(id.len(), SessionId::TEXT_LEN, "the key is larder's id");
    assert_eq!(text(client.get(format!("{base}/me"))).await, "ada");
    for n in 1..=3 {
        assert_eq!(
            text(client.post(format!("{base}/counter"))).await,
            n.to_string()
        );
    }

    // At rest: only the id's SHA-256, and the user as the principal.
    let rows: Vec<(Vec<u8>, Option<String>)> =
        sqlx::query_as("SELECT id_hash, principal FROM larder_sessions WHERE NOT deleted")
            .fetch_all(&pool)
            .await
            .unwrap();
    let hash = SessionId::parse(&id).unwrap().hash();
    assert_eq!(
        rows,
        vec![(hash.as_bytes().to_vec(), Some("ada".to_owned()))]
    );
    let dump: Vec<String> = sqlx::query_scalar("SELECT t::text FROM larder_sessions t")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert!(dump.iter().all(|row| !row.contains(&id)), "{dump:?}");

    // Restart: the app, its store and its cache are dropped; a new one on the same
    // database (and the same cookie key) knows the session.
    app.stop().await;
    let app = Running::start(&db, key.clone(), bind(port)).unwrap();
    assert_eq!(text(client.get(format!("{base}/me"))).await, "ada");
    assert_eq!(text(client.post(format!("{base}/counter"))).await, "4");

    // Logging in again renews the id (against fixation): the state moves to a new id (the
    // reserved entry is not stored with it), the old id is dead.
    assert_eq!(
        text(client.post(format!("{base}/login")).body("bob")).await,
        "logged in"
    );
    let renewed = session_cookie(jar.cookies(&url).unwrap().to_str().unwrap());
    assert_ne!(id_in(&key, &renewed), id);
    assert_eq!(text(client.get(format!("{base}/me"))).await, "bob");
    assert_eq!(text(client.post(format!("{base}/counter"))).await, "5");
    let old = with_cookie(reqwest::Client::new().get(format!("{base}/me")), &cookie).await;
    assert_eq!(old.text().await.unwrap(), "anonymous");
    let id = id_in(&key, &renewed);
    let cookie = renewed;

    // Logout: the cookie goes, and the old cookie, sent again, is no session.
    assert_eq!(text(client.post(format!("{base}/logout"))).await, "bye");
    assert_eq!(text(client.get(format!("{base}/me"))).await, "anonymous");
    let replay = reqwest::Client::new();
    let me = with_cookie(replay.get(format!("{base}/me")), &cookie).await;
    assert_eq!(me.text().await.unwrap(), "anonymous");
    let r = with_cookie(replay.post(format!("{base}/counter")), &cookie).await;
    let fresh = session_cookie(r.headers()["set-cookie"].to_str().unwrap());
    assert_eq!(r.text().await.unwrap(), "1", "a new session starts at 1");
    assert_ne!(id_in(&key, &fresh), id, "under a new id");
    let store = PgStore::from_pool(pool.clone());
    assert!(store
        .load(&SessionId::parse(&id).unwrap())
        .await
        .unwrap()
        .is_none());
    app.stop().await;
}

const CLIENTS: usize = 20;
const REQUESTS: usize = 25;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_on_one_session_lose_no_key() {
    let s = serve().await;
    let (pool, key, base) = (s.pool.clone(), s.key.clone(), s.base.clone());
    let cookie = login(&base, "ada").await;
    let id = SessionId::parse(&id_in(&key, &cookie)).unwrap();
    let send = {
        let cookie = cookie.clone();
        move |req: reqwest::RequestBuilder| {
            let cookie = cookie.clone();
            async move {
                let r = req.header("cookie", cookie).send().await.unwrap();
                let (status, head) = (r.status(), format!("{:?}", r.headers()));
                let body = r.text().await.unwrap();
                assert!(status.is_success(), "{status} {head} {body:?}");
                body
            }
        }
    };
    let client = reqwest::Client::new();
    send(client.put(format!("{base}/keys/victim")).body("remove me")).await;
    let store = PgStore::from_pool(pool.clone());
    let v0 = store.load(&id).await.unwrap().unwrap().version;

    // 20 clients, each on its own connection, each request setting its own key; client 0
    // removes `victim` in its 10th request.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let (base, send) = (base.clone(), send.clone());
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            for i in 0..REQUESTS {
                send(
                    client
                        .put(format!("{base}/keys/c{c}-{i}"))
                        .body(i.to_string()),
                )
                .await;
                if c == 0 && i == 10 {
                    send(client.delete(format!("{base}/keys/victim"))).await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = started.elapsed();

    let all: HashMap<String, serde_json::Value> =
        serde_json::from_str(&send(client.get(format!("{base}/keys"))).await).unwrap();
    let lost: Vec<String> = (0..CLIENTS)
        .flat_map(|c| (0..REQUESTS).map(move |i| (c, i)))
        .filter(|(c, i)| all.get(&format!("c{c}-{i}")) != Some(&serde_json::json!(i.to_string())))
        .map(|(c, i)| format!("c{c}-{i}"))
        .collect();
    let writes = (CLIENTS * REQUESTS + 1) as i64;
    let v1 = store.load(&id).await.unwrap().unwrap().version;
    eprintln!(
        "actix-web, {CLIENTS} clients x {REQUESTS} requests on one session (PostgreSQL): \
         {} of {} keys kept, removal stood: {}, {writes} writes moved the version by {}, \
         {elapsed:.2?} ({:.0} requests/s)",
        CLIENTS * REQUESTS - lost.len(),
        CLIENTS * REQUESTS,
        !all.contains_key("victim"),
        v1 - v0,
        writes as f64 / elapsed.as_secs_f64(),
    );
    assert!(lost.is_empty(), "lost keys: {lost:?}");
    assert!(!all.contains_key("victim"), "the removal stands");
    assert_eq!(all.get("user"), Some(&serde_json::json!("ada")));
    assert_eq!(v1 - v0, writes, "one version per write, none lost");

    // The same key, read-modify-write (the counter): last writer wins, as documented.
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (base, send) = (base.clone(), send.clone());
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            for _ in 0..5 {
                send(client.post(format!("{base}/counter"))).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let all: HashMap<String, serde_json::Value> =
        serde_json::from_str(&send(client.get(format!("{base}/keys"))).await).unwrap();
    let counter = all["counter"].as_u64().unwrap();
    eprintln!(
        "the same key, {} concurrent read-modify-write increments: counter = {counter} \
         (last writer wins)",
        CLIENTS * 5
    );
    assert!((1..=(CLIENTS as u64 * 5)).contains(&counter));
    assert_eq!(
        all.len(),
        CLIENTS * REQUESTS + 2,
        "user + counter + the keys"
    );
    s.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_unknown_and_foreign_cookies_are_no_session() {
    let s = serve().await;
    let (pool, key, base) = (s.pool.clone(), s.key.clone(), s.base.clone());
    let unknown = SessionId::random().unwrap();
    let cookies = [
        // Sealed with the app's key, but not a larder id.
        sealed(&key, "not-a-larder-id"),
        sealed(&key, &"a".repeat(SessionId::TEXT_LEN)),
        sealed(&key, &"x".repeat(4000)),
        // A well-formed id that no session has.
        sealed(&key, unknown.as_str()),
        // Sealed with another key; not sealed at all.
        sealed(&Key::generate(), unknown.as_str()),
        format!("{COOKIE}={}", unknown.as_str()),
        format!("{COOKIE}=%%%"),
    ];
    let client = reqwest::Client::new();
    for cookie in &cookies {
        let me = with_cookie(client.get(format!("{base}/me")), cookie).await;
        assert_eq!(me.status(), StatusCode::OK, "{cookie:.40}");
        assert_eq!(me.text().await.unwrap(), "anonymous");
        let r = with_cookie(client.post(format!("{base}/counter")), cookie).await;
        assert_eq!(r.status(), StatusCode::OK, "{cookie:.40}");
        let fresh = session_cookie(r.headers()["set-cookie"].to_str().unwrap());
        assert_eq!(r.text().await.unwrap(), "1");
        assert_ne!(id_in(&key, &fresh), unknown.as_str(), "larder chose the id");
    }
    // Each counter started a session of its own; none under the client's id.
    assert_eq!(live_rows(&pool).await, cookies.len() as i64);
    let store = PgStore::from_pool(pool.clone());
    assert!(store.load(&unknown).await.unwrap().is_none());
    s.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_database_is_an_opaque_500() {
    let s = serve().await;
    let (pool, base) = (s.pool.clone(), s.base.clone());
    let client = reqwest::Client::new();
    let cookie = login(&base, "ada").await;

    sqlx::query("DROP TABLE larder_sessions CASCADE")
        .execute(&pool)
        .await
        .unwrap();
    for req in [
        client.post(format!("{base}/counter")),
        client.post(format!("{base}/login")).body("bob"),
    ] {
        let r = req.header("cookie", &cookie).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = r.text().await.unwrap();
        assert!(body.is_empty(), "an opaque 500: {body:?}");
    }
    // A request that needs no store still works.
    assert_eq!(text(client.get(format!("{base}/me"))).await, "anonymous");
    s.app.stop().await;
}

// ---- The adapter called directly ------------------------------------------------------

fn state(pairs: &[(&str, serde_json::Value)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.to_string()))
        .collect()
}

fn key_of(s: &str) -> SessionKey {
    SessionKey::try_from(s.to_owned()).unwrap()
}

fn secs(n: i64) -> time::Duration {
    time::Duration::seconds(n)
}

/// A new session of `user` living `ttl` seconds: actix-session's key and larder's id.
async fn user_session(store: &ActixStore, user: &str, ttl: i64) -> (SessionKey, SessionId) {
    let key = store
        .save(state(&[("user", user.into())]), &secs(ttl))
        .await
        .unwrap();
    let id = SessionId::parse(key.as_ref()).unwrap();
    (key, id)
}

/// What a request that changed `state` asks of the store at its end.
async fn update(
    store: &ActixStore,
    key: &SessionKey,
    state: HashMap<String, String>,
) -> Result<SessionKey, UpdateError> {
    store.update(key_of(key.as_ref()), state, &secs(600)).await
}

async fn adapter() -> (ActixStore, Arc<PgStore>, sqlx::PgPool) {
    let (pg, _schema) = larder_tests::db::pg_store().await;
    // The store's own pool: no more connections than the store needs.
    let pool = pg.pool().clone();
    let pg = Arc::new(pg);
    (ActixStore::new(pg.clone()).principal_key("user"), pg, pool)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_requests_keep_each_others_keys_and_a_late_update_never_resurrects() {
    let (store, pg, _pool) = adapter().await;
    let (key, id) = user_session(&store, "ada", 600).await;
    assert_eq!(
        pg.load(&id).await.unwrap().unwrap().principal.as_deref(),
        Some("ada")
    );

    // Two requests load the same session; each changes its own key; both land.
    let mut a = store.load(&key).await.unwrap().unwrap();
    let mut b = store.load(&key).await.unwrap().unwrap();
    assert!(a.contains_key(RESERVED_KEY));
    a.insert("theme".into(), "\"dark\"".into());
    b.insert("lang".into(), "\"fr\"".into());
    b.remove("user");
    let k = update(&store, &key, a).await.unwrap();
    assert_eq!(k.as_ref(), key.as_ref());
    update(&store, &key, b).await.unwrap();
    let now = store.load(&key).await.unwrap().unwrap();
    assert_eq!(now.get("theme").map(String::as_str), Some("\"dark\""));
    assert_eq!(now.get("lang").map(String::as_str), Some("\"fr\""));
    assert!(!now.contains_key("user"), "the removal stands");
    assert_eq!(pg.load(&id).await.unwrap().unwrap().principal, None);

    // The same values through larder's own handle (JSON, as the adapter keeps them).
    let s = store.manager().load_id(&id).await.unwrap().unwrap();
    assert_eq!(s.get::<String>("theme").unwrap().as_deref(), Some("dark"));

    // A request racing a logout: its update is dropped, nothing is recreated.
    let mut late = store.load(&key).await.unwrap().unwrap();
    store.delete(&key).await.unwrap();
    late.insert("x".into(), "1".into());
    update(&store, &key, late).await.unwrap();
    let mut cleared = HashMap::new();
    cleared.insert("y".to_owned(), "2".to_owned());
    update(&store, &key, cleared).await.unwrap();
    assert!(store.load(&key).await.unwrap().is_none());
    assert!(pg.load(&id).await.unwrap().is_none());
    assert_eq!(pg.count().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_entries_and_foreign_values_are_refused_and_change_nothing() {
    let (store, pg, _pool) = adapter().await;
    let (key, id) = user_session(&store, "ada", 600).await;
    let before = pg.load(&id).await.unwrap().unwrap();
    assert_eq!(
        before.data.keys().collect::<Vec<_>>(),
        vec!["user"],
        "the entry is never stored"
    );

    let (other, _) = user_session(&store, "bob", 600).await;
    let other_entry = store.load(&other).await.unwrap().unwrap()[RESERVED_KEY].clone();
    for forged in [
        "\"not an entry\"".to_owned(),
        r#"{"v":999,"e":0,"d":{},"t":"00"}"#.to_owned(),
        other_entry,
    ] {
        let mut s = store.load(&key).await.unwrap().unwrap();
        s.insert(RESERVED_KEY.to_owned(), forged);
        s.insert("user".to_owned(), "\"mallory\"".to_owned());
        let err = store
            .update(key_of(key.as_ref()), s, &secs(600))
            .await
            .unwrap_err();
        assert!(matches!(err, UpdateError::Other(_)));
        assert!(format!("{:#}", anyhow_of(&err)).contains("reserved entry"));
        assert_eq!(
            pg.load(&id).await.unwrap().unwrap(),
            before,
            "nothing changed"
        );
    }

    // A value written by larder's handle in postcard: a load error (a 500), not an empty
    // session that the request would then overwrite.
    let m = SessionManager::new(pg.clone());
    let mut s = m.create().await.unwrap();
    s.insert("n", &7u32).unwrap();
    s.save().await.unwrap();
    let err = store.load(&key_of(s.id().as_str())).await.unwrap_err();
    assert!(matches!(err, LoadError::Other(_)), "{err:?}");
    let shown = format!("{err} {err:?} {:#}", anyhow_of_load(&err));
    assert!(shown.contains("not JSON text"), "{shown}");
    assert!(!shown.contains(s.id().as_str()), "no session key in errors");
}

fn anyhow_of(e: &UpdateError) -> &anyhow::Error {
    match e {
        UpdateError::Other(e) | UpdateError::Serialization(e) => e,
    }
}

fn anyhow_of_load(e: &LoadError) -> &anyhow::Error {
    match e {
        LoadError::Other(e) | LoadError::Deserialization(e) => e,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttls_and_malformed_keys() {
    let (store, pg, pool) = adapter().await;
    let (key, id) = user_session(&store, "ada", 100).await;
    let v0 = pg.load(&id).await.unwrap().unwrap();
    let life = v0.expires_at.0 - larder::sessions::Timestamp::now().0;
    assert!((95_000..=100_000).contains(&life), "{life}");

    // update_ttl moves the expiry only when that gains a quarter of the life, and never
    // rewrites the data (the version stays).
    store.update_ttl(&key, &secs(101)).await.unwrap();
    assert_eq!(pg.load(&id).await.unwrap().unwrap(), v0);
    store.update_ttl(&key, &secs(1000)).await.unwrap();
    let v1 = pg.load(&id).await.unwrap().unwrap();
    assert!(v1.expires_at.0 > v0.expires_at.0 + 800_000);
    assert_eq!((v1.version, &v1.data), (v0.version, &v0.data));

    // A zero or negative TTL: the session is over at once.
    for ttl in [secs(0), secs(-5)] {
        let k = store.save(state(&[("a", 1.into())]), &ttl).await.unwrap();
        assert!(store.load(&k).await.unwrap().is_none());
    }

    // Malformed keys: no session, nothing done, no error, no query.
    let rows = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM larder_sessions")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let n = rows().await;
    for bad in [
        "",
        "short",
        &"a".repeat(22),
        &"é".repeat(11),
        &"z".repeat(4064),
    ] {
        let k = key_of(bad);
        assert!(store.load(&k).await.unwrap().is_none());
        let back = store
            .update(key_of(bad), state(&[("x", 1.into())]), &secs(60))
            .await
            .unwrap();
        assert_eq!(back.as_ref(), bad);
        store.update_ttl(&k, &secs(60)).await.unwrap();
        store.delete(&k).await.unwrap();
    }
    assert_eq!(rows().await, n, "nothing was stored for them");
    assert_eq!(pg.load(&id).await.unwrap().unwrap(), v1);

    // A closed database: each operation is actix-session's error, carrying larder's kind
    // and message, never the key.
    pg.pool().close().await;
    let err = store.load(&key).await.unwrap_err();
    let shown = format!("{err} {err:?} {:#}", anyhow_of_load(&err));
    assert!(matches!(err, LoadError::Other(_)), "{shown}");
    assert!(shown.contains("unavailable"), "{shown}");
    assert!(!shown.contains(key.as_ref()), "{shown}");
    assert!(store.delete(&key).await.is_err());
}
