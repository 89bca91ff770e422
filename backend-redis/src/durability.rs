//! Whether the server keeps what it is given: read at connect from `INFO persistence`
//! (`aof_enabled`) and `INFO memory` (`maxmemory_policy`), on every master of a cluster.
//!
//! Redis answers these from its configuration, which is the operator's, not ours: the
//! backend reports what it measured, and the safe answer (not persistent, may evict) for
//! anything it could not read (a user whose ACL forbids `INFO`, a reply it does not
//! understand).

use std::borrow::Cow;

use redis::Value;

/// What one server said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NodeReport {
    /// `host:port`, or empty for the only server.
    pub node: String,
    /// `aof_enabled` (`None`: unreadable).
    pub aof: Option<bool>,
    /// `maxmemory_policy` (`None`: unreadable).
    pub policy: Option<String>,
    /// Why a field is unreadable (the error), if one is.
    pub unreadable: Option<String>,
}

/// The measurement of the whole deployment (one server, or every master).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Measured {
    pub persistent: bool,
    pub may_evict: bool,
    pub persistence_note: Cow<'static, str>,
    pub eviction_note: Cow<'static, str>,
    /// For `details()`: `aof=yes policy=noeviction` per node.
    pub summary: String,
}

/// The fields of an `INFO` reply (`key:value` lines).
pub(crate) fn field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines().find_map(|l| {
        let (k, v) = l.trim_end_matches('\r').split_once(':')?;
        (k == name).then_some(v.trim())
    })
}

