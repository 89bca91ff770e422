//! The counters of a near cache.

use std::sync::atomic::{AtomicU64, Ordering};

use larder_cache_api::layer::ChannelFault;
use parking_lot::Mutex;

/// Counters of a [`Near`](crate::Near) cache, kept in process and exported through the `metrics` facade
/// (labelled with the backend's name):
///
/// | metric | counts |
/// |---|---|
/// | `larder_near_local_hits_total` | [`local_hits`](Self::local_hits) |
/// | `larder_near_shared_hits_total` | [`shared_hits`](Self::shared_hits) |
/// | `larder_near_misses_total` | [`misses`](Self::misses) |
/// | `larder_near_invalidations_total` | [`invalidations`](Self::invalidations) |
/// | `larder_near_bypassed_total` | [`bypassed`](Self::bypassed) |
/// | `larder_near_flushes_total` | [`flushes`](Self::flushes) |
/// | `larder_near_channel_up` (gauge) | 1 while the channel is up, 0 while it is down |
/// | `larder_near_channel_faults_total` (label `fault`) | each [`channel_fault`](Self::channel_fault) taken on |
///
/// The exported counters are registered when the cache is built: install the `metrics`
/// recorder before that.
#[derive(Debug)]
pub struct NearStats {
    pub(crate) local_hits: Tally,
    pub(crate) shared_hits: Tally,
    pub(crate) misses: Tally,
    pub(crate) invalidations: Tally,
    pub(crate) bypassed: Tally,
    pub(crate) flushes: Tally,
    backend: &'static str,
    /// Why the channel is down (`None` while it is up).
    fault: Mutex<Option<ChannelFault>>,
    channel_up: metrics::Gauge,
}

/// One counter: in process, and in the `metrics` recorder.
#[derive(Debug)]
pub(crate) struct Tally {
    n: AtomicU64,
    exported: metrics::Counter,
}

impl Tally {
    fn new(name: &'static str, backend: &'static str) -> Self {
        Tally {
            n: AtomicU64::new(0),
            exported: metrics::counter!(name, "backend" => backend),
        }
    }

    pub(crate) fn add(&self) {
        self.n.fetch_add(1, Ordering::Relaxed);
        self.exported.increment(1);
    }

    fn get(&self) -> u64 {
        self.n.load(Ordering::Relaxed)
    }
}

impl NearStats {
    pub(crate) fn new(backend: &'static str) -> Self {
        NearStats {
            local_hits: Tally::new("larder_near_local_hits_total", backend),
            shared_hits: Tally::new("larder_near_shared_hits_total", backend),
            misses: Tally::new("larder_near_misses_total", backend),
            invalidations: Tally::new("larder_near_invalidations_total", backend),
            bypassed: Tally::new("larder_near_bypassed_total", backend),
            flushes: Tally::new("larder_near_flushes_total", backend),
            backend,
            fault: Mutex::new(None),
            channel_up: metrics::gauge!("larder_near_channel_up", "backend" => backend),
        }
    }

    /// The channel is up: no fault.
    pub(crate) fn channel_up(&self) {
        *self.fault.lock() = None;
        self.channel_up.set(1.0);
    }

    /// The channel went down (`was_up`) or reported down again, for `fault` if it said why:
    /// a report without a reason keeps the one already known. Returns the fault now shown.
    pub(crate) fn channel_down(&self, fault: Option<ChannelFault>, was_up: bool) -> ChannelFault {
        let mut shown = self.fault.lock();
        let now = fault
            .or(if was_up { None } else { *shown })
            .unwrap_or(ChannelFault::Lost);
        if was_up || *shown != Some(now) {
            *shown = Some(now);
            metrics::counter!(
                "larder_near_channel_faults_total",
                "backend" => self.backend,
                "fault" => now.as_str()
            )
            .increment(1);
        }
        self.channel_up.set(0.0);
        now
    }

    /// Reads answered from process memory.
    pub fn local_hits(&self) -> u64 {
        self.local_hits.get()
    }
    /// Reads answered by the shared backend with an entry.
    pub fn shared_hits(&self) -> u64 {
        self.shared_hits.get()
    }
    /// Reads that found nothing (in the shared backend).
    pub fn misses(&self) -> u64 {
        self.misses.get()
    }
    /// Key invalidations received from the channel.
    pub fn invalidations(&self) -> u64 {
        self.invalidations.get()
    }
    /// Reads that skipped the local tier because the channel was down or not synced within
    /// the staleness bound.
    pub fn bypassed(&self) -> u64 {
        self.bypassed.get()
    }
    /// Times the local tier was flushed because the channel went down (or asked for it).
    pub fn flushes(&self) -> u64 {
        self.flushes.get()
    }
    /// Why the invalidation channel is down, as far as it said (a PostgreSQL channel whose
    /// trigger is gone: [`ChannelFault::TriggerMissing`]); `None` while it is up, and before
    /// it first came up unless it failed.
    pub fn channel_fault(&self) -> Option<ChannelFault> {
        *self.fault.lock()
    }
}
