//! The log against a model: a map of queues to their messages. Random
//! appends, acks, queue drops and reopens; after each reopen the recovered
//! queues must equal the model exactly.

use std::collections::BTreeMap;

use bytes::Bytes;
use proptest::prelude::*;

use crate::common::{config, open, segments, MemHarness};

#[derive(Debug, Clone)]
enum Op {
    Append { queues: Vec<u32>, len: usize },
    Ack { picks: Vec<usize> },
    AckUnknown { queue: u32, id: u64 },
    DropQueue { queue: u32 },
    Sync,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (proptest::collection::vec(1u32..=4, 1..4), 0usize..300)
            .prop_map(|(queues, len)| Op::Append { queues, len }),
        5 => proptest::collection::vec(any::<usize>(), 1..5).prop_map(|picks| Op::Ack { picks }),
        1 => (1u32..=5, 0u64..200).prop_map(|(queue, id)| Op::AckUnknown { queue, id }),
        1 => (1u32..=4).prop_map(|queue| Op::DropQueue { queue }),
        1 => Just(Op::Sync),
        1 => Just(Op::Reopen),
    ]
}

type Model = BTreeMap<u32, BTreeMap<u64, Bytes>>;

fn expected(model: &Model) -> BTreeMap<u32, Vec<(u64, Bytes)>> {
    model
        .iter()
        .filter(|(_, ms)| !ms.is_empty())
        .map(|(q, ms)| (*q, ms.iter().map(|(id, b)| (*id, b.clone())).collect()))
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
    for (i, op) in ops.into_iter().enumerate() {
        match op {
            Op::Append { queues, len } => {
                let mut b = format!("{i}:").into_bytes();
                b.resize(b.len() + len, b'm');
                let b = Bytes::from(b);
                let a = log.append(&queues, b.clone()).expect("append");
                assert!(a.id > max_id, "ids increase");
                max_id = a.id;
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
                log.ack(&pairs).expect("ack");
                for (q, id) in pairs {
                    if let Some(ms) = model.get_mut(&q) {
                        ms.remove(&id);
                    }
                }
            }
            Op::AckUnknown { queue, id } => {
                if !model.get(&queue).is_some_and(|ms| ms.contains_key(&id)) {
                    log.ack(&[(queue, id)]).expect("ack");
                }
            }
            Op::DropQueue { queue } => {
                log.drop_queue(queue).expect("drop");
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
            Op::Reopen => {
                log.close().expect("close");
                let (next, rec) = open(&h, config(segment_size));
                assert_eq!(rec.queues, expected(&model));
                assert!(rec.next_message_id > max_id);
                log = next;
            }
        }
    }
    log.close().expect("close");
    let (_log, rec) = open(&h, config(segment_size));
    assert_eq!(rec.queues, expected(&model));
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
