//! `larder-actix-app --help`: usage on stdout, exit 0, no server started, no database
//! created, and no value read from the environment shown (a database URL may carry a
//! password, `SESSION_KEY` is one).
#![allow(clippy::unwrap_used)]

use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn help_starts_nothing_and_shows_no_value_from_the_environment() {
    let dir = std::env::temp_dir().join(format!("larder-actix-help-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("never.db");
    let _ = std::fs::remove_file(&db);
    let port = larder_tests::free_port();
    let listen = format!("127.0.0.1:{port}");
    let hex_secret = "ab".repeat(64);
    for args in [&["--help"][..], &["-h"][..]] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_larder-actix-app"))
            .args(args)
            // The password is also a valid SQLite file name: a server started by mistake
            // would create it.
            .env(
                "DATABASE_URL",
                format!("sqlite://{}?user=u&password=hunter2", db.display()),
            )
            .env("LISTEN", &listen)
            .env("SESSION_KEY", &hex_secret)
            .env("COOKIE_SECURE", "0")
            .current_dir(&dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let started = Instant::now();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        while child.try_wait().unwrap().is_none() {
            let listening = TcpStream::connect_timeout(&addr, Duration::from_millis(50)).is_ok();
            if listening || started.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{args:?} started the server (listening: {listening})");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(stdout.contains("Usage: larder-actix-app"), "{stdout}");
        for var in ["DATABASE_URL", "LISTEN", "SESSION_KEY", "COOKIE_SECURE"] {
            assert!(stdout.contains(var), "{var} not in --help: {stdout}");
        }
        for shown in [&stdout, &stderr] {
            for secret in ["hunter2", hex_secret.as_str(), listen.as_str()] {
                assert!(
                    !shown.contains(secret),
                    "{args:?} printed {secret:?}: {shown}"
                );
            }
        }
        assert!(!db.exists(), "{args:?} created the database");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
