//! The [`CacheBackend`] implementation over memcached's meta protocol.
//!
//! Every conditional operation is one server-side atomic command whose real reply is
//! checked: Create is `ms ... ME` (add; `NS` when the key exists), Update is `ms ... C<cas>`
//! (`EX` on a stale version, `NF` when absent), a conditional delete is `md ... C<cas>`. A
//! lost race is followed by one `mg` to return the entry stored now.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use larder_cache_api::{
    async_trait, Bytes, CacheBackend, Capabilities, DeleteMode, Entry, Key, PutMode, Result, Ttl,
    Version,
};
use memcache::exp::{Delete, Get, GetResult, GetStatus, Meta, MutationResult, MutationStatus, Set};

use crate::config::MemcachedConfig;
use crate::core::{self, Core};
use crate::error::{self, from_client, BACKEND};

/// How often a Create that found the key present, then found it gone when reading it back,
/// tries again before reporting a conflict with no current entry.
const CREATE_ATTEMPTS: usize = 8;

/// A memcached backend: one server, or several with consistent hashing. See the
/// [crate docs](crate).
pub struct MemcachedBackend {
    core: Core,
    caps: Capabilities,
    config: MemcachedConfig,
}

impl fmt::Debug for MemcachedBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemcachedBackend")
            .field("servers", &self.config.servers)
            .field("max_value_size", &self.caps.max_value_size)
            .finish_non_exhaustive()
    }
}

impl MemcachedBackend {
    /// Connects to the servers of a `memcache://h1:p1,h2:p2?timeout_ms=500` URL (see
    /// [`MemcachedConfig::from_url`]).
    pub async fn connect(url: &str) -> Result<Self> {
        Self::new(MemcachedConfig::from_url(url)?).await
    }

    /// Connects with `config`. Reads every server's item size limit (`stats settings`) to
    /// declare [`Capabilities::max_value_size`]; fails with
    /// [`Unavailable`](larder_cache_api::ErrorKind::Unavailable) or
    /// [`Timeout`](larder_cache_api::ErrorKind::Timeout) if no server answers. Servers that do
    /// not answer now are used once they come back.
    pub async fn new(config: MemcachedConfig) -> Result<Self> {
        config.validate()?;
        let max_value_size = core::probe_value_limit(&config).await?;
        let core = Core::new(&config).await?;
        let mut caps = Capabilities::full(BACKEND);
        caps.cas = true;
        // memcached evicts under memory pressure and forgets CAS uniques on restart: fine
        // for caching and optimistic updates, not for fencing.
        caps.linearizable_cas = false;
        caps.touch = true;
        caps.may_evict = true;
        caps.eviction_note = Some("memcached evicts least-recently-used items when full".into());
        caps.persistent = false;
        caps.persistence_note = Some("memcached keeps items in memory only".into());
        caps.shared = true;
        caps.ttl_precision = Duration::from_secs(1);
        caps.max_value_size = max_value_size;
        Ok(MemcachedBackend { core, caps, config })
    }

    /// The configuration in force.
    pub fn config(&self) -> &MemcachedConfig {
        &self.config
    }

    /// The server (`host:port`, as configured) that holds `key`.
    pub fn server_for(&self, key: &Key) -> &str {
        let i = self.core.ring.lookup(key.as_bytes());
        self.config.servers.get(i).map_or("", String::as_str)
    }

    async fn fetch(&self, key: &Key) -> Result<Option<Entry>> {
        let r = self
            .core
            .client
            .run(get_op(key))
            .await
            .map_err(from_client)?;
        entry_from(r)
    }

    async fn set(&self, op: Set) -> Result<MutationResult> {
        self.core.client.run(op).await.map_err(from_client)
    }
}

fn get_op(key: &Key) -> Get {
    Get::new(key.as_bytes()).meta(Meta::NONE.cas())
}

fn set_op(key: &Key, value: Bytes, exptime: u32) -> Set {
    // `From<Bytes> for Vec<u8>` reuses the allocation when it can.
    let mut op = Set::new(key.as_bytes(), []).return_cas();
    op.value = Vec::from(value);
    if exptime != 0 {
        op = op.ttl_raw(exptime);
    }
    op
}

fn entry_from(r: GetResult) -> Result<Option<Entry>> {
    match r.status {
        GetStatus::Hit => {
            let cas = r
                .item
                .cas
                .ok_or_else(|| error::protocol("memcached returned an item without its CAS"))?;
            let value = r
                .value
                .ok_or_else(|| error::protocol("memcached returned a hit without a value"))?;
            Ok(Some(Entry::new(value, Version::from_raw(cas))))
        }
        // A zero-byte lease placeholder some other client vivified is not a stored value.
        _ => Ok(None),
    }
}

fn written_version(r: &MutationResult) -> Result<Version> {
    r.cas
        .map(Version::from_raw)
        .ok_or_else(|| error::protocol("memcached stored the item but returned no CAS"))
}

#[async_trait]
impl CacheBackend for MemcachedBackend {
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    fn details(&self) -> Vec<(&'static str, String)> {
        let c = &self.config;
        vec![
            ("servers", c.servers.join(",")),
            ("connect timeout", format!("{:?}", c.connect_timeout)),
            ("timeout", format!("{:?}", c.timeout)),
        ]
    }

