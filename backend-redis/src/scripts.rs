//! The Lua scripts of the conditional writes, and how they are sent and resent.
//!
//! # Retried compare-and-swap
//!
//! A reply can be lost after the server ran the command (a connection cut at the wrong
//! moment). The cluster client then sends the same command again, and so does this backend
//! for its scripts (see [`eval`]); the single-server connection manager does not.
//! Without care, a create or update retried that way finds its own write, reports
//! `Conflict`, and [`Cache::update`](larder_cache_api::Cache::update) runs its closure a
//! second time (a counter goes up by 2). So every conditional write is idempotent:
//!
//! * **Create and update:** the new version the client drew doubles as the request id (64
//!   random bits drawn once per call, sent unchanged by every retry). Each write also
//!   pushes that version onto the entry's write history: a list next to the entry
//!   (same hash slot, a name no valid [`Key`](larder_cache_api::Key) can take, see
//!   [`writes_key`](crate::slot::writes_key)) holding the versions of its last
//!   1024 conditional writes (`LTRIM`), for as long as a delete marker lives: a resend is
//!   recognised while fewer writes than that followed it (a few hundred milliseconds of a
//!   key written by many clients at once). When the stored
//!   version is not the expected one (or, for a create, the key is present or absent) but
//!   the new version *is* the stored one or in the history, the write already happened:
//!   the script answers success, and the caller gets its version. So a resend recognises
//!   its own write even when other clients wrote the entry, or deleted it, between the lost
//!   reply and the resend (a counter incremented by many clients stays exact), and a resent
//!   create never re-creates an entry deleted since. An `LPUSH`, `LTRIM` and `PEXPIRE`
//!   more inside the same script (an `LPOS` on a refusal); no extra round trip. Needs
//!   Redis 6.0.6 or later (`LPOS`).
//! * **Delete-if-version:** once the key is gone there is no record left to carry an id,
//!   so the script leaves a marker: a small key next to the entry (same hash slot, a name
//!   no valid [`Key`](larder_cache_api::Key) can take, see
//!   [`marker_key`](crate::slot::marker_key)) holding the caller's random request id
//!   for [`MARKER_TTL_MIN`] or four operation deadlines, whichever is longer. A retry that
//!   finds the key absent or replaced, and the marker holding its own id, reports success
//!   (`Ok(true)`); any other caller still gets the conflict. One `SET` more inside the same
//!   script; no extra round trip.

use larder_cache_api::{Result, Ttl};
use redis::{Cmd, Value};

use crate::connect::Conn;
use crate::error::{self, map};

/// Set-if-absent. `KEYS[2]` is the entry's write history (a list, newest first), `ARGV[3]`
/// its lifetime in milliseconds. Replies 1 when written (or when this very write is stored
/// or in the history, retried: its version is the one in `ARGV[1]`), else the stored string.
const CREATE: &str = r"
local own = string.sub(ARGV[1], 1, 8)
if redis.call('LPOS', KEYS[2], own) then return 1 end
local cur = redis.call('GET', KEYS[1])
if cur then
  if string.sub(cur, 1, 8) == own then return 1 end
  return cur
end
if ARGV[2] == '0' then
  redis.call('SET', KEYS[1], ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
redis.call('LPUSH', KEYS[2], own)
redis.call('LTRIM', KEYS[2], 0, 1023)
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
";

/// Set-if-version. `KEYS[2]` is the entry's write history, `ARGV[4]` its lifetime in
/// milliseconds. Replies 1 when written (or when this very write is stored or in the
/// history, retried), 0 when absent, else the stored string.
const UPDATE: &str = r"
local own = string.sub(ARGV[2], 1, 8)
local cur = redis.call('GET', KEYS[1])
if cur and string.sub(cur, 1, 8) == ARGV[1] then
  if ARGV[3] == '0' then
    redis.call('SET', KEYS[1], ARGV[2])
  else
    redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  end
  redis.call('LPUSH', KEYS[2], own)
  redis.call('LTRIM', KEYS[2], 0, 1023)
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
  return 1
end
if cur and string.sub(cur, 1, 8) == own then return 1 end
if redis.call('LPOS', KEYS[2], own) then return 1 end
if not cur then return 0 end
return cur
";

/// Delete-if-version. `KEYS[2]` is the entry's delete marker, `ARGV[2]` the caller's request id,
/// `ARGV[3]` the marker's lifetime in milliseconds. Replies 1 when deleted (or when the marker
/// shows that this very request deleted it, retried), 0 when absent, else the stored string.
const DELETE_IF: &str = r"
local cur = redis.call('GET', KEYS[1])
if not cur or string.sub(cur, 1, 8) ~= ARGV[1] then
  if redis.call('GET', KEYS[2]) == ARGV[2] then return 1 end
  if not cur then return 0 end
  return cur
end
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return 1
";

/// How many times [`eval`] sends a script whose reply may have been lost: the pauses
/// between them (10, 20, 40, 80 ms) give a dropped connection time to be replaced, so that
/// a write whose reply was lost learns its outcome instead of reporting an error.
const SCRIPT_ATTEMPTS: u32 = 5;

/// The shortest life of a delete marker (see the module docs): longer than any resend of
/// the delete can come late.
const MARKER_TTL_MIN: std::time::Duration = std::time::Duration::from_secs(10);

/// Removes the expiry. PERSIST alone replies 0 both for an absent key and for a key without
/// expiry; the contract needs to tell them apart.
const PERSIST: &str = r"
if redis.call('PERSIST', KEYS[1]) == 1 then return 1 end
return redis.call('EXISTS', KEYS[1])
";

/// A Lua script run with EVALSHA, falling back to EVAL (which also caches it on that server)
/// when the server answers NOSCRIPT: after a restart, a failover, or on a cluster node that
/// has not seen it yet. One round trip in the common case.
#[derive(Debug)]
pub(crate) struct Lua {
    src: &'static str,
    sha: String,
}

impl Lua {
    fn new(src: &'static str) -> Self {
        Lua {
            src,
            sha: redis::Script::new(src).get_hash().to_string(),
        }
    }
}

/// The scripts every backend sends, hashed once at connect.
#[derive(Debug)]
pub(crate) struct Scripts {
    pub(crate) create: Lua,
    pub(crate) update: Lua,
    pub(crate) delete_if: Lua,
    pub(crate) persist: Lua,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Scripts {
            create: Lua::new(CREATE),
            update: Lua::new(UPDATE),
            delete_if: Lua::new(DELETE_IF),
            persist: Lua::new(PERSIST),
        }
    }
}

