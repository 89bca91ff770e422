//! Time to live.

use std::fmt;
use std::time::Duration;

use crate::{Error, ErrorKind, Result};

/// How long an entry lives: a positive number of milliseconds, at most [`Ttl::MAX`].
///
/// Zero is rejected, not given a backend's meaning (memcached reads 0 as "never",
/// Redis refuses it, others expire at once); "no expiry" is `None` where a TTL is optional.
/// Sub-millisecond parts round **up**, so an entry never expires before its TTL; backends with
/// coarser clocks round up again to their precision (see
/// [`Capabilities::ttl_precision`](crate::Capabilities::ttl_precision)).
///
/// ```
/// use std::time::Duration;
/// use larder_cache_api::{ErrorKind, Ttl};
///
/// let t = Ttl::from_secs(30)?;
/// assert_eq!(t.as_millis(), 30_000);
/// assert_eq!(Ttl::new(Duration::from_micros(1500))?.as_millis(), 2);
/// assert_eq!(Ttl::from_millis(0).unwrap_err().kind(), ErrorKind::InvalidTtl);
/// # Ok::<(), larder_cache_api::Error>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ttl(u64);

impl Ttl {
    /// The longest TTL accepted: 10 years. Longer values are almost always a unit mistake
    /// (seconds passed as milliseconds, a timestamp passed as a duration).
    pub const MAX: Ttl = Ttl(10 * 365 * 24 * 3600 * 1000);

    /// A TTL from a duration, rounded up to whole milliseconds.
    pub fn new(d: Duration) -> Result<Self> {
        if d.is_zero() {
            return Err(Error::new(
                ErrorKind::InvalidTtl,
                "TTL is zero; use no TTL for entries that do not expire",
            ));
        }
        let mut ms = d.as_millis();
        if d.subsec_nanos() % 1_000_000 != 0 {
            ms += 1;
        }
        if ms > u128::from(Self::MAX.0) {
            return Err(Error::new(
                ErrorKind::InvalidTtl,
                format!("TTL of {d:?} exceeds the maximum of 10 years"),
            ));
        }
        Ok(Ttl(ms as u64))
    }

    /// A TTL of `ms` milliseconds.
    pub fn from_millis(ms: u64) -> Result<Self> {
        Self::new(Duration::from_millis(ms))
    }

    /// A TTL of `secs` seconds.
    pub fn from_secs(secs: u64) -> Result<Self> {
        Self::new(Duration::from_secs(secs))
    }

    /// Milliseconds, always at least 1.
    pub fn as_millis(self) -> u64 {
        self.0
    }

    /// Whole seconds, rounded up (for second-precision backends).
    pub fn as_secs_ceil(self) -> u64 {
        self.0.div_ceil(1000)
    }

    /// As a [`Duration`].
    pub fn as_duration(self) -> Duration {
        Duration::from_millis(self.0)
    }
}

impl TryFrom<Duration> for Ttl {
    type Error = Error;
    fn try_from(d: Duration) -> Result<Self> {
        Ttl::new(d)
    }
}

impl From<Ttl> for Duration {
    fn from(t: Ttl) -> Duration {
        t.as_duration()
    }
}

impl fmt::Debug for Ttl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ttl({}ms)", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_and_rounding() {
        assert_eq!(Ttl::new(Duration::from_nanos(1)).unwrap().as_millis(), 1);
        assert_eq!(Ttl::from_millis(1001).unwrap().as_secs_ceil(), 2);
        assert_eq!(Ttl::from_millis(1000).unwrap().as_secs_ceil(), 1);
        assert!(Ttl::new(Ttl::MAX.as_duration()).is_ok());
        let e = Ttl::new(Ttl::MAX.as_duration() + Duration::from_millis(1)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidTtl);
        assert_eq!(
            Ttl::new(Duration::MAX).unwrap_err().kind(),
            ErrorKind::InvalidTtl
        );
        assert_eq!(
            Ttl::new(Duration::ZERO).unwrap_err().kind(),
            ErrorKind::InvalidTtl
        );
    }
}
