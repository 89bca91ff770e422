//! The `READONLY` path: a primary demoted behind the client's back, played by a small fake
//! that speaks the protocol in front of a real server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use larder::{Bytes, CacheBackend, ErrorKind, PutMode};
use larder_backend_redis::RedisBackend;
use larder_tests::sentinel::SERVICE;
use larder_tests::server::ServerProcess;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{detail, key, FAST};

/// A node that speaks just enough Redis protocol: as a sentinel it names the node whose port
/// is in `target`; as a "primary" it answers `ROLE` as master and refuses every other
/// command with `READONLY` (a primary demoted behind the client's back), counting them,
/// and then points `target` at `then` (the sentinels naming the new primary).
struct FakeNode {
    port: u16,
    refused: Arc<std::sync::atomic::AtomicUsize>,
}

async fn read_command(
    r: &mut tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>,
) -> Option<Vec<String>> {
    use tokio::io::AsyncBufReadExt;
    let mut line = String::new();
    r.read_line(&mut line).await.ok()?;
    let n: usize = line.trim().strip_prefix('*')?.parse().ok()?;
    let mut args = Vec::with_capacity(n);
    for _ in 0..n {
        line.clear();
        r.read_line(&mut line).await.ok()?;
        let len: usize = line.trim().strip_prefix('$')?.parse().ok()?;
        let mut buf = vec![0u8; len + 2];
        r.read_exact(&mut buf).await.ok()?;
        buf.truncate(len);
        args.push(String::from_utf8_lossy(&buf).into_owned());
    }
    Some(args)
}

async fn fake_node(
    sentinel: bool,
    target: Arc<std::sync::atomic::AtomicU16>,
    then: Option<u16>,
) -> FakeNode {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = refused.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = l.accept().await {
            let (target, counter) = (target.clone(), counter.clone());
            tokio::spawn(async move {
                let (r, mut w) = sock.into_split();
                let mut r = tokio::io::BufReader::new(r);
                while let Some(args) = read_command(&mut r).await {
                    let verb = args.first().map(|a| a.to_ascii_uppercase());
                    let reply = match verb.as_deref() {
                        Some("CLIENT") | Some("SELECT") => "+OK\r\n".to_owned(),
                        Some("PING") => "+PONG\r\n".to_owned(),
                        // The backend reads INFO at connect to judge durability: an empty
                        // reply (nothing known) keeps it off the write path counted here.
                        Some("INFO") if !sentinel => "$0\r\n\r\n".to_owned(),
                        Some("SENTINEL") if sentinel => {
                            let p = target.load(std::sync::atomic::Ordering::SeqCst).to_string();
                            format!("*2\r\n$9\r\n127.0.0.1\r\n${}\r\n{p}\r\n", p.len())
                        }
                        Some("ROLE") if !sentinel => "*3\r\n$6\r\nmaster\r\n:0\r\n*0\r\n".into(),
                        _ if sentinel => "-ERR unknown command\r\n".into(),
                        _ => {
                            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            if let Some(t) = then {
                                target.store(t, std::sync::atomic::Ordering::SeqCst);
                            }
                            "-READONLY You can't write against a read only replica.\r\n".into()
                        }
                    };
                    if w.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    FakeNode { port, refused }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_refused_with_readonly_goes_once_more_to_the_new_primary() {
    let real = ServerProcess::redis();
    let target = Arc::new(std::sync::atomic::AtomicU16::new(0));
    // The stale primary refuses writes and, as it does, the sentinel starts naming `real`.
    let stale = fake_node(false, target.clone(), Some(real.port())).await;
    target.store(stale.port, std::sync::atomic::Ordering::SeqCst);
    let sentinel = fake_node(true, target.clone(), None).await;
    // No background checks: only the READONLY reply may move the backend.
    let url = format!(
        "redis+sentinel://127.0.0.1:{}/{SERVICE}?{FAST}&sentinel_check_ms=600000",
        sentinel.port
    );
    let b = RedisBackend::connect(&url).await.unwrap();
    assert_eq!(detail(&b, "primary"), format!("127.0.0.1:{}", stale.port));
    let k = key("readonly");
    let v = b
        .put(&k, Bytes::from_static(b"moved"), None, PutMode::Overwrite)
        .await
        .unwrap();
    assert_eq!(stale.refused.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(detail(&b, "primary"), real.addr());
    let e = b.get(&k).await.unwrap().unwrap();
    assert_eq!((&e.value[..], e.version), (&b"moved"[..], v));
    // Straight from the real server, not through the backend.
    let direct = RedisBackend::connect(&format!("redis://{}", real.addr()))
        .await
        .unwrap();
    assert_eq!(direct.get(&k).await.unwrap().unwrap().version, v);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_that_stays_read_only_is_an_error_after_one_retry() {
    let target = Arc::new(std::sync::atomic::AtomicU16::new(0));
    let stale = fake_node(false, target.clone(), None).await;
    target.store(stale.port, std::sync::atomic::Ordering::SeqCst);
    let sentinel = fake_node(true, target.clone(), None).await;
    let url = format!(
        "redis+sentinel://127.0.0.1:{}/{SERVICE}?{FAST}&sentinel_check_ms=600000",
        sentinel.port
    );
    let b = RedisBackend::connect(&url).await.unwrap();
    let t = Instant::now();
    let e = b
        .put(
            &key("ro"),
            Bytes::from_static(b"x"),
            None,
            PutMode::Overwrite,
        )
        .await
        .unwrap_err();
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.is_retryable());
    assert!(e.to_string().contains("read-only"), "{e}");
    assert_eq!(
        stale.refused.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "sent once, and once more after asking the sentinel: no loop"
    );
}
