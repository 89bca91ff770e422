#![doc = include_str!("../README.md")]

mod backend;
mod config;
mod core;
mod error;

pub use backend::MemoryBackend;
pub use config::MemoryConfig;
