//! The typed handle most code uses.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::{Codec, Postcard};
use crate::retry::Backoff;
use crate::single_flight::{follow, share, Role, SingleFlight};
use crate::{
    envelope, BoxError, DeleteMode, DynBackend, Error, ErrorKind, Key, PutMode, Result, Ttl,
    Version,
};

/// A typed cache over any backend: serde values in, serde values out.
///
/// Values are sealed in an [envelope](crate::envelope) that names the codec, so bytes from
/// another program or codec are reported as [`ErrorKind::Decode`], never mis-decoded.
/// Cloning is cheap and clones share the single-flight table.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> larder_cache_api::Result<()> {
/// use larder_cache_api::{Cache, Key, Ttl};
/// # let backend = std::sync::Arc::new(larder_backend_memory::MemoryBackend::default());
///
/// let cache = Cache::new(backend);
/// let key = Key::new("greeting")?;
/// cache.set(&key, "hello", Some(Ttl::from_secs(60)?)).await?;
/// assert_eq!(cache.get::<String>(&key).await?.as_deref(), Some("hello"));
///
/// // Compare-and-swap loop: concurrent updates are never lost.
/// let counter = Key::new("hits")?;
/// let n = cache.update(&counter, None, |n: Option<u64>| n.unwrap_or(0) + 1).await?;
/// assert_eq!(n, 1);
/// # Ok(()) }
/// ```
pub struct Cache<C: Codec = Postcard> {
    backend: DynBackend,
    codec: C,
    max_update_attempts: u32,
    decode_errors_as_miss: bool,
    flights: Arc<SingleFlight>,
}

impl<C: Codec> Clone for Cache<C> {
    fn clone(&self) -> Self {
        Cache {
            backend: Arc::clone(&self.backend),
            codec: self.codec.clone(),
            max_update_attempts: self.max_update_attempts,
            decode_errors_as_miss: self.decode_errors_as_miss,
            flights: Arc::clone(&self.flights),
        }
    }
}

impl<C: Codec> fmt::Debug for Cache<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("backend", &self.backend)
            .field("codec", &C::NAME)
            .field("max_update_attempts", &self.max_update_attempts)
            .field("decode_errors_as_miss", &self.decode_errors_as_miss)
            .finish()
    }
}

impl Cache<Postcard> {
    /// A typed cache over `backend` with the default codec (postcard).
    pub fn new(backend: DynBackend) -> Self {
        Cache::with_codec(backend, Postcard)
    }
}

impl<C: Codec> Cache<C> {
    /// Default for [`max_update_attempts`](Cache::max_update_attempts).
    pub const DEFAULT_UPDATE_ATTEMPTS: u32 = 64;

    /// A typed cache over `backend` that encodes with `codec`.
    pub fn with_codec(backend: DynBackend, codec: C) -> Self {
        Cache {
            backend,
            codec,
            max_update_attempts: Self::DEFAULT_UPDATE_ATTEMPTS,
            decode_errors_as_miss: false,
            flights: Arc::default(),
        }
    }

    /// How many times [`update`](Cache::update) tries before it returns the conflict.
    pub fn max_update_attempts(mut self, attempts: u32) -> Self {
        self.max_update_attempts = attempts.max(1);
        self
    }

    /// Treat values that cannot be decoded as misses (they are logged and overwritten on the
    /// next write) instead of returning [`ErrorKind::Decode`]. Off by default.
    pub fn decode_errors_as_miss(mut self, yes: bool) -> Self {
        self.decode_errors_as_miss = yes;
        self
    }

    /// The backend under this cache.
    pub fn backend(&self) -> &DynBackend {
        &self.backend
    }

