//! The [`CacheBackend`] implementation.

use std::sync::{Arc, Weak};
use std::time::Duration;

use larder_cache_api::{
    async_trait, Bytes, CacheBackend, Capabilities, DeleteMode, Entry, Key, PutMode, Result, Ttl,
    Version,
};

use crate::config::MemoryConfig;
use crate::core::Store;
use crate::error::BACKEND;

/// The in-process backend. See the [crate docs](crate).
pub struct MemoryBackend {
    store: Store,
    caps: Capabilities,
    config: MemoryConfig,
}

impl std::fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBackend")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Default for MemoryBackend {
    fn default() -> Self {
        match Self::build(MemoryConfig::default()) {
            Ok(b) => b,
            // The default limits are valid; this arm only satisfies the type.
            Err(e) => unreachable!("default memory configuration rejected: {e}"),
        }
    }
}

impl MemoryBackend {
    /// A backend with `config`'s limits.
    pub fn new(config: MemoryConfig) -> Result<Self> {
        config.validate()?;
        Self::build(config)
    }

    /// A backend from a `memory://?capacity=N` URL (see [`MemoryConfig::from_url`]).
    pub fn from_url(url: &str) -> Result<Self> {
        Self::new(MemoryConfig::from_url(url)?)
    }

    fn build(config: MemoryConfig) -> Result<Self> {
        let mut caps = Capabilities::full(BACKEND);
        caps.may_evict = true;
        caps.persistent = false;
        caps.persistence_note = Some("entries live in this process's memory only".into());
        caps.eviction_note = Some(
            format!(
                "it evicts least-recently-used entries beyond {} entries or {} bytes",
                config.max_entries, config.max_bytes
            )
            .into(),
        );
        caps.max_value_size = config.max_value_size;
        Ok(MemoryBackend {
            store: Store::new(config.max_entries, config.max_bytes, config.max_value_size)?,
            caps,
            config,
        })
    }

    /// The limits in force.
    pub fn config(&self) -> &MemoryConfig {
        &self.config
    }

    /// Entries held (expired ones not yet removed included).
    pub fn len(&self) -> usize {
        self.store.len()
    }

    /// True if no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held, as counted against `max_bytes`.
    pub fn bytes(&self) -> usize {
        self.store.bytes()
    }

    /// Entries evicted to stay within the limits, since creation.
    pub fn evictions(&self) -> u64 {
        self.store.evictions()
    }

    /// Removes every expired entry now; returns how many.
    pub fn purge_expired(&self) -> usize {
        self.store.purge_expired()
    }

    /// Runs [`purge_expired`](Self::purge_expired) every `every` on the current tokio
    /// runtime, until the backend is dropped.
    pub fn spawn_sweeper(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(me) = weak.upgrade() else { return };
                me.purge_expired();
            }
        })
    }
}

#[async_trait]
impl CacheBackend for MemoryBackend {
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    fn details(&self) -> Vec<(&'static str, String)> {
        vec![
            ("capacity", format!("{} entries", self.config.max_entries)),
            ("max bytes", self.config.max_bytes.to_string()),
            (
                "note",
                "memory:// lives inside one process: a tool that opens it sees a new, empty \
                 instance, not the application's"
                    .to_owned(),
            ),
        ]
    }

    async fn get(&self, key: &Key) -> Result<Option<Entry>> {
        Ok(self.store.get(key))
    }

    /// Always answers: the store never waits.
    fn get_now(&self, key: &Key) -> Option<Result<Option<Entry>>> {
        Some(Ok(self.store.get(key)))
    }

    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Entry>>> {
        Ok(keys.iter().map(|k| self.store.get(k)).collect())
    }

    async fn put(
        &self,
        key: &Key,
        value: Bytes,
        ttl: Option<Ttl>,
        mode: PutMode,
    ) -> Result<Version> {
        self.caps.check_value_size(value.len())?;
        self.store.put(key, value, ttl, mode)
    }

    async fn put_many(&self, items: &[(Key, Bytes)], ttl: Option<Ttl>) -> Result<Vec<Version>> {
        for (_, v) in items {
            self.caps.check_value_size(v.len())?;
        }
        items
            .iter()
            .map(|(k, v)| self.store.put(k, v.clone(), ttl, PutMode::Overwrite))
            .collect()
    }

    async fn delete(&self, key: &Key, mode: DeleteMode) -> Result<bool> {
        self.store.delete(key, mode)
    }

    async fn touch(&self, key: &Key, ttl: Option<Ttl>) -> Result<bool> {
        Ok(self.store.touch(key, ttl))
    }
}
