//! Real servers (redis-server, memcached) started by the tests on free ports, so tests can
//! stop and restart them.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{free_port, wait_until, Patience};

/// Which server, and how to start it.
#[derive(Debug, Clone)]
enum Kind {
    Redis { extra: Vec<String> },
    Memcached { extra: Vec<String> },
}

/// A server process owned by a test; killed on drop.
#[derive(Debug)]
pub struct ServerProcess {
    kind: Kind,
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
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
        "`{name}` is not installed; the tests need the real server (scripts/test installs it: \
         apt-get install -y {})",
        if name == "redis-server" {
            "redis-server"
        } else {
            "memcached"
        }
    );
}

impl ServerProcess {
    /// A redis-server on a free port, persisting nothing.
    pub fn redis() -> Self {
        Self::redis_with(&[])
    }

    /// A redis-server with extra command-line arguments (`--requirepass x`, ...).
    pub fn redis_with(extra: &[&str]) -> Self {
        Self::spawn(Kind::Redis {
            extra: extra.iter().map(|s| s.to_string()).collect(),
        })
    }

    /// A memcached on a free port with 64 MiB of memory.
    pub fn memcached() -> Self {
        Self::memcached_with(&[])
    }

    /// A memcached with extra arguments (`-I 2m`, ...).
    pub fn memcached_with(extra: &[&str]) -> Self {
        Self::spawn(Kind::Memcached {
            extra: extra.iter().map(|s| s.to_string()).collect(),
        })
    }

    fn spawn(kind: Kind) -> Self {
        let mut s = ServerProcess {
            kind,
            port: free_port(),
            dir: tempfile::tempdir().expect("temp dir"),
            child: None,
        };
        s.start();
        s
    }

    /// The port it listens on (the same across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host:port`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the server again after [`stop`](Self::stop), on the same port.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "server already running");
        let port = self.port.to_string();
        let mut cmd = match &self.kind {
            Kind::Redis { extra } => {
                let mut c = Command::new(binary("redis-server"));
                c.args([
                    "--port",
                    &port,
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .arg("--dir")
                .arg(self.dir.path())
                .args(extra);
                c
            }
            Kind::Memcached { extra } => {
                let mut c = Command::new(binary("memcached"));
                c.args(["-p", &port, "-l", "127.0.0.1", "-U", "0", "-m", "64"]);
                // memcached refuses to run as root without -u.
                if is_root() {
                    c.args(["-u", "root"]);
                }
                c.args(extra);
                c
            }
        };
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("server process starts");
        self.child = Some(child);
        wait_until(
            Patience::new(Duration::from_secs(10)).every(Duration::from_millis(20)),
            format_args!("the server on port {} listens", self.port),
            || TcpStream::connect(("127.0.0.1", self.port)).is_ok(),
        );
    }

    /// Kills the server (SIGKILL) and waits until the port is closed.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether the server process is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

fn is_root() -> bool {
    std::env::var("USER").map(|u| u == "root").unwrap_or(false)
        || std::fs::read_to_string("/proc/self/status")
            .map(|s| {
                s.lines()
                    .find(|l| l.starts_with("Uid:"))
                    .is_some_and(|l| l.split_whitespace().nth(1) == Some("0"))
            })
            .unwrap_or(false)
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}