/// The lifetime of a delete marker, in milliseconds, for operations bounded by `deadline`.
pub(crate) fn marker_ttl_ms(deadline: std::time::Duration) -> u64 {
    u64::try_from(MARKER_TTL_MIN.max(deadline * 4).as_millis()).unwrap_or(u64::MAX)
}

/// The TTL argument of the scripts: milliseconds, or "0" for none (a TTL is never zero).
pub(crate) fn ttl_arg(ttl: Option<Ttl>) -> u64 {
    ttl.map_or(0, Ttl::as_millis)
}

/// Runs a script on `keys` (all in one hash slot): EVALSHA, then EVAL if the server
/// does not have it.
///
/// Every script is idempotent under a resend of the same arguments (see the module
/// docs), so a failure that may have lost the reply of an applied script (connection
/// dropped, no reply in time) is retried with the very same command, up to
/// [`SCRIPT_ATTEMPTS`] sends in all, within the one operation deadline. The retry is
/// what turns a lost reply into the caller's own success: on a single server nothing
/// else would resend, and on a cluster the client's own resend lands on the same
/// scripts.
pub(crate) async fn eval(
    conn: &Conn,
    deadline: std::time::Duration,
    op: &'static str,
    lua: &Lua,
    keys: &[&[u8]],
    args: impl Fn(&mut Cmd) + Sync,
) -> Result<Value> {
    let build = |verb: &str, body: &str| {
        let mut c = redis::cmd(verb);
        c.arg(body).arg(keys.len());
        for k in keys {
            c.arg(*k);
        }
        args(&mut c);
        c
    };
    let once = || async {
        match conn.query(&build("EVALSHA", &lua.sha)).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                conn.query(&build("EVAL", lua.src)).await
            }
            r => r,
        }
    };
    let fut = async {
        let mut sent = 1;
        loop {
            match once().await {
                Err(e) if sent < SCRIPT_ATTEMPTS && may_have_lost_reply(&e) => {
                    sent += 1;
                    // A dropped single-server connection is being replaced by the
                    // manager; the next query waits for it. A short pause spares a
                    // server that is not back yet a burst of attempts.
                    let pause = 10u64 << (sent - 2);
                    tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
                }
                r => return r,
            }
        }
    };
    match tokio::time::timeout(deadline, fut).await {
        Ok(r) => r.map_err(|e| map(op, e)),
        Err(e) => Err(error::deadline(op, deadline, e)),
    }
}

/// Whether `e` may hide a reply lost after the server ran the command, so that sending it
/// again is the way to learn the outcome: the connection dropped or failed, or no reply came
/// in time. Errors the server answered (a script error, `NOSCRIPT`, a refusal) are final.
fn may_have_lost_reply(e: &redis::RedisError) -> bool {
    e.is_timeout()
        || e.is_connection_dropped()
        || e.is_io_error()
        || e.kind() == redis::ErrorKind::ClusterConnectionNotFound
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_keeps_its_entries() {
        // Both scripts trim the history to the 1024 entries the module docs promise.
        for script in [CREATE, UPDATE] {
            assert!(script.contains("LTRIM', KEYS[2], 0, 1023)"));
        }
    }

    #[test]
    fn scripts_have_distinct_hashes() {
        let hashes = [CREATE, UPDATE, DELETE_IF, PERSIST].map(|s| Lua::new(s).sha);
        for (i, a) in hashes.iter().enumerate() {
            assert_eq!(a.len(), 40);
            for b in &hashes[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }
}
