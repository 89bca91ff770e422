//! sled backend: the whole conformance suite (inline and on the blocking pool), then what
//! only an embedded, persistent store has: reopening, the expiry sweeper and its index,
//! directory locking (in this process and against another one), crash durability and
//! records damaged behind the backend's back.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use larder_backend_sled::{Dispatch, Flush, SledBackend, SledConfig, ENTRIES_TREE, EXPIRY_TREE};
use larder_cache_api::{
    Bytes, CacheBackend, DeleteMode, DynBackend, ErrorKind, Key, PutMode, Result, Ttl, Version,
};
use larder_tests::eventually;
use larder_tests::owning::Owning;
use tokio::io::{AsyncBufReadExt, BufReader};

async fn in_temp_dir(configure: impl FnOnce(SledConfig) -> SledConfig) -> DynBackend {
    let dir = tempfile::tempdir().unwrap();
    let backend = SledBackend::new(configure(SledConfig::new(dir.path())))
        .await
        .unwrap();
    Owning::wrap(Arc::new(backend), dir)
}

/// Defaults: inline calls, background flush, sweeper on.
async fn default_backend() -> DynBackend {
    in_temp_dir(|c| c.with_sweep_interval(Some(Duration::from_millis(200)))).await
}

/// Every call on the blocking pool. (`Flush::EveryWrite` is covered by the crash test
/// below rather than by the whole suite: its fsync happens after the record's expiry is
/// stamped, and on a loaded machine it can eat the 30 ms of slack that
/// `ttl_rounds_up_never_early` leaves between `put` returning and the next `get`.)
async fn blocking_backend() -> DynBackend {
    in_temp_dir(|c| c.with_dispatch(Dispatch::SpawnBlocking)).await
}

mod sled {
    larder_coord::conformance_suite!(super::default_backend);
}

mod sled_spawn_blocking {
    larder_coord::conformance_suite!(super::blocking_backend);
}

fn k(s: &str) -> Key {
    Key::new(s).unwrap()
}

fn ms(n: u64) -> Ttl {
    Ttl::from_millis(n).unwrap()
}

async fn open(dir: &Path) -> SledBackend {
    SledBackend::new(SledConfig::new(dir).with_sweep_interval(None))
        .await
        .unwrap()
}

