//! The compare-and-swap of the SQL key-value store on PostgreSQL (`PgKv`, `PutMode::Update`,
//! 128 B values, chained versions) beside one raw sqlx statement doing the same `UPDATE` on a
//! connection of its own: `UPDATE larder_kv SET value = $2, version =
//! nextval('larder_kv_version'), expires_at = NULL WHERE key = $1 AND version = $3 RETURNING
//! version`. The store's statement also stores its write id with the row (see
//! `backend-sql/src/write_id.rs`) and checks expiry.
//!
//! * `sql_kv_cas/postgres/larder_cas` and `.../raw_update`: Criterion, one after the other.
//! * `ratio sql_kv cas 128B`: the same pair alternated (20 rounds of 50), median per-op time
//!   of each; `ratio sql_kv default-pool/conn`: the raw statement on a pool with sqlx's
//!   default settings (how the store ran its statements before it kept connections) against
//!   the raw statement on its connection.
//! * `roundtrips sql_kv cas`: client-to-server flights per CAS, counted by a TCP proxy in
//!   front of the server (`FaultProxy::client_flights`), for the store, the raw statement on
//!   its connection, and the raw statement on a default pool.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use criterion::Criterion;
use larder_backend_sql::PgKv;
use larder_benches::harness::{self, alternate, report};
use larder_cache_api::{Bytes, CacheBackend, Key, PutMode, Version};
use larder_tests::db::{pg_schema, postgres_url};
use larder_tests::proxy::FaultProxy;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgSslMode};
use sqlx::{Connection, PgConnection};
use tokio::sync::Mutex;

const RAW_CAS: &str = "UPDATE larder_kv SET value = $2, version = nextval('larder_kv_version'), \
                       expires_at = NULL WHERE key = $1 AND version = $3 RETURNING version";

/// The store and both raw anchors, on one schema, reached at `port`.
struct Fixture {
    kv: PgKv,
    conn: Mutex<PgConnection>,
    pool: PgPool,
    value: Bytes,
    /// The version each client last wrote, per key.
    larder_v: AtomicU64,
    conn_v: AtomicI64,
    pool_v: AtomicI64,
}

fn key(name: &str) -> Key {
    Key::new(name).expect("key")
}

impl Fixture {
    async fn new(schema: &str, port: Option<u16>) -> Self {
        let mut opts: PgConnectOptions = postgres_url().parse().expect("url");
        opts = opts.options([("search_path", schema)]);
        if let Some(port) = port {
            opts = opts
                .host("127.0.0.1")
                .port(port)
                .ssl_mode(PgSslMode::Disable);
        }
        let kv = PgKv::from_pool(
            PgKv::pool_options()
                .max_connections(4)
                .connect_with(opts.clone())
                .await
                .expect("store pool"),
        );
        kv.migrate().await.expect("migrations");
        let conn = PgConnection::connect_with(&opts)
            .await
            .expect("raw connection");
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await
            .expect("raw pool");
        let value = larder_benches::value(128, 1);
        let mut f = Fixture {
            kv,
            conn: Mutex::new(conn),
            pool,
            value,
            larder_v: AtomicU64::new(0),
            conn_v: AtomicI64::new(0),
            pool_v: AtomicI64::new(0),
        };
        let (l, c, p) = (
            f.create("larder").await,
            f.create("conn").await,
            f.create("pool").await,
        );
        f.larder_v = AtomicU64::new(l.into_raw());
        f.conn_v = AtomicI64::new(c.into_raw() as i64);
        f.pool_v = AtomicI64::new(p.into_raw() as i64);
        f
    }

    async fn create(&self, name: &str) -> Version {
        self.kv
            .put(&key(name), self.value.clone(), None, PutMode::Overwrite)
            .await
            .expect("create")
    }

    async fn larder_cas(&self) {
        let v = self
            .kv
            .put(
                &key("larder"),
                self.value.clone(),
                None,
                PutMode::Update(Version::from_raw(self.larder_v.load(Ordering::Relaxed))),
            )
            .await
            .expect("larder CAS");
        self.larder_v.store(v.into_raw(), Ordering::Relaxed);
    }

    async fn raw_conn_cas(&self) {
        let mut conn = self.conn.lock().await;
        let (v,): (i64,) = sqlx::query_as(RAW_CAS)
            .bind("conn")
            .bind(&self.value[..])
            .bind(self.conn_v.load(Ordering::Relaxed))
            .fetch_one(&mut *conn)
            .await
            .expect("raw CAS");
        self.conn_v.store(v, Ordering::Relaxed);
    }

    async fn raw_pool_cas(&self) {
        let (v,): (i64,) = sqlx::query_as(RAW_CAS)
            .bind("pool")
            .bind(&self.value[..])
            .bind(self.pool_v.load(Ordering::Relaxed))
            .fetch_one(&self.pool)
            .await
            .expect("raw CAS on the pool");
        self.pool_v.store(v, Ordering::Relaxed);
    }
}

/// Client-to-server flights per CAS of each client, through a counting proxy.
async fn round_trips(schema: &str) {
    const N: usize = 200;
    let opts: PgConnectOptions = postgres_url().parse().expect("url");
    let proxy = FaultProxy::start(&format!("{}:{}", opts.get_host(), opts.get_port())).await;
    let f = Fixture::new(schema, Some(proxy.port())).await;
    // Warm: statements prepared on the connections.
    for _ in 0..20 {
        f.larder_cas().await;
        f.raw_conn_cas().await;
        f.raw_pool_cas().await;
    }
    let mut per_op = Vec::new();
    for which in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = proxy.client_flights();
        for _ in 0..N {
            match which {
                0 => f.larder_cas().await,
                1 => f.raw_conn_cas().await,
                _ => f.raw_pool_cas().await,
            }
        }
        // The pool's check of a returned connection runs in a task of its own.
        tokio::time::sleep(Duration::from_millis(300)).await;
        per_op.push((proxy.client_flights() - before) as f64 / N as f64);
    }
    eprintln!(
        "roundtrips sql_kv cas             larder {:.2}  raw connection {:.2}  raw default pool {:.2}",
        per_op[0], per_op[1], per_op[2]
    );
}

fn main() {
    let rt = harness::current_thread();
    let schema = rt.block_on(pg_schema());
    let f = rt.block_on(Fixture::new(&schema, None));
    let mut c = Criterion::default().sample_size(30).configure_from_args();
    {
        let mut g = c.benchmark_group("sql_kv_cas/postgres");
        g.bench_function("larder_cas", |b| b.to_async(&rt).iter(|| f.larder_cas()));
        g.bench_function("raw_update", |b| b.to_async(&rt).iter(|| f.raw_conn_cas()));
        g.finish();
    }
    c.final_summary();
    // `--test`/`--list` runs skip the extra measurements.
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    rt.block_on(async {
        let cas = alternate(20, 50, |_| f.larder_cas(), |_| f.raw_conn_cas()).await;
        report("sql_kv", "cas 128B", cas);
        let pool = alternate(20, 50, |_| f.raw_pool_cas(), |_| f.raw_conn_cas()).await;
        report("sql_kv", "default-pool/conn", pool);
        round_trips(&schema).await;
    });
}
