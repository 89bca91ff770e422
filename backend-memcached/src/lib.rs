#![doc = include_str!("../README.md")]

mod backend;
mod config;
mod core;
mod error;
mod ring;

pub use backend::MemcachedBackend;
pub use config::{MemcachedConfig, DEFAULT_PORT};