/// sled itself, opened right after a backend on the same directory was dropped: sled lets
/// go of the directory's lock from a thread that outlives `Db::drop`
/// (spacejam/sled#1234), so a bare reopen fails now and then.
fn raw_open(dir: &Path) -> larder_backend_sled::sled::Db {
    let started = Instant::now();
    loop {
        match larder_backend_sled::sled::open(dir) {
            Ok(db) => return db,
            Err(e) if started.elapsed() < Duration::from_secs(10) => {
                assert!(e.to_string().contains("could not acquire lock"), "{e}");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("{e}"),
        }
    }
}

fn tree_len(b: &SledBackend, name: &str) -> usize {
    b.db().open_tree(name).unwrap().len()
}

async fn put(b: &SledBackend, key: &str, value: &'static [u8], ttl: Option<Ttl>) -> Version {
    b.put(&k(key), Bytes::from_static(value), ttl, PutMode::Overwrite)
        .await
        .unwrap()
}

#[tokio::test]
async fn reopen_keeps_values_ttls_and_versions() {
    let dir = tempfile::tempdir().unwrap();
    let mut seen = HashSet::new();
    let b = open(dir.path()).await;
    let v_plain = put(&b, "plain", b"kept", None).await;
    let v_long = put(&b, "long", b"long", Some(Ttl::from_secs(3600).unwrap())).await;
    put(&b, "short", b"gone", Some(ms(300))).await;
    for i in 0..100 {
        seen.insert(put(&b, &format!("churn-{}", i % 5), b"x", None).await);
    }
    seen.extend([v_plain, v_long]);
    drop(b);

    // The short TTL passes while the database is closed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let b = open(dir.path()).await;
    let plain = b.get(&k("plain")).await.unwrap().expect("survives reopen");
    assert_eq!((&plain.value[..], plain.version), (&b"kept"[..], v_plain));
    let long = b.get(&k("long")).await.unwrap().expect("long TTL survives");
    assert_eq!(long.version, v_long);
    assert!(
        b.get(&k("short")).await.unwrap().is_none(),
        "a TTL that passed while closed"
    );
    assert!(!b.touch(&k("short"), None).await.unwrap());
    // Versions from before the reopen are never handed out again.
    for i in 0..200 {
        let v = put(&b, &format!("churn-{}", i % 5), b"y", None).await;
        assert!(seen.insert(v), "version {v:?} came back after reopen");
    }
    // CAS with a pre-reopen version still works where it is current.
    b.put(
        &k("plain"),
        Bytes::from_static(b"next"),
        None,
        PutMode::Update(v_plain),
    )
    .await
    .unwrap();
    // Only the long TTL is left in the expiry index once due entries are swept.
    b.sweep_expired().await.unwrap();
    assert_eq!(tree_len(&b, EXPIRY_TREE), 1);
    drop(b);

    // A second cycle, with no writes in between, still hands out fresh versions.
    let b = open(dir.path()).await;
    for i in 0..50 {
        let v = put(&b, "plain", b"z", None).await;
        assert!(
            seen.insert(v),
            "version {v:?} came back after the 2nd reopen ({i})"
        );
    }
}

#[tokio::test]
async fn background_sweeper_empties_the_expiry_index() {
    let dir = tempfile::tempdir().unwrap();
    let b = SledBackend::new(
        SledConfig::new(dir.path())
            .with_sweep_interval(Some(Duration::from_millis(50)))
            .with_sweep_batch(64),
    )
    .await
    .unwrap();
    let items: Vec<(Key, Bytes)> = (0..2000)
        .map(|i| (k(&format!("exp-{i}")), Bytes::from_static(b"v")))
        .collect();
    b.put_many(&items, Some(Ttl::from_secs(2).unwrap()))
        .await
        .unwrap();
    for i in 0..10 {
        put(&b, &format!("keep-{i}"), b"v", None).await;
    }
    assert_eq!(tree_len(&b, ENTRIES_TREE), 2010);
    assert_eq!(tree_len(&b, EXPIRY_TREE), 2000);
    // Nobody reads the expired keys: only the sweeper can remove them.
    eventually(
        Duration::from_secs(20),
        "the sweeper removes the expired keys",
        async || match tree_len(&b, ENTRIES_TREE) {
            left if left > 10 => Err(format!("the sweeper left {left} entries")),
            _ => Ok(()),
        },
    )
    .await;
    assert_eq!(tree_len(&b, EXPIRY_TREE), 0, "expiry index is empty");
    assert!(b.get(&k("keep-3")).await.unwrap().is_some());
}

#[tokio::test]
async fn manual_sweep_removes_only_due_entries() {
    let dir = tempfile::tempdir().unwrap();
    let b = SledBackend::new(
        SledConfig::new(dir.path())
            .with_sweep_interval(None)
            .with_sweep_batch(7),
    )
    .await
    .unwrap();
    // TTLs of 2 s: long enough that a loaded machine still touches the entries before they
    // are due, short enough to wait for.
    for i in 0..500 {
        put(&b, &format!("due-{i}"), b"v", Some(ms(2000))).await;
    }
    for i in 0..20 {
        put(
            &b,
            &format!("later-{i}"),
            b"v",
            Some(Ttl::from_secs(60).unwrap()),
        )
        .await;
    }
    // Overwrites and touches move entries in the index; none may be left behind.
    for i in 0..20 {
        put(&b, &format!("due-{i}"), b"w", Some(ms(2000))).await;
        assert!(b
            .touch(&k(&format!("due-{}", 20 + i)), Some(ms(2100)))
            .await
            .unwrap());
    }
    assert_eq!(tree_len(&b, EXPIRY_TREE), 520);
    tokio::time::sleep(Duration::from_millis(2300)).await;
    assert_eq!(b.sweep_expired().await.unwrap(), 500);
    assert_eq!(tree_len(&b, ENTRIES_TREE), 20);
    assert_eq!(tree_len(&b, EXPIRY_TREE), 20);
    assert_eq!(b.sweep_expired().await.unwrap(), 0);
}

/// Many tasks write, touch and delete the same few keys with short TTLs while the sweeper
/// runs; once everything has expired, both trees must be empty: no record without its
/// index entry, no index entry without its record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trees_stay_consistent_under_concurrent_writes() {
    let dir = tempfile::tempdir().unwrap();
    let b = Arc::new(
        SledBackend::new(
            SledConfig::new(dir.path())
                .with_sweep_interval(Some(Duration::from_millis(5)))
                .with_sweep_batch(8),
        )
        .await
        .unwrap(),
    );
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let b = b.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..300u64 {
                let key = k(&format!("hot-{}", (i * 7 + t) % 6));
                let ttl = Some(ms(1 + (i + t) % 40));
                match (i + t) % 5 {
                    0 => {
                        b.touch(&key, ttl).await.unwrap();
                    }
                    1 => {
                        b.delete(&key, DeleteMode::Any).await.unwrap();
                    }
                    2 => match b.get(&key).await.unwrap() {
                        Some(e) => {
                            let _ = b
                                .put(
                                    &key,
                                    Bytes::from_static(b"u"),
                                    ttl,
                                    PutMode::Update(e.version),
                                )
                                .await;
                        }
                        None => {
                            let _ = b
                                .put(&key, Bytes::from_static(b"c"), ttl, PutMode::Create)
                                .await;
                        }
                    },
                    _ => {
                        b.put(&key, Bytes::from_static(b"o"), ttl, PutMode::Overwrite)
                            .await
                            .unwrap();
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    b.sweep_expired().await.unwrap();
    assert_eq!(
        tree_len(&b, ENTRIES_TREE),
        0,
        "every record expired and was swept"
    );
    assert_eq!(tree_len(&b, EXPIRY_TREE), 0, "no index entry left behind");
}

#[tokio::test]
async fn second_open_in_this_process_is_unavailable_and_names_the_dir() {
    let dir = tempfile::tempdir().unwrap();
    let first = open(dir.path()).await;
    put(&first, "a", b"1", None).await;
    let started = Instant::now();
    let err = SledBackend::new(SledConfig::new(dir.path()))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "no waiting for the lock"
    );
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.is_retryable());
    let shown = dir.path().display().to_string();
    assert!(err.to_string().contains(&shown), "{err}");
    assert!(
        std::error::Error::source(&err).is_some(),
        "sled's error kept"
    );
    // The first handle is unaffected; once it is dropped, the directory opens again.
    assert!(first.get(&k("a")).await.unwrap().is_some());
    drop(first);
    let again = open(dir.path()).await;
    assert!(again.get(&k("a")).await.unwrap().is_some());
}

/// Closing a backend and opening its directory again at once, as a restart inside one
/// process does, works every time: sled releases the directory's lock from a thread that
/// outlives the close, and opening waits for it.
#[tokio::test]
async fn close_and_reopen_at_once_works_every_time() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..40u32 {
        let b = open(dir.path()).await;
        if i > 0 {
            let e = b.get(&k("n")).await.unwrap().expect("last round's write");
            assert_eq!(e.value, Bytes::from((i - 1).to_string()));
        }
        b.put(
            &k("n"),
            Bytes::from(i.to_string()),
            None,
            PutMode::Overwrite,
        )
        .await
        .unwrap();
        b.flush().await.unwrap();
    }
}

