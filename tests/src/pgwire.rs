//! Just enough of the PostgreSQL wire protocol (client to server) for [`FaultProxy`] to
//! tell when a chosen statement is *executed*, so that it can lose the reply to that
//! execution after the server committed it.
//!
//! A statement's text travels only in its `Parse` message (or a simple `Query`); a prepared
//! statement is then executed by name (`Bind`). So each connection remembers the text of
//! each statement it prepared.
//!
//! [`FaultProxy`]: crate::proxy::FaultProxy

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

/// The `SSLRequest` and `GSSENCRequest` codes: an untyped message after which the startup
/// message (also untyped) still follows.
const ENCRYPTION_REQUESTS: [u32; 2] = [80_877_103, 80_877_104];

/// Which executions lose their reply: every `every`-th execution of a statement whose text
/// contains `needle`, at most `limit` times.
#[derive(Debug)]
pub(crate) struct Rule {
    needle: Vec<u8>,
    every: usize,
    limit: usize,
    /// Matching executions seen so far.
    seen: AtomicUsize,
    /// Replies lost so far.
    lost: AtomicUsize,
}

impl Rule {
    pub(crate) fn new(needle: &[u8], every: usize, limit: usize) -> Self {
        Rule {
            needle: needle.to_vec(),
            every: every.max(1),
            limit,
            seen: AtomicUsize::new(0),
            lost: AtomicUsize::new(0),
        }
    }

    pub(crate) fn matches(&self, text: &[u8]) -> bool {
        text.windows(self.needle.len()).any(|w| w == self.needle)
    }

    /// Counts one matching execution: whether its reply is to be lost.
    pub(crate) fn draw(&self) -> bool {
        let n = self.seen.fetch_add(1, Ordering::SeqCst) + 1;
        if n % self.every != 0 {
            return false;
        }
        // Claims one of the `limit` losses, if any is left.
        self.lost
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |l| {
                (l < self.limit).then_some(l + 1)
            })
            .is_ok()
    }

    /// How many replies this rule has had lost.
    pub(crate) fn lost(&self) -> usize {
        self.lost.load(Ordering::SeqCst)
    }
}

/// One connection's view of its client's messages.
#[derive(Debug, Default)]
pub(crate) struct Frames {
    /// Bytes of a message not yet complete.
    buf: Vec<u8>,
    /// Past the startup message (from then on every message has a type byte).
    started: bool,
    /// The text of each statement prepared, by name.
    prepared: HashMap<Vec<u8>, Vec<u8>>,
}

impl Frames {
    /// Takes the next bytes the client sent; whether they execute a statement (matching the
    /// rule armed in `rule`) whose reply is to be lost.
    pub(crate) fn feed(&mut self, bytes: &[u8], rule: &Mutex<Option<Arc<Rule>>>) -> bool {
        self.buf.extend_from_slice(bytes);
        let rule = rule.lock().clone();
        let mut lose = false;
        loop {
            if !self.started {
                let Some(len) = be32(&self.buf, 0) else { break };
                let len = len as usize;
                if self.buf.len() < len.max(8) {
                    break;
                }
                let code = be32(&self.buf, 4).unwrap_or(0);
                self.started = !ENCRYPTION_REQUESTS.contains(&code);
                self.buf.drain(..len.max(8));
                continue;
            }
            let Some(len) = be32(&self.buf, 1) else { break };
            let end = 1 + len as usize;
            if self.buf.len() < end {
                break;
            }
            let kind = self.buf[0];
            let body: Vec<u8> = self.buf[5..end].to_vec();
            self.buf.drain(..end);
            match kind {
                b'P' => {
                    let (name, rest) = cstr(&body);
                    let (text, _) = cstr(rest);
                    self.prepared.insert(name.to_vec(), text.to_vec());
                }
                b'B' => {
                    let (_portal, rest) = cstr(&body);
                    let (name, _) = cstr(rest);
                    let hit = rule.as_ref().is_some_and(|rule| {
                        self.prepared.get(name).is_some_and(|t| rule.matches(t)) && rule.draw()
                    });
                    lose |= hit;
                }
                b'Q' => {
                    let hit = rule
                        .as_ref()
                        .is_some_and(|rule| rule.matches(cstr(&body).0) && rule.draw());
                    lose |= hit;
                }
                _ => {}
            }
        }
        lose
    }
}

fn be32(buf: &[u8], at: usize) -> Option<u32> {
    let b = buf.get(at..at + 4)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// A NUL-terminated string at the start of `b`, and what follows it.
fn cstr(b: &[u8]) -> (&[u8], &[u8]) {
    match b.iter().position(|&c| c == 0) {
        Some(i) => (&b[..i], &b[i + 1..]),
        None => (b, &[]),
    }
}
