//! A TCP proxy between a client and a real server that can cut or stall connections, to
//! test timeouts and reconnection without touching the server, or lose one reply after the
//! server acted on the request (to test what a client does when it sends again). A proxy
//! started with [`FaultProxy::start_postgres`] also follows the PostgreSQL protocol, to lose
//! the replies to chosen executions of a statement
//! ([`lose_statement_replies`](FaultProxy::lose_statement_replies)).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::pgwire::{Frames, Rule};

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward everything.
    Pass,
    /// Accept and hold: no byte goes through in either direction (a hung server).
    Stall,
    /// Close every connection and refuse new ones (a dead server).
    Cut,
}

/// A fault-injecting proxy to `upstream`, listening on a local port.
#[derive(Debug)]
pub struct FaultProxy {
    port: u16,
    mode: Arc<watch::Sender<Mode>>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
    lose: Arc<LoseReply>,
}

/// The one-shot "lose the reply" fault, shared by every connection of a proxy.
#[derive(Debug, Default)]
struct LoseReply {
    /// Armed: the bytes a request must contain to have its reply lost.
    needle: Mutex<Option<Vec<u8>>>,
    /// How many replies were lost so far.
    fired: AtomicUsize,
    /// On a PostgreSQL proxy: which statement executions lose their reply.
    statements: Mutex<Option<Arc<Rule>>>,
    /// Armed with [`FaultProxy::lose_reply_then_hold`]: the proxy's mode, set to
    /// [`Mode::Stall`] once the reply is lost.
    hold: Mutex<Option<Arc<watch::Sender<Mode>>>>,
    /// Reads from clients forwarded so far (see [`FaultProxy::client_flights`]).
    flights: AtomicUsize,
}

impl FaultProxy {
    /// Starts a proxy to `upstream` (`host:port`) on the current tokio runtime.
    pub async fn start(upstream: &str) -> Self {
        Self::start_speaking(upstream, false).await
    }

    /// Starts a proxy to the PostgreSQL server at `upstream` (`host:port`) that follows the
    /// protocol of each connection (which must not be encrypted: `sslmode=disable`), for
    /// [`lose_statement_replies`](Self::lose_statement_replies).
    pub async fn start_postgres(upstream: &str) -> Self {
        Self::start_speaking(upstream, true).await
    }

