//! A real Redis Sentinel deployment on free ports: one primary, one replica and three
//! sentinels (quorum 2), tuned to fail over within seconds.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::free_port;
use crate::server::ServerProcess;
use crate::wait_until;

/// The name the sentinels monitor the primary under.
pub const SERVICE: &str = "larder-primary";
/// Sentinel `down-after-milliseconds`.
pub const DOWN_AFTER: Duration = Duration::from_millis(1000);
/// Sentinel `failover-timeout`.
pub const FAILOVER_TIMEOUT: Duration = Duration::from_millis(3000);

/// One primary, one replica, three sentinels; every process is killed on drop.
#[derive(Debug)]
pub struct SentinelSet {
    primary: ServerProcess,
    replica: ServerProcess,
    sentinels: Vec<(u16, Child)>,
    dir: tempfile::TempDir,
}

fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl SentinelSet {
    /// Starts the primary and its replica, waits until the replica is in sync, then starts
    /// three sentinels and waits until each knows the replica and the two other sentinels.
    pub fn start() -> Self {
        Self::start_with(&[], &[])
    }

    /// Like [`start`](Self::start), with extra arguments for both data nodes and extra
    /// lines for every sentinel's configuration (`requirepass ...`, `sentinel auth-pass
    /// ...`).
    pub fn start_with(node_args: &[&str], sentinel_lines: &[&str]) -> Self {
        let primary = ServerProcess::redis_with(node_args);
        let pport = primary.port().to_string();
        let mut replica_args = vec!["--replicaof", "127.0.0.1", &pport];
        replica_args.extend_from_slice(node_args);
        let replica = ServerProcess::redis_with(&replica_args);
        let auth = node_auth(node_args);
        wait_until(Duration::from_secs(20), "the replica is in sync", || {
            redis_cli_auth(replica.port(), auth, &["INFO", "replication"])
                .contains("master_link_status:up")
        });
        let dir = tempfile::tempdir().expect("temp dir");
        let mut set = SentinelSet {
            primary,
            replica,
            sentinels: Vec::new(),
            dir,
        };
        for i in 0..3 {
            let port = free_port();
            let conf = set.dir.path().join(format!("sentinel-{i}.conf"));
            let mut text = format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                 sentinel monitor {SERVICE} 127.0.0.1 {pport} 2\n\
                 sentinel down-after-milliseconds {SERVICE} {down}\n\
                 sentinel failover-timeout {SERVICE} {failover}\n\
                 sentinel parallel-syncs {SERVICE} 1\n",
                dir = set.dir.path().display(),
                down = DOWN_AFTER.as_millis(),
                failover = FAILOVER_TIMEOUT.as_millis(),
            );
            for l in sentinel_lines {
                text.push_str(l);
                text.push('\n');
            }
            std::fs::write(&conf, text).expect("sentinel config written");
            let child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server --sentinel starts");
            set.sentinels.push((port, child));
        }
        for &(port, _) in &set.sentinels {
            wait_until(
                Duration::from_secs(10),
                format_args!("sentinel {port} listens"),
                || TcpStream::connect(("127.0.0.1", port)).is_ok(),
            );
        }
        let sauth = sentinel_auth(sentinel_lines);
        for &(port, _) in &set.sentinels {
            wait_until(
                Duration::from_secs(30),
                format_args!("sentinel {port} knows the replica and the other sentinels"),
                || {
                    let f = |name| sentinel_field_auth(port, sauth, name);
                    f("num-slaves").as_deref() == Some("1")
                        && f("num-other-sentinels").as_deref() == Some("2")
                },
            );
        }
        set
    }

    /// `127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3`, for a `redis+sentinel://` URL.
    pub fn sentinels(&self) -> String {
        self.sentinels
            .iter()
            .map(|(p, _)| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The ports of the three sentinels.
    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(|(p, _)| *p).collect()
    }

    /// The port of the first primary.
    pub fn primary_port(&self) -> u16 {
        self.primary.port()
    }

    /// The port of the replica (the primary after a failover).
    pub fn replica_port(&self) -> u16 {
        self.replica.port()
    }

    /// Kills the primary with SIGKILL.
    pub fn kill_primary(&mut self) {
        self.primary.stop();
    }

    /// Stops sentinel `i` (of the three) with SIGKILL.
    pub fn stop_sentinel(&mut self, i: usize) {
        let (_, c) = &mut self.sentinels[i];
        let _ = c.kill();
        let _ = c.wait();
    }

    /// Asks the first sentinel for a failover now (`SENTINEL FAILOVER`), the primary alive.
    pub fn failover(&self) {
        let out = redis_cli(self.sentinels[0].0, &["SENTINEL", "FAILOVER", SERVICE]);
        assert_eq!(out.trim(), "OK", "SENTINEL FAILOVER answered {out:?}");
    }

    /// The role (`master`, `slave`) the redis-server on `port` reports (`ROLE`).
    pub fn role_of(&self, port: u16) -> String {
        redis_cli(port, &["ROLE"])
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned()
    }

    /// `ip port` of the primary, as the sentinel on `port` reports it.
    pub fn primary_by_sentinel(&self, port: u16) -> String {
        redis_cli(port, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE])
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Kills every process when the current process exits, even if `self` is never
    /// dropped (as for a `static`).
    pub fn kill_at_exit(&self) {
        crate::cluster::shutdown_redis_at_exit(self.primary.port());
        crate::cluster::shutdown_redis_at_exit(self.replica.port());
        let pids: Vec<String> = self
            .sentinels
            .iter()
            .map(|(_, c)| c.id().to_string())
            .collect();
        crate::cluster::kill_at_exit(&pids);
    }
}

