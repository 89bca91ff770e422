//! Configuration of the sled backend.

use std::path::{Path, PathBuf};
use std::time::Duration;

use larder_cache_api::url::BackendUrl;
use larder_cache_api::{Error, ErrorKind, Result};

use crate::error::BACKEND;

/// Largest `max_value_size` the larder contract allows a backend to declare.
const VALUE_LIMIT_CEILING: usize = 64 * 1024 * 1024;
/// Smallest `max_value_size` the larder contract allows a backend to declare.
const VALUE_LIMIT_FLOOR: usize = 1024;

/// When writes are made durable (fsynced).
///
/// Whatever the policy, a write is visible to every later read at once; the policy only
/// decides how much a crash of the machine (not of the process) can lose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Flush {
    /// sled's background flusher fsyncs every `n` milliseconds (sled's default is 500).
    EveryMs(u64),
    /// Every write waits for `flush_async` before it returns: durable on return, at the
    /// cost of one fsync per write (concurrent writers share flushes).
    EveryWrite,
    /// Never flushed by the backend; data reaches disk when sled's buffers fill, on
    /// [`SledBackend::flush`](crate::SledBackend::flush), or when the database closes.
    Never,
}

/// How the blocking sled calls are run from async code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Dispatch {
    /// Called directly inside the future. sled reads of cached pages and writes into its
    /// in-memory log take a few microseconds, less than a `spawn_blocking` hand-off, so
    /// this is the default; fsyncs never run inline (they go through sled's own thread
    /// pool), and the expiry sweep runs on its own thread.
    Inline,
    /// Every operation runs on tokio's blocking pool (`spawn_blocking`). Choose this when
    /// the data set is much larger than `cache_capacity`, so that reads often wait for
    /// the disk.
    SpawnBlocking,
}

/// Configuration of a [`SledBackend`](crate::SledBackend).
///
/// ```
/// use std::time::Duration;
/// use larder_backend_sled::{Flush, SledConfig};
///
/// let c = SledConfig::from_url(
///     "sled:///var/lib/app/cache?flush_every_ms=write&cache_capacity=67108864&sweep_interval_ms=5000",
/// )?;
/// assert_eq!(c.path.to_str(), Some("/var/lib/app/cache"));
/// assert_eq!(c.flush, Flush::EveryWrite);
/// assert_eq!(c.cache_capacity, 64 * 1024 * 1024);
/// assert_eq!(c.sweep_interval, Some(Duration::from_secs(5)));
/// # Ok::<(), larder_cache_api::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SledConfig {
    /// The database directory (created if missing). One process at a time.
    pub path: PathBuf,
    /// When writes are fsynced. Default: every 500 ms (sled's default).
    pub flush: Flush,
    /// Bytes of sled's page cache. Default: 256 MiB.
    pub cache_capacity: u64,
    /// How often the background sweeper removes expired entries; `None`: never (expired
    /// entries are then removed only when read, or by
    /// [`SledBackend::sweep_expired`](crate::SledBackend::sweep_expired)). Default: 1 s.
    pub sweep_interval: Option<Duration>,
    /// Expired entries removed per sweep batch. Default: 1000.
    pub sweep_batch: usize,
    /// Largest value `put` accepts, 1 KiB to 64 MiB. Default: 16 MiB.
    pub max_value_size: usize,
    /// How blocking sled calls are run. Default: [`Dispatch::Inline`].
    pub dispatch: Dispatch,
}

