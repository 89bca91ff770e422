//! Configuration of the memory backend.

use larder_cache_api::url::BackendUrl;
use larder_cache_api::{Error, ErrorKind, Result};

/// Limits of a [`MemoryBackend`](crate::MemoryBackend).
///
/// ```
/// use larder_backend_memory::MemoryConfig;
///
/// let c = MemoryConfig::from_url("memory://?capacity=10000&max_bytes=16777216")?;
/// assert_eq!(c.max_entries, 10_000);
/// assert_eq!(c.max_bytes, 16 << 20);
/// # Ok::<(), larder_cache_api::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemoryConfig {
    /// Most entries kept; beyond it the least recently used of a random sample is evicted.
    pub max_entries: usize,
    /// Most bytes kept (keys, values and a fixed per-entry overhead).
    pub max_bytes: usize,
    /// Largest value accepted by `put`.
    pub max_value_size: usize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            max_entries: 100_000,
            max_bytes: 256 * 1024 * 1024,
            max_value_size: 1024 * 1024,
        }
    }
}

impl MemoryConfig {
    /// Sets [`max_entries`](Self::max_entries).
    pub fn with_max_entries(mut self, n: usize) -> Self {
        self.max_entries = n;
        self
    }

    /// Sets [`max_bytes`](Self::max_bytes).
    pub fn with_max_bytes(mut self, n: usize) -> Self {
        self.max_bytes = n;
        self
    }

    /// Sets [`max_value_size`](Self::max_value_size).
    pub fn with_max_value_size(mut self, n: usize) -> Self {
        self.max_value_size = n;
        self
    }

    /// Parses `memory://?capacity=N&max_bytes=N&max_value_size=N` (every parameter optional).
    pub fn from_url(url: &str) -> Result<Self> {
        Self::from_backend_url(&BackendUrl::parse(url)?)
    }

    /// The configuration a parsed `memory://` URL describes.
    pub fn from_backend_url(u: &BackendUrl) -> Result<Self> {
        if u.scheme() != "memory" {
            return Err(Error::new(
                ErrorKind::Config,
                format!("expected a memory:// URL, got scheme {:?}", u.scheme()),
            ));
        }
        if !u.hosts().is_empty() || u.username().is_some() || u.password().is_some() {
            return Err(Error::new(
                ErrorKind::Config,
                "a memory:// URL names no host and no user: memory://?capacity=N",
            ));
        }
        u.check_options(&["capacity", "max_entries", "max_bytes", "max_value_size"])?;
        let mut c = MemoryConfig::default();
        for name in ["capacity", "max_entries"] {
            if let Some(n) = u.option_parsed::<usize>(name)? {
                c.max_entries = n;
            }
        }
        if let Some(n) = u.option_parsed::<usize>("max_bytes")? {
            c.max_bytes = n;
        }
        if let Some(n) = u.option_parsed::<usize>("max_value_size")? {
            c.max_value_size = n;
        }
        c.validate()?;
        Ok(c)
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.max_entries == 0 || self.max_bytes == 0 || self.max_value_size == 0 {
            return Err(Error::new(
                ErrorKind::Config,
                "memory backend limits must be positive",
            ));
        }
        // Fewer, and each entry would weigh a large part of the whole budget: the eviction
        // that makes room for one entry could take that entry itself.
        if self.max_entries < 4 {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "max_entries {} is too small: the memory backend needs room for at least 4 entries",
                    self.max_entries
                ),
            ));
        }
        // The largest entry (value, longest key, bookkeeping) must fit in the budget.
        if self.max_value_size + 512 > self.max_bytes {
            return Err(Error::new(
                ErrorKind::Config,
                "max_bytes must exceed max_value_size by at least 512 bytes",
            ));
        }
        Ok(())
    }
}
