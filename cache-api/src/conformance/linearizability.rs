//! Linearizability checked, not assumed: histories of concurrent operations on one key,
//! recorded against a real backend, checked against the sequential specification of a
//! **versioned register**.
//!
//! # The specification
//!
//! A key holds nothing or one entry (value and version). Sequentially:
//!
//! * `get` returns the entry held (`None` if absent).
//! * `put(Overwrite)` always succeeds; `put(Create)` succeeds iff the key is absent;
//!   `put(Update(v))` succeeds iff the key holds version `v`. A successful write returns a
//!   version **never seen before for this key** (no version is handed out twice, so
//!   compare-and-swap cannot be fooled by an A-B-A sequence), and the key then holds the
//!   written value under that version.
//! * `delete(Any)` removes the entry and returns whether there was one;
//!   `delete(IfVersion(v))` succeeds iff the key holds version `v`.
//! * A conditional operation that loses returns a conflict carrying the entry held at that
//!   moment (`None` if absent).
//!
//! Entries never expire here: histories are recorded with writes that carry no TTL.
//!
//! # The checker
//!
//! [`check`] decides whether a history of operations, each with the instants of its
//! invocation and its return, has a linearization: a total order that respects real time (an
//! operation that returned before another was invoked comes first) in which every operation
//! returns what the specification says. It is the search of Wing and Gong with the
//! memoization of Lowe (the "WGL" algorithm, as in Knossos and Porcupine): depth first, it
//! linearizes one of the operations that are *minimal* (invoked before every pending
//! operation returned), and never revisits a pair (set of linearized operations, register
//! state), since the rest of the search depends on nothing else. That pair does capture all
//! there is: the versions handed out so far are those of the linearized writes, and the
//! check that no version repeats is done once, up front, on the whole history.
//!
//! Linearizability is local (Herlihy and Wing): a history over many keys is linearizable iff
//! each key's sub-history is, so keys are checked one at a time.
//!
//! # Recording
//!
//! [`Recorder`] wraps a backend and logs every `get`, `put` and `delete` with the instants of
//! its invocation and return. Operations that fail with an error other than a conflict are
//! not logged (the caller sees the error; a workload here fails on it): their effect is
//! unknown, so a write that failed that way but took effect shows up as a violation.
//!
//! One file, over 600 lines: the specification, the recorder and the checker are read
//! together, and half of it is the checker's own tests (the `tests` module at the end).
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use parking_lot::Mutex;

use super::key;
use crate::random::random_u64;
use crate::{
    Bytes, Cache, CacheBackend, Capabilities, DeleteMode, DynBackend, Entry, ErrorKind, Key,
    PutMode, Result, Ttl, Version,
};

/// What was asked of the register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Get,
    Put { value: Bytes, mode: PutMode },
    Delete(DeleteMode),
}

/// What the register answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A `get`'s answer.
    Got(Option<Entry>),
    /// A successful `put`, with the new version.
    Written(Version),
    /// A `delete`'s answer (whether an entry was removed).
    Deleted(bool),
    /// A conditional `put` or `delete` that lost, with the entry it reported as current.
    Conflict(Option<Entry>),
}

/// One operation of a history: its call, its outcome, and when it was invoked and returned
/// (any monotonic unit; [`Recorder`] uses nanoseconds since it was made).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    pub call: Call,
    pub outcome: Outcome,
    pub invoked: u64,
    pub returned: u64,
}

/// Why a history is not linearizable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub reason: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

/// How many search nodes [`check`] visits before it gives up (undecided counts as a
/// failure: the histories of the suite are bounded so that this is never reached).
pub const SEARCH_BUDGET: usize = 2_000_000;

/// A register state: absent, or an index into the interned entries.
type State = Option<u32>;

struct Search<'h> {
    ops: &'h [Operation],
    /// For each operation (by index): the interned entry its outcome reports, if any.
    reported: Vec<State>,
    /// For each write that succeeded: the interned entry it created.
    created: Vec<State>,
    entries: Vec<(Bytes, Version)>,
    seen: HashSet<(Vec<u64>, State)>,
    nodes: usize,
    /// The deepest point reached: how many operations were linearized, the state then, and
    /// which operations could be linearized next but none fitted.
    deepest: (usize, State, Vec<usize>),
    order: Vec<usize>,
}

