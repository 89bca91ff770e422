//! Put modes, conditional deletes and races.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::capability::assert_cas_refused;
use super::linearizability::{assert_linearizable, increment_workload, Outcome, Recorder};
use super::{key, put, short_ttl, value};
use crate::{Bytes, DeleteMode, DynBackend, ErrorKind, PutMode, Version};

macro_rules! require_cas {
    ($b:expr) => {
        if !$b.capabilities().cas {
            return assert_cas_refused(&$b).await;
        }
    };
}

pub async fn create_on_absent_succeeds(b: DynBackend) {
    require_cas!(b);
    let k = key("create");
    let v = b
        .put(&k, Bytes::from_static(b"first"), None, PutMode::Create)
        .await
        .unwrap();
    let e = b.get(&k).await.unwrap().unwrap();
    assert_eq!((&e.value[..], e.version), (&b"first"[..], v));
}

pub async fn create_on_present_conflicts_with_current(b: DynBackend) {
    require_cas!(b);
    let k = key("create-present");
    let v = put(&b, &k, b"there").await;
    let err = b
        .put(&k, Bytes::from_static(b"new"), None, PutMode::Create)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    let cur = err.current().expect("conflict carries the current entry");
    assert_eq!((&cur.value[..], cur.version), (&b"there"[..], v));
    assert_eq!(
        value(&b, &k).await.as_deref(),
        Some(&b"there"[..]),
        "not overwritten"
    );
}

pub async fn create_on_expired_succeeds(b: DynBackend) {
    require_cas!(b);
    let k = key("create-exp");
    let (ttl, wait) = short_ttl(b.capabilities());
    b.put(
        &k,
        Bytes::from_static(b"old"),
        Some(ttl),
        PutMode::Overwrite,
    )
    .await
    .unwrap();
    tokio::time::sleep(wait).await;
    b.put(&k, Bytes::from_static(b"new"), None, PutMode::Create)
        .await
        .expect("an expired key counts as absent");
    assert_eq!(value(&b, &k).await.as_deref(), Some(&b"new"[..]));
}

pub async fn update_with_current_version_succeeds(b: DynBackend) {
    require_cas!(b);
    let k = key("upd");
    let v1 = put(&b, &k, b"1").await;
    let v2 = b
        .put(&k, Bytes::from_static(b"2"), None, PutMode::Update(v1))
        .await
        .unwrap();
    assert_ne!(v1, v2);
    let e = b.get(&k).await.unwrap().unwrap();
    assert_eq!((&e.value[..], e.version), (&b"2"[..], v2));
}

pub async fn update_with_stale_version_conflicts_with_current(b: DynBackend) {
    require_cas!(b);
    let k = key("upd-stale");
    let v1 = put(&b, &k, b"1").await;
    let v2 = put(&b, &k, b"2").await;
    let err = b
        .put(&k, Bytes::from_static(b"3"), None, PutMode::Update(v1))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    let cur = err.current().expect("conflict carries the current entry");
    assert_eq!((&cur.value[..], cur.version), (&b"2"[..], v2));
    assert_eq!(value(&b, &k).await.as_deref(), Some(&b"2"[..]));
}

pub async fn update_on_absent_conflicts(b: DynBackend) {
    require_cas!(b);
    let k = key("upd-absent");
    let v = put(&b, &key("other"), b"x").await;
    let err = b
        .put(&k, Bytes::from_static(b"x"), None, PutMode::Update(v))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert!(err.current().is_none(), "absent key: no current entry");
    assert!(b.get(&k).await.unwrap().is_none(), "nothing created");
}

