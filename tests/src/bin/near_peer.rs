//! One process of the near-cache coherence test (`tests/near_coherence.rs`). Not a user tool.
//!
//! Arguments: `<reader|writer> <redis|postgres> <data url> <channel url> <key> <writes>
//! <pace in µs> <output file>`.
//!
//! * `writer` overwrites `<key>` with the counter 1, 2, ... `<writes>` (8 bytes, big-endian)
//!   straight on the backend, one write per `<pace>` on average, and writes to `<output file>`
//!   the wall-clock time (ns since the Unix epoch, little-endian u64) at which each write
//!   returned.
//! * `reader` reads `<key>` in a loop through a near cache whose invalidation channel
//!   connects to `<channel url>` (the data server, or a proxy in front of it); it prints
//!   `ready` once the channel is up, and stops when its standard input closes or receives a
//!   line. It then writes one record per read to `<output file>` (start time in ns, counter
//!   read or 0 for none; both little-endian u64) and prints
//!   `stats <local hits> <shared hits> <misses> <invalidations> <bypassed> <flushes>`.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, Write};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use larder::layer::{ChannelState, Near};
use larder::{Bytes, CacheBackend, DynBackend, Key, PutMode};
use larder_backend_redis::{RedisBackend, RedisConfig, RedisTracking};
use larder_backend_sql::{PgKv, PgNotify};
use larder_tests::{eventually, Patience};
use sqlx::postgres::PgConnectOptions;

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, role, kind, data_url, channel_url, key, writes, pace_us, out] = &args[..] else {
        panic!("usage: near_peer <reader|writer> <redis|postgres> <data url> <channel url> <key> <writes> <pace µs> <out>");
    };
    let key = Key::new(key).unwrap();
    let writes: u64 = writes.parse().unwrap();
    let pace = Duration::from_micros(pace_us.parse().unwrap());
    match (role.as_str(), kind.as_str()) {
        ("writer", "redis") => {
            let b: DynBackend = Arc::new(RedisBackend::connect(data_url).await.unwrap());
            write_loop(b, key, writes, pace, out).await;
        }
        ("writer", "postgres") => {
            let b: DynBackend = Arc::new(PgKv::connect(data_url).await.unwrap());
            write_loop(b, key, writes, pace, out).await;
        }
        ("reader", "redis") => {
            let b = RedisBackend::connect(data_url).await.unwrap();
            let channel = RedisTracking::new(RedisConfig::from_url(channel_url).unwrap());
            let near = Near::builder(Arc::new(b)).channel(channel).build().unwrap();
            read_loop(near, key, out).await;
        }
        ("reader", "postgres") => {
            let b = PgKv::connect(data_url).await.unwrap();
            let channel = PgNotify::new(b.pool().clone())
                .listen_with(PgConnectOptions::from_str(channel_url).unwrap());
            let near = Near::builder(Arc::new(b)).channel(channel).build().unwrap();
            read_loop(near, key, out).await;
        }
        _ => panic!("unknown role or backend: {role} {kind}"),
    }
}

async fn write_loop(b: DynBackend, key: Key, writes: u64, pace: Duration, out: &str) {
    let mut times = Vec::with_capacity(writes as usize * 8);
    let start = tokio::time::Instant::now();
    for i in 1..=writes {
        b.put(
            &key,
            Bytes::copy_from_slice(&i.to_be_bytes()),
            None,
            PutMode::Overwrite,
        )
        .await
        .unwrap();
        times.extend_from_slice(&now_ns().to_le_bytes());
        tokio::time::sleep_until(start + pace * i as u32).await;
    }
    std::fs::write(out, times).unwrap();
}

async fn read_loop(near: Near, key: Key, out: &str) {
    let patience = Patience::new(Duration::from_secs(20)).every(Duration::from_millis(10));
    eventually(patience, "the invalidation channel is up", async || {
        near.channel_state() == ChannelState::Up
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
        stop2.store(true, Ordering::SeqCst);
    });
    println!("ready");
    std::io::stdout().flush().unwrap();
    let mut records = Vec::with_capacity(1 << 24);
    while !stop.load(Ordering::SeqCst) {
        let t = now_ns();
        let got = near.get(&key).await.unwrap();
        let n = got
            .map(|e| u64::from_be_bytes(e.value[..8].try_into().unwrap()))
            .unwrap_or(0);
        records.extend_from_slice(&t.to_le_bytes());
        records.extend_from_slice(&n.to_le_bytes());
        tokio::task::yield_now().await;
    }
    std::fs::write(out, records).unwrap();
    let s = near.stats();
    println!(
        "stats {} {} {} {} {} {}",
        s.local_hits(),
        s.shared_hits(),
        s.misses(),
        s.invalidations(),
        s.bypassed(),
        s.flushes()
    );
    std::io::stdout().flush().unwrap();
}
