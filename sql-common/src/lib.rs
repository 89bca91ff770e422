#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod dialect;
mod error;
pub mod held;
pub mod lost;
pub mod write_id;

pub use dialect::{Dialect, SqlDatabase};
pub use error::{db_error, error_kind};
