use std::fmt;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;

use crate::random::random_u64;
use crate::{
    CacheBackend, Capabilities, DeleteMode, DynBackend, Entry, Error, ErrorKind, Key, PutMode,
    Result, Ttl, Version,
};

/// Puts every key under `name:<generation>:` and invalidates the whole namespace in O(1)
/// by changing the generation.
///
/// The prefix takes room from the key: the layer declares
/// [`Capabilities::max_key_len`] as the backend's minus the prefix (the name, two `:` and
/// the generation written as 16 hex digits, so the room is the same in every generation),
/// and refuses longer keys with [`ErrorKind::InvalidKey`]. Every other capability is the
/// backend's.
///
/// The generation is a random 64-bit number stored in the backend under `name:gen`, so
/// every process sharing the backend shares it. Invalidation writes a new random number:
/// entries under the old prefix become unreachable and expire or are evicted in their own
/// time. If the generation entry itself is evicted, a new random one is created, which only
/// ever invalidates (old entries never come back).
///
/// Each handle caches the generation for `refresh` (default 1 s): another process's
/// invalidation is seen within that time; this handle's own is seen at once. Use
/// `Duration::ZERO` to read it on every operation.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> larder_cache_api::Result<()> {
/// use std::sync::Arc;
/// use larder_cache_api::{layer::Namespace, Cache, Key};
/// # let backend: larder_cache_api::DynBackend = Arc::new(larder_backend_memory::MemoryBackend::default());
///
/// let users = Arc::new(Namespace::new(backend.clone(), "users")?);
/// let cache = Cache::new(users.clone());
/// let k = Key::new("42")?;
/// cache.set(&k, "alice", None).await?;
/// users.invalidate().await?;
/// assert_eq!(cache.get::<String>(&k).await?, None);
/// # Ok(()) }
/// ```
pub struct Namespace {
    inner: DynBackend,
    caps: Capabilities,
    name: String,
    gen_key: Key,
    refresh: Duration,
    /// The prefix of the current generation, its version mask, and when it was read.
    current: Mutex<Option<(String, u64, Instant)>>,
}

impl fmt::Debug for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Namespace")
            .field("name", &self.name)
            .field("refresh", &self.refresh)
            .field("inner", &self.inner)
            .finish()
    }
}

impl Namespace {
    /// Longest namespace name, so that keys keep room under the 250-byte limit.
    pub const MAX_NAME_LEN: usize = 64;

    /// Bytes a prefix adds besides the name: `:`, 16 hex digits of generation, `:`.
    const PREFIX_OVERHEAD: usize = 18;

    /// A namespace `name` (a valid key of at most 64 bytes, without `:`) over `inner`.
    pub fn new(inner: DynBackend, name: &str) -> Result<Self> {
        if name.len() > Self::MAX_NAME_LEN || name.contains(':') {
            return Err(Error::new(
                ErrorKind::InvalidKey,
                format!(
                    "namespace name must be at most {} bytes without ':', got {name:?}",
                    Self::MAX_NAME_LEN
                ),
            ));
        }
        Key::new(name)?;
        let mut caps = inner.capabilities().clone();
        // The backend's channel names physical keys, which callers of this layer never see.
        caps.invalidation_channel = false;
        caps.max_key_len = caps
            .max_key_len
            .checked_sub(name.len() + Self::PREFIX_OVERHEAD)
            .filter(|&n| n > 0)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidKey,
                    format!(
                        "namespace {name:?} leaves no room for keys under the backend's limit of {} bytes",
                        caps.max_key_len
                    ),
                )
            })?;
        Ok(Namespace {
            gen_key: Key::new(format!("{name}:gen"))?,
            inner,
            caps,
            name: name.to_owned(),
            refresh: Duration::from_secs(1),
            current: Mutex::new(None),
        })
    }

    /// How long a handle trusts its cached generation.
    pub fn refresh(mut self, refresh: Duration) -> Self {
        self.refresh = refresh;
        self
    }

    /// The namespace name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Makes every entry of this namespace unreachable, for every process, in one write.
    pub async fn invalidate(&self) -> Result<()> {
        let gen = random_u64();
        self.inner
            .put(
                &self.gen_key,
                Bytes::copy_from_slice(&gen.to_be_bytes()),
                None,
                PutMode::Overwrite,
            )
            .await?;
        *self.current.lock() = Some((self.prefix_for(gen), mask_for(gen), Instant::now()));
        Ok(())
    }

    fn prefix_for(&self, gen: u64) -> String {
        format!("{}:{gen:016x}:", self.name)
    }

    /// The current prefix and version mask.
    async fn prefix(&self) -> Result<(String, u64)> {
        if let Some((p, m, at)) = &*self.current.lock() {
            if at.elapsed() < self.refresh {
                return Ok((p.clone(), *m));
            }
        }
        let gen = self.load_generation().await?;
        let p = self.prefix_for(gen);
        let m = mask_for(gen);
        *self.current.lock() = Some((p.clone(), m, Instant::now()));
        Ok((p, m))
    }

    async fn load_generation(&self) -> Result<u64> {
        if let Some(e) = (*self.inner).get(&self.gen_key).await? {
            if let Ok(b) = <[u8; 8]>::try_from(&e.value[..]) {
                return Ok(u64::from_be_bytes(b));
            }
            // Foreign bytes under our generation key: replace them (this only invalidates).
        }
        let gen = random_u64();
        let bytes = Bytes::copy_from_slice(&gen.to_be_bytes());
        let mode = if (*self.inner).capabilities().cas {
            PutMode::Create
        } else {
            PutMode::Overwrite
        };
        match self
            .inner
            .put(&self.gen_key, bytes.clone(), None, mode)
            .await
        {
            Ok(_) => Ok(gen),
            Err(e) if e.kind() == ErrorKind::Conflict => match e.current() {
                Some(cur) => match <[u8; 8]>::try_from(&cur.value[..]) {
                    Ok(b) => Ok(u64::from_be_bytes(b)),
                    Err(_) => {
                        self.inner
                            .put(&self.gen_key, bytes, None, PutMode::Overwrite)
                            .await?;
                        Ok(gen)
                    }
                },
                None => {
                    self.inner
                        .put(&self.gen_key, bytes, None, PutMode::Overwrite)
                        .await?;
                    Ok(gen)
                }
            },
            Err(e) => Err(e),
        }
    }

    /// Refuses keys that would not fit once prefixed, the same in every generation.
    fn check_key_len(&self, key: &Key) -> Result<()> {
        if key.len() > self.caps.max_key_len {
            return Err(Error::new(
                ErrorKind::InvalidKey,
                format!(
                    "key is {} bytes; prefixed for namespace {:?} it would pass the backend's \
                     limit: at most {} bytes fit (use Key::hashed for long keys)",
                    key.len(),
                    self.name,
                    self.caps.max_key_len
                ),
            )
            .with_backend(self.caps.name));
        }
        Ok(())
    }

    /// The physical key and the version mask of its generation.
    async fn key(&self, key: &Key) -> Result<(Key, u64)> {
        self.check_key_len(key)?;
        let (prefix, mask) = self.prefix().await?;
        Ok((key.prefixed(&prefix)?, mask))
    }
}