impl Search<'_> {
    fn version(&self, s: State) -> Option<Version> {
        s.map(|i| self.entries[i as usize].1)
    }

    /// The state after `op` if it can take effect in `s`.
    fn step(&self, i: usize, s: State) -> Option<State> {
        let op = &self.ops[i];
        let cur = self.version(s);
        // A loser reports the entry held when it lost.
        let conflict_ok = |wins: bool| (!wins && self.reported[i] == s).then_some(s);
        match (&op.call, &op.outcome) {
            (Call::Get, Outcome::Got(_)) => (self.reported[i] == s).then_some(s),
            (Call::Put { mode, .. }, Outcome::Written(_)) => {
                let allowed = match mode {
                    PutMode::Overwrite => true,
                    PutMode::Create => cur.is_none(),
                    PutMode::Update(v) => cur == Some(*v),
                };
                allowed.then_some(self.created[i])
            }
            (Call::Put { mode, .. }, Outcome::Conflict(_)) => match mode {
                PutMode::Overwrite => None,
                PutMode::Create => conflict_ok(cur.is_none()),
                PutMode::Update(v) => conflict_ok(cur == Some(*v)),
            },
            (Call::Delete(DeleteMode::Any), Outcome::Deleted(d)) => {
                (*d == cur.is_some()).then_some(None)
            }
            (Call::Delete(DeleteMode::IfVersion(v)), Outcome::Deleted(true)) => {
                (cur == Some(*v)).then_some(None)
            }
            (Call::Delete(DeleteMode::IfVersion(v)), Outcome::Conflict(_)) => {
                conflict_ok(cur == Some(*v))
            }
            _ => None,
        }
    }

    /// The operations that may be linearized next: the pending ones invoked no later than
    /// the earliest return among the pending ones. Operations are sorted by invocation, so
    /// the scan starts at the first pending one and stops at the first invoked after that
    /// earliest return (none further on can return earlier): it looks at the window of
    /// overlapping operations, not at the whole history.
    fn candidates(&self, done: &[u64]) -> Vec<usize> {
        let pending = |i: usize| done[i / 64] & (1 << (i % 64)) == 0;
        let lo = done
            .iter()
            .position(|w| *w != u64::MAX)
            .map_or(self.ops.len(), |w| {
                w * 64 + done[w].trailing_ones() as usize
            });
        let mut min_ret = u64::MAX;
        let mut out = Vec::new();
        for i in lo..self.ops.len() {
            if self.ops[i].invoked > min_ret {
                break;
            }
            if pending(i) {
                min_ret = min_ret.min(self.ops[i].returned);
                out.push(i);
            }
        }
        out.retain(|&i| self.ops[i].invoked <= min_ret);
        out
    }

    /// The depth-first search, with an explicit stack (histories run to thousands of
    /// operations). `Ok(true)`: `order` is a linearization.
    fn run(&mut self) -> std::result::Result<bool, ()> {
        let n = self.ops.len();
        if n == 0 {
            return Ok(true);
        }
        let mut done = vec![0u64; n.div_ceil(64)];
        self.seen.insert((done.clone(), None));
        // Per level: the state there, its candidates, and the next candidate to try.
        let mut stack: Vec<(State, Vec<usize>, usize)> = vec![(None, self.candidates(&done), 0)];
        while let Some((s, candidates, next)) = stack.last_mut() {
            let s = *s;
            let Some(&i) = candidates.get(*next) else {
                // Every candidate tried: record how far this got, and backtrack.
                let (s, candidates, _) = stack.pop().unwrap();
                if self.order.len() >= self.deepest.0 {
                    self.deepest = (self.order.len(), s, candidates);
                }
                if let Some(i) = self.order.pop() {
                    done[i / 64] &= !(1 << (i % 64));
                }
                continue;
            };
            *next += 1;
            let Some(after) = self.step(i, s) else {
                continue;
            };
            done[i / 64] |= 1 << (i % 64);
            self.order.push(i);
            if self.order.len() == n {
                return Ok(true);
            }
            self.nodes += 1;
            if self.nodes > SEARCH_BUDGET {
                return Err(());
            }
            if !self.seen.insert((done.clone(), after)) {
                self.order.pop();
                done[i / 64] &= !(1 << (i % 64));
                continue;
            }
            let candidates = self.candidates(&done);
            stack.push((after, candidates, 0));
        }
        Ok(false)
    }

    fn intern(&mut self, index: &mut HashMap<(Bytes, Version), u32>, e: &Entry) -> u32 {
        let k = (e.value.clone(), e.version);
        if let Some(&i) = index.get(&k) {
            return i;
        }
        let i = self.entries.len() as u32;
        self.entries.push(k.clone());
        index.insert(k, i);
        i
    }

    fn describe_state(&self, s: State) -> String {
        match s {
            None => "absent".into(),
            Some(i) => {
                let (v, ver) = &self.entries[i as usize];
                format!("{} @ {ver:?}", show(v))
            }
        }
    }
}

