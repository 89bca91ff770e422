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

use std::time::Duration;

pub use builder::NearBuilder;
pub use layer::Near;
pub use stats::NearStats;
pub use sync::ChannelState;

/// Default number of entries kept in process.
pub const DEFAULT_CAPACITY: usize = 10_000;
/// Default longest time an entry is served from process memory.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(60);
/// Default staleness bound of a near cache with an invalidation channel.
pub const DEFAULT_MAX_STALENESS: Duration = Duration::from_millis(50);
