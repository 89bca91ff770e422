#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]
// With neither database feature there is nothing to connect to; the crate still builds.
#![cfg_attr(
    not(any(feature = "postgres", feature = "sqlite")),
    allow(dead_code, unused_imports, unused_variables, unreachable_code)
)]

mod backend;
mod config;
mod core;
mod error;
mod fence;
#[cfg(feature = "postgres")]
mod notify;
mod write_id;

pub use crate::core::MIGRATIONS_TABLE;
#[cfg(feature = "postgres")]
pub use backend::PgKv;
#[cfg(feature = "sqlite")]
pub use backend::SqliteKv;
pub use backend::{SqlKv, MAX_VALUE_SIZE};
pub use config::{sqlite_url, SqlConfig, SqlDatabase, DEFAULT_MAX_CONNECTIONS};
#[cfg(feature = "postgres")]
pub use fence::PgFence;
#[cfg(feature = "sqlite")]
pub use fence::SqliteFence;
pub use fence::{Effect, Fence};
/// What differs between PostgreSQL and SQLite (shared with larder-session-persist).
pub use larder_sql_common::Dialect;
#[cfg(feature = "postgres")]
pub use notify::{PgNotify, NOTIFY_CHANNEL};
