//! Whether every sentinel still names the primary a near cache's tracking connection follows:
//! the confirmation that turns a `PONG` into a sync (see `crate::tracking`).
//!
//! A primary demoted by `SENTINEL FAILOVER` (or cut off by a partition) stays alive, answers
//! `PING`, says `master` to `ROLE` and even takes writes for seconds, until the sentinels
//! reconfigure it. Meanwhile any client that asks a sentinel which has switched writes to the
//! new primary. Neither the old node's `ROLE` nor a write to it can tell; only the sentinels
//! can, and a sentinel answers `SENTINEL GET-MASTER-ADDR-BY-NAME` from the configuration it
//! switches. So a reply sent after `t` by every sentinel of the configuration, naming the
//! tracked node, proves that none of them had sent a client elsewhere before `t`. (A majority
//! would not do: `SENTINEL FAILOVER` switches one sentinel without asking the others.)
//!
//! Cost: one such command per sentinel per sync (four per staleness bound), on a connection
//! kept open to each.

use redis::aio::MultiplexedConnection;

use super::conn::SentinelConn;

/// What the sentinels said about the tracked node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Agreement {
    /// Every sentinel names it.
    Agreed,
    /// A sentinel names this other node: the primary moved (or is moving).
    Moved((String, u16)),
    /// A sentinel did not answer in time, or knows no primary: nothing is confirmed.
    Unknown,
}

/// A connection to each sentinel of the configuration, opened on first use and again after
/// a failure.
pub(crate) struct Witnesses {
    conn: SentinelConn,
    sentinels: Vec<((String, u16), Option<MultiplexedConnection>)>,
}

impl Witnesses {
    /// The sentinels `conn` was configured with.
    pub(crate) fn new(conn: &SentinelConn) -> Self {
        let sentinels = conn
            .discovery()
            .config
            .nodes
            .iter()
            .map(|n| (n.clone(), None))
            .collect();
        Witnesses {
            conn: conn.clone(),
            sentinels,
        }
    }

    /// Asks every sentinel, one after the other, which node is the primary; each within
    /// one connect and one reply.
    pub(crate) async fn ask(&mut self, tracked: &(String, u16)) -> Agreement {
        let discovery = self.conn.discovery();
        let step = discovery.step();
        let mut verdict = Agreement::Agreed;
        for ((host, port), cached) in &mut self.sentinels {
            let answer = tokio::time::timeout(step, async {
                let c = match cached {
                    Some(c) => c,
                    None => cached.insert(discovery.open_sentinel(host, *port).await?),
                };
                discovery.master_addr(c).await
            })
            .await;
            match answer {
                Ok(Ok(Some(named))) if &named == tracked => {}
                Ok(Ok(Some(named))) => return Agreement::Moved(named),
                _ => {
                    *cached = None;
                    verdict = Agreement::Unknown;
                }
            }
        }
        verdict
    }
}
