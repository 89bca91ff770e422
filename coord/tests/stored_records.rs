//! What coordination stores must read back as it was written, on every codec, and the task
//! record must still read every layout earlier versions wrote (bytes written out below).
#![allow(clippy::unwrap_used)]

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use larder_backend_memory::MemoryBackend;
use larder_cache_api::codec::{Bincode, Codec, Json, Postcard};
use larder_cache_api::{envelope, Cache, ErrorKind, Key};
use larder_coord::{
    Durability, Heartbeat, HistoryEntry, HolderId, LeaseRecord, Outcome, Pause, RunInfo,
    RunRequest, Schedule, Scheduler, SchedulerConfig, TaskRecord, TaskSpec,
};
use proptest::prelude::*;
use serde::de::DeserializeOwned;
use serde::Serialize;

fn round_trip<C: Codec, T: Serialize + DeserializeOwned + PartialEq + Debug>(codec: &C, v: &T) {
    let sealed = envelope::seal(codec, v).unwrap();
    let back: T = envelope::open(codec, &sealed)
        .unwrap_or_else(|e| panic!("{} does not open what it sealed: {e}", C::NAME));
    assert_eq!(&back, v, "{}", C::NAME);
}

fn every_codec<T: Serialize + DeserializeOwned + PartialEq + Debug>(v: &T) {
    round_trip(&Postcard, v);
    round_trip(&Json, v);
    round_trip(&Bincode, v);
}

fn run_info() -> impl Strategy<Value = RunInfo> {
    (
        any::<i64>(),
        ".{0,12}",
        any::<u64>(),
        any::<i64>(),
        any::<Option<i64>>(),
        proptest::option::of(proptest::result::maybe_err(Just(()), ".{0,12}")),
    )
        .prop_map(
            |(period, holder, token, started_at_ms, finished_at_ms, outcome)| RunInfo {
                period,
                holder,
                token,
                started_at_ms,
                finished_at_ms,
                outcome,
            },
        )
}

fn run_request() -> impl Strategy<Value = RunRequest> {
    (
        ".{0,8}",
        ".{0,8}",
        any::<i64>(),
        any::<bool>(),
        any::<Option<u64>>(),
    )
        .prop_map(|(id, by, at_ms, forced, token)| RunRequest {
            id,
            by,
            at_ms,
            forced,
            token,
        })
}

fn history_entry() -> impl Strategy<Value = HistoryEntry> {
    (
        proptest::option::of(".{0,8}"),
        any::<i64>(),
        ".{0,8}",
        any::<u64>(),
        any::<i64>(),
        any::<i64>(),
        prop_oneof![
            Just(Outcome::Ok),
            ".{0,12}".prop_map(Outcome::Error),
            Just(Outcome::Cancelled),
            Just(Outcome::TakenOver),
            Just(Outcome::Abandoned),
        ],
    )
        .prop_map(
            |(trigger, period, holder, token, started_at_ms, finished_at_ms, outcome)| {
                HistoryEntry {
                    trigger,
                    period,
                    holder,
                    token,
                    started_at_ms,
                    finished_at_ms,
                    outcome,
                }
            },
        )
}

fn heartbeat() -> impl Strategy<Value = Heartbeat> {
    (any::<u64>(), any::<u64>(), any::<i64>()).prop_map(|(token, beats, at_ms)| Heartbeat {
        token,
        beats,
        at_ms,
    })
}

fn task_record() -> impl Strategy<Value = TaskRecord> {
    (
        any::<Option<i64>>(),
        any::<u64>(),
        proptest::option::of(run_info()),
        proptest::option::of(run_info()),
        proptest::collection::vec(run_info(), 0..3),
        proptest::collection::vec(heartbeat(), 0..3),
        proptest::option::of((".{0,8}", any::<i64>()).prop_map(|(by, at_ms)| Pause { by, at_ms })),
        proptest::collection::vec(run_request(), 0..3),
    )
        .prop_map(
            |(last_period, token, running, last_run, overlapping, heartbeats, paused, requests)| {
                TaskRecord {
                    last_period,
                    token,
                    running,
                    last_run,
                    overlapping,
                    heartbeats,
                    paused,
                    requests,
                }
            },
        )
}

