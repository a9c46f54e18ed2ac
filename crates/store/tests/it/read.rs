//! Reading bodies back with `MessageLog::read`, and recovery that returns
//! only some bodies (`recovered_bodies_per_queue`). The first tests run on
//! every backend, the others on the crash backend.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use liebre_store::{LogConfig, MessageLog, StoreError};

use crate::common::{config, open, segments, wait_until, CrashHarness, Harness, ReleaseSyncs};

/// A body that names its message: `tag`, then dots up to `len` bytes.
fn body(tag: &str, len: usize) -> Bytes {
    let mut v = tag.as_bytes().to_vec();
    v.resize(len.max(tag.len()), b'.');
    Bytes::from(v)
}

/// What `read` must return for `ids` given the live messages `live`.
fn expect(live: &BTreeMap<u64, Bytes>, ids: &[u64]) -> Vec<(u64, Bytes)> {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    ids.into_iter()
        .filter_map(|id| live.get(&id).map(|b| (id, b.clone())))
        .collect()
}

/// Appends `n` messages with bodies of 10 to 70 bytes, every third one to
/// queues 1 and 2, the others to queue 1.
fn fill(log: &MessageLog, n: usize) -> BTreeMap<u64, Bytes> {
    (0..n)
        .map(|i| {
            let qs: &[u32] = if i % 3 == 0 { &[1, 2] } else { &[1] };
            let b = body(&format!("m{i}:"), 10 + (i * 13) % 61);
            (log.append(qs, b.clone()).expect("append").id, b)
        })
        .collect()
}

fn read_consecutive_and_scattered_ids(h: &dyn Harness) {
    let (log, _) = open(h, config(512));
    let live = fill(&log, 300);
    let ids: Vec<u64> = live.keys().copied().collect();
    // No sync: `read` waits for the records to be written.
    assert_eq!(log.read(&ids).expect("read all"), expect(&live, &ids));
    assert!(segments(h).len() > 10, "{} segments", segments(h).len());
    for window in ids.chunks(64) {
        assert_eq!(log.read(window).expect("read"), expect(&live, window));
    }
    // Scattered, unsorted, with duplicates and ids that never existed.
    let mut scattered: Vec<u64> = ids.iter().rev().step_by(7).copied().collect();
    scattered.extend([ids[5], ids[5], 0, ids[ids.len() - 1] + 1, u64::MAX]);
    let got = log.read(&scattered).expect("read scattered");
    assert_eq!(got, expect(&live, &scattered));
    assert!(got.windows(2).all(|w| w[0].0 < w[1].0), "ascending ids");
    assert_eq!(log.read(&[]).expect("read nothing"), Vec::new());
    // Messages appended later are read too (the active segment grows).
    let more = fill(&log, 10);
    let ids: Vec<u64> = more.keys().copied().collect();
    assert_eq!(log.read(&ids).expect("read"), expect(&more, &ids));
}

fn read_leaves_out_acked_messages(h: &dyn Harness) {
    let (log, _) = open(h, config(1024));
    let mut live = fill(&log, 60);
    let ids: Vec<u64> = live.keys().copied().collect();
    // Message ids[0] went to queues 1 and 2: acked by one, it stays live.
    let mut pairs = vec![(1, ids[0])];
    for &id in &ids[1..20] {
        pairs.push((1, id));
        if !(id - ids[0]).is_multiple_of(3) {
            live.remove(&id);
        }
    }
    let lsn = log.ack(&pairs).expect("ack");
    log.wait_synced(lsn).expect("synced");
    assert_eq!(log.read(&ids).expect("read"), expect(&live, &ids));
    assert!(log.read(&ids[..20]).expect("read").len() < 20);
    // Ids 3k went to queue 2 as well.
    let lsn = log.drop_queue(2).expect("drop");
    log.wait_synced(lsn).expect("synced");
    for &id in &ids[..20] {
        live.remove(&id);
    }
    assert_eq!(log.read(&ids).expect("read"), expect(&live, &ids));
}

fn read_after_older_segments_are_reclaimed(h: &dyn Harness) {
    let (log, _) = open(h, config(512));
    let mut live = fill(&log, 200);
    let ids: Vec<u64> = live.keys().copied().collect();
    // Read everything once: handles of every segment get cached.
    assert_eq!(log.read(&ids).expect("read"), expect(&live, &ids));
    let before = segments(h).len();
    let pairs: Vec<(u32, u64)> = ids[..150]
        .iter()
        .flat_map(|id| [(1, *id), (2, *id)])
        .collect();
    log.ack(&pairs).expect("ack");
    log.sync().expect("sync");
    for id in &ids[..150] {
        live.remove(id);
    }
    let after = segments(h).len();
    assert!(after < before / 2, "{before} segments, then {after}");
    assert_eq!(log.read(&ids).expect("read"), expect(&live, &ids));
    for window in ids.chunks(17) {
        assert_eq!(log.read(window).expect("read"), expect(&live, window));
    }
}

