//! Who holds a lease: an id unique per process start.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::random::random_u64;

/// A holder id, unique per process start: host name, process id and 64 random bits
/// (`web-3:4242:9f1c…`), never just the host name, so a restarted process never mistakes
/// its predecessor's lease for its own.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HolderId(String);

impl HolderId {
    /// A fresh id for this process.
    pub fn generate() -> Self {
        HolderId(format!(
            "{}:{}:{:016x}",
            host_name(),
            std::process::id(),
            random_u64()
        ))
    }

    /// An id with a readable name in front (the instance name from configuration), still
    /// made unique with the process id and random bits.
    pub fn named(name: &str) -> Self {
        HolderId(format!(
            "{name}@{}:{}:{:016x}",
            host_name(),
            std::process::id(),
            random_u64()
        ))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for HolderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for HolderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|s| s.trim().to_owned())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".to_owned())
        .chars()
        .map(|c| {
            if c.is_ascii_whitespace() || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_per_start_and_readable() {
        let a = HolderId::generate();
        let b = HolderId::generate();
        assert_ne!(a, b);
        assert!(a.as_str().contains(&std::process::id().to_string()));
        assert!(HolderId::named("web-1").as_str().starts_with("web-1@"));
    }
}
