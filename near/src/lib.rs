#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod builder;
mod clock;
mod coherence;
mod hint;
mod layer;
mod local;
mod stats;
mod sync;
mod tag;

pub use builder::{NearBuilder, DEFAULT_CAPACITY, DEFAULT_MAX_AGE, DEFAULT_MAX_STALENESS};
pub use larder_cache_api::layer::ChannelFault;
pub use layer::Near;
pub use stats::NearStats;
pub use sync::ChannelState;
