//! Leases with fencing tokens, on any backend with linearizable compare-and-swap that keeps
//! its records (or, by explicit choice, one that may lose them).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::clock::{Clock, SystemClock};
use crate::holder::HolderId;
use crate::liveness::{Look, Watcher};
use crate::token;
use larder_cache_api::{Cache, Capabilities, DynBackend, Error, ErrorKind, Key, Result, Version};

/// Whether coordination may run on a store that can lose its records: one that is not
/// [`persistent`](Capabilities::persistent) (memory, Redis without an append-only file) or
/// that [`may_evict`](Capabilities::may_evict) (memory at capacity, Redis with an evicting
/// `maxmemory-policy`).
///
/// One setting for all of coordination: it is part of [`LeaseConfig`], which
/// [`SchedulerConfig::lease`](crate::SchedulerConfig::lease) carries for periodic tasks and
/// the [`Lease`] that an [`Elector`](crate::Elector) runs carries for leadership.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> larder_cache_api::Result<()> {
/// use std::sync::Arc;
/// use larder_cache_api::ErrorKind;
/// use larder_coord::{Durability, HolderId, Lease, LeaseConfig, Scheduler, SchedulerConfig};
///
/// // The memory backend keeps nothing across a restart of the process.
/// let memory: larder_cache_api::DynBackend = Arc::new(larder_backend_memory::MemoryBackend::default());
/// let refused = Lease::new(memory.clone(), "leader", HolderId::generate(), LeaseConfig::default())
///     .unwrap_err();
/// assert_eq!(refused.kind(), ErrorKind::Unsupported);
/// assert!(refused.message().contains("not persistent"));
/// assert!(refused.message().contains("Durability::AcceptLoss"), "says how to opt in");
///
/// // Within one process (tests, a single-process app) losing the records with the process is
/// // fine: say so, once, in the configuration.
/// let config = LeaseConfig::default().with_durability(Durability::AcceptLoss);
/// let lease = Lease::new(memory.clone(), "leader", HolderId::generate(), config)?;
/// assert!(lease.try_acquire().await?.is_some());
/// let tasks = Scheduler::new(memory, HolderId::generate(), SchedulerConfig::default().lease(config))?;
/// # drop(tasks);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Durability {
    /// The store must keep its records: [`Lease::new`] and
    /// [`Scheduler::new`](crate::Scheduler::new) refuse a store that is not persistent or may
    /// evict, with [`ErrorKind::Unsupported`]. The default.
    #[default]
    Required,
    /// Accept a store that may lose the lease and task records (restart without
    /// persistence, eviction). What this gives up, and only after the store lost data:
    ///
    /// * **a period may run twice**: the task record that said it was claimed is gone, so
    ///   the period is claimed again (at most once per period holds only while the store
    ///   keeps its data);
    /// * **two holders of a lease at once**, briefly: a lost lease record is free to be taken
    ///   at once, while its holder acts on until its next renewal fails (at most its renew
    ///   deadline); fenced writes still refuse the older holder once the newer one has
    ///   written;
    /// * tokens still never go backwards, because a re-created record starts at a
    ///   time-based epoch, but only while the processes' wall clocks disagree by less than
    ///   the lifetime of the lost record (see the crate docs, "Tokens only grow").
    AcceptLoss,
}

/// Timing of a lease. Validated so that a holder always renews well before others may
/// take over: `lease > renew_deadline > 1.2 × retry_period`, and `lease ≥ renew_deadline +
/// retry_period`. It also carries the [`Durability`] that coordination requires of the store
/// (by default, a store that keeps its records).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeaseConfig {
    /// How long others wait, after they last saw the lease change, before taking it over.
    pub lease: Duration,
    /// A holder that could not renew for this long steps down (well before `lease`).
    pub renew_deadline: Duration,
    /// Pause between renewals, and between acquisition attempts.
    pub retry_period: Duration,
    /// Whether a store that may lose its records is accepted (default: no).
    pub durability: Durability,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig {
            lease: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
            durability: Durability::Required,
        }
    }
}

impl LeaseConfig {
    /// A configuration, validated.
    pub fn new(lease: Duration, renew_deadline: Duration, retry_period: Duration) -> Result<Self> {
        let c = LeaseConfig {
            lease,
            renew_deadline,
            retry_period,
            durability: Durability::Required,
        };
        c.validate()?;
        Ok(c)
    }

    /// Sets the [`Durability`] required of the store.
    pub fn with_durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Checks the ordering and margins.
    pub fn validate(&self) -> Result<()> {
        let bad = |why: &str| {
            Err(Error::new(
                ErrorKind::Config,
                format!(
                    "invalid lease timing (lease {:?}, renew deadline {:?}, retry period {:?}): {why}",
                    self.lease, self.renew_deadline, self.retry_period
                ),
            ))
        };
        if self.retry_period.is_zero() {
            return bad("the retry period must be positive");
        }
        if self.renew_deadline.as_secs_f64() <= self.retry_period.as_secs_f64() * 1.2 {
            return bad("the renew deadline must exceed 1.2 × the retry period");
        }
        if self.lease <= self.renew_deadline {
            return bad("the lease must be longer than the renew deadline");
        }
        if self.lease < self.renew_deadline + self.retry_period {
            return bad(
                "the lease must leave a margin of one retry period after the renew deadline",
            );
        }
        Ok(())
    }
}

