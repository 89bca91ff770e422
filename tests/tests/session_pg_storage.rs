//! How the PostgreSQL session store uses its server, checked by the server itself: saves
//! through the tower-sessions adapter are heap-only updates (no index entry written), and
//! pooled connections the server ended between two uses (as after a restart) cost no
//! request an error, although a connection used in the last second is handed out unchecked;
//! statements keep their connection between them without starving the pool's other users,
//! and statements cancelled midway leave no broken connection behind.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use larder_session_persist::{
    PgStore, Record, SaveOutcome, SessionData, SessionStore, Timestamp, TowerStore,
};
use larder_tests::db::{pg_schema, postgres_url};
use larder_tests::{eventually, Patience};
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use tower_sessions::session::{Id, Record as TowerRecord};
use tower_sessions::SessionStore as _;

async fn admin() -> PgPool {
    PgPoolOptions::new()
        .max_connections(1)
        .connect(&postgres_url())
        .await
        .unwrap()
}

/// A store on a new schema over a pool of `max` connections made with larder's settings,
/// named `app` for `pg_stat_activity`.
async fn store(schema: &str, app: &str, max: u32) -> PgStore {
    let opts: PgConnectOptions = postgres_url().parse().unwrap();
    let pool = PgStore::pool_options()
        .max_connections(max)
        .connect_with(
            opts.options([("search_path", schema)])
                .application_name(app),
        )
        .await
        .unwrap();
    let store = PgStore::from_pool(pool);
    store.migrate().await.unwrap();
    store
}

/// `n` live sessions, the i-th holding `k = i`, expiring in ten minutes.
async fn sessions(store: &PgStore, n: usize) -> Vec<Record> {
    let mut records = Vec::new();
    for i in 0..n {
        let exp = Timestamp::now().plus(Duration::from_secs(600));
        records.push(store.create(data(&i.to_string()), None, exp).await.unwrap());
    }
    records
}

fn data(v: &str) -> SessionData {
    let mut d = SessionData::new();
    d.insert("k", v).unwrap();
    d
}

/// (updates, heap-only updates) of the schema's session table, once the store's one
/// connection has reported at least `want` updates.
async fn updates(store: &PgStore, admin: &PgPool, schema: &str, want: i64) -> (i64, i64) {
    let patience = Patience::new(Duration::from_secs(10)).every(Duration::from_millis(20));
    eventually(patience, "the statistics arrive", async || {
        sqlx::query("SELECT pg_stat_force_next_flush()")
            .execute(store.pool())
            .await
            .unwrap();
        let (upd, hot): (i64, i64) = sqlx::query_as(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables \
             WHERE schemaname = $1 AND relname = 'larder_sessions'",
        )
        .bind(schema)
        .fetch_one(admin)
        .await
        .unwrap();
        if upd >= want {
            Ok((upd, hot))
        } else {
            Err(format!("{upd} < {want}"))
        }
    })
    .await
}

#[tokio::test]
async fn adapter_saves_rewrite_the_row_in_place() {
    let schema = pg_schema().await;
    let admin = admin().await;
    // One connection, so that one flush reports every statement's statistics.
    let store = Arc::new(store(&schema, "larder hot updates", 1).await);
    let tower = TowerStore::new(store.clone());
    let expiry = || time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    let mut first = TowerRecord {
        id: Id::default(),
        data: HashMap::from([("n".to_owned(), json!(0))]),
        expiry_date: expiry(),
    };
    // An insert: no update counted before the loop.
    tower.create(&mut first).await.unwrap();
    // Requests as tower-sessions makes them: each sets the expiry a little later.
    for i in 1..=50 {
        let mut r = tower.load(&first.id).await.unwrap().unwrap();
        r.data.insert("n".to_owned(), json!(i));
        r.expiry_date = expiry();
        tower.save(&r).await.unwrap();
    }
    let (upd, hot) = updates(&store, &admin, &schema, 50).await;
    assert_eq!(upd, 50);
    // The indexed expiry moves only once a quarter of the session's life has passed, so
    // no index changes; pruning the page can make PostgreSQL write a version elsewhere
    // now and then.
    assert!(hot >= 45, "only {hot} of 50 saves were heap-only updates");
    let back = tower.load(&first.id).await.unwrap().unwrap();
    assert_eq!(back.data["n"], json!(50));
}

