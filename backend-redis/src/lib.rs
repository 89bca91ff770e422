#![doc = include_str!("../README.md")]

mod backend;
mod config;
mod core;
mod durability;
mod error;
mod sentinel;
mod tracking;

pub use backend::RedisBackend;
pub use config::{
    RedisConfig, SentinelConfig, Topology, DEFAULT_MAX_VALUE_SIZE, MAX_VALUE_SIZE_LIMIT,
};
pub use tracking::RedisTracking;
