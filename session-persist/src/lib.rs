#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "axum")]
mod axum;
mod expiry;
mod handle;
mod id;
mod record;
mod sql;
mod store;
#[cfg(feature = "tower-sessions")]
mod tower;
mod write_through;

#[cfg(feature = "axum")]
pub use axum::{AtomicSession, SessionError};
pub use expiry::EXPIRY_TASK;
pub use handle::{ConflictPolicy, Session, SessionConfig, SessionManager, ValueFormat};
pub use id::{IdHash, IdSource, OsRandom, SessionId};
pub use record::{Record, SessionData, Timestamp};
pub use sql::SqlOptions;
#[cfg(feature = "postgres")]
pub use sql::{PgFence, PgKv, PgStore};
#[cfg(feature = "sqlite")]
pub use sql::{SqliteFence, SqliteKv, SqliteStore};
pub use store::{Invalidation, SaveOutcome, SessionStore, DEFAULT_TOMBSTONE_TTL};
#[cfg(feature = "tower-sessions")]
pub use tower::{TowerStore, RESERVED_KEY};
pub use write_through::{CachedStore, WriteThroughSnapshot, WriteThroughStats};
