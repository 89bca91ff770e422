//! Support for larder's cross-crate tests: real servers started on free ports
//! ([`server`]), a TCP proxy that cuts or stalls connections ([`proxy`]), and a backend
//! wrapper that injects one fault at one point ([`fault`]), fault cases stamped over every
//! networked store ([`outage`]), many periodic-task schedulers
//! in one process, counted ([`coord_sim`]); a counter's history across a failover, checked
//! against a staleness bound ([`history`]); a compare-and-swap counter whose increments are
//! counted ([`cas_counter`]); one poll loop for waiting on anything
//! ([`eventually`], [`wait_until`]).
//!
//! Helpers panic with a clear message when something the tests need is missing (a server
//! binary, a free port): in CI a missing server is a failure, never a skip.
#![allow(clippy::unwrap_used)]

pub mod cas_counter;
pub mod child;
pub mod cluster;
pub mod coord_sim;
pub mod db;
pub mod fault;
pub mod history;
pub mod outage;
pub mod owning;
mod pgwire;
pub mod proxy;
pub mod sentinel;
pub mod server;
pub mod tls;
pub mod wait;

pub use wait::{eventually, wait_until, Patience};

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free local port")
}

/// Writes a key with a 1 ms TTL `n` times, reads it back 0.2 ms after each write, and
/// returns how many reads missed it although less than 1 ms had passed (a TTL that ended
/// early).
pub async fn early_ttl_misses(b: &larder_cache_api::DynBackend, n: usize) -> usize {
    early_ttl_probe(b, n).await.0
}

/// [`early_ttl_misses`], and how many of the `n` reads came back less than 1 ms after their
/// write began (the reads that could have found the TTL early).
pub async fn early_ttl_probe(b: &larder_cache_api::DynBackend, n: usize) -> (usize, usize) {
    use larder_cache_api::{Bytes, Key, PutMode, Ttl};
    let key = Key::new("ttl-never-early").expect("key");
    let ttl = Ttl::from_millis(1).expect("ttl");
    let mut early = 0;
    let mut in_time = 0;
    for _ in 0..n {
        let written = std::time::Instant::now();
        b.put(
            &key,
            Bytes::from_static(b"v"),
            Some(ttl),
            PutMode::Overwrite,
        )
        .await
        .expect("put");
        while written.elapsed() < std::time::Duration::from_micros(200) {
            std::hint::spin_loop();
        }
        let read = b.get(&key).await.expect("get");
        if written.elapsed() < std::time::Duration::from_millis(1) {
            in_time += 1;
            if read.is_none() {
                early += 1;
            }
        }
    }
    (early, in_time)
}
