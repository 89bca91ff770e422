//! The README's minimal axum app (`examples/minimal_axum.rs`): the README shows the same
//! text, and two copies of it as OS processes on one SQLite file do what a new user would
//! try: log in, increment a counter concurrently, call the cached report twice, and run one
//! periodic task between them.
//!
//! The app is the example binary `cargo test` builds beside this test (`cargo test -p
//! larder --features axum,sqlite`, or `--all-features`).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The README's copy of the example: the first `rs` block after the marker that names the
/// file (`rs`, not `rust`: the README is the facade's crate docs, and this block needs
/// features a plain doctest run does not have; the example itself is what gets compiled).
fn readme_block(readme: &str, file: &str) -> String {
    let marker = format!("<!-- the text of {file} after its header;");
    let at = readme
        .find(&marker)
        .unwrap_or_else(|| panic!("README has no block marked for {file}"));
    let rest = &readme[at..];
    let start = rest.find("```rs\n").expect("an rs block") + 6;
    let end = rest[start..].find("\n```\n").expect("the block ends");
    rest[start..start + end].to_owned()
}

/// The example without its `//!` header and the blank line after it.
fn example_body(text: &str) -> String {
    let body: Vec<&str> = text.lines().skip_while(|l| l.starts_with("//!")).collect();
    assert_eq!(body.first(), Some(&""), "a blank line after the header");
    body[1..].join("\n").trim_end().to_owned()
}

#[test]
fn the_readme_shows_the_example_as_it_is() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let example = std::fs::read_to_string(root.join("examples/minimal_axum.rs")).unwrap();
    let shown = readme_block(&readme, "examples/minimal_axum.rs");
    let body = example_body(&example);
    if shown != body {
        let line = shown
            .lines()
            .zip(body.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| shown.lines().count().min(body.lines().count()));
        panic!(
            "README.md's minimal axum app differs from examples/minimal_axum.rs at line {} of \
             the block: copy the example (after its header) into the README",
            line + 1
        );
    }
}

/// The example binary built by `cargo test` next to this test's own binary.
fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<this test> -> target/<profile>/examples/<name>
    let path = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} is missing: run this test through `cargo test -p larder --features axum,sqlite` \
         (without `--test`), which builds the examples",
        path.display()
    );
    path
}

/// A copy of the app: its address and the lines it prints.
struct App {
    child: Child,
    addr: String,
    lines: mpsc::Receiver<String>,
}

impl App {
    fn start(db: &Path) -> App {
        let mut child = Command::new(example_binary("minimal_axum"))
            .env("APP_DB", db)
            .env("APP_LISTEN", "127.0.0.1:0")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let out = BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let first = lines
            .recv_timeout(Duration::from_secs(60))
            .expect("the app prints its address");
        let addr = first
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("first line: {first}"))
            .to_owned();
        App { child, addr, lines }
    }

    /// Stops the app as Ctrl-C would, and waits for a clean exit.
    fn interrupt(mut self) -> Vec<String> {
        let status = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "the app did not stop on SIGINT");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "exit after SIGINT: {status}");
        self.lines.try_iter().collect()
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request on a new connection: the status, the `Set-Cookie` pair if any, and
/// the body.
fn http(
    addr: &str,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    body: &str,
) -> (u16, Option<String>, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let cookie = cookie
        .map(|c| format!("Cookie: {c}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{cookie}Content-Type: text/plain\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("a complete response");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status");
    let set_cookie = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("set-cookie")
                .then(|| value.trim().split(';').next().unwrap_or("").to_owned())
        })
        .filter(|c| !c.is_empty());
    (status, set_cookie, body.to_owned())
}

#[test]
fn two_copies_on_one_sqlite_file() {
    let dir = std::env::temp_dir().join(format!("larder-minimal-axum-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("app.db");
    let a = App::start(&db);
    let b = App::start(&db);
    let started = Instant::now();

    // Log in on A; the session is the same on B.
    let (status, cookie, _) = http(&a.addr, "POST", "/login", None, "ada");
    assert_eq!(status, 200);
    let cookie = cookie.expect("a session cookie");

    // 20 concurrent increments, half through each copy: every value from 1 to 20 once.
    let calls: Vec<_> = (0..20)
        .map(|i| {
            let addr = if i % 2 == 0 {
                a.addr.clone()
            } else {
                b.addr.clone()
            };
            let cookie = cookie.clone();
            std::thread::spawn(move || http(&addr, "POST", "/counter", Some(&cookie), ""))
        })
        .collect();
    let mut values: Vec<u64> = calls
        .into_iter()
        .map(|c| {
            let (status, _, body) = c.join().unwrap();
            assert_eq!(status, 200, "{body}");
            body.trim().parse().unwrap()
        })
        .collect();
    values.sort_unstable();
    assert_eq!(values, (1..=20).collect::<Vec<u64>>());
    let (_, _, next) = http(&b.addr, "POST", "/counter", Some(&cookie), "");
    assert_eq!(next.trim(), "21");

    // The cached report: computed once by A, then served from the cache, in A and in B
    // (the cache is the SQLite file they share).
    let (status, _, first) = http(&a.addr, "GET", "/report", None, "");
    assert_eq!(status, 200);
    assert_eq!(first, "5050 (loader calls in this process: 1)\n");
    let (_, _, second) = http(&a.addr, "GET", "/report", None, "");
    assert_eq!(second, "5050 (loader calls in this process: 1)\n");
    let (_, _, on_b) = http(&b.addr, "GET", "/report", None, "");
    assert_eq!(on_b, "5050 (loader calls in this process: 0)\n");

    // The periodic task (every 2 s) between the two copies: let at least four periods pass.
    std::thread::sleep(Duration::from_secs(9).saturating_sub(started.elapsed()));
    let mut runs: BTreeMap<i64, Vec<&str>> = BTreeMap::new();
    let (lines_a, lines_b) = (a.interrupt(), b.interrupt());
    for (name, lines) in [("A", &lines_a), ("B", &lines_b)] {
        for line in lines {
            let period = line
                .strip_prefix("task tick ran period ")
                .unwrap_or_else(|| panic!("{name} printed {line:?}"));
            runs.entry(period.parse().unwrap()).or_default().push(name);
        }
    }
    let periods: Vec<i64> = runs.keys().copied().collect();
    assert!(periods.len() >= 3, "periods run: {runs:?}");
    for (period, by) in &runs {
        assert_eq!(
            by.len(),
            1,
            "period {period} ran {} times: {by:?}",
            by.len()
        );
        assert_eq!(period % 2000, 0, "periods start on the 2 s grid");
    }
    for w in periods.windows(2) {
        assert_eq!(w[1] - w[0], 2000, "a period was skipped: {runs:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
