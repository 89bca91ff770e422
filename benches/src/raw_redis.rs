//! The raw Redis client the Redis benches set beside larder: a connection made as theirs
//! is, and the plain commands on the same stored bytes.

use bytes::Bytes;
use larder_cache_api::Key;
use redis::aio::MultiplexedConnection;
use redis::{IntoConnectionInfo, Value};

/// The compare-version-then-SET script the backend runs for `PutMode::Update`
/// (`backend-redis/src/core.rs`, `UPDATE`), without the backend's check for its own
/// resent write (which runs only when the versions differ): the ratio includes that
/// check's cost.
pub const UPDATE: &str = r"
local cur = redis.call('GET', KEYS[1])
if not cur then return 0 end
if string.sub(cur, 1, 8) ~= ARGV[1] then return cur end
if ARGV[3] == '0' then
  redis.call('SET', KEYS[1], ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return 1
";

/// A multiplexed connection to the redis-server on `127.0.0.1:port`, with `TCP_NODELAY` as
/// larder's backend sets it.
pub async fn raw_connection(port: u16) -> MultiplexedConnection {
    let info = redis::ConnectionAddr::Tcp("127.0.0.1".into(), port)
        .into_connection_info()
        .expect("connection info")
        .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
    redis::Client::open(info)
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection")
}

/// `SCRIPT LOAD`: the SHA1 to call `script` by.
pub async fn script_load(raw: &mut MultiplexedConnection, script: &str) -> String {
    redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(script)
        .query_async(raw)
        .await
        .expect("SCRIPT LOAD")
}

/// `GET` of a key that is there.
pub async fn raw_get(raw: &MultiplexedConnection, k: &Key) -> Bytes {
    let mut c = raw.clone();
    match redis::cmd("GET")
        .arg(k.as_bytes())
        .query_async::<Value>(&mut c)
        .await
        .expect("GET")
    {
        Value::BulkString(b) => Bytes::from(b),
        other => panic!("GET: {other:?}"),
    }
}

/// `SET k v PX 60000`.
pub async fn raw_set(raw: &MultiplexedConnection, k: &Key, v: &[u8]) {
    let mut c = raw.clone();
    let r: Value = redis::cmd("SET")
        .arg(k.as_bytes())
        .arg(v)
        .arg("PX")
        .arg(60_000)
        .query_async(&mut c)
        .await
        .expect("SET");
    assert_eq!(r, Value::Okay);
}

/// `MGET` of `batch`.
pub async fn raw_mget(raw: &MultiplexedConnection, batch: &[Key]) -> Vec<Option<Bytes>> {
    let mut c = raw.clone();
    let mut cmd = redis::cmd("MGET");
    for k in batch {
        cmd.arg(k.as_bytes());
    }
    match cmd.query_async::<Value>(&mut c).await.expect("MGET") {
        Value::Array(items) => items
            .into_iter()
            .map(|v| match v {
                Value::BulkString(b) => Some(Bytes::from(b)),
                _ => None,
            })
            .collect(),
        other => panic!("MGET: {other:?}"),
    }
}
