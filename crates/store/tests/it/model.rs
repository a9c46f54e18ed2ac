//! The log against a model: a map of queues to their messages. Random
//! appends, acks, queue drops, reads and reopens; after each reopen the
//! recovered queues must equal the model exactly (with the bodies of as
//! many messages per queue as the reopen's budget), and every read must
//! return exactly the live messages asked for.

use std::collections::BTreeMap;

use bytes::Bytes;
use liebre_store::LogConfig;
use proptest::prelude::*;

use crate::common::{config, open, segments, MemHarness};

#[derive(Debug, Clone)]
enum Op {
    Append {
        queues: Vec<u32>,
        len: usize,
    },
    Ack {
        picks: Vec<usize>,
    },
    AckUnknown {
        queue: u32,
        id: u64,
    },
    DropQueue {
        queue: u32,
    },
    Sync,
    /// Reads messages picked among every id appended so far, plus a few
    /// ids never handed out; `settle`: after waiting for the acks sent.
    Read {
        picks: Vec<usize>,
        unknown: Vec<u64>,
        settle: bool,
    },
    Reopen {
        budget: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (proptest::collection::vec(1u32..=4, 1..4), 0usize..300)
            .prop_map(|(queues, len)| Op::Append { queues, len }),
        5 => proptest::collection::vec(any::<usize>(), 1..5).prop_map(|picks| Op::Ack { picks }),
        1 => (1u32..=5, 0u64..200).prop_map(|(queue, id)| Op::AckUnknown { queue, id }),
        1 => (1u32..=4).prop_map(|queue| Op::DropQueue { queue }),
        1 => Just(Op::Sync),
        3 => (
            proptest::collection::vec(any::<usize>(), 0..40),
            proptest::collection::vec(0u64..400, 0..3),
            any::<bool>()
        )
            .prop_map(|(picks, unknown, settle)| Op::Read { picks, unknown, settle }),
        1 => prop_oneof![Just(usize::MAX), 0usize..4]
            .prop_map(|budget| Op::Reopen { budget }),
    ]
}

type Model = BTreeMap<u32, BTreeMap<u64, Bytes>>;

fn expected(model: &Model, budget: usize) -> BTreeMap<u32, Vec<(u64, Option<Bytes>)>> {
    model
        .iter()
        .filter(|(_, ms)| !ms.is_empty())
        .map(|(q, ms)| {
            (
                *q,
                ms.iter()
                    .enumerate()
                    .map(|(i, (id, b))| (*id, (i < budget).then(|| b.clone())))
                    .collect(),
            )
        })
        .collect()
}

/// Every live message (for any queue).
fn live_messages(model: &Model) -> BTreeMap<u64, Bytes> {
    model
        .values()
        .flat_map(|ms| ms.iter().map(|(id, b)| (*id, b.clone())))
        .collect()
}

fn live_pairs(model: &Model) -> Vec<(u32, u64)> {
    model
        .iter()
        .flat_map(|(q, ms)| ms.keys().map(move |id| (*q, *id)))
        .collect()
}

fn run(segment_size: u64, ops: Vec<Op>) {
    let h = MemHarness::default();
    let (mut log, _) = open(&h, config(segment_size));
    let mut model = Model::new();
    let mut max_id = 0;
    // Every message ever appended, and the last ack or drop sent.
    let mut appended: BTreeMap<u64, Bytes> = BTreeMap::new();
    let mut last_lsn = None;
    for (i, op) in ops.into_iter().enumerate() {
        match op {
            Op::Append { queues, len } => {
                let mut b = format!("{i}:").into_bytes();
                b.resize(b.len() + len, b'm');
                let b = Bytes::from(b);
                let a = log.append(&queues, b.clone()).expect("append");
                assert!(a.id > max_id, "ids increase");
                max_id = a.id;
                appended.insert(a.id, b.clone());
                for q in queues {
                    model.entry(q).or_default().insert(a.id, b.clone());
                }
            }
            Op::Ack { picks } => {
                let live = live_pairs(&model);
                if live.is_empty() {
                    continue;
                }
                let pairs: Vec<(u32, u64)> = picks.iter().map(|p| live[p % live.len()]).collect();
                last_lsn = Some(log.ack(&pairs).expect("ack"));
                for (q, id) in pairs {
                    if let Some(ms) = model.get_mut(&q) {
                        ms.remove(&id);
                    }
                }
            }
            Op::AckUnknown { queue, id } => {
                if !model.get(&queue).is_some_and(|ms| ms.contains_key(&id)) {
                    last_lsn = Some(log.ack(&[(queue, id)]).expect("ack"));
                }
            }
            Op::DropQueue { queue } => {
                last_lsn = Some(log.drop_queue(queue).expect("drop"));
                model.remove(&queue);
            }
            Op::Sync => {
                log.sync().expect("sync");
                let live: std::collections::BTreeSet<u64> =
                    live_pairs(&model).into_iter().map(|(_, id)| id).collect();
                assert_eq!(log.stats().live_messages, live.len() as u64);
                if live.is_empty() {
                    assert_eq!(segments(&h).len(), 1, "everything acked: all reclaimed");
                }
            }
            Op::Read {
                picks,
                unknown,
                settle,
            } => {
                let all: Vec<u64> = appended.keys().copied().collect();
                let mut ids: Vec<u64> = if all.is_empty() {
                    Vec::new()
                } else {
                    picks.iter().map(|p| all[p % all.len()]).collect()
                };
                ids.extend(unknown.iter().map(|u| max_id + 1 + u));
                if settle {
                    if let Some(lsn) = last_lsn {
                        log.wait_synced(lsn).expect("synced");
                    }
                }
                let got = log.read(&ids).expect("read");
                assert!(got.windows(2).all(|w| w[0].0 < w[1].0), "ascending");
                let live = live_messages(&model);
                let wanted: BTreeMap<u64, Bytes> = ids
                    .iter()
                    .filter_map(|id| live.get(id).map(|b| (*id, b.clone())))
                    .collect();
                if settle {
                    assert_eq!(got, wanted.into_iter().collect::<Vec<_>>());
                } else {
                    // Acks not taken in yet may leave acked ones in.
                    for (id, b) in &got {
                        assert_eq!(Some(b), appended.get(id), "message {id}");
                    }
                    let got_ids: Vec<u64> = got.iter().map(|(id, _)| *id).collect();
                    for id in wanted.keys() {
                        assert!(got_ids.contains(id), "live message {id} not read");
                    }
                }
            }
            Op::Reopen { budget } => {
                log.close().expect("close");
                let cfg = LogConfig {
                    recovered_bodies_per_queue: budget,
                    ..config(segment_size)
                };
                let (next, rec) = open(&h, cfg);
                assert_eq!(rec.queues, expected(&model, budget));
                assert!(rec.next_message_id > max_id);
                last_lsn = None;
                log = next;
            }
        }
    }
    log.close().expect("close");
    let (log, rec) = open(&h, config(segment_size));
    assert_eq!(rec.queues, expected(&model, usize::MAX));
    let live = live_messages(&model);
    let ids: Vec<u64> = appended.keys().copied().collect();
    assert_eq!(
        log.read(&ids).expect("read"),
        live.into_iter().collect::<Vec<_>>()
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(crate::common::cases(256)))]

    #[test]
    fn log_matches_model(
        segment_size in prop_oneof![Just(256u64), Just(1024u64), Just(65536u64)],
        ops in proptest::collection::vec(op(), 0..120),
    ) {
        run(segment_size, ops);
    }
}