fn read_right_after_append(h: &dyn Harness) {
    let (log, _) = open(h, config(4096));
    for i in 0..200 {
        let b = body(&format!("now{i}"), 20);
        let m = log.append(&[1], b.clone()).expect("append");
        assert_eq!(log.read(&[m.id]).expect("read"), vec![(m.id, b)]);
    }
}

fn read_after_reopen(h: &dyn Harness) {
    let (log, _) = open(h, config(512));
    let mut live = fill(&log, 150);
    let ids: Vec<u64> = live.keys().copied().collect();
    log.ack(&ids[..30].iter().map(|id| (1, *id)).collect::<Vec<_>>())
        .expect("ack");
    for &id in &ids[..30] {
        if !(id - ids[0]).is_multiple_of(3) {
            live.remove(&id);
        }
    }
    log.close().expect("close");

    for round in 0..2 {
        let (log, rec) = open(h, config(512));
        assert_eq!(log.read(&ids).expect("read"), expect(&live, &ids));
        for window in ids.chunks(40) {
            assert_eq!(log.read(window).expect("read"), expect(&live, window));
        }
        let recovered: Vec<u64> = rec.queues[&1].iter().map(|(id, _)| *id).collect();
        assert_eq!(log.read(&recovered).expect("read").len(), recovered.len());
        // Old and new messages together.
        let m = log
            .append(&[1], body(&format!("new{round}"), 30))
            .expect("append");
        live.insert(m.id, body(&format!("new{round}"), 30));
        let mixed = [ids[40], m.id, ids[149]];
        assert_eq!(log.read(&mixed).expect("read"), expect(&live, &mixed));
        log.close().expect("close");
    }
}

