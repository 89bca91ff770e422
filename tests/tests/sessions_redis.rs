//! Sessions on PostgreSQL and SQLite with a real Redis as the write-through cache: an outage
//! of the cache loses no request and no write; and two OS processes sharing PostgreSQL and
//! Redis each see the other's writes at once.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use larder_session_persist::{CachedStore, Outbox, SessionManager};
use larder_tests::server::ServerProcess;

async fn redis_cache(server: &ServerProcess) -> larder::DynBackend {
    // Short deadlines: a dead cache must cost a request little.
    larder::connect(&format!(
        "redis://{}?response_timeout_ms=200&connect_timeout_ms=200",
        server.addr()
    ))
    .await
    .unwrap()
}

async fn outage_run<S: Outbox + 'static>(store: S) {
    let mut redis = ServerProcess::redis();
    let cached = Arc::new(CachedStore::new(store, redis_cache(&redis).await));
    let stats = cached.stats();
    let m = SessionManager::new(cached.clone());
    let mut s = m.create().await.unwrap();
    s.insert("n", &0u32).unwrap();
    s.save().await.unwrap();
    let id = s.id().as_str().to_string();
    let mut failures = 0;
    let mut expected = 0u32;
    for step in 0..90 {
        if step == 30 {
            redis.stop();
        }
        if step == 60 {
            redis.start();
        }
        // A load and a save per step; every one must succeed.
        match m.load(&id).await {
            Ok(Some(mut s)) => {
                assert_eq!(
                    s.get::<u32>("n").unwrap(),
                    Some(expected),
                    "step {step}: no lost write"
                );
                s.insert("n", &(expected + 1)).unwrap();
                match s.save().await {
                    Ok(()) => expected += 1,
                    Err(e) => {
                        failures += 1;
                        eprintln!("step {step}: save failed: {e}");
                    }
                }
            }
            other => {
                failures += 1;
                eprintln!("step {step}: load failed: {other:?}");
            }
        }
    }
    assert_eq!(failures, 0, "zero failed requests");
    assert_eq!(expected, 90);
    let after_outage = stats.snapshot();
    assert!(after_outage.cache_errors > 0, "the outage really happened");
    // Redis is back (and empty): the next loads refill it, then hit.
    let mut resumed = false;
    for _ in 0..50 {
        m.load(&id).await.unwrap().unwrap();
        if stats.snapshot().hits > after_outage.hits {
            resumed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(resumed, "cache hits resume after the restart");
    let s = m.load(&id).await.unwrap().unwrap();
    assert_eq!(s.get::<u32>("n").unwrap(), Some(90));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_with_redis_survives_a_cache_outage() {
    let (store, _schema) = larder_tests::db::pg_store().await;
    outage_run(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_with_redis_survives_a_cache_outage() {
    let (store, _dir) = larder_tests::db::sqlite_store().await;
    outage_run(store).await;
}

struct Peer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Peer {
    fn start(schema: &str, cache_url: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_session_peer"))
            .args([&larder_tests::db::postgres_url(), schema, cache_url])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut ready = String::new();
        stdout.read_line(&mut ready).unwrap();
        assert_eq!(ready.trim(), "ready");
        Peer {
            child,
            stdin,
            stdout,
        }
    }

    fn ask(&mut self, cmd: &str) -> String {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.trim().to_string()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_see_each_others_writes_at_once() {
    let redis = ServerProcess::redis();
    let (store, schema) = larder_tests::db::pg_store().await;
    let cache_url = format!("redis://{}", redis.addr());
    let m = SessionManager::new(Arc::new(CachedStore::new(store, redis_cache(&redis).await)));
    let s = m.create().await.unwrap();
    let id = s.id().as_str().to_string();
    let mut a = Peer::start(&schema, &cache_url);
    let mut b = Peer::start(&schema, &cache_url);
    for round in 0..20 {
        let v = format!("a{round}");
        assert_eq!(a.ask(&format!("write {id} from_a {v}")), "ok");
        assert_eq!(
            b.ask(&format!("read {id} from_a")),
            v,
            "B sees A's write at once"
        );
        let w = format!("b{round}");
        assert_eq!(b.ask(&format!("write {id} from_b {w}")), "ok");
        assert_eq!(
            a.ask(&format!("read {id} from_b")),
            w,
            "A sees B's write at once"
        );
        assert_eq!(
            a.ask(&format!("read {id} from_a")),
            v,
            "and its own write is kept"
        );
    }
    // This process sees both, and a logout here is seen there.
    let s = m.load(&id).await.unwrap().unwrap();
    assert_eq!(s.get::<String>("from_a").unwrap().as_deref(), Some("a19"));
    assert_eq!(s.get::<String>("from_b").unwrap().as_deref(), Some("b19"));
    assert!(s.delete().await.unwrap());
    assert_eq!(a.ask(&format!("read {id} from_a")), "gone");
    assert_eq!(b.ask(&format!("write {id} x y")), "gone");
}
