//! `larder-webapp --help`: usage on stdout, exit 0, nothing started, and no value read from
//! the environment shown (a database URL may carry a password).
#![allow(clippy::unwrap_used)]

use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn help_starts_nothing_and_shows_no_value_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = larder_tests::free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_larder-webapp"))
        .arg("--help")
        .env("LARDER_DATABASE_URL", "postgres://u:hunter2@h/db")
        .env("LARDER_CACHE_URL", "redis://:hunter2@h:6379/0")
        .env("LARDER_CACHE_KEY", "hunter2-hunter2-hunter2")
        .env("LARDER_INSTANCE", "hunter2-instance")
        .env("LARDER_DATA_DIR", &data)
        .env("LARDER_PORT", port.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let started = Instant::now();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut child = child;
    while child.try_wait().unwrap().is_none() {
        assert!(
            TcpStream::connect_timeout(&addr, Duration::from_millis(50)).is_err(),
            "--help started a server on {addr}"
        );
        if started.elapsed() > Duration::from_secs(20) {
            let _ = Command::new("kill").arg(pid.to_string()).status();
            panic!("--help did not exit within 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stdout.contains("Usage: larder-webapp"), "{stdout}");
    for var in ["LARDER_DATABASE_URL", "LARDER_CACHE_URL", "LARDER_PORT"] {
        assert!(stdout.contains(var), "{var} not in --help: {stdout}");
    }
    for shown in [&stdout, &stderr] {
        assert!(
            !shown.contains("hunter2"),
            "--help printed a secret: {shown}"
        );
        assert!(
            !shown.contains(&port.to_string()),
            "--help printed LARDER_PORT's value: {shown}"
        );
    }
    assert!(!data.exists(), "--help created the data directory");
}
