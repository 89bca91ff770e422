#![doc = include_str!("../README.md")]

// What each module holds, listed so that a module uses only modules above it:
//   error        client errors mapped to larder's errors
//   config       `RedisConfig` and `SentinelConfig`; every URL is parsed in `config::url`
//   node         how to reach one node: address, credentials, TLS, TCP settings
//   layout       the stored string (version ‖ value) and where versions come from
//   slot         Redis Cluster hash slots, and the delete marker's name in a key's slot
//   sentinel     finding and following a Sentinel service's primary
//   connect      the shared connection, opened per topology
//   scripts      the Lua scripts of the conditional writes, sent and resent
//   durability   what `INFO` says about persistence and eviction
//   core         the operations on the shared connection
//   tracking     the invalidation channel (client tracking) for a near cache
//   backend      the `CacheBackend` implementation
mod backend;
mod config;
mod connect;
mod core;
mod durability;
mod error;
mod layout;
mod node;
mod scripts;
mod sentinel;
mod slot;
mod tracking;

pub use backend::RedisBackend;
pub use config::{
    RedisConfig, SentinelConfig, Topology, DEFAULT_MAX_VALUE_SIZE, MAX_VALUE_SIZE_LIMIT,
};
pub use tracking::RedisTracking;