pub async fn update_on_expired_conflicts(b: DynBackend) {
    require_cas!(b);
    let k = key("upd-exp");
    let (ttl, wait) = short_ttl(b.capabilities());
    let v = b
        .put(
            &k,
            Bytes::from_static(b"old"),
            Some(ttl),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    tokio::time::sleep(wait).await;
    let err = b
        .put(&k, Bytes::from_static(b"new"), None, PutMode::Update(v))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert!(
        b.get(&k).await.unwrap().is_none(),
        "an expired entry is not revived by CAS"
    );
}

pub async fn delete_if_version_matches(b: DynBackend) {
    require_cas!(b);
    let k = key("delv");
    let v = put(&b, &k, b"x").await;
    assert!(b.delete(&k, DeleteMode::IfVersion(v)).await.unwrap());
    assert!(b.get(&k).await.unwrap().is_none());
}

pub async fn delete_if_version_stale_conflicts(b: DynBackend) {
    require_cas!(b);
    let k = key("delv-stale");
    let v1 = put(&b, &k, b"1").await;
    let v2 = put(&b, &k, b"2").await;
    let err = b.delete(&k, DeleteMode::IfVersion(v1)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert_eq!(err.current().map(|e| e.version), Some(v2));
    assert_eq!(
        value(&b, &k).await.as_deref(),
        Some(&b"2"[..]),
        "not deleted"
    );
}

pub async fn delete_if_version_absent_conflicts(b: DynBackend) {
    require_cas!(b);
    let v = put(&b, &key("other"), b"x").await;
    let err = b
        .delete(&key("delv-absent"), DeleteMode::IfVersion(v))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert!(err.current().is_none());
}

/// A-B-A: a key deleted and created again must not accept the old version.
pub async fn version_not_reused_after_delete(b: DynBackend) {
    require_cas!(b);
    let k = key("aba");
    let old = put(&b, &k, b"a").await;
    assert!(b.delete(&k, DeleteMode::Any).await.unwrap());
    let new = put(&b, &k, b"a").await;
    assert_ne!(old, new, "a version is never handed out twice for a key");
    let err = b
        .put(&k, Bytes::from_static(b"b"), None, PutMode::Update(old))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    // Over many writes and deletes of one key, no version comes back.
    let mut seen = std::collections::HashSet::from([old, new]);
    for i in 0..40 {
        let v = put(&b, &k, b"again").await;
        assert!(seen.insert(v), "version {v:?} handed out twice (write {i})");
        if i % 2 == 0 {
            b.delete(&k, DeleteMode::Any).await.unwrap();
        }
    }
}

/// 16 tasks × 50 increments through [`Cache::update`](crate::Cache::update): exactly 800, nothing lost; and the
/// recorded history of every get and compare-and-swap of the race is linearizable.
pub async fn cas_race_16_tasks_50_increments(b: DynBackend) {
    require_cas!(b);
    let (total, history) = increment_workload(b.clone(), 16, 50).await;
    assert_eq!(total, Some(800));
    let writes = history
        .1
        .iter()
        .filter(|o| matches!(o.outcome, Outcome::Written(_)))
        .count();
    assert_eq!(writes, 800, "one successful write per increment");
    assert_linearizable(&b, &[history]);
}

/// 16 tasks create one key at once: exactly one wins, the others see its entry; the
/// recorded history (the creates and a get by each task) is linearizable.
pub async fn create_race_has_one_winner(b: DynBackend) {
    require_cas!(b);
    let rec = Recorder::new(b.clone());
    let recorded: DynBackend = rec.clone();
    let b = recorded;
    let k = key("create-race");
    let wins = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..16u8 {
        let (b, k, wins) = (b.clone(), k.clone(), wins.clone());
        tasks.push(tokio::spawn(async move {
            let res = b.put(&k, Bytes::from(vec![i]), None, PutMode::Create).await;
            b.get(&k).await.unwrap().expect("created by someone");
            match res {
                Ok(v) => {
                    wins.fetch_add(1, Ordering::SeqCst);
                    Some((i, v))
                }
                Err(e) => {
                    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
                    None
                }
            }
        }));
    }
    let mut winner: Option<(u8, Version)> = None;
    for t in tasks {
        if let Some(w) = t.await.unwrap() {
            winner = Some(w);
        }
    }
    assert_eq!(wins.load(Ordering::SeqCst), 1);
    let (i, v) = winner.unwrap();
    let e = b.get(&k).await.unwrap().unwrap();
    assert_eq!((&e.value[..], e.version), (&[i][..], v));
    let history = rec.history(&k);
    assert_eq!(history.len(), 16 * 2 + 1, "every operation recorded");
    assert_linearizable(&b, &[(k, history)]);
}

/// Stamps this module's cases into the current module; used by
/// [`conformance_suite!`](crate::conformance_suite), which stamps every module.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_cas {
    ($make:path) => {
        $crate::conformance_suite!(@cases $make;
            cas::create_on_absent_succeeds,
            cas::create_on_present_conflicts_with_current,
            cas::create_on_expired_succeeds,
            cas::update_with_current_version_succeeds,
            cas::update_with_stale_version_conflicts_with_current,
            cas::update_on_absent_conflicts,
            cas::update_on_expired_conflicts,
            cas::delete_if_version_matches,
            cas::delete_if_version_stale_conflicts,
            cas::delete_if_version_absent_conflicts,
            cas::version_not_reused_after_delete,
            cas::cas_race_16_tasks_50_increments,
            cas::create_race_has_one_winner,
        );
    };
}
