//! Redis Sentinel: the primary of a monitored service, found through the sentinels and
//! followed across failovers.
//!
//! # URL
//!
//! ```text
//! redis+sentinel://[user[:password]@]s1:p1,s2:p2,.../service_name[/db][?param=value&...]
//! rediss+sentinel://...        (TLS to the sentinels and to the primary, feature `tls`)
//! ```
//!
//! The hosts are **sentinels** (default port 26379), never data nodes; `service_name` is
//! the name the sentinels monitor the primary under (`sentinel monitor <name> ...`). The URL
//! is parsed in [`crate::config`], with the other schemes.
//!
//! # Credentials
//!
//! The user name and password of the URL authenticate to the **primary** (and are what
//! `RedisConfig::username` and its password hold), as for `redis://`. Sentinels usually
//! run without a password; when they require one, give it as `sentinel_password=...`
//! (and `sentinel_username=...` for an ACL user) — the primary's credentials are never sent
//! to a sentinel. `sentinel_password` is a secret like the URL's password: it never appears
//! in `Debug` output, in errors, or in the URL as [`BackendUrl`](larder_cache_api::url)
//! prints it.
//!
//! # Discovery and failover
//!
//! Following the Sentinel client protocol, the sentinels are asked in order
//! (`SENTINEL GET-MASTER-ADDR-BY-NAME`); the first that names an address wins, and moves to
//! the front of the list for next time. The named node is connected to and must answer
//! `ROLE` as `master` before it is used, so a stale answer is not trusted. Each sentinel
//! costs at most `connect_timeout + response_timeout`: one that is down, stalled or answers
//! something that is not Redis protocol is passed over for the next.
//!
//! Operations share one multiplexed connection to the primary. When it fails — the
//! connection is lost, a reply times out, or the server answers `READONLY` (it was demoted
//! to a replica) — the sentinels are asked again, once, in the background, and later
//! operations wait for that answer (within their own deadline). Besides, a sentinel is asked
//! every `sentinel_check_ms` (default 250) whether the primary moved: a failover with the
//! old primary still alive (`SENTINEL FAILOVER`, a partition) breaks no connection, and the
//! sentinels demote the old primary only seconds later. A write refused with
//! `READONLY` was not applied and is sent once more to the newly found primary; any other
//! failed operation returns its error, since it may or may not have been applied.
//!
//! # What Sentinel does not promise
//!
//! Replication to the replicas is asynchronous: a write the old primary acknowledged but
//! had not yet sent on is **lost** when a replica is promoted. So a Sentinel backend
//! declares `linearizable_cas = false` (as Redis Cluster does), and coordination
//! (`larder-coord`) refuses it: a lease granted on the old primary could be granted again
//! on the new one.
//!
//! # Files
//!
//! [`discovery`] asks the sentinels and checks the primary they name; [`conn`] holds the
//! connection in use and looks the primary up again when it fails or moves; [`errors`]
//! tells apart what went wrong while looking; [`agreement`] asks every sentinel whether
//! a primary is still theirs (what a near cache's sync needs).

mod agreement;
mod conn;
mod discovery;
mod errors;

pub(crate) use agreement::{Agreement, Witnesses};
pub(crate) use conn::SentinelConn;