fn child(args: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_sled_child"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("cannot start the sled_child helper")
}

async fn expect_line(c: &mut tokio::process::Child, want: &str) {
    let out = c.stdout.as_mut().unwrap();
    let mut line = String::new();
    tokio::time::timeout(
        Duration::from_secs(30),
        BufReader::new(out).read_line(&mut line),
    )
    .await
    .unwrap_or_else(|_| panic!("sled_child did not say {want:?} within 30 s"))
    .unwrap();
    assert_eq!(line.trim(), want, "sled_child output");
}

#[tokio::test]
async fn second_open_against_another_process_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    let mut holder = child(&["hold", path]);
    expect_line(&mut holder, "ready").await;

    let err = SledBackend::new(SledConfig::new(dir.path()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.to_string().contains(path), "{err}");
    let err = SledBackend::connect(&format!("sled://{path}"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");

    // The holder closes its stdin-controlled database and exits; the directory is free.
    drop(holder.stdin.take());
    let status = tokio::time::timeout(Duration::from_secs(30), holder.wait())
        .await
        .expect("holder exits")
        .unwrap();
    assert!(status.success());
    let b = open(dir.path()).await;
    let e = b
        .get(&k("child:hold"))
        .await
        .unwrap()
        .expect("child's write");
    assert_eq!(&e.value[..], b"held");
}

/// With `Flush::EveryWrite`, a write is on disk when it returns: a process killed right
/// after loses none of them.
#[tokio::test]
async fn every_write_flush_survives_a_killed_process() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    let mut writer = child(&["write", path, "200"]);
    expect_line(&mut writer, "done").await;
    writer.kill().await.unwrap();
    let b = open(dir.path()).await;
    for i in 0..200 {
        let e = b
            .get(&k(&format!("child:{i}")))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("write {i} lost by the crash"));
        assert_eq!(e.value, Bytes::from(i.to_string()));
    }
}