/// What is stored under a lease's key. The record is never deleted: releasing it marks it
/// released, so the token keeps growing for the life of the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// The holder, or the last holder if released.
    pub holder: String,
    /// The fencing token of the current (or last) holder.
    pub token: u64,
    /// The lease length the holder promised to renew within, in milliseconds.
    pub lease_ms: u64,
    /// When the holder acquired it (its wall clock; for display).
    pub acquired_at_ms: i64,
    /// When the holder last renewed it (its wall clock; for display).
    pub renewed_at_ms: i64,
    /// Released by its holder: may be taken at once.
    pub released: bool,
}

/// A lease this process holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The fencing token: strictly greater than every earlier holder's.
    pub token: u64,
    version: Version,
    record: LeaseRecord,
    /// Until when this process may act as holder (local monotonic time): the start of the
    /// last successful acquire or renew plus the renew deadline.
    pub valid_until: Instant,
}

/// One named lease. Expiry is judged the way Kubernetes leader election judges it: a
/// candidate takes over only after it has seen the record **unchanged** for a whole lease,
/// by its own monotonic clock; no wall clocks are compared across machines.
pub struct Lease {
    cache: Cache,
    name: String,
    key: Key,
    holder: HolderId,
    config: LeaseConfig,
    clock: Arc<dyn Clock>,
    /// The record's version as last seen, and since when (one record: the key is `()`).
    observed: Mutex<Watcher<(), Version>>,
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("name", &self.name)
            .field("holder", &self.holder)
            .field("config", &self.config)
            .finish()
    }
}

/// Refuses a backend that cannot hold coordination records, judged by its declared
/// [`Capabilities`](larder_cache_api::Capabilities) alone (see [`check_capabilities`]).
pub fn check_backend(backend: &DynBackend, durability: Durability) -> Result<()> {
    check_capabilities(backend.capabilities(), durability)
}

/// Refuses a declaration that cannot hold coordination records:
///
/// * always, without compare-and-swap ([`cas`](Capabilities::cas)) that is linearizable with
///   versions that never repeat ([`linearizable_cas`](Capabilities::linearizable_cas));
/// * with [`Durability::Required`] (the default), a store that is not
///   [`persistent`](Capabilities::persistent) or that [`may_evict`](Capabilities::may_evict):
///   losing a task record lets a period be claimed twice.
///
/// The refusal is an [`ErrorKind::Unsupported`] error whose message says which property is
/// missing, with the backend's own note on it (Redis: "no append-only file (appendonly
/// no)", "maxmemory-policy allkeys-lru evicts"), and how to opt in
/// ([`Durability::AcceptLoss`]); the backend's name is there only for the reader.
pub fn check_capabilities(caps: &Capabilities, durability: Durability) -> Result<()> {
    let with_note = |what: &str, note: &Option<std::borrow::Cow<'static, str>>| match note {
        Some(n) => format!("{what} ({n})"),
        None => what.to_owned(),
    };
    let mut loses = Vec::new();
    if !caps.persistent {
        loses.push(with_note("it is not persistent", &caps.persistence_note));
    }
    if caps.may_evict {
        loses.push(with_note("it may evict entries", &caps.eviction_note));
    }
    if !(caps.cas && caps.linearizable_cas) {
        let mut why = vec![if caps.cas {
            "its compare-and-swap is not linearizable (a version may repeat)".to_owned()
        } else {
            "it offers no compare-and-swap".to_owned()
        }];
        why.extend(loses);
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "{} cannot hold leases: {}; coordination needs linearizable compare-and-swap \
                 with versions that never repeat, on a store that keeps its records (a SQL \
                 store, or Redis with an append-only file and maxmemory-policy noeviction)",
                caps.name,
                why.join(", ")
            ),
        )
        .with_backend(caps.name));
    }
    if loses.is_empty() || durability == Durability::AcceptLoss {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::Unsupported,
        format!(
            "{} may lose coordination records: {}. A lost task record lets a period be \
             claimed twice, and a lost lease lets a second holder in at once; use a store \
             that keeps its records (PostgreSQL or SQLite through larder-backend-sql, sled \
             within one process, Redis with `appendonly yes` and `maxmemory-policy \
             noeviction`), or accept the loss explicitly with \
             `LeaseConfig::with_durability(Durability::AcceptLoss)` (given to \
             `SchedulerConfig::lease`, and to the `Lease` an `Elector` runs)",
            caps.name,
            loses.join(", ")
        ),
    )
    .with_backend(caps.name))
}