fn lease_record() -> impl Strategy<Value = LeaseRecord> {
    (
        ".{0,16}",
        any::<u64>(),
        any::<u64>(),
        any::<i64>(),
        any::<i64>(),
        any::<bool>(),
    )
        .prop_map(
            |(holder, token, lease_ms, acquired_at_ms, renewed_at_ms, released)| LeaseRecord {
                holder,
                token,
                lease_ms,
                acquired_at_ms,
                renewed_at_ms,
                released,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn task_records_open_as_sealed_on_every_codec(r in task_record()) {
        every_codec(&r);
    }

    #[test]
    fn histories_open_as_sealed_on_every_codec(h in proptest::collection::vec(history_entry(), 0..4)) {
        every_codec(&h);
    }

    #[test]
    fn lease_records_open_as_sealed_on_every_codec(r in lease_record()) {
        every_codec(&r);
    }

    #[test]
    fn run_infos_and_heartbeats_open_as_sealed_on_every_codec(r in run_info(), h in heartbeat()) {
        every_codec(&r);
        every_codec(&h);
    }

    #[test]
    fn holder_ids_open_as_sealed_on_every_codec(name in "[a-z0-9-]{0,12}") {
        every_codec(&HolderId::named(&name));
    }
}

/// The record every version has written for a task whose runs do not overlap: four fields.
/// `last_period` Some(120), `token` 7, `running` the run of period 120 by "a", `last_run`
/// the run of period 60 by "b" that ended at 62 with the error "x" (postcard: option tags
/// 0/1, zigzag varints, length-prefixed strings, `Result` as variant index then value).
const FOUR_FIELDS: &[u8] = &[
    1, 0xF0, 0x01, // last_period: Some(120)
    7,    // token
    1, 0xF0, 0x01, 1, b'a', 7, 0xF2, 0x01, 0, 0, // running
    1, 0x78, 1, b'b', 6, 0x7A, 1, 0x7C, 1, 1, 1, b'x', // last_run
];

/// The same record with one overlapping run (period 60 by "c", token 5) and its heartbeat
/// (token 5, 3 beats, at 100), as the version that added overlapping runs writes it.
const FIVE_FIELDS_TAIL: &[u8] = &[
    1, // overlap: Some
    1, 0x78, 1, b'c', 5, 0x7A, 0, 0, // runs: [run]
    1, 5, 3, 0xC8, 0x01, // heartbeats: [beat]
];

fn four_field_record() -> TaskRecord {
    TaskRecord {
        last_period: Some(120),
        token: 7,
        running: Some(RunInfo {
            period: 120,
            holder: "a".into(),
            token: 7,
            started_at_ms: 121,
            finished_at_ms: None,
            outcome: None,
        }),
        last_run: Some(RunInfo {
            period: 60,
            holder: "b".into(),
            token: 6,
            started_at_ms: 61,
            finished_at_ms: Some(62),
            outcome: Some(Err("x".into())),
        }),
        overlapping: Vec::new(),
        heartbeats: Vec::new(),
        paused: None,
        requests: Vec::new(),
    }
}

/// The operators' sixth field: paused by "op" at 100, no run-now request (the fifth field,
/// no overlap, written as "none" before it).
const SIX_FIELDS_OPS: &[u8] = &[
    1, // ops: Some
    1, 2, b'o', b'p', 0xC8, 0x01, // paused: Some(Pause { by: "op", at_ms: 100 })
    0,    // requests: []
];

/// A sixth field with one run-now request ("r1" by "op" at 100, not forced, claimed under
/// token 9) and no pause.
const SIX_FIELDS_REQUEST: &[u8] = &[
    1, // ops: Some
    0, // paused: None
    1, 2, b'r', b'1', 2, b'o', b'p', 0xC8, 0x01, 0, 1, 9, // requests: [request]
];

/// A task's history (its own record) of one entry: period 60 by "b", token 6, from 61 to
/// 62, failed with "x" (`Outcome` as its variant index, then the text).
const HISTORY: &[u8] = &[1, 0, 0x78, 1, b'b', 6, 0x7A, 0x7C, 1, 1, b'x'];

#[test]
fn every_earlier_task_record_layout_reads_through_the_public_type() {
    let four = four_field_record();
    assert_eq!(Postcard.decode::<TaskRecord>(FOUR_FIELDS).unwrap(), four);
    // Written today, a record without overlapping runs keeps the four-field layout, so that
    // a process of an earlier version reads it during a rolling upgrade.
    let mut written = Vec::new();
    Postcard.encode(&four, &mut written).unwrap();
    assert_eq!(written, FOUR_FIELDS);

    let five = TaskRecord {
        overlapping: vec![RunInfo {
            period: 60,
            holder: "c".into(),
            token: 5,
            started_at_ms: 61,
            finished_at_ms: None,
            outcome: None,
        }],
        heartbeats: vec![Heartbeat {
            token: 5,
            beats: 3,
            at_ms: 100,
        }],
        ..four
    };
    let bytes = [FOUR_FIELDS, FIVE_FIELDS_TAIL].concat();
    assert_eq!(Postcard.decode::<TaskRecord>(&bytes).unwrap(), five);
    let mut written = Vec::new();
    Postcard.encode(&five, &mut written).unwrap();
    assert_eq!(written, bytes);
    // An explicit "no overlap" (what a codec's own default would write) reads too.
    let explicit_none = [FOUR_FIELDS, &[0]].concat();
    assert_eq!(
        Postcard.decode::<TaskRecord>(&explicit_none).unwrap(),
        four_field_record()
    );
}

#[test]
fn a_paused_record_adds_a_sixth_field_and_reads_back() {
    let paused = TaskRecord {
        paused: Some(Pause {
            by: "op".into(),
            at_ms: 100,
        }),
        ..four_field_record()
    };
    let bytes = [FOUR_FIELDS, &[0], SIX_FIELDS_OPS].concat();
    assert_eq!(Postcard.decode::<TaskRecord>(&bytes).unwrap(), paused);
    let mut written = Vec::new();
    Postcard.encode(&paused, &mut written).unwrap();
    assert_eq!(written, bytes);
    // With overlapping runs too.
    let both = TaskRecord {
        overlapping: vec![RunInfo {
            period: 60,
            holder: "c".into(),
            token: 5,
            started_at_ms: 61,
            finished_at_ms: None,
            outcome: None,
        }],
        heartbeats: vec![Heartbeat {
            token: 5,
            beats: 3,
            at_ms: 100,
        }],
        ..paused.clone()
    };
    let bytes = [FOUR_FIELDS, FIVE_FIELDS_TAIL, SIX_FIELDS_OPS].concat();
    assert_eq!(Postcard.decode::<TaskRecord>(&bytes).unwrap(), both);
    // Resumed, the record goes back to the layout earlier versions read.
    let resumed = TaskRecord {
        paused: None,
        ..paused
    };
    let mut written = Vec::new();
    Postcard.encode(&resumed, &mut written).unwrap();
    assert_eq!(written, FOUR_FIELDS);
    // A run-now request alone.
    let requested = TaskRecord {
        requests: vec![RunRequest {
            id: "r1".into(),
            by: "op".into(),
            at_ms: 100,
            forced: false,
            token: Some(9),
        }],
        ..four_field_record()
    };
    let bytes = [FOUR_FIELDS, &[0], SIX_FIELDS_REQUEST].concat();
    assert_eq!(Postcard.decode::<TaskRecord>(&bytes).unwrap(), requested);
    let mut written = Vec::new();
    Postcard.encode(&requested, &mut written).unwrap();
    assert_eq!(written, bytes);
    // A history, in its own record.
    let history = vec![HistoryEntry {
        trigger: None,
        period: 60,
        holder: "b".into(),
        token: 6,
        started_at_ms: 61,
        finished_at_ms: 62,
        outcome: Outcome::Error("x".into()),
    }];
    assert_eq!(
        Postcard.decode::<Vec<HistoryEntry>>(HISTORY).unwrap(),
        history
    );
    let mut written = Vec::new();
    Postcard.encode(&history, &mut written).unwrap();
    assert_eq!(written, HISTORY);
    // Cut inside the sixth field: a decode error, never a record without it.
    let full = [FOUR_FIELDS, &[0], SIX_FIELDS_OPS].concat();
    for cut in FOUR_FIELDS.len() + 2..full.len() {
        let e = Postcard.decode::<TaskRecord>(&full[..cut]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Decode, "cut at {cut}");
    }
}

/// Found by fuzzing `envelope::open` (fuzz/seeds/envelope/regression-task-record-no-overlap):
/// a record with an explicit empty fifth field opened, and sealed again as four fields it no
/// longer opened through the public type.
#[test]
fn a_task_record_sealed_without_overlap_opens_again() {
    let mut bytes = envelope::seal(&Postcard, &()).unwrap().to_vec();
    bytes.truncate(envelope::HEADER_LEN);
    bytes.extend_from_slice(&[0, 17, 0, 0, 0]);
    let rec: TaskRecord = envelope::open(&Postcard, &bytes).unwrap();
    assert_eq!(rec.token, 17);
    let again = envelope::seal(&Postcard, &rec).unwrap();
    assert_eq!(
        envelope::open::<_, TaskRecord>(&Postcard, &again).unwrap(),
        rec
    );
}

#[test]
fn truncated_or_corrupt_task_records_are_decode_errors() {
    // Cut anywhere inside the four fields, or inside a present fifth one.
    let full = [FOUR_FIELDS, FIVE_FIELDS_TAIL].concat();
    for cut in (0..full.len()).filter(|&c| c != FOUR_FIELDS.len()) {
        let e = Postcard.decode::<TaskRecord>(&full[..cut]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Decode, "cut at {cut}");
    }
    // Bytes after a complete record are refused (after the fifth field a "none" is the
    // sixth, so two of them).
    let trailing = [&full[..], &[0, 0]].concat();
    let e = Postcard.decode::<TaskRecord>(&trailing).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Decode);
    let e = Bincode.decode::<TaskRecord>(&[1, 2]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Decode);
}

/// The path a tool takes: a scheduler writes the record, the tool reads it through the public
/// type with a typed `Cache`.
#[tokio::test]
async fn a_record_the_scheduler_wrote_reads_through_a_typed_cache() {
    let backend = Arc::new(MemoryBackend::default());
    let task = TaskSpec::new(
        "nightly",
        Schedule::every(Duration::from_secs(3600)).unwrap(),
        |_| async { Ok(()) },
    );
    let sched = Scheduler::new(
        backend.clone(),
        HolderId::named("tool-test"),
        SchedulerConfig::default().durability(Durability::AcceptLoss),
    )
    .unwrap()
    .with_task(task)
    .unwrap();
    let claims = sched.tick().await.unwrap();
    assert_eq!(claims.len(), 1);
    let cache = Cache::new(backend);
    let rec: TaskRecord = cache
        .get(&Key::new("larder:task:nightly").unwrap())
        .await
        .unwrap()
        .expect("the scheduler wrote the record");
    assert_eq!(rec.token, claims[0].token);
    assert!(rec.overlapping.is_empty());
}