#[tokio::test]
async fn foreign_records_give_decode_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path()).await;
    let raw = b.db().open_tree(ENTRIES_TREE).unwrap();
    let short = b"garbage".to_vec();
    let zeros = vec![0u8; 64];
    let mut future_format = b"lsd\x09".to_vec();
    future_format.extend_from_slice(&[0u8; 40]);
    for (name, bytes) in [
        ("short", &short),
        ("zeros", &zeros),
        ("future", &future_format),
    ] {
        raw.insert(name, bytes.as_slice()).unwrap();
        let key = k(name);
        let decode = |r: Result<()>| {
            let e = r.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Decode, "{name}: {e}");
            assert!(e.to_string().contains("not a larder record"), "{e}");
        };
        decode(b.get(&key).await.map(drop));
        decode(b.get_many(std::slice::from_ref(&key)).await.map(drop));
        decode(
            b.put(&key, Bytes::from_static(b"x"), None, PutMode::Create)
                .await
                .map(drop),
        );
        decode(
            b.put(
                &key,
                Bytes::from_static(b"x"),
                None,
                PutMode::Update(Version::from_raw(1)),
            )
            .await
            .map(drop),
        );
        decode(b.touch(&key, None).await.map(drop));
        decode(
            b.delete(&key, DeleteMode::IfVersion(Version::from_raw(1)))
                .await
                .map(drop),
        );
        assert_eq!(
            raw.get(name).unwrap().as_deref(),
            Some(bytes.as_slice()),
            "untouched"
        );
    }
    // Overwrite and delete still replace or remove what is there.
    put(&b, "short", b"fixed", Some(Ttl::from_secs(60).unwrap())).await;
    assert_eq!(
        &b.get(&k("short")).await.unwrap().unwrap().value[..],
        b"fixed"
    );
    assert!(b.delete(&k("zeros"), DeleteMode::Any).await.unwrap());
    assert!(b.get(&k("zeros")).await.unwrap().is_none());
    drop(raw);
    drop(b);

    // The same through a raw sled database opened while the backend is closed, with a
    // damaged expiry index on top: reopening and sweeping do not panic either.
    {
        let db = raw_open(dir.path());
        let entries = db.open_tree(ENTRIES_TREE).unwrap();
        entries.insert("offline", &b"\xff\xfe"[..]).unwrap();
        let index = db.open_tree(EXPIRY_TREE).unwrap();
        // Too short to be an index key, and sorted among the due ones.
        index.insert(&b"\x00"[..], &b""[..]).unwrap();
        let mut dangling = 1u64.to_be_bytes().to_vec();
        dangling.extend_from_slice(&5u64.to_be_bytes());
        dangling.extend_from_slice(b"offline");
        index.insert(dangling, &b""[..]).unwrap();
        db.flush().unwrap();
    }
    let b = open(dir.path()).await;
    let e = b.get(&k("offline")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Decode, "{e}");
    assert_eq!(
        b.sweep_expired().await.unwrap(),
        0,
        "foreign records are not swept"
    );
    let left: Vec<_> = b
        .db()
        .open_tree(EXPIRY_TREE)
        .unwrap()
        .iter()
        .keys()
        .collect();
    assert_eq!(
        tree_len(&b, EXPIRY_TREE),
        1,
        "only the live 60 s entry stays indexed: {left:?}"
    );
    assert_eq!(
        b.get(&k("offline")).await.unwrap_err().kind(),
        ErrorKind::Decode
    );
}

