//! A real Redis Cluster of three masters on free ports (replicas added on demand), for the
//! cluster tests, and a watchdog that stops servers held in `static`s when the test binary
//! exits.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{free_port, wait_until};

/// Three `redis-server --cluster-enabled yes` masters sharing the 16384 slots; killed on
/// drop.
#[derive(Debug)]
pub struct RedisCluster {
    ports: Vec<u16>,
    children: Vec<Child>,
    _dir: tempfile::TempDir,
}

fn binary(name: &str) -> PathBuf {
    for dir in std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
    {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "`{name}` is not installed; the cluster tests need it (apt-get install -y redis-server)"
    );
}

fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new(binary("redis-cli"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Starts `redis-server --cluster-enabled yes` number `i` on a free port, its files in a
/// directory of its own under `dir`.
fn spawn_node(dir: &std::path::Path, i: usize) -> (u16, Child) {
    let port = free_port();
    // The cluster bus gets its own free port rather than the default port + 10000,
    // which may be taken or out of range.
    let bus = free_port();
    let node_dir = dir.join(format!("node{i}"));
    std::fs::create_dir_all(&node_dir).expect("node dir");
    let child = Command::new(binary("redis-server"))
        .args([
            "--port",
            &port.to_string(),
            "--cluster-port",
            &bus.to_string(),
            "--bind",
            "127.0.0.1",
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            &format!("nodes-{port}.conf"),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(&node_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server starts");
    (port, child)
}

impl RedisCluster {
    /// Starts three masters, joins them with `redis-cli --cluster create`, and waits until
    /// every node reports `cluster_state:ok` and knows the other two.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut ports = Vec::new();
        let mut children = Vec::new();
        for i in 0..3 {
            let (port, child) = spawn_node(dir.path(), i);
            ports.push(port);
            children.push(child);
        }
        let cluster = RedisCluster {
            ports,
            children,
            _dir: dir,
        };
        for &p in &cluster.ports {
            wait_until(
                Duration::from_secs(10),
                format_args!("node {p} listens"),
                || TcpStream::connect(("127.0.0.1", p)).is_ok(),
            );
        }
        let nodes: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let out = Command::new(binary("redis-cli"))
            .arg("--cluster")
            .arg("create")
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli --cluster create runs");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for &p in &cluster.ports {
            wait_until(
                Duration::from_secs(30),
                format_args!("node {p} reports cluster_state:ok"),
                || {
                    let info = redis_cli(p, &["CLUSTER", "INFO"]);
                    info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:3")
                },
            );
        }
        cluster
    }

    /// The ports of the three masters.
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// `127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3`, for a `redis+cluster://` URL.
    pub fn seeds(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The port of the master that owns `key`'s slot (`CLUSTER KEYSLOT`, `CLUSTER NODES`).
    pub fn owner_of(&self, key: &str) -> u16 {
        let slot: u16 = redis_cli(self.ports[0], &["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .expect("CLUSTER KEYSLOT answers a number");
        let nodes = redis_cli(self.ports[0], &["CLUSTER", "NODES"]);
        for line in nodes.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 9 || !f[2].contains("master") {
                continue;
            }
            let port: u16 = f[1]
                .split(['@', ','])
                .next()
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| p.parse().ok())
                .expect("node address has a port");
            for range in &f[8..] {
                let (lo, hi) = match range.split_once('-') {
                    Some((lo, hi)) => (lo.parse().unwrap_or(u16::MAX), hi.parse().unwrap_or(0)),
                    None => {
                        let s = range.parse().unwrap_or(u16::MAX);
                        (s, s)
                    }
                };
                if (lo..=hi).contains(&slot) {
                    return port;
                }
            }
        }
        panic!("no master owns slot {slot}");
    }

    /// Makes the master on `port` announce `announced` as its client port to clients and to
    /// the other nodes (`CONFIG SET cluster-announce-port`), for instance the port of a
    /// [`FaultProxy`](crate::proxy::FaultProxy) in front of it, so that a cluster client
    /// reaches that node through the proxy. Waits until every node lists the new port.
    pub fn announce_port(&self, port: u16, announced: u16) {
        let out = redis_cli(
            port,
            &[
                "CONFIG",
                "SET",
                "cluster-announce-port",
                &announced.to_string(),
            ],
        );
        assert_eq!(out.trim(), "OK", "CONFIG SET cluster-announce-port: {out}");
        let addr = format!("127.0.0.1:{announced}@");
        for &p in &self.ports {
            wait_until(
                Duration::from_secs(30),
                format_args!("node {p} lists port {announced}"),
                || {
                    let nodes = redis_cli(p, &["CLUSTER", "NODES"]);
                    let slots = redis_cli(p, &["CLUSTER", "SLOTS"]);
                    nodes.contains(&addr)
                        && slots.lines().any(|l| l.trim() == announced.to_string())
                },
            );
        }
    }

    /// Adds a replica of the master on `master` (a new node joined with `redis-cli --cluster
    /// add-node --cluster-slave`) and waits until it is in sync and every node knows it;
    /// returns its port. [`ports`](Self::ports) still lists the masters only.
    pub fn add_replica(&mut self, master: u16) -> u16 {
        let (port, child) = spawn_node(self._dir.path(), self.children.len());
        self.children.push(child);
        wait_until(
            Duration::from_secs(10),
            format_args!("node {port} listens"),
            || TcpStream::connect(("127.0.0.1", port)).is_ok(),
        );
        let id = redis_cli(master, &["CLUSTER", "MYID"]).trim().to_owned();
        let out = Command::new(binary("redis-cli"))
            .args(["--cluster", "add-node"])
            .args([format!("127.0.0.1:{port}"), format!("127.0.0.1:{master}")])
            .args(["--cluster-slave", "--cluster-master-id", &id])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli --cluster add-node runs");
        assert!(
            out.status.success(),
            "redis-cli --cluster add-node failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let known = format!("cluster_known_nodes:{}", self.children.len());
        wait_until(
            Duration::from_secs(30),
            format_args!("replica {port} is in sync and known to every node"),
            || {
                redis_cli(port, &["INFO", "replication"]).contains("master_link_status:up")
                    && self
                        .ports
                        .iter()
                        .chain([&port])
                        .all(|p| redis_cli(*p, &["CLUSTER", "INFO"]).contains(&known))
            },
        );
        port
    }

    /// `CLUSTER FAILOVER` on the replica on `replica`, its master alive (a coordinated
    /// switch); waits until the replica reports itself master.
    pub fn failover_to(&self, replica: u16) {
        let out = redis_cli(replica, &["CLUSTER", "FAILOVER"]);
        assert_eq!(out.trim(), "OK", "CLUSTER FAILOVER answered {out:?}");
        wait_until(
            Duration::from_secs(30),
            format_args!("replica {replica} is a master"),
            || redis_cli(replica, &["ROLE"]).lines().next() == Some("master"),
        );
    }

    /// Kills every node when the current process exits, even if `self` is never dropped
    /// (as for a `static`).
    pub fn kill_at_exit(&self) {
        let pids: Vec<String> = self.children.iter().map(|c| c.id().to_string()).collect();
        watchdog(&format!("kill -9 {}", pids.join(" ")));
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Kills the processes `pids` (SIGKILL) when the current process exits.
pub fn kill_at_exit(pids: &[String]) {
    watchdog(&format!("kill -9 {}", pids.join(" ")));
}

/// Stops the redis-server on `port` (`SHUTDOWN NOSAVE`) when the current process exits.
///
/// For servers kept in a `static`: statics are never dropped, so without this the server
/// would outlive the test binary. A small shell loop polls the test process and runs the
/// shutdown once it is gone; it is started in its own session so that it is not killed
/// together with the test binary's process group.
pub fn shutdown_redis_at_exit(port: u16) {
    let cli = binary("redis-cli");
    watchdog(&format!(
        "{} -h 127.0.0.1 -p {port} shutdown nosave",
        cli.display()
    ));
}

fn watchdog(action: &str) {
    let script = format!(
        "while kill -0 {} 2>/dev/null; do sleep 1; done; {action}",
        std::process::id()
    );
    let mut cmd = if std::path::Path::new("/usr/bin/setsid").exists() {
        let mut c = Command::new("/usr/bin/setsid");
        c.arg("sh");
        c
    } else {
        Command::new("sh")
    };
    let mut child = cmd
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sh starts");
    // The watchdog outlives this process by design; a detached thread reaps it should it
    // ever end first.
    std::thread::spawn(move || {
        let _ = child.wait();
    });
}
