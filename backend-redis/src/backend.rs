//! The [`CacheBackend`] implementation.

use larder_cache_api::{
    async_trait, Bytes, CacheBackend, Capabilities, DeleteMode, Entry, Key, PutMode, Result, Ttl,
    Version,
};

use crate::config::{RedisConfig, Topology};
use crate::core::Core;
use crate::durability::{combine, node_report, Measured};
use crate::error::BACKEND;
use crate::tracking::RedisTracking;

/// The Redis backend: one server or a Redis Cluster. See the [crate docs](crate).
///
/// Cheap to share behind an `Arc`: every operation goes through one multiplexed connection
/// (one per node for a cluster) that reconnects by itself after a failure.
pub struct RedisBackend {
    core: Core,
    caps: Capabilities,
    config: RedisConfig,
    /// `appendonly ..., maxmemory-policy ...` per node, as read at connect.
    durability: String,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl RedisBackend {
    /// Connects to the server or cluster described by `url` (see [`RedisConfig::from_url`]).
    ///
    /// Fails with [`ErrorKind::Config`](larder_cache_api::ErrorKind::Config) for a bad URL,
    /// a wrong password or a database the server does not have, and with
    /// [`ErrorKind::Unavailable`](larder_cache_api::ErrorKind::Unavailable) or
    /// [`ErrorKind::Timeout`](larder_cache_api::ErrorKind::Timeout) when the server cannot
    /// be reached.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::new(RedisConfig::from_url(url)?).await
    }

    /// Connects with `config`.
    ///
    /// At connect it reads `INFO persistence` and `INFO memory` (of every master, for a
    /// cluster) and declares what it found: [`persistent`](Capabilities::persistent) only
    /// with an append-only file (`appendonly yes`; RDB snapshots alone restore an older
    /// state), [`may_evict`](Capabilities::may_evict) unless `maxmemory-policy` is
    /// `noeviction`. Where `INFO` cannot be read (an ACL that forbids it), it declares the
    /// safe answer: not persistent, may evict. The notes say why
    /// ([`persistence_note`](Capabilities::persistence_note),
    /// [`eviction_note`](Capabilities::eviction_note)). A server reconfigured later (`CONFIG
    /// SET`) is not measured again.
    pub async fn new(config: RedisConfig) -> Result<Self> {
        let core = Core::connect(&config).await?;
        let mut caps = Capabilities::full(BACKEND);
        // CAS runs as one script on the key's master, so it is linearizable on one server.
        // A cluster, and a Sentinel-monitored primary, replicate asynchronously: a failover
        // can lose an acknowledged CAS, and a lease granted on it could be granted again,
        // so CAS there is not declared linearizable (it is still atomic per key while no
        // failover happens), and coordination refuses them.
        caps.linearizable_cas = config.topology == Topology::Single;
        // Whether the server keeps what it is given is its configuration, not ours to
        // promise: measured now, and reported as measured (see `durability`).
        let measured = measure(&core).await;
        caps.persistent = measured.persistent;
        caps.persistence_note = Some(measured.persistence_note.clone());
        caps.may_evict = measured.may_evict;
        caps.eviction_note = Some(measured.eviction_note.clone());
        caps.shared = true;
        caps.invalidation_channel = true; // `tracking()`
        caps.ttl_precision = std::time::Duration::from_millis(1);
        caps.max_value_size = config.max_value_size;
        Ok(RedisBackend {
            core,
            caps,
            config,
            durability: measured.summary,
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &RedisConfig {
        &self.config
    }

    /// This server's (or cluster's) invalidation channel, for a
    /// `larder_near::Near` cache in front of this backend: Redis client
    /// tracking on a connection of its own per master (see [`RedisTracking`]). Behind
    /// Sentinel, when the tracking learns that the primary moved, this backend looks it up
    /// again at once, so that the near cache's reads follow as soon as its syncs stop.
    pub fn tracking(&self) -> RedisTracking {
        RedisTracking::new(self.config.clone()).following(self.core.sentinel())
    }
}

/// Reads `INFO persistence` and `INFO memory` and judges them (see [`crate::durability`]).
async fn measure(core: &Core) -> Measured {
    let persistence = core.info("persistence").await;
    let memory = core.info("memory").await;
    let nodes: Vec<_> = persistence
        .into_iter()
        .map(|(node, p)| {
            let m = memory
                .iter()
                .find(|(n, _)| *n == node)
                .map(|(_, m)| m.clone())
                .unwrap_or_else(|| Err("no INFO memory reply from this node".to_owned()));
            node_report(node, p, m)
        })
        .collect();
    combine(&nodes)
}

#[async_trait]
impl CacheBackend for RedisBackend {
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    fn details(&self) -> Vec<(&'static str, String)> {
        let c = &self.config;
        let nodes: Vec<String> = c.nodes.iter().map(|(h, p)| format!("{h}:{p}")).collect();
        let mut d = vec![
            ("topology", format!("{:?}", c.topology)),
            ("nodes", nodes.join(",")),
            ("db", c.db.to_string()),
            ("tls", if c.tls { "yes" } else { "no" }.to_owned()),
            ("durability (at connect)", self.durability.clone()),
            ("connect timeout", format!("{:?}", c.connect_timeout)),
            ("response timeout", format!("{:?}", c.response_timeout)),
        ];
        if let Some(s) = &c.sentinel {
            d.push(("sentinel service", s.service_name.clone()));
            let primary = self.core.sentinel_primary();
            d.push((
                "primary",
                primary.unwrap_or_else(|| "(being looked up)".into()),
            ));
        }
        d
    }

    async fn get(&self, key: &Key) -> Result<Option<Entry>> {
        self.core.get(key).await
    }

    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Entry>>> {
        self.core.get_many(keys).await
    }

    async fn put(
        &self,
        key: &Key,
        value: Bytes,
        ttl: Option<Ttl>,
        mode: PutMode,
    ) -> Result<Version> {
        self.caps.check_value_size(value.len())?;
        match mode {
            PutMode::Overwrite => self.core.overwrite(key, &value, ttl).await,
            PutMode::Create => self.core.create(key, &value, ttl).await,
            PutMode::Update(v) => self.core.update(key, &value, ttl, v).await,
        }
    }

    async fn put_many(&self, items: &[(Key, Bytes)], ttl: Option<Ttl>) -> Result<Vec<Version>> {
        // Check every size first so that an oversized value stores nothing.
        for (_, v) in items {
            self.caps.check_value_size(v.len())?;
        }
        if items.is_empty() {
            return Ok(Vec::new());
        }
        self.core.overwrite_many(items, ttl).await
    }

    async fn delete(&self, key: &Key, mode: DeleteMode) -> Result<bool> {
        match mode {
            DeleteMode::Any => self.core.delete(key).await,
            DeleteMode::IfVersion(v) => self.core.delete_if(key, v).await,
        }
    }

    async fn touch(&self, key: &Key, ttl: Option<Ttl>) -> Result<bool> {
        self.core.touch(key, ttl).await
    }
}
