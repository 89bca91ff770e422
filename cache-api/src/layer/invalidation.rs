//! The invalidation channel of a near cache (`larder_near::Near`): how a shared backend tells
//! every process which keys changed.
//!
//! The contract lives here, beside the backend trait, so that a backend offers its channel
//! while depending on this crate alone; the near cache itself, which acts on the reports, is
//! its own crate.

use std::any::Any;
use std::fmt;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crate::Result;

/// A shared backend's news of changed keys, delivered to a near cache (`larder_near::Near`).
///
/// Implemented by the backends that have one (Redis: `CLIENT TRACKING`, PostgreSQL:
/// `LISTEN/NOTIFY`). An implementation runs in the background and reports to the
/// [`InvalidationSink`] it is given, **in the order it learns things**:
///
/// 1. [`up`](InvalidationSink::up) once it is subscribed, so that every change made from now
///    on will be reported;
/// 2. [`invalidate`](InvalidationSink::invalidate) for every changed key (written, deleted,
///    expired or evicted), [`invalidate_all`](InvalidationSink::invalidate_all) when it cannot
///    tell which;
/// 3. [`synced`](InvalidationSink::synced)`(t)` whenever it knows that every change completed
///    before the instant `t` has been reported (a ping sent at `t` came back through the
///    channel, behind the invalidations that preceded it), at least every
///    [`sync_interval`](InvalidationSink::sync_interval);
/// 4. [`down`](InvalidationSink::down) as soon as it may have missed something (connection
///    lost, a ping not answered in time), then `up` again after subscribing anew.
///
/// The near cache serves local entries only while the channel is up and synced within its
/// staleness bound, so a channel that stops reporting can never make it serve stale data
/// beyond the bound: it is bypassed.
pub trait InvalidationChannel: Send + Sync + fmt::Debug {
    /// Starts reporting to `sink` until the returned [`Subscription`] is dropped. Called
    /// once, inside a tokio runtime, when the near cache is built.
    fn subscribe(&self, sink: InvalidationSink) -> Result<Subscription>;

    /// A short description for operators (`"redis client tracking (bcast)"`).
    fn describe(&self) -> String;

    /// Whether changes of `key` (as the backend stores it) are reported; the near cache
    /// never keeps a key that is not covered (a channel limited to key prefixes, say).
    fn covers(&self, key: &[u8]) -> bool {
        let _ = key;
        true
    }
}

/// Keeps an [`InvalidationChannel`] running; dropping it stops the channel.
pub struct Subscription {
    _guard: Box<dyn Any + Send + Sync>,
}

impl Subscription {
    /// A subscription that holds `guard` (whose `Drop` stops the channel, such as a task's
    /// abort handle wrapper) for as long as the near cache lives.
    pub fn new(guard: impl Any + Send + Sync) -> Self {
        Subscription {
            _guard: Box::new(guard),
        }
    }

    /// Runs `task` (a channel's subscribe-and-report loop, such as one built on
    /// [`resubscribe`]) on the current tokio runtime until the subscription is dropped.
    /// Outside a runtime: a `Config` error naming `backend` and `what`.
    pub fn spawn(
        backend: &'static str,
        what: &str,
        task: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<Self> {
        let rt = tokio::runtime::Handle::try_current().map_err(|e| {
            crate::Error::new(
                crate::ErrorKind::Config,
                format!("{what} must be started inside a tokio runtime"),
            )
            .with_backend(backend)
            .with_source(e)
        })?;
        Ok(Subscription::new(AbortOnDrop(
            rt.spawn(task).abort_handle(),
        )))
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Keeps a channel subscribed until the near cache is gone: runs `session` (one connection:
/// subscribe, report, return on failure), reports the channel down after it, logs its error
/// as `what` lost, and starts again after a pause that grows from 50 ms to 1 s (and starts
/// over after a session that lasted 5 s).
pub async fn resubscribe<F, Fut>(sink: &InvalidationSink, what: &str, mut session: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let min = Duration::from_millis(50);
    let mut backoff = min;
    while !sink.is_closed() {
        let began = Instant::now();
        let res = session().await;
        sink.down();
        if let Err(e) = res {
            tracing::warn!(error = %e, "{what} lost; reconnecting");
        }
        if began.elapsed() > Duration::from_secs(5) {
            backoff = min;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

/// What a near cache does with its channel's reports, one method per
/// [`InvalidationSink`] call (see [`InvalidationChannel`] for their order).
///
/// Implemented by the near cache; a channel never sees it, only the sink that wraps it.
pub trait InvalidationTarget: Send + Sync {
    /// The key stored as `key` changed.
    fn invalidate(&self, key: &[u8]);
    /// Anything may have changed.
    fn invalidate_all(&self);
    /// The channel is subscribed.
    fn up(&self);
    /// The channel may have missed something.
    fn down(&self);
    /// Every change completed before `sent_at` has been reported.
    fn synced(&self, sent_at: Instant);
}

/// Where an [`InvalidationChannel`] reports; see there for the order of calls. Cheap to
/// clone; every call does nothing once the near cache is dropped (see
/// [`is_closed`](Self::is_closed)).
#[derive(Clone)]
pub struct InvalidationSink {
    target: Weak<dyn InvalidationTarget>,
    sync_interval: Duration,
}

impl fmt::Debug for InvalidationSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InvalidationSink")
            .field("sync_interval", &self.sync_interval)
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl InvalidationSink {
    /// A sink reporting to `target` for as long as it lives, asking for a
    /// [`synced`](Self::synced) every `sync_interval`. Made by the near cache, which hands it
    /// to [`InvalidationChannel::subscribe`].
    pub fn new(target: Weak<dyn InvalidationTarget>, sync_interval: Duration) -> Self {
        InvalidationSink {
            target,
            sync_interval,
        }
    }

    fn with(&self, f: impl FnOnce(&Arc<dyn InvalidationTarget>)) {
        if let Some(c) = self.target.upgrade() {
            f(&c);
        }
    }

    /// The key stored as `key` (the backend's own bytes for it) changed.
    pub fn invalidate(&self, key: &[u8]) {
        self.with(|c| c.invalidate(key));
    }

    /// Anything may have changed (the server flushed its data, a message was not
    /// understood): drops every local entry, and the channel stays up.
    pub fn invalidate_all(&self) {
        self.with(|c| c.invalidate_all());
    }

    /// Subscribed: every change from now on will be reported.
    pub fn up(&self) {
        self.with(|c| c.up());
    }

    /// Something may have been missed: the local tier is flushed and bypassed until
    /// [`up`](Self::up) and a fresh [`synced`](Self::synced).
    pub fn down(&self) {
        self.with(|c| c.down());
    }

    /// Every change completed before `sent_at` has been reported.
    pub fn synced(&self, sent_at: Instant) {
        self.with(|c| c.synced(sent_at));
    }

    /// How often the channel should call [`synced`](Self::synced): a quarter of the near
    /// cache's staleness bound.
    pub fn sync_interval(&self) -> Duration {
        self.sync_interval
    }

    /// The near cache is gone: the channel should stop.
    pub fn is_closed(&self) -> bool {
        self.target.strong_count() == 0
    }
}
