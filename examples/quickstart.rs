//! A tour of larder's cache: typed values, get-or-compute with single flight, and a
//! compare-and-swap update loop that loses no increment under contention.
//!
//! Run it with `cargo run --example quickstart`; pass a backend URL to try another backend
//! (`cargo run --example quickstart -- memory://?capacity=1000`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use larder::{Cache, ErrorKind, Key, Ttl};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Profile {
    name: String,
    email: String,
    visits: u32,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "memory://?capacity=10000".to_string());
    let backend = larder::connect(&url).await?;
    println!("backend: {} ({url})", backend.capabilities().name);
    let cache = Cache::new(backend);

    // 1. Typed values, with a TTL.
    let key = Key::new("profile:ada")?;
    let ada = Profile {
        name: "Ada".into(),
        email: "ada@example.org".into(),
        visits: 0,
    };
    cache.set(&key, &ada, Some(Ttl::from_secs(300)?)).await?;
    let back: Option<Profile> = cache.get(&key).await?;
    println!("1. stored and read back: {back:?}");

    // 2. Get-or-compute: 50 concurrent requests for one cold key run the loader once.
    let loads = Arc::new(AtomicUsize::new(0));
    let report = Key::new("report:monthly")?;
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (cache, report, loads) = (cache.clone(), report.clone(), loads.clone());
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_insert_with(&report, Some(Ttl::from_secs(60)?), || async move {
                    loads.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await; // an expensive query
                    Ok::<_, std::io::Error>(vec![31u32, 28, 31, 30])
                })
                .await
        }));
    }
    for t in tasks {
        t.await??;
    }
    println!(
        "2. 50 concurrent get_or_insert_with calls ran the loader {} time(s)",
        loads.load(Ordering::SeqCst)
    );

    // 3. Compare-and-swap: 8 tasks × 100 increments of one profile, none lost.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (cache, key) = (cache.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..100 {
                cache
                    .update(&key, None, |p: Option<Profile>| {
                        let mut p = p.unwrap_or_else(|| Profile {
                            name: "?".into(),
                            email: String::new(),
                            visits: 0,
                        });
                        p.visits += 1;
                        p
                    })
                    .await?;
            }
            Ok::<_, larder::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let visits = cache.get::<Profile>(&key).await?.map(|p| p.visits);
    println!("3. after 8 × 100 concurrent CAS updates: visits = {visits:?}");

    // 4. A stale conditional write is a typed conflict, never a silent overwrite.
    let (_, version) = cache
        .get_versioned::<Profile>(&key)
        .await?
        .expect("present");
    cache.set(&key, &ada, None).await?;
    let err = cache
        .replace(&key, &ada, None, version)
        .await
        .expect_err("stale version");
    assert_eq!(err.kind(), ErrorKind::Conflict);
    println!("4. write with a stale version: {err}");

    // 5. Bad input gets a typed error.
    let err = Key::new("has a space").expect_err("invalid key");
    println!("5. invalid key: {err}");
    let err = Ttl::from_secs(0).expect_err("zero TTL");
    println!("   zero TTL: {err}");
    Ok(())
}
