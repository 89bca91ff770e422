#![doc = include_str!("../README.md")]

mod backend;
mod config;
mod core;
mod error;

pub use backend::SledBackend;
pub use config::{Dispatch, Flush, SledConfig};
pub use core::{ENTRIES_TREE, EXPIRY_TREE};

/// The sled version this backend is built on, for [`SledBackend::db`].
pub use sled;
