//! How to reach one Redis node (a server, a cluster node, a sentinel or the primary it names):
//! its address, credentials, database, TLS and TCP settings.

use larder_cache_api::Result;

use crate::config::RedisConfig;
use crate::error;

/// The TCP options of every connection to a node.
pub(crate) fn tcp_settings() -> redis::io::tcp::TcpSettings {
    use redis::io::tcp::socket2::TcpKeepalive;
    use std::time::Duration;
    // redis-rs leaves TCP_NODELAY off by default; on a multiplexed connection Nagle's
    // algorithm plus delayed ACKs holds small requests back, so turn it on. Keepalive and
    // a user timeout let the kernel declare a dead peer (host gone, no RST) so that the
    // connection is replaced instead of timing out forever.
    let s = redis::io::tcp::TcpSettings::default()
        .set_nodelay(true)
        .set_keepalive(
            TcpKeepalive::new()
                .with_time(Duration::from_secs(15))
                .with_interval(Duration::from_secs(5))
                .with_retries(3),
        );
    #[cfg(any(target_os = "android", target_os = "fuchsia", target_os = "linux"))]
    let s = s.set_user_timeout(Duration::from_secs(30));
    s
}

/// Where and how to connect to `host:port`: the configuration's credentials, database
/// and TLS.
pub(crate) fn node_info(
    config: &RedisConfig,
    host: &str,
    port: u16,
) -> Result<redis::ConnectionInfo> {
    use redis::IntoConnectionInfo;
    let addr = if config.tls {
        redis::ConnectionAddr::TcpTls {
            host: host.to_string(),
            port,
            insecure: config.tls_insecure,
            tls_params: None,
        }
    } else {
        redis::ConnectionAddr::Tcp(host.to_string(), port)
    };
    let mut redis_info = redis::RedisConnectionInfo::default().set_db(i64::from(config.db));
    if let Some(u) = &config.username {
        redis_info = redis_info.set_username(u);
    }
    if let Some(p) = config.password() {
        redis_info = redis_info.set_password(p);
    }
    Ok(addr
        .into_connection_info()
        .map_err(error::map_connect)?
        .set_redis_settings(redis_info)
        .set_tcp_settings(tcp_settings()))
}

/// Installs rustls' process-wide crypto provider before the first TLS connection.
#[cfg(feature = "tls")]
pub(crate) fn ensure_crypto_provider() {
    // rustls needs a process-wide crypto provider; install ring unless the application
    // already installed one (a second install fails harmlessly).
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// A client for the node `info` describes, trusting the configured CA certificate(s) when
/// there are any.
#[cfg_attr(not(feature = "tls"), allow(unused_variables))]
pub(crate) fn client(config: &RedisConfig, info: redis::ConnectionInfo) -> Result<redis::Client> {
    #[cfg(feature = "tls")]
    if let (true, Some(pem)) = (config.tls, config.tls_root_cert()) {
        return redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.to_vec()),
            },
        )
        .map_err(error::map_connect);
    }
    redis::Client::open(info).map_err(error::map_connect)
}
