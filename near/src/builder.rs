//! Building a near cache: checking the configuration, then assembling the layer step by step.

use std::sync::{Arc, Weak};
use std::time::Duration;

use larder_cache_api::layer::{
    InvalidationChannel, InvalidationSink, InvalidationTarget, Subscription,
};
use larder_cache_api::{Capabilities, DynBackend, Error, ErrorKind, Result};

use crate::clock::nanos;
use crate::coherence::Coherence;
use crate::hint::TtlHints;
use crate::layer::Near;
use crate::stats::NearStats;
use crate::sync::Health;

/// Default number of entries kept in process.
pub const DEFAULT_CAPACITY: usize = 10_000;
/// Default longest time an entry is served from process memory.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(60);
/// Default staleness bound of a near cache with an invalidation channel.
pub const DEFAULT_MAX_STALENESS: Duration = Duration::from_millis(50);

/// Builds a [`Near`] cache; see [`Near::builder`].
#[derive(Debug)]
pub struct NearBuilder {
    inner: DynBackend,
    capacity: usize,
    max_age: Duration,
    max_staleness: Duration,
    channel: Option<Arc<dyn InvalidationChannel>>,
    accepted: Option<Duration>,
}

/// How another process's writes reach this one: the one choice a near cache must be given.
enum Freshness {
    /// Reported by the backend's channel, within the staleness bound.
    Channel(Arc<dyn InvalidationChannel>),
    /// Not reported: entries are kept at most this long.
    Accepted(Duration),
}

impl Near {
    /// A builder for a near cache in front of `inner`.
    pub fn builder(inner: DynBackend) -> NearBuilder {
        NearBuilder {
            inner,
            capacity: DEFAULT_CAPACITY,
            max_age: DEFAULT_MAX_AGE,
            max_staleness: DEFAULT_MAX_STALENESS,
            channel: None,
            accepted: None,
        }
    }
}

impl NearBuilder {
    /// Most entries kept in process (default 10,000; 0 is refused).
    pub fn capacity(mut self, entries: usize) -> Self {
        self.capacity = entries;
        self
    }

    /// Longest time an entry is served from process memory (default 60 s).
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = age;
        self
    }

    /// The staleness bound with a channel (default 50 ms): local entries are served only
    /// while the channel has confirmed, less than this long ago, that it reported every
    /// change. The channel pings four times per bound.
    pub fn max_staleness(mut self, bound: Duration) -> Self {
        self.max_staleness = bound;
        self
    }

    /// The backend's invalidation channel.
    pub fn channel(mut self, channel: impl InvalidationChannel + 'static) -> Self {
        self.channel = Some(Arc::new(channel));
        self
    }

    /// No channel: accept that another process's write is seen up to `staleness` late.
    /// Entries are then kept at most that long.
    pub fn accept_staleness(mut self, staleness: Duration) -> Self {
        self.accepted = Some(staleness);
        self
    }

    /// Builds the cache and, with a channel, subscribes to it (inside a tokio runtime).
    ///
    /// [`ErrorKind::Config`] for a capacity, age or staleness of zero, for a backend given
    /// neither a channel nor an accepted staleness, and for both at once.
    pub fn build(self) -> Result<Near> {
        self.check_bounds()?;
        let freshness = self.freshness()?;
        let caps = self.inner.capabilities();
        let coherence = Arc::new(Coherence::new(
            self.capacity,
            Health::new(
                matches!(freshness, Freshness::Channel(_)),
                nanos(self.max_staleness),
            ),
            NearStats::new(caps.name),
        ));
        let subscription = subscribe(&freshness, &coherence, self.max_staleness)?;
        let (max_age, channel_name, channel) = match freshness {
            Freshness::Channel(c) => (self.max_age, c.describe(), Some(c)),
            Freshness::Accepted(s) => {
                let max_age = self.max_age.min(s);
                (
                    max_age,
                    format!("none (accepted staleness {max_age:?})"),
                    None,
                )
            }
        };
        Ok(Near {
            caps: layer_capabilities(caps),
            ttl_hints: TtlHints::new(self.capacity, caps.ttl_precision),
            inner: self.inner,
            coherence,
            max_age,
            channel_name,
            channel,
            _subscription: subscription,
        })
    }

    /// A `Config` error naming the backend.
    fn refuse(&self, msg: String) -> Error {
        Error::new(ErrorKind::Config, msg).with_backend(self.inner.capabilities().name)
    }

    /// Sizes and durations are above zero.
    fn check_bounds(&self) -> Result<()> {
        if self.capacity == 0 {
            return Err(self.refuse("near cache: capacity must be at least 1 entry".into()));
        }
        if self.max_age.is_zero() || self.max_staleness.is_zero() {
            return Err(
                self.refuse("near cache: max_age and max_staleness must be above zero".into())
            );
        }
        Ok(())
    }

    /// Exactly one of a channel and an accepted staleness was given, and the refusal says
    /// which of the two this backend calls for.
    fn freshness(&self) -> Result<Freshness> {
        let name = self.inner.capabilities().name;
        match (&self.channel, self.accepted) {
            (Some(_), Some(_)) => Err(self.refuse(
                "near cache: give either an invalidation channel or an accepted staleness, not both"
                    .into(),
            )),
            (None, None) if self.inner.capabilities().invalidation_channel => {
                Err(self.refuse(format!(
                    "near cache over {name}: no invalidation channel was given, so another \
                     process's writes would be seen late; this backend offers one: pass it with \
                     `.channel(..)` (Redis: `tracking()`, PostgreSQL: `notify()`), or accept \
                     the staleness explicitly with `.accept_staleness(duration)`"
                )))
            }
            (None, None) => Err(self.refuse(format!(
                "near cache over {name}: this backend has no invalidation channel, so \
                 another process's writes would be seen late; accept the staleness \
                 explicitly with `.accept_staleness(duration)`"
            ))),
            (None, Some(s)) if s.is_zero() => {
                Err(self.refuse("near cache: accepted staleness must be above zero".into()))
            }
            (None, Some(s)) => Ok(Freshness::Accepted(s)),
            (Some(c), None) => Ok(Freshness::Channel(Arc::clone(c))),
        }
    }
}

/// Subscribes the channel, if any, to report to `coherence`, syncing four times per bound.
fn subscribe(
    freshness: &Freshness,
    coherence: &Arc<Coherence>,
    max_staleness: Duration,
) -> Result<Option<Subscription>> {
    let Freshness::Channel(channel) = freshness else {
        return Ok(None);
    };
    // Weak: the channel must not keep the cache alive (it stops when the cache is dropped).
    let target: Weak<dyn InvalidationTarget> = Arc::downgrade(coherence) as Weak<Coherence>;
    let sink = InvalidationSink::new(target, max_staleness / 4);
    channel.subscribe(sink).map(Some)
}

/// What the layer declares, from what the backend declares.
fn layer_capabilities(backend: &Capabilities) -> Capabilities {
    let mut caps = backend.clone();
    // CAS itself goes to the backend, but a read through the layer may be stale by the
    // bound, so a successful CAS is not visible to every later read at once.
    caps.linearizable_cas = false;
    // Its local tier is not covered by any channel another near cache could use.
    caps.invalidation_channel = false;
    caps
}