impl Lease {
    /// The key under which the lease `name` keeps its record (for tools that read it).
    pub fn key_for(name: &str) -> Result<Key> {
        Key::new(format!("larder:lease:{name}"))
    }

    /// The lease `name` on `backend`, held as `holder`.
    pub fn new(
        backend: DynBackend,
        name: &str,
        holder: HolderId,
        config: LeaseConfig,
    ) -> Result<Self> {
        check_backend(&backend, config.durability)?;
        config.validate()?;
        Ok(Lease {
            cache: Cache::new(backend),
            key: Self::key_for(name)?,
            name: name.to_owned(),
            holder,
            config,
            clock: Arc::new(SystemClock),
            observed: Mutex::new(Watcher::default()),
        })
    }

    /// Replaces the wall clock used for the display timestamps in the record and for the
    /// first token of a record this process creates.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The lease name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// This process's holder id.
    pub fn holder(&self) -> &HolderId {
        &self.holder
    }

    /// The timing.
    pub fn config(&self) -> &LeaseConfig {
        &self.config
    }

    /// The stored record, as anyone sees it.
    pub async fn observe(&self) -> Result<Option<LeaseRecord>> {
        self.cache.get(&self.key).await
    }

    /// How long until the record this process saw last would have been unchanged for a
    /// whole lease (by its monotonic clock), if it has seen one: then a look at it decides.
    pub(crate) fn takeover_in(&self) -> Option<Duration> {
        self.observed
            .lock()
            .dead_at(&(), self.config.lease)
            .map(|at| at.saturating_duration_since(Instant::now()))
    }

    fn record(&self, token: u64, acquired_at_ms: i64) -> LeaseRecord {
        let now = self.clock.now_ms();
        LeaseRecord {
            holder: self.holder.as_str().to_owned(),
            token,
            lease_ms: self.config.lease.as_millis() as u64,
            acquired_at_ms,
            renewed_at_ms: now,
            released: false,
        }
    }

    /// Tries once to acquire the lease: `Some` if this process holds it now (with a token
    /// higher than any earlier holder's), `None` if someone else holds it.
    pub async fn try_acquire(&self) -> Result<Option<Held>> {
        let start = Instant::now();
        let current = self.cache.get_versioned::<LeaseRecord>(&self.key).await?;
        let (record, written) = match current {
            None => {
                // Absent: never written, or lost with the store's data. A time-based first
                // token keeps tokens growing across such a loss (see `token`).
                let now = self.clock.now_ms();
                let rec = self.record(token::first(now), now);
                (rec.clone(), self.cache.create(&self.key, &rec, None).await)
            }
            Some((rec, version)) => {
                if rec.holder == self.holder.as_str() && !rec.released {
                    // Ours already (this process stepped down, e.g. after an ambiguous
                    // renewal): take it back at once, but as a new term with a new token, so
                    // fenced writes can tell the old term's leftovers from the new one's.
                    let next = self.record(token::after(rec.token), self.clock.now_ms());
                    (
                        next.clone(),
                        self.cache.replace(&self.key, &next, None, version).await,
                    )
                } else {
                    let lease = Duration::from_millis(rec.lease_ms).max(self.config.lease);
                    let look = self
                        .observed
                        .lock()
                        .look((), version, Instant::now(), lease);
                    if !rec.released && look != Look::Dead {
                        return Ok(None);
                    }
                    let next = self.record(token::after(rec.token), self.clock.now_ms());
                    (
                        next.clone(),
                        self.cache.replace(&self.key, &next, None, version).await,
                    )
                }
            }
        };
        match written {
            Ok(version) => Ok(Some(Held {
                token: record.token,
                version,
                record,
                valid_until: start + self.config.renew_deadline,
            })),
            Err(e) if e.kind() == ErrorKind::Conflict => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Renews a held lease. An error of any kind (conflict: someone took it; timeout:
    /// unknown) means this process must stop acting as holder at once; so does a renewal
    /// attempted after `valid_until`.
    pub async fn renew(&self, held: &mut Held) -> Result<()> {
        let start = Instant::now();
        if start >= held.valid_until {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!("lease {} lapsed locally before it was renewed", self.name),
            ));
        }
        let next = self.record(held.token, held.record.acquired_at_ms);
        let version = self
            .cache
            .replace(&self.key, &next, None, held.version)
            .await?;
        held.version = version;
        held.record = next;
        held.valid_until = start + self.config.renew_deadline;
        Ok(())
    }

    /// Releases a held lease so that another process may take it at once. Scoped to the
    /// holder by compare-and-swap: a stale holder's release changes nothing. The record is
    /// kept (tokens keep growing).
    pub async fn release(&self, held: Held) -> Result<()> {
        let mut rec = held.record.clone();
        rec.released = true;
        rec.renewed_at_ms = self.clock.now_ms();
        self.cache
            .replace(&self.key, &rec, None, held.version)
            .await
            .map(|_| ())
    }
}