fn show(value: &Bytes) -> String {
    if value.len() <= 16 {
        format!("{:02x?}", &value[..])
    } else {
        format!("<{} bytes>", value.len())
    }
}

/// Finds a linearization of `history` (operations on one key that starts absent), returned
/// as the order of the operations' indices, or says why there is none.
pub fn check(history: &[Operation]) -> std::result::Result<Vec<usize>, Violation> {
    for (i, op) in history.iter().enumerate() {
        if op.returned < op.invoked {
            return Err(Violation {
                reason: format!("operation {i} returned before it was invoked: {op:?}"),
            });
        }
    }
    // No version is handed out twice.
    let mut versions: HashMap<Version, usize> = HashMap::new();
    for (i, op) in history.iter().enumerate() {
        if let Outcome::Written(v) = op.outcome {
            if let Some(j) = versions.insert(v, i) {
                return Err(Violation {
                    reason: format!(
                        "version {v:?} handed out twice: by {:?} and by {:?}",
                        history[j], op
                    ),
                });
            }
        }
    }
    let mut sorted: Vec<usize> = (0..history.len()).collect();
    sorted.sort_by_key(|&i| history[i].invoked);
    let ops: Vec<Operation> = sorted.iter().map(|&i| history[i].clone()).collect();
    let mut search = Search {
        ops: &ops,
        reported: Vec::with_capacity(ops.len()),
        created: Vec::with_capacity(ops.len()),
        entries: Vec::new(),
        seen: HashSet::new(),
        nodes: 0,
        deepest: (0, None, Vec::new()),
        order: Vec::new(),
    };
    let mut index = HashMap::new();
    for op in &ops {
        let reported = match &op.outcome {
            Outcome::Got(Some(e)) | Outcome::Conflict(Some(e)) => {
                Some(search.intern(&mut index, e))
            }
            _ => None,
        };
        let created = match (&op.call, &op.outcome) {
            (Call::Put { value, .. }, Outcome::Written(v)) => {
                Some(search.intern(&mut index, &Entry::new(value.clone(), *v)))
            }
            _ => None,
        };
        search.reported.push(reported);
        search.created.push(created);
    }
    match search.run() {
        Ok(true) => Ok(search.order.iter().map(|&i| sorted[i]).collect()),
        Ok(false) => {
            let (count, s, stuck) = &search.deepest;
            let stuck: Vec<String> = stuck
                .iter()
                .map(|&i| format!("    #{}: {}", sorted[i], describe(&ops[i])))
                .collect();
            Err(Violation {
                reason: format!(
                    "not linearizable: at most {count} of {} operations can be ordered; then \
                     the register holds {} and none of the operations that may come next \
                     fits:\n{}",
                    ops.len(),
                    search.describe_state(*s),
                    stuck.join("\n")
                ),
            })
        }
        Err(()) => Err(Violation {
            reason: format!(
                "undecided: the search of {} operations visited {SEARCH_BUDGET} nodes",
                ops.len()
            ),
        }),
    }
}

fn describe(op: &Operation) -> String {
    let entry = |e: &Option<Entry>| match e {
        None => "absent".to_owned(),
        Some(e) => format!("{} @ {:?}", show(&e.value), e.version),
    };
    let call = match &op.call {
        Call::Get => "get".to_owned(),
        Call::Put { value, mode } => format!("put {} {mode:?}", show(value)),
        Call::Delete(mode) => format!("delete {mode:?}"),
    };
    let outcome = match &op.outcome {
        Outcome::Got(e) => format!("got {}", entry(e)),
        Outcome::Written(v) => format!("wrote {v:?}"),
        Outcome::Deleted(d) => format!("deleted: {d}"),
        Outcome::Conflict(e) => format!("conflict, current {}", entry(e)),
    };
    format!("{call} -> {outcome} [{}..{} ns]", op.invoked, op.returned)
}

