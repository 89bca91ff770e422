//! A second OS process for the session tests: it shares PostgreSQL and a cache with the
//! test process and answers commands on stdin, one per line, one answer line each. Not a
//! user tool.
//!
//! * `read <id> <key>` → the string value, `none` (no key) or `gone` (no session)
//! * `write <id> <key> <value>` → `ok` once saved
//! * `quit`
//!
//! Arguments: `<postgres url> <schema> <cache url>`.

use std::io::{BufRead, Write};
use std::sync::Arc;

use larder_session_persist::{CachedStore, PgStore, SessionManager};
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
                ["quit"] => return,
                _ => format!("bad command {line:?}"),
            };
            println!("{answer}");
            std::io::stdout().flush().expect("stdout");
        }
    });
}
