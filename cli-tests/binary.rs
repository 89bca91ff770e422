//! The `larder` binary itself: output, exit codes, one-line errors. Needs no server.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

fn larder(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_larder"))
        .args(args)
        .env_remove("LARDER_DATABASE_URL")
        .env_remove("LARDER_CACHE_URL")
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn ping_prints_ok_and_exits_zero() {
    let out = larder(&["--cache-url", "memory://", "cache", "ping"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("OK memory: connect "));
}

#[test]
fn the_cache_url_comes_from_the_environment_too() {
    let out = Command::new(env!("CARGO_BIN_EXE_larder"))
        .args(["cache", "stats"])
        .env("LARDER_CACHE_URL", "memory://?capacity=7")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("capacity           7 entries"));
}

#[test]
fn runtime_errors_are_one_line_on_stderr_with_exit_code_1() {
    for args in [
        &["--cache-url", "redis://127.0.0.1:1", "cache", "ping"][..],
        &["--cache-url", "carrier-pigeon://coop", "cache", "ping"][..],
        &["sessions", "count"][..],
        &[
            "--database-url",
            "sqlite://no-such-dir/none.db",
            "sessions",
            "count",
        ][..],
    ] {
        let out = larder(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        let err = text(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("larder: error: "), "{args:?}: {err}");
    }
}

#[test]
fn usage_errors_exit_2_and_help_exits_0() {
    let out = larder(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("frobnicate"));
    let out = larder(&["sessions", "revoke"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--principal"));
    let out = larder(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    for cmd in [
        "sessions",
        "tasks",
        "cache",
        "LARDER_DATABASE_URL",
        "LARDER_CACHE_URL",
    ] {
        assert!(text(&out.stdout).contains(cmd), "{cmd}");
    }
}

#[test]
fn passwords_never_appear_in_any_output() {
    // Every character a URL reserves, raw and percent-encoded, and non-ASCII.
    let secrets = [
        "se/cret",
        "se?cret",
        "se#cret",
        "se@cret",
        "se:cret",
        "sé/cr?t#@:",
        "se%2Fcret",
    ];
    for secret in secrets {
        for url in [
            format!("redis://:{secret}@127.0.0.1:1/0?connect_timeout_ms=100"),
            format!("redis://user:{secret}@127.0.0.1:notaport"),
            format!("rediss+cluster://:{secret}@127.0.0.1:1,127.0.0.1:2"),
            format!("memcache://u:{secret}@127.0.0.1:1"),
            format!("sled://u:{secret}@/tmp/x"),
            format!("nosuch://:{secret}@h"),
            format!("postgres://app:{secret}@127.0.0.1:1/db?connect_timeout=1"),
            format!("postgresql://app:{secret}@[::1/db"),
            format!("sqlite://u:{secret}@/nonexistent/dir/x.db"),
            format!(":{secret}@no-scheme"),
        ] {
            for args in [
                vec!["--cache-url", url.as_str(), "cache", "ping"],
                vec!["--cache-url", url.as_str(), "cache", "stats"],
                vec!["--database-url", url.as_str(), "sessions", "count"],
            ] {
                let out = larder(&args);
                let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
                assert!(!out.status.success(), "{args:?} succeeded");
                for shown in [&stdout, &stderr] {
                    assert!(
                        !shown.contains("cret") && !shown.contains("cr?t"),
                        "{args:?} printed the password: {shown}"
                    );
                }
            }
        }
    }
}

#[test]
fn intervals_of_any_size_are_errors_not_panics() {
    for every in [
        "2305843009213693952",
        "18446744073709551615d",
        "213503982334601d",
        "0s",
    ] {
        let out = larder(&[
            "--cache-url",
            "memory://",
            "tasks",
            "status",
            "--every",
            every,
        ]);
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "--every {every} succeeded");
        assert!(!stderr.contains("panicked"), "--every {every}: {stderr}");
        let first = stderr.lines().next().unwrap_or_default();
        assert!(first.contains("error"), "--every {every}: {stderr}");
    }
}

#[test]
fn help_shows_no_value_from_the_environment() {
    for args in [
        &["--help"][..],
        &["sessions", "--help"][..],
        &["sessions", "count", "--help"][..],
        &["tasks", "status", "--help"][..],
        &["cache", "ping", "--help"][..],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_larder"))
            .args(args)
            .env("LARDER_DATABASE_URL", "postgres://u:hunter2@h/db")
            .env("LARDER_CACHE_URL", "redis://:hunter2@h:6379/0")
            .env("LARDER_EXPIRY_INTERVAL_MS", "4242424242")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert!(stdout.contains("Usage: larder"), "{args:?}: {stdout}");
        for shown in [&stdout, &stderr] {
            assert!(
                !shown.contains("hunter2") && !shown.contains("4242424242"),
                "{args:?} printed a value from the environment: {shown}"
            );
        }
    }
    // The rule holds for every argument read from the environment, present or future.
    fn check(cmd: &clap::Command, path: &str) {
        for arg in cmd.get_arguments() {
            if let Some(var) = arg.get_env() {
                assert!(
                    arg.is_hide_env_values_set(),
                    "{path} --{}: the value of {var:?} would show in --help",
                    arg.get_id()
                );
            }
        }
        for sub in cmd.get_subcommands() {
            check(sub, &format!("{path} {}", sub.get_name()));
        }
    }
    check(
        &<larder::cli::Cli as clap::CommandFactory>::command(),
        "larder",
    );
}

#[test]
fn pausing_an_unknown_task_is_one_line_naming_it() {
    for cmd in ["pause", "resume", "run"] {
        let out = larder(&["--cache-url", "memory://", "tasks", cmd, "nightly"]);
        assert_eq!(out.status.code(), Some(1), "{cmd}");
        let err = text(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{cmd}: {err}");
        assert!(
            err.contains("no task \"nightly\"; known tasks: none registered yet"),
            "{cmd}: {err}"
        );
    }
    let out = larder(&["tasks", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    for cmd in ["pause", "resume", "run"] {
        assert!(text(&out.stdout).contains(cmd), "{cmd}");
    }
    let out = larder(&["tasks", "run", "--help"]);
    assert!(text(&out.stdout).contains("--request-id"));
}