    async fn start_speaking(upstream: &str, postgres: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let (mode, rx) = watch::channel(Mode::Pass);
        let mode = Arc::new(mode);
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let upstream = upstream.to_string();
        let conns2 = conns.clone();
        let lose: Arc<LoseReply> = Arc::default();
        let lose2 = lose.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                if *rx.borrow() == Mode::Cut {
                    drop(client);
                    continue;
                }
                let rx = rx.clone();
                let upstream = upstream.clone();
                let lose = lose2.clone();
                let h = tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(&upstream).await {
                        let _ = client.set_nodelay(true);
                        let _ = server.set_nodelay(true);
                        let (cr, cw) = client.into_split();
                        let (sr, sw) = server.into_split();
                        // Set by the request side when it forwards the marked request; the
                        // reply side then swallows the next reply bytes and ends the
                        // connection.
                        let cut = Arc::new(AtomicBool::new(false));
                        let up = Tap::Request {
                            lose: lose.clone(),
                            cut: cut.clone(),
                            pg: postgres.then(Frames::default),
                        };
                        let down = Tap::Reply { lose, cut };
                        tokio::select! {
                            _ = pump(cr, sw, rx.clone(), up) => {}
                            _ = pump(sr, cw, rx, down) => {}
                        }
                    }
                });
                conns2.lock().push(h);
            }
        });
        FaultProxy {
            port,
            mode,
            conns,
            accept,
            lose,
        }
    }

    /// Arms a one-shot fault: the next request whose bytes contain `needle` is forwarded to
    /// the server, and once the server's reply arrives (so the server has acted on it), the
    /// reply is dropped and the connection closed, both ways. The client sees its
    /// connection die with the request sent and no reply: it cannot tell whether the
    /// server ran it. Other connections and later requests pass as usual.
    pub fn lose_reply_to(&self, needle: &[u8]) {
        *self.lose.needle.lock() = Some(needle.to_vec());
    }

    /// [`lose_reply_to`](Self::lose_reply_to), after which the proxy holds every
    /// connection ([`Mode::Stall`]; new ones are accepted and held too) until
    /// [`set`](Self::set)`(Mode::Pass)`: the client's resend waits, so the test can act on the
    /// server (through another connection) between the lost reply and the resend.
    pub fn lose_reply_then_hold(&self, needle: &[u8]) {
        *self.lose.hold.lock() = Some(Arc::clone(&self.mode));
        self.lose_reply_to(needle);
    }

    /// On a proxy from [`start_postgres`](Self::start_postgres): from now on, every
    /// `every`-th execution of a statement whose text contains `needle` (a prepared one
    /// executed by name, or a simple query) has its reply lost as with
    /// [`lose_reply_to`](Self::lose_reply_to), at most `limit` times in all. On a proxy from
    /// [`start`](Self::start), every `every`-th read from a client that contains `needle`
    /// (one request, or several pipelined ones). Replaces the previous rule, and starts
    /// counting anew.
    pub fn lose_statement_replies(&self, needle: &[u8], every: usize, limit: usize) {
        *self.lose.statements.lock() = Some(Arc::new(Rule::new(needle, every, limit)));
    }

    /// Stops [`lose_statement_replies`](Self::lose_statement_replies); returns how many
    /// replies its last rule had lost.
    pub fn stop_losing_statement_replies(&self) -> usize {
        self.lose
            .statements
            .lock()
            .take()
            .map_or(0, |rule| rule.lost())
    }

    /// How many reads from its clients the proxy has forwarded so far, on all connections:
    /// for a client that sends a request and waits for its reply (a PostgreSQL statement
    /// on a connection, say), its round trips.
    pub fn client_flights(&self) -> usize {
        self.lose.flights.load(Ordering::SeqCst)
    }

    /// How many replies [`lose_reply_to`](Self::lose_reply_to) has dropped so far.
    pub fn replies_lost(&self) -> usize {
        self.lose.fired.load(Ordering::SeqCst)
    }

    /// The local port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Sets the mode; [`Mode::Cut`] also drops every open connection.
    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
        if mode == Mode::Cut {
            for h in self.conns.lock().drain(..) {
                h.abort();
            }
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        for h in self.conns.lock().drain(..) {
            h.abort();
        }
    }
}

/// What a pump watches for, on behalf of [`FaultProxy::lose_reply_to`].
enum Tap {
    /// Client to server: marks the connection when the armed request goes through.
    Request {
        lose: Arc<LoseReply>,
        cut: Arc<AtomicBool>,
        /// On a PostgreSQL proxy, the client's messages so far.
        pg: Option<Frames>,
    },
    /// Server to client: on a marked connection, drops the reply and ends the connection.
    Reply {
        lose: Arc<LoseReply>,
        cut: Arc<AtomicBool>,
    },
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
    mut tap: Tap,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // While stalled, neither read nor forward.
        if mode.wait_for(|m| *m == Mode::Pass).await.is_err() {
            return;
        }
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = mode.changed() => continue,
        };
        if mode.wait_for(|m| *m == Mode::Pass).await.is_err() {
            return;
        }
        match &mut tap {
            Tap::Request { lose, cut, pg } => {
                lose.flights.fetch_add(1, Ordering::SeqCst);
                if let Some(frames) = pg {
                    if frames.feed(&buf[..n], &lose.statements) {
                        cut.store(true, Ordering::SeqCst);
                    }
                } else {
                    let rule = lose.statements.lock().clone();
                    if rule.is_some_and(|r| r.matches(&buf[..n]) && r.draw()) {
                        cut.store(true, Ordering::SeqCst);
                    }
                }
                let mut needle = lose.needle.lock();
                let hit = needle
                    .as_deref()
                    .is_some_and(|nd| buf[..n].windows(nd.len()).any(|w| w == nd));
                if hit {
                    // Marked before the request is forwarded, so before any reply to it.
                    *needle = None;
                    cut.store(true, Ordering::SeqCst);
                }
            }
            Tap::Reply { lose, cut } => {
                if cut.load(Ordering::SeqCst) {
                    // The server has answered: it ran the request. Drop the answer, and
                    // returning ends this connection (both halves are dropped).
                    if let Some(mode) = lose.hold.lock().take() {
                        mode.send_replace(Mode::Stall);
                    }
                    lose.fired.fetch_add(1, Ordering::SeqCst);
                    return;
                }
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