/// Ends every connection the store's pool holds; returns how many there were.
async fn terminate(admin: &PgPool, app: &str) -> i64 {
    let (n,): (i64,) = sqlx::query_as(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE application_name = $1",
    )
    .bind(app)
    .fetch_one(admin)
    .await
    .unwrap();
    // pg_terminate_backend only signals: wait until they are gone.
    let patience = Patience::new(Duration::from_secs(10)).every(Duration::from_millis(10));
    eventually(patience, "the connections are gone", async || {
        let (left,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1")
                .bind(app)
                .fetch_one(admin)
                .await
                .unwrap();
        if left == 0 {
            Ok(n)
        } else {
            Err(format!("{left} connections still there"))
        }
    })
    .await
}

#[tokio::test]
async fn connections_ended_by_the_server_cost_no_request_an_error() {
    let schema = pg_schema().await;
    let admin = admin().await;
    let app = format!("larder lost {schema}");
    let store = store(&schema, &app, 4).await;
    let mut records = sessions(&store, 8).await;
    for round in 0..3 {
        // Every connection busy at once, so the pool holds four of them, all just used
        // (sqlx checks a connection when it comes back, in a task of its own: let it).
        let loads = records.iter().map(|r| store.load(&r.id));
        for got in futures_util::future::join_all(loads).await {
            assert!(got.unwrap().is_some());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let ended = terminate(&admin, &app).await;
        assert!(ended >= 2, "round {round}: only {ended} connections to end");
        // Within the second after their last use: handed out unchecked, found dead.
        let ops = records.iter_mut().enumerate().map(|(i, r)| {
            let store = &store;
            async move {
                match i % 4 {
                    0 => {
                        let got = store.load(&r.id).await?;
                        assert!(got.is_some());
                    }
                    1 => {
                        let mut next = r.clone();
                        next.data = data(&format!("round {round}"));
                        match store.save_or_current(&next).await? {
                            SaveOutcome::Saved(saved) => *r = saved,
                            SaveOutcome::Stale(cur) => panic!("stale: {:?}", cur.version),
                        }
                    }
                    2 => {
                        let exp = Timestamp::now().plus(Duration::from_secs(900));
                        let got = store.touch(&r.id, exp).await?;
                        *r = got.expect("live session");
                    }
                    _ => {
                        let created = store
                            .create(
                                data("new"),
                                None,
                                Timestamp::now().plus(Duration::from_secs(60)),
                            )
                            .await?;
                        assert!(store.load(&created.id).await?.is_some());
                    }
                }
                Ok::<(), larder_cache_api::Error>(())
            }
        });
        for (i, done) in futures_util::future::join_all(ops)
            .await
            .into_iter()
            .enumerate()
        {
            if let Err(e) = done {
                panic!("round {round}, operation {i}: {e} ({:?})", e.kind());
            }
        }
    }
    for r in records.iter().skip(1).step_by(4) {
        let back = store.load(&r.id).await.unwrap().unwrap();
        assert_eq!(
            back.data.get::<String>("k").unwrap().as_deref(),
            Some("round 2")
        );
    }
    // A delete, right after its connection was ended, reports the session it deleted.
    store.load(&records[0].id).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    terminate(&admin, &app).await;
    assert!(store.delete(&records[0].id).await.unwrap());
    assert!(store.load(&records[0].id).await.unwrap().is_none());
}

/// A store over a pool of `max` connections that counts the connections sqlx hands out.
async fn counted_store(schema: &str, max: u32) -> (PgStore, Arc<AtomicUsize>) {
    let handed = Arc::new(AtomicUsize::new(0));
    let h = handed.clone();
    let opts: PgConnectOptions = postgres_url().parse().unwrap();
    let pool = PgStore::pool_options()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(10))
        .before_acquire(move |_, _| {
            h.fetch_add(1, Ordering::SeqCst);
            Box::pin(async { Ok(true) })
        })
        .connect_with(opts.options([("search_path", schema)]))
        .await
        .unwrap();
    let store = PgStore::from_pool(pool);
    store.migrate().await.unwrap();
    (store, handed)
}

#[tokio::test]
async fn statements_keep_their_connection_and_share_the_pool() {
    let schema = pg_schema().await;
    let (store, handed) = counted_store(&schema, 4).await;
    let r = store
        .create(
            data("x"),
            None,
            Timestamp::now().plus(Duration::from_secs(600)),
        )
        .await
        .unwrap();
    // One after another: the connection stays with the store, sqlx hands out (and checks
    // on its return) at most a few.
    let before = handed.load(Ordering::SeqCst);
    for _ in 0..100 {
        assert!(store.load(&r.id).await.unwrap().is_some());
    }
    let from_pool = handed.load(Ordering::SeqCst) - before;
    assert!(
        from_pool <= 2,
        "{from_pool} of 100 loads took a connection from sqlx"
    );

    // Concurrent loads keep at most half of the pool; once the store is idle, another user
    // of the pool gets every connection (sqlx would time out after 10 s otherwise).
    let loads = (0..16).map(|_| store.load(&r.id));
    for got in futures_util::future::join_all(loads).await {
        assert!(got.unwrap().is_some());
    }
    let pool = store.pool().clone();
    let all = (0..4).map(|_| pool.acquire());
    let conns: Vec<_> = futures_util::future::join_all(all).await;
    for c in &conns {
        assert!(
            c.is_ok(),
            "another user of the pool got no connection: {c:?}"
        );
    }
    drop(conns);
    // While another user holds every connection, the store waits for one, then goes on.
    let blocker: Vec<_> = futures_util::future::join_all((0..4).map(|_| pool.acquire())).await;
    let waiting = tokio::spawn({
        let store = store.clone();
        let id = r.id.clone();
        async move { store.load(&id).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(blocker);
    assert!(waiting.await.unwrap().unwrap().is_some());

    // Closing the pool does not wait for the store to give its connections back.
    tokio::time::timeout(Duration::from_secs(10), pool.close())
        .await
        .expect("the pool closed while the store kept connections");
    let err = store.load(&r.id).await.unwrap_err();
    assert_eq!(
        err.kind(),
        larder_cache_api::ErrorKind::Unavailable,
        "{err}"
    );
}

#[tokio::test]
async fn cancelled_statements_leave_no_broken_connection() {
    let schema = pg_schema().await;
    let (store, _) = counted_store(&schema, 4).await;
    let records = sessions(&store, 4).await;
    // Statements dropped at every point of their round trip (a client that went away),
    // each followed by statements that must see exactly their own session.
    let mut cancelled = 0;
    for i in 0..300u64 {
        let r = &records[(i % 4) as usize];
        let cut = Duration::from_micros(10 + (i * 37) % 400);
        let mut next = r.clone();
        next.data = data(&format!("c{i}"));
        if tokio::time::timeout(cut, store.save_or_current(&next))
            .await
            .is_err()
        {
            cancelled += 1;
        }
        for r in &records {
            let back = store.load(&r.id).await.unwrap().expect("live");
            assert_eq!(back.id, r.id);
        }
    }
    assert!(cancelled > 0, "no statement was cut short");
    // Every record still saves with the version it has now.
    for r in &records {
        let cur = store.load(&r.id).await.unwrap().unwrap();
        let mut next = cur.clone();
        next.data = data("last");
        assert!(matches!(
            store.save_or_current(&next).await.unwrap(),
            SaveOutcome::Saved(_)
        ));
    }
}