fn corrupt_record_is_an_error(h: &dyn Harness) {
    let (log, _) = open(h, config(1 << 20));
    let bodies: Vec<Bytes> = (0..3).map(|i| body(&format!("c{i}"), 40)).collect();
    let ids: Vec<u64> = bodies
        .iter()
        .map(|b| log.append(&[1], b.clone()).expect("append").id)
        .collect();
    log.sync().expect("sync");
    assert_eq!(log.read(&ids).expect("read").len(), 3, "handle now cached");
    let seg = segments(h).pop().expect("segment");
    // The second record: after the 32-byte header and a first record of
    // 21 + 4 (one queue) + 40 bytes.
    let second = 32 + 65;
    h.patch(&seg, second + 60, b"X");
    match log.read(&ids) {
        Err(StoreError::Corrupt {
            segment, offset, ..
        }) => {
            assert_eq!(segment, seg);
            assert_eq!(offset, second);
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // The others are intact.
    let others = [ids[0], ids[2]];
    assert_eq!(
        log.read(&others).expect("read"),
        vec![(ids[0], bodies[0].clone()), (ids[2], bodies[2].clone())]
    );
    // A damaged length field is caught as well.
    h.patch(&seg, second, &[0xff, 0xff, 0, 0]);
    assert!(matches!(
        log.read(&[ids[1]]),
        Err(StoreError::Corrupt { .. })
    ));
}

fn recovery_returns_a_budget_of_bodies_per_queue(h: &dyn Harness) {
    let (log, _) = open(h, config(512));
    let mut all = BTreeMap::new();
    let mut per_queue: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for (i, qs) in [
        &[1][..],
        &[1, 2],
        &[1],
        &[2, 3],
        &[1, 2],
        &[1],
        &[3],
        &[1, 2, 3],
        &[2],
    ]
    .into_iter()
    .enumerate()
    {
        let b = body(&format!("r{i}"), 100 + i);
        let m = log.append(qs, b.clone()).expect("append");
        all.insert(m.id, b);
        for q in qs {
            per_queue.entry(*q).or_default().push(m.id);
        }
    }
    log.close().expect("close");

    for budget in [0, 1, 2, 4, usize::MAX] {
        let cfg = LogConfig {
            recovered_bodies_per_queue: budget,
            ..config(512)
        };
        let (log, rec) = open(h, cfg);
        assert_eq!(
            rec.queues.keys().copied().collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        for (q, list) in &rec.queues {
            let ids: Vec<u64> = list.iter().map(|(id, _)| *id).collect();
            assert_eq!(ids, per_queue[q], "queue {q}: every id, in order");
            for (i, (id, b)) in list.iter().enumerate() {
                if i < budget {
                    assert_eq!(b.as_ref(), Some(&all[id]), "queue {q} message {id}");
                } else {
                    assert_eq!(b, &None, "queue {q} message {id}: no body");
                }
            }
            // The broker reads the rest when they reach the head.
            let missing: Vec<u64> = list
                .iter()
                .filter(|(_, b)| b.is_none())
                .map(|(id, _)| *id)
                .collect();
            assert_eq!(log.read(&missing).expect("read"), expect(&all, &missing));
        }
        log.close().expect("close");
    }
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod file {
            $( #[test] fn $name() { super::$name(&crate::common::FileHarness::new(stringify!($name))) } )*
        }
        mod memory {
            $( #[test] fn $name() { super::$name(&crate::common::MemHarness::default()) } )*
        }
        mod crash_backend {
            $( #[test] fn $name() { super::$name(&crate::common::CrashHarness::default()) } )*
        }
    };
}

suite!(
    read_consecutive_and_scattered_ids,
    read_leaves_out_acked_messages,
    read_after_older_segments_are_reclaimed,
    read_right_after_append,
    read_after_reopen,
    corrupt_record_is_an_error,
    recovery_returns_a_budget_of_bodies_per_queue,
);

/// A message whose batch is not written yet: `read` waits for it, then
/// returns it (had it not waited, the message would be missing).
#[test]
fn read_waits_until_the_batch_is_written() {
    let h = CrashHarness::default();
    let (log, _) = open(&h, config(1 << 20));
    let log = Arc::new(log);
    let _release = ReleaseSyncs(h.crash.clone());
    h.crash.hold_syncs();
    // The writer writes this one, then blocks in its fsync...
    let first = log.append(&[1], body("first", 8)).expect("append");
    wait_until("the writer waits in fsync", || h.crash.held_syncs() > 0);
    // ...so this one stays in the queue, unwritten.
    let b = body("second", 8);
    let second = log.append(&[1], b.clone()).expect("append");
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (log, done) = (log.clone(), done.clone());
        std::thread::spawn(move || {
            let got = log.read(&[second.id]);
            done.store(true, Ordering::SeqCst);
            got
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert!(
        !done.load(Ordering::SeqCst),
        "read returned before the write"
    );
    // The written one is readable at once, synced or not.
    assert_eq!(log.read(&[first.id]).expect("read").len(), 1);
    h.crash.release_syncs();
    let got = reader.join().expect("reader").expect("read");
    assert_eq!(got, vec![(second.id, b)]);
}

#[test]
fn read_on_a_poisoned_log_fails_without_hanging() {
    let h = CrashHarness::default();
    let (log, _) = open(&h, config(1 << 20));
    let a = log.append(&[1], body("a", 5)).expect("append");
    log.wait_synced(a.lsn).expect("synced");
    h.crash.fail_next_write();
    let b = log.append(&[1], body("b", 5)).expect("queued");
    // Whether the read comes before or after the writer's failure, it
    // fails instead of waiting for a write that never comes.
    assert!(matches!(
        log.read(&[b.id]),
        Err(StoreError::Poisoned { .. })
    ));
    assert!(matches!(
        log.read(&[a.id]),
        Err(StoreError::Poisoned { .. })
    ));
}

/// A read that must wait for a writer that has stopped fails: here the
/// writer dies of a crash of the "disk" while a message waits.
#[test]
fn read_waiting_on_a_crashed_writer_fails() {
    let h = CrashHarness::default();
    let (log, _) = open(&h, config(1 << 20));
    let _release = ReleaseSyncs(h.crash.clone());
    let a = log.append(&[1], body("a", 5)).expect("append");
    log.wait_synced(a.lsn).expect("synced");
    h.crash.hold_syncs();
    log.append(&[1], body("b", 5)).expect("append");
    wait_until("the writer waits in fsync", || h.crash.held_syncs() > 0);
    let c = log.append(&[1], body("c", 5)).expect("append");
    h.crash.crash();
    assert!(log.read(&[c.id]).is_err());
    // The files of a crashed process are gone for it too.
    assert!(log.read(&[a.id]).is_err());
}

#[test]
fn read_after_a_crash() {
    let h = CrashHarness::default();
    let cfg = || config(512);
    let (log, _) = open(&h, cfg());
    let synced = fill(&log, 100);
    log.sync().expect("sync");
    let _release = ReleaseSyncs(h.crash.clone());
    h.crash.hold_syncs();
    let lost = log.append(&[1], body("lost", 30)).expect("append");
    wait_until("the writer waits in fsync", || h.crash.held_syncs() > 0);
    h.crash.crash_keeping_unsynced(10);
    drop(log);

    let (log, rec) = open(&h, cfg());
    assert!(rec.next_message_id <= lost.id, "the lost append is gone");
    let mut ids: Vec<u64> = synced.keys().copied().collect();
    ids.push(lost.id);
    assert_eq!(log.read(&ids).expect("read"), expect(&synced, &ids));
    // The lost id is handed out again, to a new message.
    let b = body("again", 30);
    let again = log.append(&[1], b.clone()).expect("append");
    assert_eq!(again.id, lost.id);
    assert_eq!(log.read(&[again.id]).expect("read"), vec![(again.id, b)]);
}

/// Readers on several threads while the writer appends, acks and deletes
/// segments under them: every body returned is the right one, and every
/// message surely live is returned.
fn concurrent_reads(h: &dyn Harness) {
    const MESSAGES: usize = 3000;
    const KEEP: usize = 300;
    let (log, _) = open(h, config(2048));
    let log = Arc::new(log);
    // Message ids by publish number, and how many were appended / acked.
    let ids = Arc::new(parking_lot::RwLock::new(Vec::<u64>::new()));
    let acked = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..3)
        .map(|r| {
            let (log, ids, acked, stop) = (log.clone(), ids.clone(), acked.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut reads = 0u64;
                let mut n = r * 7;
                while !stop.load(Ordering::SeqCst) {
                    let snapshot = ids.read().clone();
                    if snapshot.is_empty() {
                        std::thread::yield_now();
                        continue;
                    }
                    n = (n * 31 + 17) % snapshot.len();
                    let window: Vec<u64> = snapshot[n..].iter().take(128).copied().collect();
                    let got = log.read(&window).expect("read");
                    let acked_after = acked.load(Ordering::SeqCst);
                    let mut got = got.into_iter().peekable();
                    for (i, id) in window.iter().enumerate() {
                        let k = n + i;
                        match got.peek() {
                            Some((gid, b)) if gid == id => {
                                assert_eq!(b, &body(&format!("c{k}:"), 20 + k % 50));
                                got.next();
                            }
                            _ => assert!(k < acked_after, "message {k} (id {id}) missing"),
                        }
                    }
                    assert!(got.next().is_none(), "unexpected ids returned");
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    for k in 0..MESSAGES {
        let b = body(&format!("c{k}:"), 20 + k % 50);
        let m = log.append(&[1], b).expect("append");
        ids.write().push(m.id);
        if k >= KEEP {
            let old = ids.read()[k - KEEP];
            acked.store(k - KEEP + 1, Ordering::SeqCst);
            log.ack(&[(1, old)]).expect("ack");
        }
    }
    log.sync().expect("sync");
    stop.store(true, Ordering::SeqCst);
    let reads: u64 = readers.into_iter().map(|r| r.join().expect("reader")).sum();
    assert!(reads > 0);
    assert!(segments(h).len() < 20, "old segments were reclaimed");
}

#[test]
fn concurrent_reads_on_files() {
    concurrent_reads(&crate::common::FileHarness::new("concurrent-reads"));
}

#[test]
fn concurrent_reads_on_memory() {
    concurrent_reads(&crate::common::MemHarness::default());
}

/// Throughput of `read`; run with
/// `cargo test -p liebre-store [--release] -- --ignored --nocapture read_throughput`.
#[test]
#[ignore = "a measurement, not a check"]
fn read_throughput() {
    use std::time::Instant;
    const N: usize = 100_000;
    let tmp_file = crate::common::FileHarness::new("read-throughput");
    let mem = crate::common::MemHarness::default();
    let harnesses: [(&str, &dyn Harness); 2] = [("file", &tmp_file), ("memory", &mem)];
    for (name, h) in harnesses {
        let (log, _) = open(h, LogConfig::default());
        let ids: Vec<u64> = (0..N)
            .map(|i| {
                log.append(&[1], Bytes::from(format!("{i:016}")))
                    .expect("append")
                    .id
            })
            .collect();
        log.sync().expect("sync");
        for batch in [128usize, 1] {
            let start = Instant::now();
            let mut n = 0;
            for chunk in ids.chunks(batch) {
                n += log.read(chunk).expect("read").len();
            }
            let t = start.elapsed();
            assert_eq!(n, N);
            println!(
                "{name}: {N} 16-byte messages, {batch} per read: {:?} ({:.0} messages/s, {:.1} us/read)",
                t,
                N as f64 / t.as_secs_f64(),
                t.as_secs_f64() * 1e6 / N.div_ceil(batch) as f64
            );
        }
        // Scattered: every 97th message, 128 per read.
        let scattered: Vec<u64> = (0..N).map(|i| ids[(i * 97) % N]).collect();
        let start = Instant::now();
        for chunk in scattered.chunks(128) {
            log.read(chunk).expect("read");
        }
        let t = start.elapsed();
        println!(
            "{name}: {N} 16-byte messages, scattered, 128 per read: {t:?} ({:.0} messages/s)",
            N as f64 / t.as_secs_f64()
        );
        log.close().expect("close");
    }
}