impl Drop for SentinelSet {
    fn drop(&mut self) {
        for (_, c) in &mut self.sentinels {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The `--requirepass` of the data nodes, if any.
fn node_auth<'a>(args: &[&'a str]) -> Option<&'a str> {
    args.iter()
        .position(|a| *a == "--requirepass")
        .and_then(|i| args.get(i + 1).copied())
}

/// The `requirepass` of the sentinels, if any.
fn sentinel_auth<'a>(lines: &[&'a str]) -> Option<&'a str> {
    lines.iter().find_map(|l| l.strip_prefix("requirepass "))
}

fn redis_cli_auth(port: u16, pass: Option<&str>, args: &[&str]) -> String {
    match pass {
        Some(p) => {
            let mut all = vec!["--no-auth-warning", "-a", p];
            all.extend_from_slice(args);
            redis_cli(port, &all)
        }
        None => redis_cli(port, args),
    }
}

/// The `field` of `SENTINEL MASTER` as `redis-cli` prints it (one field name, one value a
/// line).
fn sentinel_field_auth(port: u16, pass: Option<&str>, field: &str) -> Option<String> {
    let out = redis_cli_auth(port, pass, &["SENTINEL", "MASTER", SERVICE]);
    let lines: Vec<&str> = out.lines().collect();
    lines
        .iter()
        .position(|l| l.trim() == field)
        .and_then(|i| lines.get(i + 1))
        .map(|v| v.trim().to_owned())
}

/// One sentinel that speaks only TLS, monitoring the TLS-only redis-server `primary` (quorum
/// 1), with the same certificates; killed on drop.
#[derive(Debug)]
pub struct TlsSentinel {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl TlsSentinel {
    /// Starts it and waits until it answers with the primary's address.
    pub fn start(primary: &crate::tls::TlsRedis) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let certs = primary.cert_dir();
        let port = free_port();
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port 0\ntls-port {port}\nbind 127.0.0.1\ndir {dir}\n\
                 tls-cert-file {c}/server.crt\ntls-key-file {c}/server.key\n\
                 tls-ca-cert-file {c}/ca.crt\ntls-auth-clients no\ntls-replication yes\n\
                 sentinel monitor {SERVICE} 127.0.0.1 {p} 1\n",
                dir = dir.path().display(),
                c = certs.display(),
                p = primary.port(),
            ),
        )
        .expect("sentinel config written");
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server --sentinel starts");
        let s = TlsSentinel {
            port,
            child,
            _dir: dir,
        };
        let ca = certs.join("ca.crt");
        wait_until(
            Duration::from_secs(20),
            "the TLS sentinel names the primary",
            || {
                let out = Command::new("redis-cli")
                    .args(["--tls", "--cacert"])
                    .arg(&ca)
                    .args(["-h", "127.0.0.1", "-p", &port.to_string()])
                    .args(["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE])
                    .stdin(Stdio::null())
                    .output()
                    .expect("redis-cli runs");
                String::from_utf8_lossy(&out.stdout).contains(&primary.port().to_string())
            },
        );
        s
    }

    /// The sentinel's TLS port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for TlsSentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