/// The text of an `INFO` reply, per node: the only server's (node `""`), or a cluster's map
/// of node to reply. A node's error reply is kept as `Err(text)`.
pub(crate) fn per_node(v: Value) -> Vec<(String, Result<String, String>)> {
    fn text(v: Value) -> Result<String, String> {
        match v {
            Value::BulkString(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
            Value::VerbatimString { text, .. } => Ok(text),
            Value::SimpleString(s) => Ok(s),
            Value::ServerError(e) => Err(format!("{e:?}")),
            other => Err(format!("unexpected reply {other:?}")),
        }
    }
    match v {
        Value::Map(nodes) => nodes
            .into_iter()
            .map(|(k, v)| {
                let node = text(k).unwrap_or_default();
                (node, text(v))
            })
            .collect(),
        other => vec![(String::new(), text(other))],
    }
}

/// One node's report from its `INFO persistence` and `INFO memory` replies.
pub(crate) fn node_report(
    node: String,
    persistence: Result<String, String>,
    memory: Result<String, String>,
) -> NodeReport {
    let mut unreadable = Vec::new();
    let aof = match &persistence {
        Ok(t) => match field(t, "aof_enabled") {
            Some("1") => Some(true),
            Some("0") => Some(false),
            _ => {
                unreadable.push("no aof_enabled in INFO persistence".to_owned());
                None
            }
        },
        Err(e) => {
            unreadable.push(format!("INFO persistence: {e}"));
            None
        }
    };
    let policy = match &memory {
        Ok(t) => match field(t, "maxmemory_policy") {
            Some(p) if !p.is_empty() => Some(p.to_owned()),
            _ => {
                unreadable.push("no maxmemory_policy in INFO memory".to_owned());
                None
            }
        },
        Err(e) => {
            unreadable.push(format!("INFO memory: {e}"));
            None
        }
    };
    NodeReport {
        node,
        aof,
        policy,
        unreadable: (!unreadable.is_empty()).then(|| unreadable.join("; ")),
    }
}

/// The deployment keeps its data only if every node does; it may evict if any node may.
pub(crate) fn combine(nodes: &[NodeReport]) -> Measured {
    let at = |n: &NodeReport| {
        if n.node.is_empty() {
            String::new()
        } else {
            format!(" on {}", n.node)
        }
    };
    let mut no_aof = Vec::new();
    let mut evicting = Vec::new();
    let mut summary = Vec::new();
    for n in nodes {
        match n.aof {
            Some(true) => {}
            Some(false) => no_aof.push(format!("no append-only file (appendonly no){}", at(n))),
            None => no_aof.push(format!(
                "persistence unknown{}: {}",
                at(n),
                n.unreadable.as_deref().unwrap_or("unreadable")
            )),
        }
        match n.policy.as_deref() {
            Some("noeviction") => {}
            Some(p) => evicting.push(format!("maxmemory-policy {p} evicts{}", at(n))),
            None => evicting.push(format!(
                "maxmemory-policy unknown{}: {}",
                at(n),
                n.unreadable.as_deref().unwrap_or("unreadable")
            )),
        }
        let yn = |b: Option<bool>| match b {
            Some(true) => "yes",
            Some(false) => "no",
            None => "unknown",
        };
        summary.push(format!(
            "{}appendonly {}, maxmemory-policy {}",
            if n.node.is_empty() {
                String::new()
            } else {
                format!("{}: ", n.node)
            },
            yn(n.aof),
            n.policy.as_deref().unwrap_or("unknown")
        ));
    }
    if nodes.is_empty() {
        no_aof.push("persistence unknown: no node answered INFO".to_owned());
        evicting.push("maxmemory-policy unknown: no node answered INFO".to_owned());
    }
    let persistent = no_aof.is_empty();
    let may_evict = !evicting.is_empty();
    Measured {
        persistent,
        may_evict,
        persistence_note: if persistent {
            "append-only file (appendonly yes)".into()
        } else {
            no_aof.join("; ").into()
        },
        eviction_note: if may_evict {
            evicting.join("; ").into()
        } else {
            "maxmemory-policy noeviction (writes fail when memory is full; nothing is evicted)"
                .into()
        },
        summary: summary.join("; "),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const DEFAULT_PERSISTENCE: &str =
        "# Persistence\r\nloading:0\r\nrdb_changes_since_last_save:0\r\naof_enabled:0\r\naof_rewrite_in_progress:0\r\n";
    const AOF_PERSISTENCE: &str = "# Persistence\r\nloading:0\r\naof_enabled:1\r\n";
    const NOEVICTION: &str =
        "# Memory\r\nused_memory:1\r\nmaxmemory:0\r\nmaxmemory_policy:noeviction\r\n";
    const LRU: &str = "# Memory\r\nmaxmemory_policy:allkeys-lru\r\n";

    #[test]
    fn reads_the_fields() {
        assert_eq!(field(DEFAULT_PERSISTENCE, "aof_enabled"), Some("0"));
        assert_eq!(field(LRU, "maxmemory_policy"), Some("allkeys-lru"));
        assert_eq!(field(LRU, "maxmemory"), None);
    }

    #[test]
    fn default_aof_and_lru() {
        let m = combine(&[node_report(
            String::new(),
            Ok(DEFAULT_PERSISTENCE.into()),
            Ok(NOEVICTION.into()),
        )]);
        assert!(!m.persistent && !m.may_evict, "{m:?}");
        assert!(m.persistence_note.contains("no append-only file"), "{m:?}");
        let m = combine(&[node_report(
            String::new(),
            Ok(AOF_PERSISTENCE.into()),
            Ok(LRU.into()),
        )]);
        assert!(m.persistent && m.may_evict, "{m:?}");
        assert_eq!(m.eviction_note, "maxmemory-policy allkeys-lru evicts");
    }

    #[test]
    fn unreadable_is_not_durable() {
        let m = combine(&[node_report(
            String::new(),
            Err("NOPERM".into()),
            Err("NOPERM".into()),
        )]);
        assert!(!m.persistent && m.may_evict, "{m:?}");
        assert!(m.persistence_note.contains("NOPERM"), "{m:?}");
        assert!(!combine(&[]).persistent);
    }

    #[test]
    fn a_cluster_is_as_durable_as_its_weakest_master() {
        let v = Value::Map(vec![
            (
                Value::BulkString(b"10.0.0.1:7000".to_vec()),
                Value::BulkString(AOF_PERSISTENCE.as_bytes().to_vec()),
            ),
            (
                Value::BulkString(b"10.0.0.2:7000".to_vec()),
                Value::BulkString(DEFAULT_PERSISTENCE.as_bytes().to_vec()),
            ),
        ]);
        let nodes: Vec<NodeReport> = per_node(v)
            .into_iter()
            .map(|(n, p)| node_report(n, p, Ok(NOEVICTION.into())))
            .collect();
        let m = combine(&nodes);
        assert!(!m.persistent && !m.may_evict, "{m:?}");
        assert!(m.persistence_note.contains("on 10.0.0.2:7000"), "{m:?}");
        assert!(!m.persistence_note.contains("10.0.0.1"), "{m:?}");
    }
}