#[tokio::test]
async fn open_failures_are_typed() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let err = SledBackend::new(SledConfig::new(file.path()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Backend, "{err}");
    assert!(
        err.to_string().contains(&file.path().display().to_string()),
        "{err}"
    );
    for url in [
        "sled://relative/dir",
        "sled:///d?max_value_size=1",
        "sled:///d?nope=1",
    ] {
        let err = SledBackend::connect(url).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{url}: {err}");
    }
}

#[tokio::test]
async fn capabilities_and_value_limit_from_url() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sled://{}?max_value_size=4096&flush_every_ms=never&sweep_interval_ms=never",
        dir.path().display()
    );
    let b = SledBackend::connect(&url).await.unwrap();
    let c = b.capabilities();
    assert_eq!(c.name, "sled");
    assert!(c.cas && c.linearizable_cas && c.touch && c.persistent);
    assert!(!c.may_evict && !c.shared);
    assert_eq!(c.ttl_precision, Duration::from_millis(1));
    assert_eq!(c.max_value_size, 4096);
    let err = b
        .put(
            &k("big"),
            Bytes::from(vec![0u8; 4097]),
            None,
            PutMode::Overwrite,
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ValueTooLarge);
    assert_eq!(tree_len(&b, ENTRIES_TREE), 0, "nothing stored");
    b.flush().await.unwrap();
}

/// `Flush::EveryWrite` leaves nothing to flush after any kind of write; `Flush::Never`
/// leaves the write in sled's buffers until asked.
#[tokio::test]
async fn flush_policies() {
    let dir = tempfile::tempdir().unwrap();
    let b = SledBackend::new(
        SledConfig::new(dir.path())
            .with_flush(Flush::EveryWrite)
            .with_sweep_interval(None),
    )
    .await
    .unwrap();
    let key = k("durable");
    let v = b
        .put(&key, Bytes::from_static(b"1"), None, PutMode::Create)
        .await
        .unwrap();
    assert_eq!(b.flush().await.unwrap(), 0, "create was flushed");
    let v = b
        .put(&key, Bytes::from_static(b"2"), None, PutMode::Update(v))
        .await
        .unwrap();
    assert_eq!(b.flush().await.unwrap(), 0, "update was flushed");
    assert!(b
        .touch(&key, Some(Ttl::from_secs(60).unwrap()))
        .await
        .unwrap());
    assert_eq!(b.flush().await.unwrap(), 0, "touch was flushed");
    b.put_many(&[(k("m1"), Bytes::from_static(b"x"))], None)
        .await
        .unwrap();
    assert_eq!(b.flush().await.unwrap(), 0, "put_many was flushed");
    assert!(b.delete(&key, DeleteMode::IfVersion(v)).await.unwrap());
    assert_eq!(b.flush().await.unwrap(), 0, "delete was flushed");
    drop(b);

    let b = SledBackend::new(
        SledConfig::new(dir.path())
            .with_flush(Flush::Never)
            .with_sweep_interval(None),
    )
    .await
    .unwrap();
    put(&b, "lazy", b"x", None).await;
    assert!(
        b.flush().await.unwrap() > 0,
        "Never left the write unflushed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_millisecond_ttl_is_never_early() {
    let b = default_backend().await;
    assert_eq!(larder_tests::early_ttl_misses(&b, 10_000).await, 0);
}
