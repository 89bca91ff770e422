//! The shared connection of a backend, opened the way its topology asks: one server, a
//! Redis Cluster, or the primary of a Sentinel-monitored service.

use larder_cache_api::Result;
use redis::{Cmd, Value};

use crate::config::{RedisConfig, Topology};
use crate::error;
use crate::node::{self, node_info};
use crate::sentinel::SentinelConn;

/// One shared, multiplexed, self-reconnecting connection: to a single server
/// ([`redis::aio::ConnectionManager`]), to a cluster (the cluster client's connection,
/// which keeps one multiplexed connection per node and follows slot moves), or to the
/// primary the sentinels name ([`SentinelConn`], which follows failovers).
#[derive(Clone)]
pub(crate) enum Conn {
    Single(redis::aio::ConnectionManager),
    #[cfg(feature = "cluster")]
    Cluster(redis::cluster_async::ClusterConnection),
    Sentinel(SentinelConn),
}

impl Conn {
    /// Sends `cmd` once, with no deadline of its own beyond the client's.
    pub(crate) async fn query(&self, cmd: &Cmd) -> redis::RedisResult<Value> {
        match self {
            Conn::Single(c) => cmd.query_async(&mut c.clone()).await,
            #[cfg(feature = "cluster")]
            Conn::Cluster(c) => cmd.query_async(&mut c.clone()).await,
            Conn::Sentinel(s) => s.query(cmd).await,
        }
    }
}

/// Opens the connection `config` describes; `deadline` is the operation deadline, which
/// also bounds each connect step.
pub(crate) async fn open(config: &RedisConfig, deadline: std::time::Duration) -> Result<Conn> {
    match config.topology {
        Topology::Single => single(config, deadline).await,
        #[cfg(feature = "cluster")]
        Topology::Cluster => cluster(config, deadline).await,
        Topology::Sentinel => Ok(Conn::Sentinel(SentinelConn::connect(config).await?)),
        #[cfg(not(feature = "cluster"))]
        Topology::Cluster => {
            // `validate` refuses this already; kept for exhaustiveness.
            Err(larder_cache_api::Error::new(
                larder_cache_api::ErrorKind::Config,
                "built without the `cluster` feature",
            )
            .with_backend(error::BACKEND))
        }
    }
}

/// One server, through a connection manager that reconnects in the background.
async fn single(config: &RedisConfig, deadline: std::time::Duration) -> Result<Conn> {
    let (host, port) = &config.nodes[0];
    let client = node::client(config, node_info(config, host, *port)?)?;
    probe(config, &client, deadline).await?;
    let connect = redis::aio::ConnectionManager::new_with_config(client, manager_config(config));
    let m = tokio::time::timeout(deadline * 2, connect)
        .await
        .map_err(|e| error::deadline("connect", deadline * 2, e))?
        .map_err(error::map_connect)?;
    Ok(Conn::Single(m))
}

/// One direct attempt first, without the manager's retries, so that a wrong password,
/// database or certificate is reported as such, at once.
async fn probe(
    config: &RedisConfig,
    client: &redis::Client,
    deadline: std::time::Duration,
) -> Result<()> {
    let probe = async {
        let cfg = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.response_timeout));
        let mut c = client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await?;
        redis::cmd("PING").query_async::<Value>(&mut c).await
    };
    tokio::time::timeout(deadline, probe)
        .await
        .map_err(|e| error::deadline("connect", deadline, e))?
        .map_err(error::map_connect)?;
    Ok(())
}

/// The single server's connection manager: its timeouts, and how it reconnects.
fn manager_config(config: &RedisConfig) -> redis::aio::ConnectionManagerConfig {
    redis::aio::ConnectionManagerConfig::new()
        .set_response_timeout(Some(config.response_timeout))
        .set_connection_timeout(Some(config.connect_timeout))
        // Reconnect in the background a few times with a short, capped backoff:
        // with no retries a reconnect that fails on something other than an I/O
        // error (a server still loading its data, say) is never tried again, and
        // the backend stays down after the server is back (the web app's
        // restart test caught it). Every operation is bounded by its own deadline
        // (`Core::run`), and a failed reconnect is retried by the next operation that
        // finds it failed.
        .set_number_of_retries(4)
        .set_min_delay(std::time::Duration::from_millis(50))
        .set_max_delay(std::time::Duration::from_millis(500))
}

/// A Redis Cluster, through its seed nodes.
#[cfg(feature = "cluster")]
async fn cluster(config: &RedisConfig, deadline: std::time::Duration) -> Result<Conn> {
    let client = cluster_client(config)?;
    let c = tokio::time::timeout(deadline * 2, client.get_async_connection())
        .await
        .map_err(|e| error::deadline("connect", deadline * 2, e))?
        .map_err(error::map_connect)?;
    Ok(Conn::Cluster(c))
}

/// The cluster client: seed nodes, timeouts, credentials and TLS.
#[cfg(feature = "cluster")]
fn cluster_client(config: &RedisConfig) -> Result<redis::cluster::ClusterClient> {
    let nodes = config
        .nodes
        .iter()
        .map(|(h, p)| node_info(config, h, *p))
        .collect::<Result<Vec<_>>>()?;
    let mut b = redis::cluster::ClusterClientBuilder::new(nodes)
        .connection_timeout(config.connect_timeout)
        .response_timeout(config.response_timeout)
        .tcp_settings(node::tcp_settings());
    if let Some(u) = &config.username {
        b = b.username(u);
    }
    if let Some(p) = config.password() {
        b = b.password(p);
    }
    #[cfg(feature = "tls")]
    if config.tls {
        b = b.tls(if config.tls_insecure {
            redis::TlsMode::Insecure
        } else {
            redis::TlsMode::Secure
        });
        if let Some(pem) = config.tls_root_cert() {
            b = b.certs(redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.to_vec()),
            });
        }
    }
    b.build().map_err(error::map_connect)
}