/// Versions are handed out masked by their generation, so that the same key written again
/// after an invalidation (a different physical key, maybe on another server with its own
/// counter) never shows a version it showed before, and a version from an old generation
/// never matches a new entry. The mask is a bijection, so versions round-trip.
fn mask_for(gen: u64) -> u64 {
    // splitmix64's finaliser: generations that differ in one bit give unrelated masks.
    let mut z = gen.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn masked(v: Version, mask: u64) -> Version {
    Version::from_raw(v.into_raw() ^ mask)
}

fn masked_entry(mut e: Entry, mask: u64) -> Entry {
    e.version = masked(e.version, mask);
    e
}

/// A conflict's current entry, masked like every version this layer hands out.
fn masked_error(e: Error, mask: u64, create: bool) -> Error {
    if e.kind() != ErrorKind::Conflict {
        return e;
    }
    let current = e.into_current().map(|c| masked_entry(c, mask));
    match current {
        Some(c) if create => Error::already_exists(c),
        other => Error::version_mismatch(other),
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl CacheBackend for Namespace {
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    fn details(&self) -> Vec<(&'static str, String)> {
        self.inner.details()
    }

    async fn get(&self, key: &Key) -> Result<Option<Entry>> {
        let (k, mask) = self.key(key).await?;
        Ok((*self.inner).get(&k).await?.map(|e| masked_entry(e, mask)))
    }

    /// Answers while the cached generation is fresh and the backend answers at once.
    fn get_now(&self, key: &Key) -> Option<Result<Option<Entry>>> {
        if let Err(e) = self.check_key_len(key) {
            return Some(Err(e));
        }
        let (k, mask) = {
            let current = self.current.lock();
            let (prefix, mask, at) = current.as_ref()?;
            if at.elapsed() >= self.refresh {
                return None;
            }
            (key.prefixed(prefix), *mask)
        };
        let k = match k {
            Ok(k) => k,
            Err(e) => return Some(Err(e)),
        };
        let r = (*self.inner).get_now(&k)?;
        Some(r.map(|e| e.map(|e| masked_entry(e, mask))))
    }

    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Entry>>> {
        let (prefix, mask) = self.prefix().await?;
        let keys = keys
            .iter()
            .map(|k| {
                self.check_key_len(k)?;
                k.prefixed(&prefix)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((*self.inner)
            .get_many(&keys)
            .await?
            .into_iter()
            .map(|e| e.map(|e| masked_entry(e, mask)))
            .collect())
    }

    async fn put(
        &self,
        key: &Key,
        value: Bytes,
        ttl: Option<Ttl>,
        mode: PutMode,
    ) -> Result<Version> {
        let (k, mask) = self.key(key).await?;
        let inner_mode = match mode {
            PutMode::Update(v) => PutMode::Update(masked(v, mask)),
            other => other,
        };
        match (*self.inner).put(&k, value, ttl, inner_mode).await {
            Ok(v) => Ok(masked(v, mask)),
            Err(e) => Err(masked_error(e, mask, mode == PutMode::Create)),
        }
    }

    async fn put_many(&self, items: &[(Key, Bytes)], ttl: Option<Ttl>) -> Result<Vec<Version>> {
        let (prefix, mask) = self.prefix().await?;
        let items = items
            .iter()
            .map(|(k, v)| {
                self.check_key_len(k)?;
                Ok((k.prefixed(&prefix)?, v.clone()))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((*self.inner)
            .put_many(&items, ttl)
            .await?
            .into_iter()
            .map(|v| masked(v, mask))
            .collect())
    }

    async fn delete(&self, key: &Key, mode: DeleteMode) -> Result<bool> {
        let (k, mask) = self.key(key).await?;
        let inner_mode = match mode {
            DeleteMode::IfVersion(v) => DeleteMode::IfVersion(masked(v, mask)),
            other => other,
        };
        (*self.inner)
            .delete(&k, inner_mode)
            .await
            .map_err(|e| masked_error(e, mask, false))
    }

    async fn touch(&self, key: &Key, ttl: Option<Ttl>) -> Result<bool> {
        let (k, _) = self.key(key).await?;
        (*self.inner).touch(&k, ttl).await
    }
}