impl SledConfig {
    /// The defaults, for the database in `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SledConfig {
            path: path.into(),
            flush: Flush::EveryMs(500),
            cache_capacity: 256 * 1024 * 1024,
            sweep_interval: Some(Duration::from_secs(1)),
            sweep_batch: 1000,
            max_value_size: 16 * 1024 * 1024,
            dispatch: Dispatch::Inline,
        }
    }

    /// Sets [`flush`](Self::flush).
    pub fn with_flush(mut self, flush: Flush) -> Self {
        self.flush = flush;
        self
    }

    /// Sets [`cache_capacity`](Self::cache_capacity).
    pub fn with_cache_capacity(mut self, bytes: u64) -> Self {
        self.cache_capacity = bytes;
        self
    }

    /// Sets [`sweep_interval`](Self::sweep_interval).
    pub fn with_sweep_interval(mut self, every: Option<Duration>) -> Self {
        self.sweep_interval = every;
        self
    }

    /// Sets [`sweep_batch`](Self::sweep_batch).
    pub fn with_sweep_batch(mut self, n: usize) -> Self {
        self.sweep_batch = n;
        self
    }

    /// Sets [`max_value_size`](Self::max_value_size).
    pub fn with_max_value_size(mut self, n: usize) -> Self {
        self.max_value_size = n;
        self
    }

    /// Sets [`dispatch`](Self::dispatch).
    pub fn with_dispatch(mut self, dispatch: Dispatch) -> Self {
        self.dispatch = dispatch;
        self
    }

    /// Parses `sled:///absolute/path/to/dir?param=value&...`. Every parameter is optional:
    ///
    /// | parameter | value | field |
    /// |---|---|---|
    /// | `flush_every_ms` | milliseconds, `write` or `never` | [`flush`](Self::flush) |
    /// | `cache_capacity` | bytes | [`cache_capacity`](Self::cache_capacity) |
    /// | `sweep_interval_ms` | milliseconds or `never` | [`sweep_interval`](Self::sweep_interval) |
    /// | `sweep_batch` | entries | [`sweep_batch`](Self::sweep_batch) |
    /// | `max_value_size` | bytes | [`max_value_size`](Self::max_value_size) |
    /// | `dispatch` | `inline` or `spawn_blocking` | [`dispatch`](Self::dispatch) |
    ///
    /// The path is percent-decoded. Errors are [`ErrorKind::Config`].
    pub fn from_url(url: &str) -> Result<Self> {
        Self::from_backend_url(&BackendUrl::parse(url)?)
    }

    /// The configuration a parsed `sled:///path` URL describes.
    pub fn from_backend_url(u: &BackendUrl) -> Result<Self> {
        if u.scheme() != "sled" {
            return Err(config_error(format!(
                "expected a sled:// URL, got scheme {:?}",
                u.scheme()
            )));
        }
        if u.username().is_some() || u.password().is_some() {
            return Err(config_error("sled URLs take no user or password"));
        }
        if !u.hosts().is_empty() {
            return Err(config_error(format!(
                "sled URL {u} names a host; use sled:///absolute/path (three slashes)"
            )));
        }
        let path = Path::new(u.path());
        if !path.is_absolute() {
            return Err(config_error(format!("sled URL {u} has no usable path")));
        }
        if path == Path::new("/") {
            return Err(config_error(
                "sled URL needs a database directory, e.g. sled:///var/lib/app/cache",
            ));
        }
        u.check_options(&[
            "flush_every_ms",
            "cache_capacity",
            "sweep_interval_ms",
            "sweep_batch",
            "max_value_size",
            "dispatch",
        ])?;
        let mut c = SledConfig::new(path.to_path_buf());
        if let Some(v) = u.option("flush_every_ms") {
            c.flush = match v {
                "write" => Flush::EveryWrite,
                "never" => Flush::Never,
                n => Flush::EveryMs(number("flush_every_ms", n)?),
            };
        }
        if let Some(n) = u.option_parsed("cache_capacity")? {
            c.cache_capacity = n;
        }
        if let Some(v) = u.option("sweep_interval_ms") {
            c.sweep_interval = match v {
                "never" => None,
                n => Some(Duration::from_millis(number("sweep_interval_ms", n)?)),
            };
        }
        if let Some(n) = u.option_parsed("sweep_batch")? {
            c.sweep_batch = n;
        }
        if let Some(n) = u.option_parsed("max_value_size")? {
            c.max_value_size = n;
        }
        if let Some(v) = u.option("dispatch") {
            c.dispatch = match v {
                "inline" => Dispatch::Inline,
                "spawn_blocking" => Dispatch::SpawnBlocking,
                other => {
                    return Err(config_error(format!(
                        "sled URL parameter dispatch={other:?}: expected inline or spawn_blocking"
                    )))
                }
            };
        }
        c.validate()?;
        Ok(c)
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.path.as_os_str().is_empty() {
            return Err(config_error("sled database path is empty"));
        }
        if !(VALUE_LIMIT_FLOOR..=VALUE_LIMIT_CEILING).contains(&self.max_value_size) {
            return Err(config_error(format!(
                "max_value_size {} is outside 1 KiB..=64 MiB",
                self.max_value_size
            )));
        }
        if self.cache_capacity == 0 {
            return Err(config_error("cache_capacity must be positive"));
        }
        if self.sweep_batch == 0 {
            return Err(config_error("sweep_batch must be positive"));
        }
        if self.sweep_interval.is_some_and(|d| d.is_zero()) {
            return Err(config_error(
                "sweep_interval must be positive (None disables the sweeper)",
            ));
        }
        if self.flush == Flush::EveryMs(0) {
            return Err(config_error(
                "flush interval must be positive (use Flush::EveryWrite or Flush::Never)",
            ));
        }
        Ok(())
    }
}

fn number<T: std::str::FromStr>(key: &str, value: &str) -> Result<T>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    value.parse().map_err(|e| {
        config_error(format!(
            "sled URL parameter {key}={value:?} is not a valid number"
        ))
        .with_source(e)
    })
}

fn config_error(msg: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::new(ErrorKind::Config, msg).with_backend(BACKEND)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn defaults_from_bare_url() {
        let c = SledConfig::from_url("sled:///tmp/some%20dir").unwrap();
        assert_eq!(c, SledConfig::new("/tmp/some dir"));
        assert_eq!(c.flush, Flush::EveryMs(500));
        assert_eq!(c.max_value_size, 16 * 1024 * 1024);
    }

    #[test]
    fn every_parameter() {
        let c = SledConfig::from_url(
            "sled:///d?flush_every_ms=never&cache_capacity=1000&sweep_interval_ms=never\
             &sweep_batch=7&max_value_size=2048&dispatch=spawn_blocking",
        )
        .unwrap();
        assert_eq!(c.flush, Flush::Never);
        assert_eq!(c.cache_capacity, 1000);
        assert_eq!(c.sweep_interval, None);
        assert_eq!(c.sweep_batch, 7);
        assert_eq!(c.max_value_size, 2048);
        assert_eq!(c.dispatch, Dispatch::SpawnBlocking);
        let c = SledConfig::from_url("sled:///d?flush_every_ms=20").unwrap();
        assert_eq!(c.flush, Flush::EveryMs(20));
    }

    #[test]
    fn bad_urls_are_config_errors() {
        for bad in [
            "redis:///d",
            "sled://host/d",
            "sled:///",
            "sled:///d?flush_every_ms=soon",
            "sled:///d?flush_every_ms=0",
            "sled:///d?cache_capacity=-1",
            "sled:///d?sweep_interval_ms=0",
            "sled:///d?max_value_size=100",
            "sled:///d?max_value_size=67108865",
            "sled:///d?dispatch=threads",
            "sled:///d?colour=blue",
            "not a url",
        ] {
            let e = SledConfig::from_url(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Config, "{bad}: {e}");
        }
    }
}
