#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "actix")]
mod actix;
#[cfg(feature = "axum")]
mod axum;
mod breaker;
mod cached_store;
mod expiry;
mod id;
#[cfg(any(feature = "tower-sessions", feature = "actix"))]
mod merge;
mod outbox;
mod record;
mod seal;
mod session;
mod sql;
mod stats;
mod store;
#[cfg(feature = "tower-sessions")]
mod tower;

#[cfg(feature = "actix")]
pub use actix::ActixStore;
#[cfg(feature = "axum")]
pub use axum::{AtomicSession, SessionError};
pub use cached_store::CachedStore;
pub use expiry::EXPIRY_TASK;
pub use id::{IdHash, IdSource, OsRandom, SessionId};
#[cfg(any(feature = "tower-sessions", feature = "actix"))]
pub use merge::RESERVED_KEY;
pub use outbox::{Invalidation, Outbox, GAP_GRACE};
pub use record::{Record, SessionData, Timestamp};
pub use session::{ConflictPolicy, Session, SessionConfig, SessionManager, ValueFormat};
#[cfg(feature = "postgres")]
pub use sql::PgStore;
#[cfg(feature = "sqlite")]
pub use sql::SqliteStore;
pub use sql::{connect, open_existing, Dialect, SqlOptions, SqlStore};
pub use stats::{WriteThroughSnapshot, WriteThroughStats};
pub use store::{ApplyFn, SaveOutcome, SessionStore, DEFAULT_TOMBSTONE_TTL};
#[cfg(feature = "tower-sessions")]
pub use tower::TowerStore;

/// The actix-session this crate's [`ActixStore`] implements: name it from here so that the
/// versions cannot differ.
#[cfg(feature = "actix")]
pub use actix_session;
/// The tower-sessions this crate's [`TowerStore`] implements: name it from here so that
/// the versions cannot differ.
#[cfg(feature = "tower-sessions")]
pub use tower_sessions;
