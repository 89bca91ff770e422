//! The [`CacheBackend`] implementation.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use larder_cache_api::{
    async_trait, Bytes, CacheBackend, Capabilities, DeleteMode, Entry, Error, ErrorKind, Key,
    PutMode, Result, Ttl, Version,
};

use crate::config::{Dispatch, Flush, SledConfig};
use crate::core::Core;
use crate::error::{self, BACKEND};

/// The embedded, persistent backend. See the [crate docs](crate).
///
/// Dropping the last handle stops the sweeper thread and closes the database, after which
/// the directory can be opened again.
pub struct SledBackend {
    core: Arc<Core>,
    caps: Capabilities,
    config: SledConfig,
    /// Held for its `Drop`, which stops the sweeper thread.
    _sweeper: Option<Sweeper>,
}

impl std::fmt::Debug for SledBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledBackend")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl SledBackend {
    /// Opens (or creates) the database `config` names and starts the expiry sweeper.
    ///
    /// A directory that is already open, in another process or in this one, gives
    /// [`ErrorKind::Unavailable`] naming the directory (sled allows one open database per
    /// directory; the error clears once the holder closes it). Opening waits up to one
    /// second for a database closed a moment ago to let go of the directory, so dropping
    /// a backend and opening the directory again works. An invalid config gives
    /// [`ErrorKind::Config`].
    pub async fn new(config: SledConfig) -> Result<Self> {
        config.validate()?;
        let sled_config = sled::Config::new()
            .path(&config.path)
            .cache_capacity(config.cache_capacity)
            .flush_every_ms(match config.flush {
                Flush::EveryMs(ms) => Some(ms),
                // EveryWrite flushes itself, and Never means never.
                Flush::EveryWrite | Flush::Never => None,
            });
        let path = config.path.clone();
        // Opening replays sled's log: disk work, kept off the async worker threads.
        let core = match tokio::runtime::Handle::try_current() {
            Ok(rt) => rt
                .spawn_blocking(move || Core::open(path, sled_config))
                .await
                .map_err(error::join)??,
            Err(_) => Core::open(path, sled_config)?,
        };
        let core = Arc::new(core);
        let sweeper = match config.sweep_interval {
            Some(every) => Some(Sweeper::spawn(core.clone(), every, config.sweep_batch)?),
            None => None,
        };
        let mut caps = Capabilities::full(BACKEND);
        caps.persistent = true;
        caps.persistence_note = Some("an embedded database on disk".into());
        caps.shared = false;
        caps.may_evict = false;
        caps.ttl_precision = Duration::from_millis(1);
        caps.max_value_size = config.max_value_size;
        Ok(SledBackend {
            core,
            caps,
            config,
            _sweeper: sweeper,
        })
    }

    /// Opens the database a `sled:///path?...` URL names (see [`SledConfig::from_url`]).
    pub async fn connect(url: &str) -> Result<Self> {
        Self::new(SledConfig::from_url(url)?).await
    }

    /// The configuration in force.
    pub fn config(&self) -> &SledConfig {
        &self.config
    }

    /// The database directory.
    pub fn path(&self) -> &Path {
        &self.core.path
    }

    /// The underlying sled database, for inspection and maintenance. Records live in the
    /// tree [`ENTRIES_TREE`](crate::ENTRIES_TREE) and the expiry index in
    /// [`EXPIRY_TREE`](crate::EXPIRY_TREE); writing to either behind the backend's back
    /// voids its guarantees.
    pub fn db(&self) -> &sled::Db {
        &self.core.db
    }

    /// Fsyncs every write made so far; returns the bytes flushed.
    pub async fn flush(&self) -> Result<usize> {
        self.core
            .db
            .flush_async()
            .await
            .map_err(|e| error::sled("flush", e))
    }

    /// Removes every expired entry now, through the expiry index, in batches of
    /// [`SledConfig::sweep_batch`]; returns how many. The background sweeper does the same
    /// every [`SledConfig::sweep_interval`].
    pub async fn sweep_expired(&self) -> Result<usize> {
        let batch = self.config.sweep_batch;
        self.run(move |core| core.sweep(batch, &AtomicBool::new(false)))
            .await
    }

    /// Runs `f` on the core as [`SledConfig::dispatch`] says.
    async fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Core) -> Result<T> + Send + 'static,
    {
        if self.config.dispatch == Dispatch::Inline {
            return f(&self.core);
        }
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let core = self.core.clone();
                rt.spawn_blocking(move || f(&core))
                    .await
                    .map_err(error::join)?
            }
            // No tokio runtime to hand the call to.
            Err(_) => f(&self.core),
        }
    }

    /// Makes a successful write durable when the flush policy asks for it.
    async fn after_write(&self) -> Result<()> {
        if self.config.flush == Flush::EveryWrite {
            self.flush().await?;
        }
        Ok(())
    }
}