/// A backend wrapper that logs every `get`, `put` and `delete` per key, with the instants
/// of invocation and return (see the module docs). Batch methods go through the logged
/// single-key ones; `touch` is passed on unlogged (the workloads here do not touch).
#[derive(Debug)]
pub struct Recorder {
    inner: DynBackend,
    start: Instant,
    log: Mutex<HashMap<Key, Vec<Operation>>>,
}

impl Recorder {
    pub fn new(inner: DynBackend) -> Arc<Self> {
        Arc::new(Recorder {
            inner,
            start: Instant::now(),
            log: Mutex::new(HashMap::new()),
        })
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn record(&self, key: &Key, call: Call, outcome: Outcome, invoked: u64) {
        let returned = self.now();
        self.log
            .lock()
            .entry(key.clone())
            .or_default()
            .push(Operation {
                call,
                outcome,
                invoked,
                returned,
            });
    }

    /// The history recorded for `key`.
    pub fn history(&self, key: &Key) -> Vec<Operation> {
        self.log.lock().get(key).cloned().unwrap_or_default()
    }
}

#[async_trait]
impl CacheBackend for Recorder {
    fn capabilities(&self) -> &Capabilities {
        self.inner.capabilities()
    }

    async fn get(&self, key: &Key) -> Result<Option<Entry>> {
        let t = self.now();
        let r = self.inner.get(key).await;
        if let Ok(e) = &r {
            self.record(key, Call::Get, Outcome::Got(e.clone()), t);
        }
        r
    }

    async fn put(
        &self,
        key: &Key,
        value: Bytes,
        ttl: Option<Ttl>,
        mode: PutMode,
    ) -> Result<Version> {
        let t = self.now();
        let r = self.inner.put(key, value.clone(), ttl, mode).await;
        let outcome = match &r {
            Ok(v) => Some(Outcome::Written(*v)),
            Err(e) if e.kind() == ErrorKind::Conflict => {
                Some(Outcome::Conflict(e.current().cloned()))
            }
            Err(_) => None,
        };
        if let Some(o) = outcome {
            self.record(key, Call::Put { value, mode }, o, t);
        }
        r
    }

    async fn delete(&self, key: &Key, mode: DeleteMode) -> Result<bool> {
        let t = self.now();
        let r = self.inner.delete(key, mode).await;
        let outcome = match &r {
            Ok(d) => Some(Outcome::Deleted(*d)),
            Err(e) if e.kind() == ErrorKind::Conflict => {
                Some(Outcome::Conflict(e.current().cloned()))
            }
            Err(_) => None,
        };
        if let Some(o) = outcome {
            self.record(key, Call::Delete(mode), o, t);
        }
        r
    }