    fn open<T: DeserializeOwned>(&self, key: &Key, bytes: &[u8]) -> Result<Option<T>> {
        match envelope::open(&self.codec, bytes) {
            Ok(v) => Ok(Some(v)),
            Err(e) if self.decode_errors_as_miss && e.kind() == ErrorKind::Decode => {
                tracing::warn!(key = %key, error = %e, "undecodable cache value treated as a miss");
                metrics::counter!("larder_cache_decode_errors_total").increment(1);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn seal<T: Serialize + ?Sized>(&self, value: &T) -> Result<bytes::Bytes> {
        let bytes = envelope::seal(&self.codec, value)?;
        (*self.backend)
            .capabilities()
            .check_value_size(bytes.len())?;
        Ok(bytes)
    }

    /// The value under `key`, or `None`.
    ///
    /// An entry the backend has at hand (the memory backend, a local hit
    /// of a near cache, `larder_near::Near`) is read without a boxed future
    /// ([`get_now`](crate::CacheBackend::get_now)).
    pub async fn get<T: DeserializeOwned>(&self, key: &Key) -> Result<Option<T>> {
        Ok(self.get_versioned(key).await?.map(|(v, _)| v))
    }

    /// The value under `key` with its version, for a later conditional write.
    pub async fn get_versioned<T: DeserializeOwned>(
        &self,
        key: &Key,
    ) -> Result<Option<(T, Version)>> {
        let Some(entry) = (*self.backend).lookup(key).await? else {
            return Ok(None);
        };
        Ok(self.open(key, &entry.value)?.map(|v| (v, entry.version)))
    }

    /// Values for `keys`, in order; duplicates and missing keys are answered each.
    pub async fn get_many<T: DeserializeOwned>(&self, keys: &[Key]) -> Result<Vec<Option<T>>> {
        let entries = (*self.backend).get_many(keys).await?;
        let mut out = Vec::with_capacity(entries.len());
        for (k, e) in keys.iter().zip(entries) {
            out.push(match e {
                Some(e) => self.open(k, &e.value)?,
                None => None,
            });
        }
        Ok(out)
    }

    /// Stores `value` under `key`, replacing what is there.
    pub async fn set<T: Serialize + Sync + ?Sized>(
        &self,
        key: &Key,
        value: &T,
        ttl: Option<Ttl>,
    ) -> Result<Version> {
        let bytes = self.seal(value)?;
        (*self.backend)
            .put(key, bytes, ttl, PutMode::Overwrite)
            .await
    }

    /// Stores `value` only if `key` is absent; otherwise [`ErrorKind::Conflict`].
    pub async fn create<T: Serialize + Sync + ?Sized>(
        &self,
        key: &Key,
        value: &T,
        ttl: Option<Ttl>,
    ) -> Result<Version> {
        let bytes = self.seal(value)?;
        (*self.backend).put(key, bytes, ttl, PutMode::Create).await
    }

    /// Stores `value` only if the stored version is `version`; otherwise
    /// [`ErrorKind::Conflict`] carrying the current entry.
    pub async fn replace<T: Serialize + Sync + ?Sized>(
        &self,
        key: &Key,
        value: &T,
        ttl: Option<Ttl>,
        version: Version,
    ) -> Result<Version> {
        let bytes = self.seal(value)?;
        self.backend
            .put(key, bytes, ttl, PutMode::Update(version))
            .await
    }

    /// Deletes `key`; `Ok(true)` if something was removed.
    pub async fn delete(&self, key: &Key) -> Result<bool> {
        (*self.backend).delete(key, DeleteMode::Any).await
    }

    /// Gives `key` a new TTL (`None`: no expiry) without rewriting it; `Ok(false)` if absent.
    pub async fn touch(&self, key: &Key, ttl: Option<Ttl>) -> Result<bool> {
        (*self.backend).touch(key, ttl).await
    }

    /// The value under `key`, or the loader's value, stored with `ttl`.
    ///
    /// Within this process, concurrent callers for one cold key run the loader **once**;
    /// the others wait for its result (single flight). If the loader fails, every waiting
    /// caller gets the error ([`ErrorKind::Loader`]) and nothing is stored. If storing the
    /// computed value fails with a retryable error (backend down), the value is still
    /// returned and the failure logged; other storage errors are returned.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> larder_cache_api::Result<()> {
    /// # use larder_cache_api::{Cache, Key};
    /// # let cache = Cache::new(std::sync::Arc::new(larder_backend_memory::MemoryBackend::default()));
    /// let key = Key::new("report:2026")?;
    /// let v: u64 = cache
    ///     .get_or_insert_with(&key, None, || async { Ok::<_, std::io::Error>(42) })
    ///     .await?;
    /// assert_eq!(v, 42);
    /// # Ok(()) }
    /// ```
    pub async fn get_or_insert_with<T, F, Fut, E>(
        &self,
        key: &Key,
        ttl: Option<Ttl>,
        loader: F,
    ) -> Result<T>
    where
        T: Serialize + DeserializeOwned + Send,
        F: FnOnce() -> Fut + Send,
        Fut: Future<Output = std::result::Result<T, E>> + Send,
        E: Into<BoxError>,
    {
        let mut loader = Some(loader);
        loop {
            if let Some(v) = self.get(key).await? {
                return Ok(v);
            }
            match self.flights.join(key) {
                Role::Follower(rx) => match follow(rx).await {
                    Some(Ok(bytes)) => {
                        return envelope::open(&self.codec, &bytes);
                    }
                    Some(Err(e)) => return Err(share(&e)),
                    // The leader was cancelled: start over, maybe as the leader.
                    None => continue,
                },
                Role::Leader(leader) => {
                    // Check again: a flight may have finished between our miss and our join.
                    if let Some(entry) = (*self.backend).lookup(key).await? {
                        if let Some(v) = self.open::<T>(key, &entry.value)? {
                            leader.finish(Ok(entry.value));
                            return Ok(v);
                        }
                    }
                    let Some(loader) = loader.take() else {
                        // Unreachable: a caller leads at most once (it returns after leading).
                        return Err(Error::new(ErrorKind::Loader, "loader already consumed"));
                    };
                    let value = match loader().await {
                        Ok(v) => v,
                        Err(e) => {
                            let err = Arc::new(
                                Error::new(ErrorKind::Loader, "loader failed").with_source(e),
                            );
                            let mine = share(&err);
                            leader.finish(Err(err));
                            return Err(mine);
                        }
                    };
                    let bytes = match self.seal(&value) {
                        Ok(b) => b,
                        Err(e) => {
                            let err = Arc::new(e);
                            let mine = share(&err);
                            leader.finish(Err(err));
                            return Err(mine);
                        }
                    };
                    match self
                        .backend
                        .put(key, bytes.clone(), ttl, PutMode::Overwrite)
                        .await
                    {
                        Ok(_) => {}
                        Err(e) if e.is_retryable() => {
                            tracing::warn!(key = %key, error = %e, "computed value not cached");
                        }
                        Err(e) => {
                            let err = Arc::new(e);
                            let mine = share(&err);
                            leader.finish(Err(err));
                            return Err(mine);
                        }
                    }
                    leader.finish(Ok(bytes));
                    return Ok(value);
                }
            }
        }
    }

    /// [`get_or_insert_with`](Cache::get_or_insert_with) for a computation that cannot fail:
    /// the loader returns the value itself, not a `Result`. The same single flight: within
    /// this process, concurrent callers for one cold key run the loader once. The errors
    /// left are the cache's own (a key the backend refuses, a value it cannot store, stored
    /// bytes that do not decode); a backend that is down still answers with the computed
    /// value.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> larder_cache_api::Result<()> {
    /// # use larder_cache_api::{Cache, Key, Ttl};
    /// # let cache = Cache::new(std::sync::Arc::new(larder_backend_memory::MemoryBackend::default()));
    /// let key = Key::new("report:2026")?;
    /// let total: u64 = cache
    ///     .get_or_compute(&key, Some(Ttl::from_secs(60)?), || async { (1..=100).sum() })
    ///     .await?;
    /// assert_eq!(total, 5050);
    /// # Ok(()) }
    /// ```
    pub async fn get_or_compute<T, F, Fut>(
        &self,
        key: &Key,
        ttl: Option<Ttl>,
        loader: F,
    ) -> Result<T>
    where
        T: Serialize + DeserializeOwned + Send,
        F: FnOnce() -> Fut + Send,
        Fut: Future<Output = T> + Send,
    {
        self.get_or_insert_with(key, ttl, || async move {
            Ok::<T, std::convert::Infallible>(loader().await)
        })
        .await
    }

    /// Read-modify-write by compare-and-swap: `f` gets the current value (`None` if absent)
    /// and returns the new one, which is stored with `ttl` only if nobody wrote in between;
    /// otherwise `f` runs again on the fresh value, with a short randomised back-off, up to
    /// [`max_update_attempts`](Cache::max_update_attempts) times, then the last
    /// [`ErrorKind::Conflict`] is returned. Returns the value stored.
    ///
    /// # When a write's outcome is unknown
    ///
    /// A conditional write can be applied by the server and its reply lost (a connection
    /// cut at the wrong moment). Backends that send such a write again make the resend
    /// recognise the caller's own write and report success rather than a conflict with it:
    /// the Redis backend does, on one server and on a cluster (see `larder-backend-redis`).
    /// Then `update` sees `Ok`, and `f` has run once for that value.
    ///
    /// When the backend gives up instead and returns [`ErrorKind::Timeout`] or
    /// [`ErrorKind::Unavailable`], `update` returns that error as it is, without running `f`
    /// again: the new value may or may not be stored (read it to find out), and the error
    /// is retryable. `update` does not re-read to decide by itself, because a read tells
    /// what is stored, not who stored it: equal bytes may be another caller's write of the
    /// same value, and guessing wrong would lose an update or apply one twice. Callers that
    /// need an exactly-once effect across such errors can record the operation in the value
    /// (say, the ids of the last operations applied) and have `f` skip one it finds there.
    pub async fn update<T, F>(&self, key: &Key, ttl: Option<Ttl>, mut f: F) -> Result<T>
    where
        T: Serialize + DeserializeOwned + Send,
        F: FnMut(Option<T>) -> T + Send,
    {
        let mut tries = Backoff::new(Duration::from_micros(100), Duration::from_millis(20))
            .max_attempts(self.max_update_attempts);
        // What the last conflict reported as stored: used instead of reading again.
        let mut seen: Option<Option<crate::Entry>> = None;
        loop {
            tries.next_attempt().await;
            let stored = match seen.take() {
                Some(s) => s,
                None => (*self.backend).lookup(key).await?,
            };
            let (current, mode) = match stored {
                Some(e) => (self.open::<T>(key, &e.value)?, PutMode::Update(e.version)),
                None => (None, PutMode::Create),
            };
            let next = f(current);
            let bytes = self.seal(&next)?;
            match (*self.backend).put(key, bytes, ttl, mode).await {
                Ok(_) => return Ok(next),
                Err(e) if e.kind() == ErrorKind::Conflict && tries.can_retry() => {
                    seen = Some(e.into_current());
                }
                Err(e) => return Err(e),
            }
        }
    }
}