#[async_trait]
impl CacheBackend for SledBackend {
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    fn details(&self) -> Vec<(&'static str, String)> {
        vec![
            ("path", self.config.path.display().to_string()),
            ("flush", format!("{:?}", self.config.flush)),
        ]
    }

    async fn get(&self, key: &Key) -> Result<Option<Entry>> {
        let key = key.clone();
        self.run(move |core| core.get(&key)).await
    }

    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Entry>>> {
        let keys = keys.to_vec();
        self.run(move |core| keys.iter().map(|k| core.get(k)).collect())
            .await
    }

    async fn put(
        &self,
        key: &Key,
        value: Bytes,
        ttl: Option<Ttl>,
        mode: PutMode,
    ) -> Result<Version> {
        self.caps.check_put_mode(mode)?;
        self.caps.check_value_size(value.len())?;
        let key = key.clone();
        let v = self
            .run(move |core| core.put(&key, &value, ttl, mode))
            .await?;
        self.after_write().await?;
        Ok(v)
    }

    async fn put_many(&self, items: &[(Key, Bytes)], ttl: Option<Ttl>) -> Result<Vec<Version>> {
        for (_, v) in items {
            self.caps.check_value_size(v.len())?;
        }
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let items = items.to_vec();
        let versions = self
            .run(move |core| {
                items
                    .iter()
                    .map(|(k, v)| core.put(k, v, ttl, PutMode::Overwrite))
                    .collect::<Result<Vec<_>>>()
            })
            .await?;
        // One flush for the whole batch.
        self.after_write().await?;
        Ok(versions)
    }

    async fn delete(&self, key: &Key, mode: DeleteMode) -> Result<bool> {
        if matches!(mode, DeleteMode::IfVersion(_)) {
            self.caps.check_conditional_delete()?;
        }
        let key = key.clone();
        let removed = self.run(move |core| core.delete(&key, mode)).await?;
        if removed {
            self.after_write().await?;
        }
        Ok(removed)
    }

    async fn touch(&self, key: &Key, ttl: Option<Ttl>) -> Result<bool> {
        self.caps.check_touch()?;
        let key = key.clone();
        let touched = self.run(move |core| core.touch(&key, ttl)).await?;
        if touched {
            self.after_write().await?;
        }
        Ok(touched)
    }
}

/// The background expiry sweeper: a thread of its own, so sweeps never occupy an async
/// worker and keep running whichever runtime (if any) the backend was opened on.
struct Sweeper {
    stop: Arc<AtomicBool>,
    wake: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Sweeper {
    fn spawn(core: Arc<Core>, every: Duration, batch: usize) -> Result<Sweeper> {
        let stop = Arc::new(AtomicBool::new(false));
        let (wake, rx) = mpsc::channel::<()>();
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("larder-sled-sweep".into())
            .spawn(move || loop {
                match rx.recv_timeout(every) {
                    Err(RecvTimeoutError::Timeout) => {}
                    // Dropped sender: the backend is closing.
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                }
                if let Err(e) = core.sweep(batch, &stop2) {
                    tracing::warn!(error = %e, dir = %core.path.display(), "sled expiry sweep failed");
                }
            })
            .map_err(|e| {
                Error::new(ErrorKind::Backend, "cannot start the sled expiry sweeper")
                    .with_source(e)
                    .with_backend(BACKEND)
            })?;
        Ok(Sweeper {
            stop,
            wake: Some(wake),
            thread: Some(thread),
        })
    }
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        // Stop between batches, then wait, so the database is closed when the backend is
        // gone (and the directory can be reopened at once).
        self.stop.store(true, Ordering::Relaxed);
        self.wake.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
