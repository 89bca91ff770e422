//! Spawning real `larder-webapp` processes and talking to them over HTTP.
#![allow(dead_code, unreachable_pub)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use larder_tests::server::ServerProcess;
use larder_tests::wait_until;
use serde_json::Value;

/// The test database's URL with `search_path` set to `schema` (the app's flag for it).
pub fn pg_url_with_schema(schema: &str) -> String {
    let base = larder_tests::db::postgres_url();
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}options=-csearch_path%3D{schema}")
}

/// App instances on a fresh PostgreSQL schema and a Redis of their own, the many-instance
/// set-up (each instance keeps a near cache in front of Redis). Dropping it stops them.
#[derive(Debug)]
pub struct Instances {
    pub apps: Vec<AppProcess>,
    pub redis: ServerProcess,
    /// The sessions in the instances' schema, for checking what they wrote.
    pub store: larder::sessions::PgStore,
}

impl Instances {
    /// Starts one instance per name.
    pub async fn start(names: &[&str]) -> Self {
        let (store, schema) = larder_tests::db::pg_store().await;
        let redis = ServerProcess::redis();
        let apps = names
            .iter()
            .map(|name| {
                AppProcess::start(&[
                    "--database-url".into(),
                    pg_url_with_schema(&schema),
                    "--cache-url".into(),
                    format!("redis://{}", redis.addr()),
                    "--instance".into(),
                    (*name).into(),
                ])
            })
            .collect();
        Instances { apps, redis, store }
    }

    /// Each instance's base URL.
    pub fn bases(&self) -> Vec<String> {
        self.apps.iter().map(|a| a.url("")).collect()
    }
}

/// A `larder-webapp` process owned by a test; killed on drop, even on panic.
#[derive(Debug)]
pub struct AppProcess {
    pub port: u16,
    args: Vec<String>,
    child: Option<Child>,
}

impl AppProcess {
    /// Starts the binary on a free port with `args` and waits until it answers.
    pub fn start(args: &[String]) -> Self {
        let port = larder_tests::free_port();
        let mut p = AppProcess {
            port,
            args: args.to_vec(),
            child: None,
        };
        p.spawn();
        p
    }

    /// Starts the process again (same port, same arguments) after a kill or a stop.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new(env!("CARGO_BIN_EXE_larder-webapp"))
            .args(&self.args)
            .arg("--port")
            .arg(self.port.to_string())
            .env_remove("LARDER_DATABASE_URL")
            .env_remove("LARDER_CACHE_URL")
            .env_remove("LARDER_PORT")
            .env_remove("LARDER_INSTANCE")
            .env_remove("LARDER_DATA_DIR")
            .env_remove("LARDER_BIND")
            .env_remove("LARDER_SESSION_TTL_SECS")
            .env_remove("LARDER_EXPIRY_INTERVAL_MS")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("larder-webapp starts");
        self.child = Some(child);
        let port = self.port;
        wait_until(
            Duration::from_secs(30),
            format_args!("larder-webapp on port {port} listens"),
            || {
                if let Some(c) = self.child.as_mut() {
                    if let Ok(Some(status)) = c.try_wait() {
                        panic!("larder-webapp exited at start: {status}");
                    }
                }
                std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            },
        );
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM; asserts that the process exits cleanly within 15 s.
    pub fn terminate(&mut self) {
        let mut c = self.child.take().expect("running");
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(st) = c.try_wait().expect("wait") {
                assert!(st.success(), "larder-webapp exited with {st} on SIGTERM");
                return;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("larder-webapp did not stop within 15 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for AppProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A scripted client that carries the session cookie by hand (no cookie jar), so any
/// instance can be asked with the same cookie.
#[derive(Debug)]
pub struct Client {
    http: reqwest::Client,
    pub cookie: Option<String>,
}

impl Client {
    pub fn new() -> Self {
        Client {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(10))
                // Instances are killed and restarted: never reuse a connection.
                .pool_max_idle_per_host(0)
                .build()
                .expect("client"),
            cookie: None,
        }
    }

    async fn send(&mut self, req: reqwest::RequestBuilder) -> (u16, String) {
        let req = match &self.cookie {
            Some(c) => req.header("cookie", c.clone()),
            None => req,
        };
        let resp = req.send().await.expect("request");
        for v in resp.headers().get_all("set-cookie") {
            let v = v.to_str().expect("ascii cookie");
            let pair = v.split(';').next().unwrap_or_default().trim().to_owned();
            if pair.starts_with("id=") {
                self.cookie = Some(pair);
            }
        }
        let status = resp.status().as_u16();
        (status, resp.text().await.expect("body"))
    }

    pub async fn get_json(&mut self, url: &str) -> Value {
        let req = self.http.get(url).header("accept", "application/json");
        let (status, body) = self.send(req).await;
        assert_eq!(status, 200, "GET {url}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {url}: {e}: {body}"))
    }

    pub async fn post_json(&mut self, url: &str, form: &str) -> Value {
        let req = self
            .http
            .post(url)
            .header("accept", "application/json")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form.to_owned());
        let (status, body) = self.send(req).await;
        assert_eq!(status, 200, "POST {url}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("POST {url}: {e}: {body}"))
    }

    /// A request with a raw body; the status and the body.
    pub async fn raw(&mut self, method: reqwest::Method, url: &str, body: &str) -> (u16, String) {
        let req = self
            .http
            .request(method, url)
            .header("accept", "application/json")
            .body(body.to_owned());
        self.send(req).await
    }

    /// A client on the same session (the same cookie), for concurrent requests.
    pub fn same_session(&self) -> Self {
        let mut c = Client::new();
        c.cookie = self.cookie.clone();
        c
    }

    pub async fn login(&mut self, base: &str, user: &str) {
        let v = self
            .post_json(&format!("{base}/login"), &format!("user={user}"))
            .await;
        assert_eq!(v["user"], user);
        assert!(self.cookie.is_some(), "login set no session cookie");
    }

    pub async fn whoami(&mut self, base: &str) -> Value {
        self.get_json(&format!("{base}/whoami?format=json")).await
    }

    pub async fn status(&mut self, base: &str) -> Value {
        // Status needs no session: use a fresh request without the cookie.
        let (status, body) = {
            let resp = self
                .http
                .get(format!("{base}/status.json"))
                .send()
                .await
                .expect("status request");
            let s = resp.status().as_u16();
            (s, resp.text().await.expect("body"))
        };
        assert_eq!(status, 200, "status: {body}");
        serde_json::from_str(&body).expect("status json")
    }
}
