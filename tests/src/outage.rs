//! Fault cases written once and run over every networked store: the server stopped and
//! started again, a connection stalled or cut by a [`FaultProxy`]. A store's test file
//! launches an [`Outage`] (its backend, and how to take the store away) and stamps the
//! cases with [`outage_cases!`](crate::outage_cases), as `conformance_suite!` does for the
//! contract: a failure then reads `redis_outages::stalled_connection_times_out_then_recovers`.
//!
//! A conformance case only gets a `DynBackend`; these cases also get the server.

use std::time::{Duration, Instant};

use larder_cache_api::{Bytes, DynBackend, ErrorKind, Key, PutMode};

use crate::proxy::{FaultProxy, Mode};
use crate::server::ServerProcess;

/// What takes the store away.
#[derive(Debug)]
enum Control {
    /// The backend talks to the server directly; the server process is stopped.
    Server(ServerProcess),
    /// The backend talks through a proxy, which stalls or cuts; the server runs on.
    Proxy {
        proxy: FaultProxy,
        _server: Option<ServerProcess>,
    },
}

/// A backend on a store that a case can take away and bring back, and what the store
/// promises meanwhile.
#[derive(Debug)]
pub struct Outage {
    backend: DynBackend,
    control: Control,
    name: &'static str,
    bound: Duration,
    recovery: Duration,
    stall_recovery: Duration,
    keeps_data: bool,
}

impl Outage {
    /// `backend`, connected straight to `server`; its errors name `name` (`redis`).
    pub fn server(backend: DynBackend, server: ServerProcess, name: &'static str) -> Self {
        Outage::new(backend, Control::Server(server), name)
    }

    /// `backend`, connected through `proxy` (to `server`, when the test owns one).
    pub fn proxied(
        backend: DynBackend,
        proxy: FaultProxy,
        server: Option<ServerProcess>,
        name: &'static str,
    ) -> Self {
        let control = Control::Proxy {
            proxy,
            _server: server,
        };
        Outage::new(backend, control, name)
    }

    fn new(backend: DynBackend, control: Control, name: &'static str) -> Self {
        Outage {
            backend,
            control,
            name,
            bound: Duration::from_secs(2),
            recovery: Duration::ZERO,
            stall_recovery: Duration::ZERO,
            keeps_data: false,
        }
    }

    /// Every operation while the store is away ends within `bound` (default 2 s).
    pub fn bound(mut self, bound: Duration) -> Self {
        self.bound = bound;
        self
    }

    /// Once the store is back, the backend answers within `limit` (default zero: the very
    /// next operation succeeds); after a stall too, unless told otherwise.
    pub fn recovers_within(mut self, limit: Duration) -> Self {
        self.recovery = limit;
        self.stall_recovery = limit;
        self
    }

    /// Once a stalled connection flows again, the backend answers within `limit`.
    pub fn recovers_from_stall_within(mut self, limit: Duration) -> Self {
        self.stall_recovery = limit;
        self
    }

    /// The store keeps its data across a stop (a database, not a cache restarted empty).
    pub fn keeps_data(mut self) -> Self {
        self.keeps_data = true;
        self
    }

    fn proxy(&self) -> &FaultProxy {
        match &self.control {
            Control::Proxy { proxy, .. } => proxy,
            Control::Server(_) => panic!("this case needs a store behind a proxy"),
        }
    }

    /// Stops the server, or cuts every connection through the proxy.
    fn take_away(&mut self) {
        match &mut self.control {
            Control::Server(s) => s.stop(),
            Control::Proxy { proxy, .. } => proxy.set(Mode::Cut),
        }
    }

    fn bring_back(&mut self) {
        match &mut self.control {
            Control::Server(s) => s.start(),
            Control::Proxy { proxy, .. } => proxy.set(Mode::Pass),
        }
    }

    /// A retryable "unavailable" or "timeout" that names this store and keeps its cause.
    fn assert_down(&self, e: &larder_cache_api::Error) {
        assert!(
            matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::Timeout),
            "expected unavailable or timeout, got {e}"
        );
        assert!(e.is_retryable(), "{e}");
        assert_eq!(e.backend(), Some(self.name));
        assert!(
            std::error::Error::source(e).is_some(),
            "the cause is kept: {e:?}"
        );
    }

    /// `op` fails within the bound; returns its error.
    async fn fails_in_time<T: std::fmt::Debug>(
        &self,
        what: &str,
        op: impl std::future::Future<Output = larder_cache_api::Result<T>>,
    ) -> larder_cache_api::Error {
        let t = Instant::now();
        let e = op.await.unwrap_err();
        assert!(t.elapsed() < self.bound, "{what} took {:?}", t.elapsed());
        e
    }

    /// Reads until a read succeeds (the backend reconnects by itself), within `limit`.
    async fn recovers(&self, k: &Key, limit: Duration) {
        crate::eventually(limit, "the backend answers again", async || {
            self.backend.get(k).await
        })
        .await;
    }
}

