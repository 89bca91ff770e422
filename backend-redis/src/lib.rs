#![doc = include_str!("../README.md")]

mod backend;
mod config;
mod core;
mod error;
mod sentinel;

pub use backend::RedisBackend;
pub use config::{
    RedisConfig, SentinelConfig, Topology, DEFAULT_MAX_VALUE_SIZE, MAX_VALUE_SIZE_LIMIT,
};
