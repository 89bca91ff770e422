//! The invalidation channel of a near cache (`larder_near::Near`): how a shared backend tells
//! every process which keys changed.
//!
//! The contract lives here, beside the backend trait, so that a backend offers its channel
//! while depending on this crate alone; the near cache itself, which acts on the reports, is
//! its own crate.

use std::any::Any;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

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
///    lost, a ping not answered in time), then `up` again after subscribing anew;
///    [`down_because`](InvalidationSink::down_because) when it can say why.
///
/// A channel that opens a new connection for each subscription reports through
/// [`next_generation`](InvalidationSink::next_generation): a report that arrives late from
/// an older connection (its `Disconnection`, say) then never changes the state of the
/// current one.
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
    /// The channel may have missed something, and says why (by default the same as
    /// [`down`](Self::down)).
    fn down_because(&self, fault: ChannelFault) {
        let _ = fault;
        self.down();
    }
}

/// Why an invalidation channel went down, as far as it can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ChannelFault {
    /// The connection was lost or did not answer in time.
    Lost,
    /// A sync sent the way writes go did not come back in time: changes may go unreported.
    Unconfirmed,
    /// PostgreSQL: the `larder_kv_notify` trigger is missing, so writes notify nobody.
    TriggerMissing,
    /// PostgreSQL: the `larder_kv_notify` trigger is disabled, so writes notify nobody.
    TriggerDisabled,
    /// The node the channel confirmed against no longer takes the writes (a failover, a
    /// role change, a cluster topology change): what was confirmed there says nothing of
    /// the new primary's writes.
    PrimaryMoved,
}

impl ChannelFault {
    /// A short name for metrics labels and logs (`"trigger_missing"`).
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelFault::Lost => "lost",
            ChannelFault::Unconfirmed => "unconfirmed",
            ChannelFault::TriggerMissing => "trigger_missing",
            ChannelFault::TriggerDisabled => "trigger_disabled",
            ChannelFault::PrimaryMoved => "primary_moved",
        }
    }
}

impl fmt::Display for ChannelFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an [`InvalidationChannel`] reports; see there for the order of calls. Cheap to
/// clone; every call does nothing once the near cache is dropped (see
/// [`is_closed`](Self::is_closed)).
#[derive(Clone)]
pub struct InvalidationSink {
    target: Weak<dyn InvalidationTarget>,
    sync_interval: Duration,
    /// The connection generation this sink reports for (0: none; its reports always count).
    generation: u64,
    generations: Arc<Generations>,
}

/// Shared by every clone of a sink: which connection generation is current.
#[derive(Default)]
struct Generations {
    /// The last generation handed out.
    issued: AtomicU64,
    /// The newest generation that came up; held while a gated report is delivered, so that
    /// a check and its report are never split by a newer generation's `up`.
    current: Mutex<u64>,
}

impl fmt::Debug for InvalidationSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InvalidationSink")
            .field("sync_interval", &self.sync_interval)
            .field("generation", &self.generation)
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
            generation: 0,
            generations: Arc::default(),
        }
    }

    /// A sink for a new connection of the channel (generation 1, 2, ...): once it has
    /// reported [`up`](Self::up), the `up`, `down` and `synced` reports of the sinks of older
    /// generations change nothing (their invalidations still count: dropping an entry is
    /// always safe). Reports of the sink this was made from (generation 0) always count.
    pub fn next_generation(&self) -> InvalidationSink {
        let generation = self.generations.issued.fetch_add(1, Ordering::Relaxed) + 1;
        InvalidationSink {
            generation,
            ..self.clone()
        }
    }

    /// The connection generation this sink reports for (0: the sink the near cache made).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    fn with(&self, f: impl FnOnce(&Arc<dyn InvalidationTarget>)) {
        if let Some(c) = self.target.upgrade() {
            f(&c);
        }
    }

    /// Delivers a state report unless a newer generation has come up since this one; `up`
    /// makes this generation the current one.
    fn gated(&self, up: bool, f: impl FnOnce(&Arc<dyn InvalidationTarget>)) {
        if self.generation == 0 {
            return self.with(f);
        }
        let mut current = self.generations.current.lock();
        if self.generation < *current {
            return;
        }
        if up {
            *current = self.generation;
        }
        self.with(f);
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
        self.gated(true, |c| c.up());
    }

    /// Something may have been missed: the local tier is flushed and bypassed until
    /// [`up`](Self::up) and a fresh [`synced`](Self::synced).
    pub fn down(&self) {
        self.gated(false, |c| c.down());
    }

    /// As [`down`](Self::down), saying why (shown in the near cache's stats and metrics).
    pub fn down_because(&self, fault: ChannelFault) {
        self.gated(false, |c| c.down_because(fault));
    }

    /// Every change completed before `sent_at` has been reported.
    pub fn synced(&self, sent_at: Instant) {
        self.gated(false, |c| c.synced(sent_at));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the state reports it receives.
    #[derive(Default)]
    struct Log(Mutex<Vec<&'static str>>);

    impl InvalidationTarget for Log {
        fn invalidate(&self, _: &[u8]) {
            self.0.lock().push("invalidate");
        }
        fn invalidate_all(&self) {
            self.0.lock().push("invalidate_all");
        }
        fn up(&self) {
            self.0.lock().push("up");
        }
        fn down(&self) {
            self.0.lock().push("down");
        }
        fn synced(&self, _: Instant) {
            self.0.lock().push("synced");
        }
    }

    #[test]
    fn an_older_generation_never_changes_the_state_of_a_newer_one() {
        let log = Arc::new(Log::default());
        let target: Weak<dyn InvalidationTarget> = Arc::downgrade(&log) as Weak<Log>;
        let sink = InvalidationSink::new(target, Duration::from_millis(10));
        let (old, new) = (sink.next_generation(), sink.next_generation());
        assert_eq!((old.generation(), new.generation()), (1, 2));
        old.up();
        old.synced(Instant::now());
        new.up();
        // Late reports of the old connection: only its invalidation counts.
        old.down();
        old.down_because(ChannelFault::Lost);
        old.synced(Instant::now());
        old.up();
        old.invalidate(b"k");
        new.synced(Instant::now());
        new.down_because(ChannelFault::Lost);
        sink.down();
        assert_eq!(
            *log.0.lock(),
            ["up", "synced", "up", "invalidate", "synced", "down", "down"]
        );
    }
}