async fn written(b: &DynBackend, name: &str) -> Key {
    let k = Key::new(format!("outage-{name}")).unwrap();
    b.put(&k, Bytes::from_static(b"v"), None, PutMode::Overwrite)
        .await
        .unwrap();
    k
}

/// The server stops: every read and write fails fast, retryably; it starts again: the same
/// backend object reads and writes again (and finds the data, if the store keeps it).
pub async fn stopped_server_fails_fast_then_same_backend_recovers(mut t: Outage) {
    let b = t.backend.clone();
    let k = written(&b, "stop").await;
    t.take_away();
    for round in 0..3 {
        let e = t.fails_in_time("get", b.get(&k)).await;
        t.assert_down(&e);
        let put = b.put(&k, Bytes::from_static(b"w"), None, PutMode::Overwrite);
        let e = t.fails_in_time(&format!("put (round {round})"), put).await;
        t.assert_down(&e);
    }
    t.bring_back();
    t.recovers(&k, t.recovery).await;
    if t.keeps_data {
        assert_eq!(&b.get(&k).await.unwrap().unwrap().value[..], b"v");
        b.delete(&k, larder_cache_api::DeleteMode::Any)
            .await
            .unwrap();
    } else {
        // A cache restarted empty.
        assert!(b.get(&k).await.unwrap().is_none());
    }
    let v = b
        .put(&k, Bytes::from_static(b"again"), None, PutMode::Create)
        .await
        .unwrap();
    assert_eq!(b.get(&k).await.unwrap().unwrap().version, v);
}

/// A connection that stalls (a hung server): reads and writes time out, in time; once
/// bytes flow again the backend answers, with the data.
pub async fn stalled_connection_times_out_then_recovers(t: Outage) {
    let b = t.backend.clone();
    let k = written(&b, "stall").await;
    t.proxy().set(Mode::Stall);
    for _ in 0..3 {
        let e = t.fails_in_time("get", b.get(&k)).await;
        assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
        assert!(e.is_retryable());
    }
    let put = b.put(&k, Bytes::from_static(b"w"), None, PutMode::Create);
    let e = t.fails_in_time("put", put).await;
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    t.proxy().set(Mode::Pass);
    t.recovers(&k, t.stall_recovery).await;
    assert_eq!(&b.get(&k).await.unwrap().unwrap().value[..], b"v");
}

/// Every connection cut and new ones refused (a dead server): reads fail fast, retryably;
/// once connections pass again the backend answers, with the data.
pub async fn cut_connection_is_unavailable_then_recovers(mut t: Outage) {
    let b = t.backend.clone();
    let k = written(&b, "cut").await;
    t.take_away();
    for _ in 0..3 {
        let e = t.fails_in_time("get", b.get(&k)).await;
        t.assert_down(&e);
    }
    t.bring_back();
    t.recovers(&k, t.recovery).await;
    assert_eq!(&b.get(&k).await.unwrap().unwrap().value[..], b"v");
}

/// A reconnect that hangs (the connection is accepted, the handshake never answered) must
/// still end every operation in time, with a retryable error: a client's reconnect retries
/// are no bound on an operation, the backend's own deadline is.
pub async fn hung_reconnect_times_out_then_recovers(mut t: Outage) {
    let b = t.backend.clone();
    let k = written(&b, "hung-reconnect").await;
    // Drop the connection, then hold every new one: each reconnect hangs in its handshake.
    t.take_away();
    t.assert_down(&b.get(&k).await.unwrap_err());
    t.proxy().set(Mode::Stall);
    for _ in 0..4 {
        let e = t.fails_in_time("get", b.get(&k)).await;
        t.assert_down(&e);
    }
    t.bring_back();
    t.recovers(&k, t.recovery).await;
    assert_eq!(&b.get(&k).await.unwrap().unwrap().value[..], b"v");
}

/// Stamps the outage cases as tests: `stopped` names an async fn that launches an
/// [`Outage`] whose server can be stopped, `proxied` one whose store sits behind a proxy.
///
/// ```text
/// mod redis_outages {
///     larder_tests::outage_cases!(stopped: super::redis_server, proxied: super::redis_proxied);
/// }
/// ```
#[macro_export]
macro_rules! outage_cases {
    (stopped: $stopped:path $(, proxied: $proxied:path)? $(,)?) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn stopped_server_fails_fast_then_same_backend_recovers() {
            $crate::outage::stopped_server_fails_fast_then_same_backend_recovers($stopped().await)
                .await;
        }
        $( $crate::outage_cases!(proxied: $proxied); )?
    };
    (proxied: $proxied:path $(,)?) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn stalled_connection_times_out_then_recovers() {
            $crate::outage::stalled_connection_times_out_then_recovers($proxied().await).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn cut_connection_is_unavailable_then_recovers() {
            $crate::outage::cut_connection_is_unavailable_then_recovers($proxied().await).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn hung_reconnect_times_out_then_recovers() {
            $crate::outage::hung_reconnect_times_out_then_recovers($proxied().await).await;
        }
    };
}