    async fn touch(&self, key: &Key, ttl: Option<Ttl>) -> Result<bool> {
        self.inner.touch(key, ttl).await
    }
}

/// A small deterministic generator per task (xorshift), seeded at random.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Runs `tasks` tasks of `ops` random operations each over `keys` fresh keys through a
/// [`Recorder`] on `b`, and returns each key's history. The mix: gets, creates, updates and
/// conditional deletes with the version the task saw last (or, one time in five, one it saw
/// earlier, likely stale), and a few overwrites. Every written value is unique. Panics on an
/// error other than a conflict.
pub async fn mixed_workload(
    b: DynBackend,
    keys: usize,
    tasks: usize,
    ops: usize,
) -> Vec<(Key, Vec<Operation>)> {
    let rec = Recorder::new(b);
    let keys: Vec<Key> = (0..keys).map(|_| key("lin")).collect();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (rec, keys) = (rec.clone(), keys.clone());
        handles.push(tokio::spawn(async move {
            let mut rng = Rng(random_u64() | 1);
            // Per key: the last version seen, and an older one.
            let mut last: Vec<Option<Version>> = vec![None; keys.len()];
            let mut older: Vec<Option<Version>> = vec![None; keys.len()];
            for n in 0..ops {
                let k = rng.below(keys.len() as u64) as usize;
                let key = &keys[k];
                let value = Bytes::from(format!("t{t}-{n}"));
                let expected = match (rng.below(5), older[k], last[k]) {
                    (0, Some(v), _) => Some(v),
                    (_, _, v) => v,
                };
                let mut seen = |v: Option<Version>| {
                    if v != last[k] {
                        older[k] = last[k].or(older[k]);
                        last[k] = v;
                    }
                };
                let name = &rec.capabilities().name;
                match (rng.below(20), expected) {
                    (0..=5, _) => {
                        let e = rec.get(key).await.unwrap_or_else(|e| panic!("{name}: {e}"));
                        seen(e.map(|e| e.version));
                    }
                    (6..=7, _) | (_, None) => {
                        match rec.put(key, value, None, PutMode::Create).await {
                            Ok(v) => seen(Some(v)),
                            Err(e) if e.kind() == ErrorKind::Conflict => {
                                seen(e.current().map(|c| c.version))
                            }
                            Err(e) => panic!("{name}: create: {e}"),
                        }
                    }
                    (8..=15, Some(v)) => {
                        match rec.put(key, value, None, PutMode::Update(v)).await {
                            Ok(v) => seen(Some(v)),
                            Err(e) if e.kind() == ErrorKind::Conflict => {
                                seen(e.current().map(|c| c.version))
                            }
                            Err(e) => panic!("{name}: update: {e}"),
                        }
                    }
                    (16..=18, Some(v)) => match rec.delete(key, DeleteMode::IfVersion(v)).await {
                        Ok(_) => seen(None),
                        Err(e) if e.kind() == ErrorKind::Conflict => {
                            seen(e.current().map(|c| c.version))
                        }
                        Err(e) => panic!("{name}: delete: {e}"),
                    },
                    _ => {
                        let v = rec
                            .put(key, value, None, PutMode::Overwrite)
                            .await
                            .unwrap_or_else(|e| panic!("{name}: overwrite: {e}"));
                        seen(Some(v));
                    }
                }
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    keys.into_iter()
        .map(|k| {
            let h = rec.history(&k);
            (k, h)
        })
        .collect()
}

/// Runs `tasks` tasks of `increments` read-modify-write increments each (through
/// [`Cache::update`]; the workload of
/// [`cas_race_16_tasks_50_increments`](super::cas::cas_race_16_tasks_50_increments)) of one
/// fresh key through a [`Recorder`] on `b`; returns the final count and the
/// key and its history.
pub async fn increment_workload(
    b: DynBackend,
    tasks: usize,
    increments: usize,
) -> (Option<u64>, (Key, Vec<Operation>)) {
    let rec = Recorder::new(b);
    let k = key("lin-incr");
    let cache = Cache::new(rec.clone()).max_update_attempts(10_000);
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (cache, k) = (cache.clone(), k.clone());
        handles.push(tokio::spawn(async move {
            for _ in 0..increments {
                cache
                    .update(&k, None, |n: Option<u64>| n.unwrap_or(0) + 1)
                    .await
                    .unwrap();
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let total = cache.get::<u64>(&k).await.unwrap();
    let history = rec.history(&k);
    (total, (k, history))
}

/// Panics with the violation and the backend's name unless every history is linearizable;
/// prints each history's size and how long its check took (shown with `--nocapture`).
pub fn assert_linearizable(b: &DynBackend, histories: &[(Key, Vec<Operation>)]) {
    for (k, h) in histories {
        let start = Instant::now();
        let checked = check(h);
        eprintln!(
            "{}: {} operations on {k} checked in {:?}",
            b.capabilities().name,
            h.len(),
            start.elapsed()
        );
        if let Err(v) = checked {
            panic!(
                "{}: the history of {} operations on {k} is not linearizable as a versioned \
                 register: {v}",
                b.capabilities().name,
                h.len()
            );
        }
    }
}

/// Concurrent gets, creates, updates, conditional deletes and overwrites on a few keys
/// (one where CAS is not declared linearizable: the check is per key all the same) form a
/// linearizable history of a versioned register.
pub async fn mixed_history_is_linearizable(b: DynBackend) {
    if !b.capabilities().cas {
        return super::capability::assert_cas_refused(&b).await;
    }
    let keys = if b.capabilities().linearizable_cas {
        2
    } else {
        1
    };
    let histories = mixed_workload(b.clone(), keys, 6, 30).await;
    let total: usize = histories.iter().map(|(_, h)| h.len()).sum();
    assert_eq!(total, 6 * 30, "every operation recorded");
    assert_linearizable(&b, &histories);
}

/// Stamps this module's cases into the current module; used by
/// [`conformance_suite!`](crate::conformance_suite), which stamps every module.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_linearizability {
    ($make:path) => {
        $crate::conformance_suite!(@cases $make;
            linearizability::mixed_history_is_linearizable,
        );
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(n: u64) -> Version {
        Version::from_raw(n)
    }

    fn e(val: &'static str, ver: u64) -> Option<Entry> {
        Some(Entry::new(Bytes::from_static(val.as_bytes()), v(ver)))
    }

    fn put(val: &'static str, mode: PutMode, out: Outcome, t: (u64, u64)) -> Operation {
        Operation {
            call: Call::Put {
                value: Bytes::from_static(val.as_bytes()),
                mode,
            },
            outcome: out,
            invoked: t.0,
            returned: t.1,
        }
    }

    fn get(out: Option<Entry>, t: (u64, u64)) -> Operation {
        Operation {
            call: Call::Get,
            outcome: Outcome::Got(out),
            invoked: t.0,
            returned: t.1,
        }
    }

    fn del(mode: DeleteMode, out: Outcome, t: (u64, u64)) -> Operation {
        Operation {
            call: Call::Delete(mode),
            outcome: out,
            invoked: t.0,
            returned: t.1,
        }
    }

    #[test]
    fn empty_history_is_linearizable() {
        assert_eq!(check(&[]), Ok(vec![]));
    }

    #[test]
    fn sequential_cas_chain_is_linearizable() {
        let h = vec![
            put("a", PutMode::Create, Outcome::Written(v(1)), (0, 1)),
            get(e("a", 1), (2, 3)),
            put("b", PutMode::Update(v(1)), Outcome::Written(v(2)), (4, 5)),
            put(
                "c",
                PutMode::Update(v(1)),
                Outcome::Conflict(e("b", 2)),
                (6, 7),
            ),
            del(DeleteMode::IfVersion(v(2)), Outcome::Deleted(true), (8, 9)),
            get(None, (10, 11)),
        ];
        assert_eq!(check(&h), Ok(vec![0, 1, 2, 3, 4, 5]));
    }

    #[test]
    fn concurrent_ops_are_reordered_when_needed() {
        // The read overlaps the write and sees it; the second create overlaps the first and
        // loses to it, although it was invoked first.
        let h = vec![
            put("x", PutMode::Create, Outcome::Conflict(e("a", 7)), (0, 10)),
            put("a", PutMode::Create, Outcome::Written(v(7)), (2, 8)),
            get(e("a", 7), (1, 3)),
        ];
        let order = check(&h).unwrap();
        assert_eq!(
            order.iter().position(|&i| i == 1),
            Some(0),
            "the winner first"
        );
    }

    #[test]
    fn stale_read_after_a_completed_write_is_not_linearizable() {
        let h = vec![
            put("a", PutMode::Create, Outcome::Written(v(1)), (0, 1)),
            put("b", PutMode::Update(v(1)), Outcome::Written(v(2)), (2, 3)),
            get(e("a", 1), (4, 5)),
        ];
        let err = check(&h).unwrap_err();
        assert!(err.reason.contains("not linearizable"), "{err}");
    }

    #[test]
    fn stale_cas_that_succeeds_is_not_linearizable() {
        // The lost update a CAS without its version check produces.
        let h = vec![
            put("a", PutMode::Create, Outcome::Written(v(1)), (0, 1)),
            put("b", PutMode::Update(v(1)), Outcome::Written(v(2)), (2, 3)),
            put("c", PutMode::Update(v(1)), Outcome::Written(v(3)), (4, 5)),
        ];
        assert!(check(&h).is_err());
        // Overlapping, the same two updates of version 1 cannot both win either.
        let h = vec![
            put("a", PutMode::Create, Outcome::Written(v(1)), (0, 1)),
            put("b", PutMode::Update(v(1)), Outcome::Written(v(2)), (2, 6)),
            put("c", PutMode::Update(v(1)), Outcome::Written(v(3)), (3, 5)),
        ];
        assert!(check(&h).is_err());
    }

    #[test]
    fn two_create_winners_are_not_linearizable() {
        let h = vec![
            put("a", PutMode::Create, Outcome::Written(v(1)), (0, 5)),
            put("b", PutMode::Create, Outcome::Written(v(2)), (1, 4)),
        ];
        assert!(check(&h).is_err());
    }

    #[test]
    fn a_repeated_version_is_a_violation() {
        let h = vec![
            put("a", PutMode::Create, Outcome::Written(v(1)), (0, 1)),
            del(DeleteMode::Any, Outcome::Deleted(true), (2, 3)),
            put("a", PutMode::Create, Outcome::Written(v(1)), (4, 5)),
        ];
        let err = check(&h).unwrap_err();
        assert!(err.reason.contains("handed out twice"), "{err}");
    }

    #[test]
    fn conflict_must_carry_the_current_entry() {
        let ok = vec![
            put("a", PutMode::Create, Outcome::Written(v(1)), (0, 1)),
            put("b", PutMode::Create, Outcome::Conflict(e("a", 1)), (2, 3)),
        ];
        assert!(check(&ok).is_ok());
        let wrong = vec![
            put("a", PutMode::Create, Outcome::Written(v(1)), (0, 1)),
            put("b", PutMode::Create, Outcome::Conflict(None), (2, 3)),
        ];
        assert!(check(&wrong).is_err());
        // A conflict while the expected version is current is a violation.
        let spurious = vec![
            put("a", PutMode::Create, Outcome::Written(v(1)), (0, 1)),
            put(
                "b",
                PutMode::Update(v(1)),
                Outcome::Conflict(e("a", 1)),
                (2, 3),
            ),
        ];
        assert!(check(&spurious).is_err());
    }

    #[test]
    fn delete_if_version_follows_the_spec() {
        let ok = vec![
            put("a", PutMode::Create, Outcome::Written(v(1)), (0, 1)),
            del(DeleteMode::IfVersion(v(1)), Outcome::Deleted(true), (2, 9)),
            del(DeleteMode::IfVersion(v(1)), Outcome::Conflict(None), (3, 8)),
            get(None, (10, 11)),
        ];
        assert!(check(&ok).is_ok());
        let both = vec![
            put("a", PutMode::Create, Outcome::Written(v(1)), (0, 1)),
            del(DeleteMode::IfVersion(v(1)), Outcome::Deleted(true), (2, 9)),
            del(DeleteMode::IfVersion(v(1)), Outcome::Deleted(true), (3, 8)),
        ];
        assert!(check(&both).is_err());
    }

    #[test]
    fn real_time_order_is_respected() {
        // The get returned before the write was invoked, so it cannot see it.
        let h = vec![
            get(e("a", 1), (0, 1)),
            put("a", PutMode::Create, Outcome::Written(v(1)), (2, 3)),
        ];
        assert!(check(&h).is_err());
        // Overlapping, it can.
        let h = vec![
            get(e("a", 1), (0, 3)),
            put("a", PutMode::Create, Outcome::Written(v(1)), (1, 2)),
        ];
        assert_eq!(check(&h), Ok(vec![1, 0]));
    }

    #[test]
    fn many_concurrent_increments_check_quickly() {
        // 1,000 compare-and-swap increments, each overlapping its neighbours, each preceded
        // by a get and some by a losing attempt.
        let mut h = Vec::new();
        let mut t = 0;
        for n in 1..=1000u64 {
            let val = Bytes::from(n.to_string());
            let expected = if n == 1 {
                PutMode::Create
            } else {
                PutMode::Update(v(n - 1))
            };
            let prev = (n > 1).then(|| Entry::new(Bytes::from((n - 1).to_string()), v(n - 1)));
            h.push(get(prev.clone(), (t, t + 30)));
            if n % 3 == 0 && n > 1 {
                h.push(Operation {
                    call: Call::Put {
                        value: Bytes::from_static(b"lost"),
                        mode: PutMode::Update(v(n - 2)),
                    },
                    outcome: Outcome::Conflict(prev),
                    invoked: t + 1,
                    returned: t + 35,
                });
            }
            h.push(Operation {
                call: Call::Put {
                    value: val,
                    mode: expected,
                },
                outcome: Outcome::Written(v(n)),
                invoked: t + 2,
                returned: t + 40,
            });
            t += 10;
        }
        let start = Instant::now();
        // On a small stack: the search is iterative, however long the history.
        let n = h.len();
        let order = std::thread::Builder::new()
            .stack_size(128 * 1024)
            .spawn(move || check(&h))
            .unwrap()
            .join()
            .unwrap()
            .unwrap();
        assert_eq!(order.len(), n);
        assert!(start.elapsed().as_secs() < 5, "took {:?}", start.elapsed());
    }
}
