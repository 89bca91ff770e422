//! Support for larder's cross-crate tests: real servers started on free ports
//! ([`server`]), a TCP proxy that cuts or stalls connections ([`proxy`]), and a backend
//! wrapper that injects one fault at one point ([`fault`]).
//!
//! Helpers panic with a clear message when something the tests need is missing (a server
//! binary, a free port): in CI a missing server is a failure, never a skip.
#![allow(clippy::unwrap_used)]

pub mod cluster;
pub mod db;
pub mod fault;
pub mod owning;
pub mod proxy;
pub mod server;
pub mod tls;

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free local port")
}
