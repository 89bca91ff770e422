//! The `coord_node` OS processes of one run: started, signalled, killed, and their logs
//! shown when the test fails.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};

struct Node {
    child: Child,
    _stdin: ChildStdin,
}

/// The node processes of one run; every one is killed on drop, panic or not.
pub(crate) struct Cluster {
    pub(crate) schema: String,
    backend: &'static str,
    url: String,
    nodes: BTreeMap<String, Node>,
    logs: tempfile::TempDir,
    starts: usize,
    /// Start the nodes with `accept-loss` (`Durability::AcceptLoss`).
    pub(crate) accept_loss: bool,
}

impl Cluster {
    /// Nodes that keep their tables in `schema` and coordinate through `backend`
    /// (`postgres` or `redis`) at `url` (`-` for the schema's own `larder_kv`).
    pub(crate) fn new(schema: &str, backend: &'static str, url: &str) -> Self {
        Cluster {
            schema: schema.to_owned(),
            backend,
            url: url.to_owned(),
            nodes: BTreeMap::new(),
            logs: tempfile::tempdir().unwrap(),
            starts: 0,
            accept_loss: false,
        }
    }

    /// Starts the nodes named, and waits until each says `ready`.
    pub(crate) fn start(&mut self, names: &[String]) {
        let mut pending = Vec::new();
        for name in names {
            assert!(!self.nodes.contains_key(name), "{name} already running");
            self.starts += 1;
            let log = File::create(self.log_path(name, self.starts)).unwrap();
            let mut child = Command::new(env!("CARGO_BIN_EXE_coord_node"))
                .args([
                    &larder_tests::db::postgres_url(),
                    &self.schema,
                    self.backend,
                    &self.url,
                    name,
                ])
                .args(self.accept_loss.then_some("accept-loss"))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::from(log))
                .spawn()
                .unwrap();
            let stdin = child.stdin.take().unwrap();
            let stdout = child.stdout.take().unwrap();
            self.nodes.insert(
                name.clone(),
                Node {
                    child,
                    _stdin: stdin,
                },
            );
            pending.push((name.clone(), stdout));
        }
        for (name, stdout) in pending {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).unwrap();
            assert_eq!(line.trim(), "ready", "node {name} did not start");
        }
    }

    fn log_path(&self, name: &str, n: usize) -> PathBuf {
        self.logs.path().join(format!("{n:02}-{name}.log"))
    }

    pub(crate) fn pid(&self, name: &str) -> u32 {
        self.nodes
            .get(name)
            .unwrap_or_else(|| panic!("no node {name}"))
            .child
            .id()
    }

    /// SIGKILL, and reap.
    pub(crate) fn kill(&mut self, name: &str) {
        let mut node = self.nodes.remove(name).unwrap();
        node.child.kill().unwrap();
        node.child.wait().unwrap();
    }

    pub(crate) fn signal(&self, name: &str, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.pid(name).to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} {name}");
    }

    pub(crate) fn kill_all(&mut self) {
        let names: Vec<String> = self.nodes.keys().cloned().collect();
        for name in names {
            self.kill(&name);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in self.nodes.values_mut() {
            // SIGKILL ends a stopped process too.
            let _ = node.child.kill();
            let _ = node.child.wait();
        }
        if std::thread::panicking() {
            let mut logs: Vec<_> = std::fs::read_dir(self.logs.path())
                .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
                .unwrap_or_default();
            logs.sort();
            for path in logs {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                eprintln!("--- {} (last 20 lines)", path.display());
                for l in &lines[lines.len().saturating_sub(20)..] {
                    eprintln!("{l}");
                }
            }
        }
    }
}
