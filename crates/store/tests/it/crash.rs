//! Crash consistency on the crash backend: pull the plug at random points
//! and check that what was reported synced survives, exactly once, and that
//! nothing else appears.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use liebre_store::{Health, MessageLog, StoreError};
use proptest::prelude::*;

use crate::common::{
    config, open, segments, wait_until, with_bodies, CrashHarness, Harness, ReleaseSyncs,
};

#[derive(Debug, Clone)]
enum Op {
    Append { queues: Vec<u32>, len: usize },
    Ack { pick: usize },
    DropQueue { queue: u32 },
    Sync,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (proptest::sample::subsequence(vec![1u32, 2, 3], 1..=3), 0usize..400)
            .prop_map(|(queues, len)| Op::Append { queues, len }),
        4 => any::<usize>().prop_map(|pick| Op::Ack { pick }),
        1 => (1u32..=3).prop_map(|queue| Op::DropQueue { queue }),
        1 => Just(Op::Sync),
    ]
}

#[derive(Debug, Clone)]
struct Round {
    ops: Vec<Op>,
    /// Bytes of unsynced appends that reach the disk anyway.
    keep_unsynced: usize,
    /// Junk found after the end of the last segment.
    garbage: Vec<u8>,
}

fn round() -> impl Strategy<Value = Round> {
    (
        proptest::collection::vec(op(), 0..60),
        prop_oneof![Just(0usize), 0usize..64, 0usize..5000],
        prop_oneof![
            2 => Just(Vec::new()),
            1 => proptest::collection::vec(any::<u8>(), 1..24)
        ],
    )
        .prop_map(|(ops, keep_unsynced, garbage)| Round {
            ops,
            keep_unsynced,
            garbage,
        })
}

/// What the test knows about one message.
#[derive(Debug)]
struct Msg {
    queues: BTreeSet<u32>,
    body: Bytes,
    /// Lsn of the append; 0 for a message found by recovery (on disk).
    appended: u64,
    /// Lsn of the first ack per queue.
    acks: BTreeMap<u32, u64>,
}

fn body(round: usize, i: usize, len: usize) -> Bytes {
    let mut v = format!("r{round}i{i}:").into_bytes();
    v.resize(v.len() + len, b'x');
    Bytes::from(v)
}

/// Checks a recovery against the model as of a crash at `crash_lsn`, then
/// makes the model what was recovered.
fn check_and_adopt(model: &mut BTreeMap<u64, Msg>, rec: &liebre_store::Recovered, crash_lsn: u64) {
    let mut present: BTreeMap<u64, BTreeSet<u32>> = BTreeMap::new();
    for (q, list) in &rec.queues {
        assert!(
            list.windows(2).all(|w| w[0].0 < w[1].0),
            "queue {q}: ids not strictly increasing: {:?}",
            list.iter().map(|m| m.0).collect::<Vec<_>>()
        );
        for (id, b) in list {
            let m = model
                .get(id)
                .unwrap_or_else(|| panic!("message {id} was never appended"));
            assert!(m.queues.contains(q), "message {id} not routed to {q}");
            assert_eq!(Some(&m.body), b.as_ref(), "message {id} has the wrong body");
            if let Some(ack) = m.acks.get(q) {
                assert!(
                    *ack > crash_lsn,
                    "message {id} in {q}: ack {ack} was synced"
                );
            }
            assert!(rec.next_message_id > *id);
            present.entry(*id).or_default().insert(*q);
        }
    }
    for (id, m) in model.iter() {
        for q in &m.queues {
            let here = present.get(id).is_some_and(|qs| qs.contains(q));
            if m.appended <= crash_lsn && !m.acks.contains_key(q) {
                assert!(
                    here,
                    "synced message {id} lost from queue {q} (crash at {crash_lsn})"
                );
            }
        }
        if m.appended <= crash_lsn {
            assert!(rec.next_message_id > *id, "id {id} could be reused");
        }
    }
    model.retain(|id, _| present.contains_key(id));
    for (id, m) in model.iter_mut() {
        m.queues = present.remove(id).unwrap_or_default();
        m.appended = 0;
        m.acks.clear();
    }
}

