//! The typed handle over this backend: serde values, single flight, CAS loops.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::key;
use crate::codec::Postcard;
use crate::{envelope, Cache, DynBackend, ErrorKind, PutMode};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Session {
    user_id: u64,
    name: String,
    roles: Vec<String>,
    data: BTreeMap<String, String>,
    csrf: Option<[u8; 16]>,
    admin: bool,
}

pub async fn typed_struct_roundtrips(b: DynBackend) {
    let cache = Cache::new(b);
    let k = key("typed");
    let s = Session {
        user_id: u64::MAX,
        name: "Zoë".into(),
        roles: vec!["admin".into(), "ops".into()],
        data: BTreeMap::from([("theme".into(), "dark".into())]),
        csrf: Some([9; 16]),
        admin: true,
    };
    let v = cache.set(&k, &s, None).await.unwrap();
    let (back, version) = cache.get_versioned::<Session>(&k).await.unwrap().unwrap();
    assert_eq!((back, version), (s, v));
}

/// 100 concurrent callers on one cold key run the loader once and all get its value.
pub async fn single_flight_100_callers_one_load(b: DynBackend) {
    let cache = Cache::new(b);
    let k = key("flight");
    let loads = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (cache, k, loads) = (cache.clone(), k.clone(), loads.clone());
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_insert_with(&k, None, || async move {
                    loads.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    Ok::<_, std::io::Error>(4242u64)
                })
                .await
                .unwrap()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 4242);
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1, "the loader ran once");
    assert_eq!(
        cache.get::<u64>(&k).await.unwrap(),
        Some(4242),
        "and its value was stored"
    );
}

pub async fn get_or_insert_with_hit_skips_loader(b: DynBackend) {
    let cache = Cache::new(b);
    let k = key("hit");
    cache.set(&k, &1u32, None).await.unwrap();
    let v: u32 = cache
        .get_or_insert_with(&k, None, || async {
            Err::<u32, _>(std::io::Error::other("loader must not run on a hit"))
        })
        .await
        .unwrap();
    assert_eq!(v, 1);
}

pub async fn loader_error_reaches_all_callers_and_caches_nothing(b: DynBackend) {
    let cache = Cache::new(b.clone());
    let k = key("loader-err");
    let loads = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (cache, k, loads) = (cache.clone(), k.clone(), loads.clone());
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_insert_with(&k, None, || async move {
                    loads.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Err::<u32, _>(std::io::Error::other("database down"))
                })
                .await
        }));
    }
    for t in tasks {
        let err = t.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Loader);
    }
    assert!(loads.load(Ordering::SeqCst) >= 1);
    assert!(
        b.get(&k).await.unwrap().is_none(),
        "a failed load stores nothing"
    );
}

pub async fn update_creates_when_absent(b: DynBackend) {
    if !b.capabilities().cas {
        return super::capability::assert_cas_refused(&b).await;
    }
    let cache = Cache::new(b);
    let k = key("upd-new");
    let seen = Arc::new(AtomicUsize::new(0));
    let s2 = seen.clone();
    let v = cache
        .update(&k, None, move |cur: Option<Vec<String>>| {
            assert!(cur.is_none());
            s2.fetch_add(1, Ordering::SeqCst);
            vec!["a".to_string()]
        })
        .await
        .unwrap();
    assert_eq!(v, ["a"]);
    assert_eq!(seen.load(Ordering::SeqCst), 1);
    assert_eq!(
        cache.get::<Vec<String>>(&k).await.unwrap(),
        Some(vec!["a".to_string()])
    );
}

/// When every attempt loses, `update` returns the conflict after the configured attempts.
pub async fn update_exhausted_returns_conflict(b: DynBackend) {
    if !b.capabilities().cas {
        return super::capability::assert_cas_refused(&b).await;
    }
    let cache = Cache::new(b.clone()).max_update_attempts(3);
    let k = key("upd-exhaust");
    cache.set(&k, &0u64, None).await.unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let (b2, k2, c2) = (b.clone(), k.clone(), calls.clone());
    let handle = tokio::runtime::Handle::current();
    let interloper = envelope::seal(&Postcard, &1000u64).unwrap();
    let err = cache
        .update(&k, None, move |n: Option<u64>| {
            c2.fetch_add(1, Ordering::SeqCst);
            // Another writer gets in between every read and write.
            tokio::task::block_in_place(|| {
                handle
                    .block_on(b2.put(&k2, interloper.clone(), None, PutMode::Overwrite))
                    .unwrap();
            });
            n.unwrap_or(0) + 1
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "exactly the configured attempts"
    );
    let cur = err.current().expect("conflict carries the winner's entry");
    assert_eq!(
        envelope::open::<_, u64>(&Postcard, &cur.value).unwrap(),
        1000
    );
    assert_eq!(
        cache.get::<u64>(&k).await.unwrap(),
        Some(1000),
        "the winner's write stands"
    );
}

/// Stamps this module's cases into the current module; used by
/// [`conformance_suite!`](crate::conformance_suite), which stamps every module.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_typed {
    ($make:path) => {
        $crate::conformance_suite!(@cases $make;
            typed::typed_struct_roundtrips,
            typed::single_flight_100_callers_one_load,
            typed::get_or_insert_with_hit_skips_loader,
            typed::loader_error_reaches_all_callers_and_caches_nothing,
            typed::update_creates_when_absent,
            typed::update_exhausted_returns_conflict,
        );
    };
}
