//! Consistent hashing of keys onto servers: a ketama-style ring.
//!
//! Every server gets `vnodes` points on a 32-bit ring, at the first four bytes of
//! SHA-256(`"host:port-i"`); a key goes to the first point at or after SHA-256(key). Removing
//! a server only moves the keys that lived on it, and the hash is stable across Rust
//! releases and platforms (unlike std's `DefaultHasher`), so every process built from any
//! toolchain routes a key to the same server.

use memcache::exp::Router;
use sha2::{Digest, Sha256};

/// The ring: points sorted by position, each naming a server index.
#[derive(Debug, Clone)]
pub(crate) struct Ring {
    points: Vec<(u32, usize)>,
    servers: usize,
}

fn hash32(bytes: &[u8]) -> u32 {
    let d = Sha256::digest(bytes);
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

impl Ring {
    /// A ring over `servers` (identities as configured), `vnodes` points each.
    pub(crate) fn new(servers: &[String], vnodes: usize) -> Ring {
        let mut points = Vec::with_capacity(servers.len() * vnodes);
        for (index, server) in servers.iter().enumerate() {
            for i in 0..vnodes {
                points.push((hash32(format!("{server}-{i}").as_bytes()), index));
            }
        }
        // Ties (two points at one position) go to the server whose identity sorts first, so
        // the ring does not depend on the order the servers were listed in.
        points.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| servers[a.1].cmp(&servers[b.1])));
        points.dedup_by_key(|p| p.0);
        Ring {
            points,
            servers: servers.len(),
        }
    }

    /// The index of the server that owns `key`.
    pub(crate) fn lookup(&self, key: &[u8]) -> usize {
        if self.servers <= 1 || self.points.is_empty() {
            return 0;
        }
        let h = hash32(key);
        let i = self.points.partition_point(|p| p.0 < h);
        // Past the last point the ring wraps to the first.
        self.points.get(i).unwrap_or(&self.points[0]).1
    }
}

impl Router for Ring {
    fn route(&self, key: &[u8], servers: &[String]) -> usize {
        let i = self.lookup(key);
        // The client hands us the list the ring was built from; stay in range regardless.
        if i < servers.len() {
            i
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn servers(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:11211")).collect()
    }

    #[test]
    fn stable_balanced_and_minimal_moves() {
        let three = servers(3);
        let ring3 = Ring::new(&three, 160);
        // Removing the middle server: only its keys move.
        let two = vec![three[0].clone(), three[2].clone()];
        let ring2 = Ring::new(&two, 160);
        let mut counts = [0usize; 3];
        let mut moved = 0;
        for i in 0..6000 {
            let k = format!("key:{i}");
            let before = &three[ring3.lookup(k.as_bytes())];
            let after = &two[ring2.lookup(k.as_bytes())];
            counts[ring3.lookup(k.as_bytes())] += 1;
            if before != after {
                moved += 1;
                assert_eq!(before, &three[1], "only keys of the removed server move");
            }
        }
        assert_eq!(moved, counts[1]);
        for c in counts {
            assert!((1400..=2600).contains(&c), "unbalanced: {counts:?}");
        }
    }

    #[test]
    fn order_of_servers_does_not_matter() {
        let a = servers(4);
        let mut b = a.clone();
        b.reverse();
        let (ra, rb) = (Ring::new(&a, 100), Ring::new(&b, 100));
        for i in 0..1000 {
            let k = format!("k{i}");
            assert_eq!(a[ra.lookup(k.as_bytes())], b[rb.lookup(k.as_bytes())]);
        }
    }

    #[test]
    fn known_positions_never_change() {
        // Pinned so that a change of hash or layout (which would remap every key of every
        // deployment) fails here first.
        let ring = Ring::new(&servers(3), 160);
        let got: Vec<usize> = ["a", "user:42", "session:abc", "k0", "k1", "k2", "k3", "k4"]
            .iter()
            .map(|k| ring.lookup(k.as_bytes()))
            .collect();
        assert_eq!(got, PINNED);
    }

    const PINNED: [usize; 8] = [1, 1, 2, 2, 2, 1, 0, 1];
}
