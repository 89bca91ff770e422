//! Leases with fencing tokens, on any backend with linearizable compare-and-swap.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::clock::{Clock, SystemClock};
use crate::holder::HolderId;
use larder_cache_api::{Cache, Capabilities, DynBackend, Error, ErrorKind, Key, Result, Version};

/// Timing of a lease. Validated so that a holder always renews well before others may
/// take over: `lease > renew_deadline > 1.2 × retry_period`, and `lease ≥ renew_deadline +
/// retry_period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeaseConfig {
    /// How long others wait, after they last saw the lease change, before taking it over.
    pub lease: Duration,
    /// A holder that could not renew for this long steps down (well before `lease`).
    pub renew_deadline: Duration,
    /// Pause between renewals, and between acquisition attempts.
    pub retry_period: Duration,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig {
            lease: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
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
        };
        c.validate()?;
        Ok(c)
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

#[derive(Debug, Clone)]
struct Observed {
    version: Version,
    since: Instant,
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
    observed: Mutex<Option<Observed>>,
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

/// Refuses backends that cannot fence, judged by their declared
/// [`Capabilities`](larder_cache_api::Capabilities) alone (see [`check_capabilities`]).
pub fn check_backend(backend: &DynBackend) -> Result<()> {
    check_capabilities(backend.capabilities())
}

/// Refuses a declaration that cannot fence: coordination needs compare-and-swap
/// ([`cas`](Capabilities::cas)) that is linearizable, with versions that never repeat
/// ([`linearizable_cas`](Capabilities::linearizable_cas)).
///
/// The refusal is an [`ErrorKind::Unsupported`] error whose message says, from the
/// capabilities, what the store lacks (no CAS, CAS not linearizable) and what else makes it
/// unfit to keep coordination records (it may evict entries, it is not persistent); the
/// backend's name is there only for the reader.
///
/// Eviction and persistence alone do not refuse a store: memory and sled (within one
/// process) and single-node Redis qualify. The guarantee that tokens only grow then assumes
/// that the lease and task records are not evicted (size the memory backend, or run Redis
/// with `maxmemory-policy noeviction` and persistence).
pub fn check_capabilities(caps: &Capabilities) -> Result<()> {
    if caps.cas && caps.linearizable_cas {
        return Ok(());
    }
    let mut why = vec![if caps.cas {
        "its compare-and-swap is not linearizable (a version may repeat)"
    } else {
        "it offers no compare-and-swap"
    }];
    if caps.may_evict {
        why.push("it may evict entries");
    }
    if !caps.persistent {
        why.push("it is not persistent");
    }
    Err(Error::new(
        ErrorKind::Unsupported,
        format!(
            "{} cannot hold leases: {}; coordination needs linearizable compare-and-swap with \
             versions that never repeat, on a store that keeps its records (a SQL store, \
             single-node Redis, or memory or sled within one process)",
            caps.name,
            why.join(", ")
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
        check_backend(&backend)?;
        config.validate()?;
        Ok(Lease {
            cache: Cache::new(backend),
            key: Self::key_for(name)?,
            name: name.to_owned(),
            holder,
            config,
            clock: Arc::new(SystemClock),
            observed: Mutex::new(None),
        })
    }

    /// Replaces the wall clock used for the display timestamps in the record.
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

    /// How long the current record has been seen unchanged by this process.
    fn unchanged_for(&self, version: Version) -> Duration {
        let mut o = self.observed.lock();
        match &*o {
            Some(seen) if seen.version == version => seen.since.elapsed(),
            _ => {
                *o = Some(Observed {
                    version,
                    since: Instant::now(),
                });
                Duration::ZERO
            }
        }
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
                let rec = self.record(1, self.clock.now_ms());
                (rec.clone(), self.cache.create(&self.key, &rec, None).await)
            }
            Some((rec, version)) => {
                if rec.holder == self.holder.as_str() && !rec.released {
                    // Ours already (this process stepped down, e.g. after an ambiguous
                    // renewal): take it back at once, but as a new term with a new token, so
                    // fenced writes can tell the old term's leftovers from the new one's.
                    let next = self.record(rec.token + 1, self.clock.now_ms());
                    (
                        next.clone(),
                        self.cache.replace(&self.key, &next, None, version).await,
                    )
                } else {
                    let waited = self.unchanged_for(version);
                    let lease = Duration::from_millis(rec.lease_ms).max(self.config.lease);
                    if !rec.released && waited < lease {
                        return Ok(None);
                    }
                    let next = self.record(rec.token + 1, self.clock.now_ms());
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