    async fn get(&self, key: &Key) -> Result<Option<Entry>> {
        self.fetch(key).await
    }

    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Entry>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        // Each distinct key is asked once; the client groups them per server and pipelines
        // every group in one round trip, all groups at once.
        let mut slot: HashMap<&Key, usize> = HashMap::with_capacity(keys.len());
        let mut unique: Vec<&Key> = Vec::with_capacity(keys.len());
        let order: Vec<usize> = keys
            .iter()
            .map(|k| {
                *slot.entry(k).or_insert_with(|| {
                    unique.push(k);
                    unique.len() - 1
                })
            })
            .collect();
        let results = self
            .core
            .client
            .run_many(unique.iter().map(|k| get_op(k)))
            .await
            .map_err(from_client)?;
        let entries = results
            .into_iter()
            .map(|r| r.map_err(from_client).and_then(entry_from))
            .collect::<Result<Vec<_>>>()?;
        Ok(order.into_iter().map(|i| entries[i].clone()).collect())
    }

    async fn put(
        &self,
        key: &Key,
        value: Bytes,
        ttl: Option<Ttl>,
        mode: PutMode,
    ) -> Result<Version> {
        self.caps.check_value_size(value.len())?;
        self.caps.check_put_mode(mode)?;
        let exp = core::exptime(ttl)?;
        match mode {
            PutMode::Overwrite => {
                let r = self.set(set_op(key, value, exp)).await?;
                match r.status {
                    MutationStatus::Applied => written_version(&r),
                    _ => Err(error::protocol("memcached did not store a plain set")),
                }
            }
            PutMode::Create => {
                for _ in 0..CREATE_ATTEMPTS {
                    let r = self.set(set_op(key, value.clone(), exp).add()).await?;
                    match r.status {
                        MutationStatus::Applied => return written_version(&r),
                        // NS: the key is there. Report what is there; if it vanished in
                        // between (deleted, expired), the add may succeed now.
                        MutationStatus::AlreadyExists | MutationStatus::NotFound => {
                            if let Some(current) = self.fetch(key).await? {
                                return Err(error::exists(current));
                            }
                        }
                        MutationStatus::CasMismatch => {
                            return Err(error::protocol("memcached answered EX to an add"))
                        }
                        _ => return Err(error::protocol("unexpected reply to an add")),
                    }
                }
                Err(error::version_mismatch(None))
            }
            PutMode::Update(v) => {
                let r = self
                    .set(set_op(key, value, exp).compare_cas(v.into_raw()))
                    .await?;
                match r.status {
                    MutationStatus::Applied => written_version(&r),
                    MutationStatus::NotFound => Err(error::version_mismatch(None)),
                    MutationStatus::CasMismatch => {
                        Err(error::version_mismatch(self.fetch(key).await?))
                    }
                    _ => Err(error::protocol("unexpected reply to a CAS set")),
                }
            }
        }
    }

    async fn put_many(&self, items: &[(Key, Bytes)], ttl: Option<Ttl>) -> Result<Vec<Version>> {
        for (_, v) in items {
            self.caps.check_value_size(v.len())?;
        }
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let exp = core::exptime(ttl)?;
        let results = self
            .core
            .client
            .run_many(items.iter().map(|(k, v)| set_op(k, v.clone(), exp)))
            .await
            .map_err(from_client)?;
        results
            .into_iter()
            .map(|r| {
                let r = r.map_err(from_client)?;
                match r.status {
                    MutationStatus::Applied => written_version(&r),
                    _ => Err(error::protocol("memcached did not store a plain set")),
                }
            })
            .collect()
    }

    async fn delete(&self, key: &Key, mode: DeleteMode) -> Result<bool> {
        let op = match mode {
            DeleteMode::Any => Delete::new(key.as_bytes()),
            DeleteMode::IfVersion(v) => {
                self.caps.check_conditional_delete()?;
                Delete::new(key.as_bytes()).compare_cas(v.into_raw())
            }
        };
        let r = self.core.client.run(op).await.map_err(from_client)?;
        match (r.status, mode) {
            (MutationStatus::Applied, _) => Ok(true),
            (MutationStatus::NotFound, DeleteMode::Any) => Ok(false),
            (MutationStatus::NotFound, DeleteMode::IfVersion(_)) => {
                Err(error::version_mismatch(None))
            }
            (MutationStatus::CasMismatch, DeleteMode::IfVersion(_)) => {
                Err(error::version_mismatch(self.fetch(key).await?))
            }
            _ => Err(error::protocol("unexpected reply to a delete")),
        }
    }

    async fn touch(&self, key: &Key, ttl: Option<Ttl>) -> Result<bool> {
        self.caps.check_touch()?;
        // `mg <key> T<exptime>` without the value: changes the expiry in place and keeps the
        // CAS unique (checked by the conformance suite), unlike a rewrite.
        let op = Get::new(key.as_bytes())
            .without_value()
            .touch_raw(core::exptime(ttl)?);
        let r = self.core.client.run(op).await.map_err(from_client)?;
        Ok(r.status == GetStatus::Hit)
    }
}
