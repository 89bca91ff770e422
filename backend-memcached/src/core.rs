//! The connection core: the async meta-protocol client, the server probe run at connect, and
//! TTL conversion to memcached's exptime.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use larder_cache_api::{Error, ErrorKind, Result, Ttl};
use memcache::exp::AsyncMetaClient;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::config::{MemcachedConfig, MAX_VALUE_CAP};
use crate::error::{self, BACKEND};
use crate::ring::Ring;

/// Relative exptimes above this are read by memcached as absolute Unix times.
const MAX_RELATIVE_SECS: u64 = 30 * 24 * 3600;

/// memcached parses exptime as a signed 32-bit number.
const MAX_ABSOLUTE_SECS: u64 = i32::MAX as u64;

/// What memcached needs besides the value: room for the item header, a 250-byte key and the
/// CAS (measured overhead: 309 bytes with a 250-byte key, the same for 1 MiB..4 MiB items).
const ITEM_OVERHEAD_MARGIN: usize = 512;

/// The client plus the ring it routes with.
pub(crate) struct Core {
    pub(crate) client: AsyncMetaClient,
    pub(crate) ring: Ring,
}

impl Core {
    /// Builds the client (connections are opened lazily, per server, and pooled).
    pub(crate) async fn new(config: &MemcachedConfig) -> Result<Core> {
        let ring = Ring::new(&config.servers, config.vnodes);
        let client = AsyncMetaClient::builder()
            .router(ring.clone())
            .connect_timeout(Some(config.connect_timeout))
            .io_timeout(Some(config.timeout))
            .max_idle(config.max_idle)
            .max_connections(config.max_connections)
            .connect_multiple_async(config.servers.iter().map(String::as_str))
            .await
            .map_err(|e| {
                let (kind, msg) = match &e {
                    memcache::exp::Error::Io(_) => (
                        ErrorKind::Unavailable,
                        "cannot resolve a memcached server address",
                    ),
                    _ => (ErrorKind::Config, "invalid memcached client configuration"),
                };
                Error::new(kind, msg).with_backend(BACKEND).with_source(e)
            })?;
        Ok(Core { client, ring })
    }
}

/// The value limit to declare: the smallest `item_size_max` of the servers that answer, less
/// the item overhead, capped at 64 MiB and at the configured limit. Fails only if no server
/// answers.
pub(crate) async fn probe_value_limit(config: &MemcachedConfig) -> Result<usize> {
    let mut limit: Option<usize> = None;
    let mut first_error = None;
    for server in &config.servers {
        match item_size_max(server, config.connect_timeout, config.timeout).await {
            Ok((_, false)) => {
                // Without CAS every item reports unique 0 and every conditional write
                // matches: larder would report writes it did not make.
                return Err(Error::new(
                    ErrorKind::Config,
                    format!(
                        "memcached at {server} runs with CAS disabled (-C); larder needs \
                         compare-and-swap: start it without -C"
                    ),
                )
                .with_backend(BACKEND));
            }
            Ok((n, true)) => limit = Some(limit.map_or(n, |l| l.min(n))),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    let Some(server_max) = limit else {
        return Err(first_error.unwrap_or_else(|| error::protocol("no memcached server")));
    };
    let mut declared = server_max
        .saturating_sub(ITEM_OVERHEAD_MARGIN)
        .min(MAX_VALUE_CAP);
    if let Some(wanted) = config.max_value_size {
        declared = declared.min(wanted);
    }
    if declared < 1024 {
        return Err(Error::new(
            ErrorKind::Config,
            format!("memcached item_size_max of {server_max} bytes is too small for larder"),
        )
        .with_backend(BACKEND));
    }
    Ok(declared)
}

/// `stats settings` → `item_size_max` of one server and whether CAS is on, over a
/// connection of its own.
async fn item_size_max(server: &str, connect: Duration, io: Duration) -> Result<(usize, bool)> {
    let stream = tokio::time::timeout(connect, TcpStream::connect(server))
        .await
        .map_err(|_| {
            Error::new(
                ErrorKind::Timeout,
                format!("connecting to memcached at {server} timed out"),
            )
            .with_backend(BACKEND)
        })?
        .map_err(|e| error::from_io(e, format!("cannot connect to memcached at {server}")))?;
    let exchange = async {
        let mut stream = BufReader::new(stream);
        stream.write_all(b"stats settings\r\n").await?;
        let mut found = None;
        // Servers too old to report it have CAS on.
        let mut cas_enabled = true;
        let mut line = String::new();
        loop {
            line.clear();
            if stream.read_line(&mut line).await? == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
            }
            let l = line.trim_end();
            if l == "END" {
                return Ok(found.map(|n| (n, cas_enabled)));
            }
            if let Some(v) = l.strip_prefix("STAT item_size_max ") {
                found = v.trim().parse::<usize>().ok();
            }
            if let Some(v) = l.strip_prefix("STAT cas_enabled ") {
                cas_enabled = v.trim() != "no";
            }
        }
    };
    let found = tokio::time::timeout(io, exchange)
        .await
        .map_err(|_| {
            Error::new(
                ErrorKind::Timeout,
                format!("memcached at {server} did not answer `stats settings` in time"),
            )
            .with_backend(BACKEND)
        })?
        .map_err(|e| error::from_io(e, format!("reading stats from memcached at {server}")))?;
    found.ok_or_else(|| {
        error::protocol(format!(
            "memcached at {server} reported no item_size_max in `stats settings`"
        ))
    })
}

/// memcached's exptime for a TTL: whole seconds rounded up, plus one because the server's
/// clock ticks on second boundaries (exptime N can end up to a second before N seconds have
/// passed); beyond 30 days an absolute Unix time, since memcached reads larger relative
/// values as one. `None` is 0, "never".
pub(crate) fn exptime(ttl: Option<Ttl>) -> Result<u32> {
    let Some(ttl) = ttl else { return Ok(0) };
    let secs = ttl.as_secs_ceil().saturating_add(1);
    if secs <= MAX_RELATIVE_SECS {
        return Ok(secs as u32);
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let at = now.saturating_add(secs);
    if at > MAX_ABSOLUTE_SECS {
        return Err(Error::new(
            ErrorKind::InvalidTtl,
            format!(
                "a TTL of {}s ends after 2038-01-19, the latest expiry memcached can store",
                ttl.as_secs_ceil()
            ),
        )
        .with_backend(BACKEND));
    }
    Ok(at as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exptime_rounds_up_adds_a_tick_and_goes_absolute() {
        assert_eq!(exptime(None).unwrap(), 0);
        assert_eq!(exptime(Some(Ttl::from_millis(1).unwrap())).unwrap(), 2);
        assert_eq!(exptime(Some(Ttl::from_millis(1000).unwrap())).unwrap(), 2);
        assert_eq!(exptime(Some(Ttl::from_millis(1001).unwrap())).unwrap(), 3);
        let thirty = Ttl::from_secs(MAX_RELATIVE_SECS - 1).unwrap();
        assert_eq!(u64::from(exptime(Some(thirty)).unwrap()), MAX_RELATIVE_SECS);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let over = Ttl::from_secs(MAX_RELATIVE_SECS).unwrap();
        let at = u64::from(exptime(Some(over)).unwrap());
        assert!(at > now + MAX_RELATIVE_SECS && at <= now + MAX_RELATIVE_SECS + 3);
    }
}
