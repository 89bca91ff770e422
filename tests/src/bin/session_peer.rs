//! A second OS process for the session tests: it shares PostgreSQL and a cache with the
//! test process and answers commands on stdin, one per line, one answer line each. Not a
//! user tool.
//!
//! * `read <id> <key>` → the string value, `none` (no key) or `gone` (no session)
//! * `write <id> <key> <value>` → `ok` once saved
//! * `delete-and-hang <id>` → `committed` once the SQL delete has committed, then the
//!   process blocks before its cache write (the test kills it there)
//! * `quit`
//!
//! Arguments: `<postgres url> <schema> <cache url>`.

use std::io::{BufRead, Write};
use std::sync::Arc;

use larder::{async_trait, Bytes, CacheBackend, Capabilities, DeleteMode, DynBackend, Entry, Key};
use larder::{PutMode, Ttl, Version};
use larder_session_persist::{CachedStore, PgStore, SessionId, SessionManager, SessionStore};

/// A cache whose first write says the database work before it is done, then blocks the
/// whole (single-threaded) process, so no timeout can fire before the kill.
#[derive(Debug)]
struct HangOnPut(DynBackend);

#[async_trait]
impl CacheBackend for HangOnPut {
    fn capabilities(&self) -> &Capabilities {
        self.0.capabilities()
    }
    async fn get(&self, key: &Key) -> larder::Result<Option<Entry>> {
        self.0.get(key).await
    }
    async fn put(
        &self,
        _key: &Key,
        _value: Bytes,
        _ttl: Option<Ttl>,
        _mode: PutMode,
    ) -> larder::Result<Version> {
        println!("committed");
        std::io::stdout().flush().expect("stdout");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
    async fn delete(&self, key: &Key, mode: DeleteMode) -> larder::Result<bool> {
        self.0.delete(key, mode).await
    }
    async fn touch(&self, key: &Key, ttl: Option<Ttl>) -> larder::Result<bool> {
        self.0.touch(key, ttl).await
    }
}
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [pg, schema, cache_url] = &args[..] else {
        eprintln!("usage: session_peer <postgres url> <schema> <cache url>");
        std::process::exit(2);
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let opts: PgConnectOptions = pg.parse().expect("postgres url");
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .connect_with(opts.options([("search_path", schema.as_str())]))
            .await
            .expect("connect postgres");
        let cache = larder::connect(cache_url).await.expect("connect cache");
        let hanging = CachedStore::new(
            PgStore::from_pool(pool.clone()),
            Arc::new(HangOnPut(cache.clone())),
        );
        let m = SessionManager::new(Arc::new(CachedStore::new(PgStore::from_pool(pool), cache)));
        println!("ready");
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            let line = line.expect("stdin");
            let words: Vec<&str> = line.split_whitespace().collect();
            let answer = match words[..] {
                ["read", id, key] => match m.load(id).await.expect("load") {
                    Some(s) => s
                        .get::<String>(key)
                        .expect("decode")
                        .unwrap_or_else(|| "none".into()),
                    None => "gone".into(),
                },
                ["write", id, key, value] => match m.load(id).await.expect("load") {
                    Some(mut s) => {
                        s.insert(key, value).expect("encode");
                        s.save().await.expect("save");
                        "ok".into()
                    }
                    None => "gone".into(),
                },
                ["delete-and-hang", id] => {
                    let id = SessionId::parse(id).expect("id");
                    hanging.delete(&id).await.expect("delete");
                    "not reached".into()
                }
                ["quit"] => return,
                _ => format!("bad command {line:?}"),
            };
            println!("{answer}");
            std::io::stdout().flush().expect("stdout");
        }
    });
}
