//! What a backend declares it can do.

use std::borrow::Cow;
use std::time::Duration;

use crate::{Error, Key, PutMode, Result};

/// What a backend offers and how it behaves, declared once by the backend.
///
/// The conformance suite tests every declared capability and checks that every undeclared
/// one is refused with [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported).
/// Coordination (`larder-coord`) refuses backends that cannot fence by
/// [`linearizable_cas`](Capabilities::linearizable_cas), and, unless told to accept the loss
/// of its records, backends that [`may_evict`](Capabilities::may_evict) or are not
/// [`persistent`](Capabilities::persistent); its refusal quotes the backend's
/// [`persistence_note`](Capabilities::persistence_note) and
/// [`eviction_note`](Capabilities::eviction_note). Every such question is answered here, never
/// by comparing [`name`](Capabilities::name).
///
/// `persistent` and `may_evict` are what the backend **measured** where the answer depends on
/// the server's configuration (Redis reads its `INFO` at connect), and the safe answer
/// (not persistent, may evict) where it could not tell.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// Short backend name, used in errors and metrics (`"memory"`, `"redis"`, ...); for
    /// readers only, never to decide behaviour.
    pub name: &'static str,
    /// Conditional writes: [`PutMode::Create`], [`PutMode::Update`] and
    /// [`DeleteMode::IfVersion`](crate::DeleteMode::IfVersion).
    pub cas: bool,
    /// A successful CAS is visible to every later operation from any client, and versions
    /// never repeat for a key (not even across restarts, within [`shared`](Self::shared)).
    pub linearizable_cas: bool,
    /// [`CacheBackend::touch`](crate::CacheBackend::touch) changes the TTL in place.
    pub touch: bool,
    /// The backend may drop entries before their TTL (memory pressure, LRU).
    pub may_evict: bool,
    /// Entries survive a restart of the process (and of the server, where there is one).
    pub persistent: bool,
    /// Why the store is not persistent, or how it persists, in a few words for people (Redis:
    /// `"no append-only file (appendonly no)"`); `None` where there is nothing to add to
    /// [`persistent`](Self::persistent). Quoted in errors, never used to decide anything.
    pub persistence_note: Option<Cow<'static, str>>,
    /// Why the store may evict, in a few words for people (Redis: `"maxmemory-policy
    /// allkeys-lru evicts"`); `None` where there is nothing to add to
    /// [`may_evict`](Self::may_evict). Quoted in errors, never used to decide anything.
    pub eviction_note: Option<Cow<'static, str>>,
    /// Several processes see the same data.
    pub shared: bool,
    /// The backend offers an invalidation channel that reports every change of its keys,
    /// for a near cache (`larder_near::Near`) in front of it (Redis client tracking,
    /// PostgreSQL `LISTEN/NOTIFY`); `Near` refuses a backend without one unless a staleness
    /// is accepted, and its refusal says which of the two applies. False behind a layer that
    /// changes keys ([`Namespace`](crate::layer::Namespace)).
    pub invalidation_channel: bool,
    /// TTLs are rounded up to this granularity (1 ms, 1 s, ...).
    pub ttl_precision: Duration,
    /// Largest value in bytes that `put` accepts.
    pub max_value_size: usize,
    /// Longest key in bytes that every operation accepts: [`Key::MAX_LEN`] for a store, less
    /// behind a layer that adds to keys ([`Namespace`](crate::layer::Namespace) puts its
    /// prefix in front). Longer keys are refused with
    /// [`ErrorKind::InvalidKey`](crate::ErrorKind::InvalidKey).
    pub max_key_len: usize,
}

impl Capabilities {
    /// Capabilities of a backend that can do everything, for `name`; backends adjust fields.
    pub fn full(name: &'static str) -> Self {
        Capabilities {
            name,
            cas: true,
            linearizable_cas: true,
            touch: true,
            may_evict: false,
            persistent: false,
            persistence_note: None,
            eviction_note: None,
            shared: false,
            invalidation_channel: false,
            ttl_precision: Duration::from_millis(1),
            max_value_size: 1024 * 1024,
            max_key_len: Key::MAX_LEN,
        }
    }

    /// `Err(Unsupported)` unless `mode` is offered.
    pub fn check_put_mode(&self, mode: PutMode) -> Result<()> {
        if !self.cas && mode != PutMode::Overwrite {
            return Err(Error::unsupported("conditional writes (cas)").with_backend(self.name));
        }
        Ok(())
    }

    /// `Err(Unsupported)` unless conditional deletes are offered.
    pub fn check_conditional_delete(&self) -> Result<()> {
        if !self.cas {
            return Err(Error::unsupported("conditional deletes (cas)").with_backend(self.name));
        }
        Ok(())
    }

    /// `Err(Unsupported)` unless touch is offered.
    pub fn check_touch(&self) -> Result<()> {
        if !self.touch {
            return Err(Error::unsupported("touch").with_backend(self.name));
        }
        Ok(())
    }

    /// `Err(InvalidKey)` if `key` is longer than [`max_key_len`](Self::max_key_len).
    pub fn check_key_len(&self, key: &Key) -> Result<()> {
        if key.len() > self.max_key_len {
            return Err(Error::new(
                crate::ErrorKind::InvalidKey,
                format!(
                    "key is {} bytes; {} accepts at most {}",
                    key.len(),
                    self.name,
                    self.max_key_len
                ),
            )
            .with_backend(self.name));
        }
        Ok(())
    }

    /// `Err(ValueTooLarge)` if `len` exceeds [`max_value_size`](Self::max_value_size).
    pub fn check_value_size(&self, len: usize) -> Result<()> {
        if len > self.max_value_size {
            return Err(Error::new(
                crate::ErrorKind::ValueTooLarge,
                format!(
                    "value is {len} bytes; {} accepts at most {}",
                    self.name, self.max_value_size
                ),
            )
            .with_backend(self.name));
        }
        Ok(())
    }
}
