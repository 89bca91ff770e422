//! Bad input, told apart clearly and in time: URLs, sentinels that stall or speak garbage,
//! a wrong service name, nodes that are no sentinels, sentinels that are down.

use std::time::{Duration, Instant};

use larder::{Bytes, CacheBackend, ErrorKind, PutMode};
use larder_backend_redis::{RedisBackend, RedisConfig, Topology};
use larder_tests::sentinel::SERVICE;
use larder_tests::server::ServerProcess;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{key, set, FAST};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_urls_are_config_errors_without_passwords() {
    let s = set().sentinels();
    for url in [
        format!("redis+sentinel://{s}"),
        format!("redis+sentinel://{s}/"),
        format!("redis+sentinel://{s}?{FAST}"),
        format!("redis+sentinel:///{SERVICE}"),
        format!("redis+sentinel://{s}/{SERVICE}/abc"),
        format!("redis+sentinel://{s}/{SERVICE}/-1"),
        format!("redis+sentinel://{s}/{SERVICE}/1/2"),
        format!("redis+sentinel://{s}/{SERVICE}?sentinel_pass=x"),
        format!("redis+sentinel://127.0.0.1:notaport/{SERVICE}"),
        "redis+sentinel:/nohosts".to_string(),
        "redis+sentinel://127.0.0.1:99999/svc".to_string(),
    ] {
        for e in [
            RedisBackend::connect(&url).await.unwrap_err(),
            larder::connect(&url).await.unwrap_err(),
        ] {
            assert_eq!(e.kind(), ErrorKind::Config, "{url}: {e}");
            assert!(!e.is_retryable());
        }
    }
    let e = larder::connect(&format!("redis+sentinel://{s}"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("service name"), "{e}");
    // Neither password shows up in errors or in Debug output.
    let url = format!(
        "redis+sentinel://app:primary-pw-77@127.0.0.1:notaport/{SERVICE}?sentinel_password=sent-pw-88"
    );
    let e = larder::connect(&url).await.unwrap_err();
    let c = RedisConfig::from_url(&format!(
        "redis+sentinel://app:primary-pw-77@{s}/{SERVICE}?sentinel_password=sent-pw-88"
    ))
    .unwrap();
    assert_eq!(c.topology, Topology::Sentinel);
    for text in [
        e.to_string(),
        format!("{e:?}"),
        format!("{c:?}"),
        larder::url::redact(&url),
    ] {
        assert!(!text.contains("primary-pw-77"), "{text}");
        assert!(!text.contains("sent-pw-88"), "{text}");
    }
}

/// A TCP listener that answers every connection with bytes that are not Redis protocol,
/// or (`stall`) with nothing at all, keeping the connection open.
async fn fake_sentinel(stall: bool) -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                loop {
                    if !stall
                        && sock
                            .write_all(
                                b"HTTP/1.1 400 Bad Request\r\n\r\n\x00\xff\xfe garbage ?!\r\n",
                            )
                            .await
                            .is_err()
                    {
                        return;
                    }
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_stalled_sentinels_are_clear_errors_within_the_timeout() {
    let garbage = fake_sentinel(false).await;
    let stalled = fake_sentinel(true).await;
    // Alone: a typed error naming the sentinel, after no more than the configured
    // timeouts (200 + 200 ms per sentinel step).
    for (port, kind, says) in [
        (garbage, ErrorKind::Config, "not Redis protocol"),
        (stalled, ErrorKind::Timeout, "no reply"),
    ] {
        let t = Instant::now();
        let e = RedisBackend::connect(&format!(
            "redis+sentinel://:pw-secret-5@127.0.0.1:{port}/{SERVICE}?{FAST}"
        ))
        .await
        .unwrap_err();
        let took = t.elapsed();
        assert!(took < Duration::from_millis(1500), "took {took:?}: {e}");
        assert_eq!(e.kind(), kind, "{e}");
        let text = e.to_string();
        assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
        assert!(text.contains(says), "{text}");
        assert!(!text.contains("pw-secret-5"), "{text}");
    }
    // In front of the real sentinels: passed over, and the primary is found.
    let t = Instant::now();
    let b = RedisBackend::connect(&format!(
        "redis+sentinel://127.0.0.1:{garbage},127.0.0.1:{stalled},{}/{SERVICE}?{FAST}",
        set().sentinels()
    ))
    .await
    .unwrap();
    assert!(
        t.elapsed() < Duration::from_millis(2000),
        "{:?}",
        t.elapsed()
    );
    let k = key("past-garbage");
    b.put(&k, Bytes::from_static(b"ok"), None, PutMode::Overwrite)
        .await
        .unwrap();
    assert_eq!(&b.get(&k).await.unwrap().unwrap().value[..], b"ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_service_non_sentinels_and_unreachable_sentinels() {
    // Sentinels that do not monitor the service: a configuration error naming it.
    let e = RedisBackend::connect(&format!(
        "redis+sentinel://{}/no-such-service?{FAST}",
        set().sentinels()
    ))
    .await
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    assert!(e.to_string().contains("no-such-service"), "{e}");
    // A plain redis-server given as a sentinel.
    let plain = ServerProcess::redis();
    let e = RedisBackend::connect(&format!(
        "redis+sentinel://{}/{SERVICE}?{FAST}",
        plain.addr()
    ))
    .await
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    assert!(e.to_string().contains("Sentinel"), "{e}");
    // Nobody listening: unavailable, retryable, fast.
    let (p1, p2) = (larder_tests::free_port(), larder_tests::free_port());
    let t = Instant::now();
    let e = RedisBackend::connect(&format!(
        "redis+sentinel://127.0.0.1:{p1},127.0.0.1:{p2}/{SERVICE}?{FAST}"
    ))
    .await
    .unwrap_err();
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.is_retryable());
    assert!(
        e.to_string().contains(&p2.to_string()),
        "every sentinel is named: {e}"
    );
}