fn run_rounds(segment_size: u64, rounds: Vec<Round>) {
    let h = CrashHarness::default();
    let cfg = || config(segment_size);
    let (mut log, rec) = open(&h, cfg());
    assert!(rec.queues.is_empty());
    let mut model: BTreeMap<u64, Msg> = BTreeMap::new();

    for (r, round) in rounds.into_iter().enumerate() {
        for (i, op) in round.ops.into_iter().enumerate() {
            match op {
                Op::Append { queues, len } => {
                    let b = body(r, i, len);
                    let a = log.append(&queues, b.clone()).expect("append");
                    let queues = queues.into_iter().collect();
                    model.insert(
                        a.id,
                        Msg {
                            queues,
                            body: b,
                            appended: a.lsn.0,
                            acks: BTreeMap::new(),
                        },
                    );
                }
                Op::Ack { pick } => {
                    let live: Vec<(u32, u64)> = model
                        .iter()
                        .flat_map(|(id, m)| {
                            m.queues
                                .iter()
                                .filter(|q| !m.acks.contains_key(q))
                                .map(move |q| (*q, *id))
                        })
                        .collect();
                    if live.is_empty() {
                        continue;
                    }
                    let (q, id) = live[pick % live.len()];
                    let lsn = log.ack(&[(q, id)]).expect("ack");
                    model
                        .get_mut(&id)
                        .map(|m| m.acks.insert(q, lsn.0))
                        .expect("known");
                }
                Op::DropQueue { queue } => {
                    let lsn = log.drop_queue(queue).expect("drop");
                    for m in model.values_mut() {
                        if m.queues.contains(&queue) {
                            m.acks.entry(queue).or_insert(lsn.0);
                        }
                    }
                }
                Op::Sync => {
                    log.sync().expect("sync");
                }
            }
        }
        // Pull the plug. Read the synced lsn first: whatever it covers
        // was on disk before the crash.
        let crash_lsn = log.synced_lsn().0;
        h.crash.crash_keeping_unsynced(round.keep_unsynced);
        drop(log);
        if !round.garbage.is_empty() {
            if let Some(last) = segments(&h).pop() {
                let len = h.read(&last).len() as u64;
                h.patch(&last, len, &round.garbage);
            }
        }
        let (next, rec) = MessageLog::open(h.backend(), h.dir(), cfg())
            .unwrap_or_else(|e| panic!("recovery after a crash failed: {e}"));
        check_and_adopt(&mut model, &rec, crash_lsn);
        log = next;
    }

    // A clean close after the last round loses nothing at all.
    log.close().expect("close");
    let (_log, rec) = open(&h, cfg());
    check_and_adopt(&mut model, &rec, u64::MAX);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(crate::common::cases(256)))]

    #[test]
    fn synced_messages_survive_any_crash_exactly_once(
        segment_size in prop_oneof![Just(512u64), Just(2048u64), Just(1u64 << 20)],
        rounds in proptest::collection::vec(round(), 1..4),
    ) {
        run_rounds(segment_size, rounds);
    }
}

#[test]
fn torn_write_then_crash_is_dropped() {
    let h = CrashHarness::default();
    let (log, _) = open(&h, config(1 << 20));
    let b1 = Bytes::from_static(b"one");
    let b2 = Bytes::from_static(b"two");
    let m1 = log.append(&[1], b1.clone()).expect("append");
    let m2 = log.append(&[1], b2.clone()).expect("append");
    log.wait_synced(m2.lsn).expect("synced");

    h.crash.tear_next_write(10);
    let m3 = log
        .append(&[1], Bytes::from_static(b"three"))
        .expect("queued");
    assert!(matches!(
        log.wait_synced(m3.lsn),
        Err(StoreError::Poisoned { .. })
    ));
    // The ten bytes did reach the disk.
    h.crash.crash_keeping_unsynced(usize::MAX);
    drop(log);

    let (_log, rec) = open(&h, config(1 << 20));
    assert_eq!(rec.report.torn_tail_bytes, 10);
    assert_eq!(with_bodies(&rec.queues[&1]), vec![(m1.id, b1), (m2.id, b2)]);
}

#[test]
fn unsynced_appends_vanish_in_a_crash() {
    let h = CrashHarness::default();
    let (log, _) = open(&h, config(1 << 20));
    let kept = log
        .append(&[1], Bytes::from_static(b"kept"))
        .expect("append");
    log.wait_synced(kept.lsn).expect("synced");
    let _release = ReleaseSyncs(h.crash.clone());
    h.crash.hold_syncs();
    let lost = log
        .append(&[1], Bytes::from_static(b"lost"))
        .expect("append");
    wait_until("the writer waits in fsync", || h.crash.held_syncs() > 0);
    assert!(log.synced_lsn() < lost.lsn);
    h.crash.crash();
    assert!(log.wait_synced(lost.lsn).is_err());
    assert!(matches!(log.health(), Health::Poisoned { .. }));
    drop(log);

    let (log, rec) = open(&h, config(1 << 20));
    assert_eq!(
        with_bodies(&rec.queues[&1]),
        vec![(kept.id, Bytes::from_static(b"kept"))]
    );
    // The lost message's id may be handed out again: it never existed.
    let next = log
        .append(&[1], Bytes::from_static(b"next"))
        .expect("append");
    assert!(next.id > kept.id);
}

/// Segment deletions are durable one by one, in order: a crash in the
/// middle of reclamation never leaves a segment of acks without the
/// segment of messages it acknowledges... nor the reverse resurrecting
/// anything.
#[test]
fn crash_right_after_reclamation_resurrects_nothing() {
    for keep in [0, usize::MAX] {
        let h = CrashHarness::default();
        let (log, _) = open(&h, config(512));
        let mut ids = Vec::new();
        for i in 0..20u8 {
            ids.push(
                log.append(&[1], Bytes::from(vec![i; 200]))
                    .expect("append")
                    .id,
            );
        }
        let last = log
            .append(&[2], Bytes::from_static(b"stays"))
            .expect("append");
        log.sync().expect("sync");
        let pairs: Vec<(u32, u64)> = ids.iter().map(|id| (1, *id)).collect();
        log.ack(&pairs).expect("ack");
        log.sync().expect("sync");
        let before = segments(&h).len();
        h.crash.crash_keeping_unsynced(keep);
        drop(log);
        let (_log, rec) = open(&h, config(512));
        assert!(!rec.queues.contains_key(&1), "acked messages came back");
        assert_eq!(
            with_bodies(&rec.queues[&2]),
            vec![(last.id, Bytes::from_static(b"stays"))]
        );
        assert!(segments(&h).len() <= before);
    }
}
