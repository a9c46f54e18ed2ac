//! One suite, run on every backend: the file system, memory, and the crash
//! backend (with no crash), as nats-server runs its store tests on both of
//! its stores.

use std::collections::BTreeMap;

use bytes::Bytes;
use liebre_store::{FsyncPolicy, LogConfig, MessageLog, Recovery, StoreError};

use crate::common::{config, disk_bytes, open, segments, with_bodies, Harness};

/// Size of a message record: length, checksum, kind, id, queue count,
/// queue ids, body.
fn message_record(queues: usize, body: usize) -> u64 {
    (4 + 4 + 1 + 8 + 4 + 4 * queues + body) as u64
}

/// Size of an ack record.
fn ack_record(pairs: usize) -> u64 {
    (4 + 4 + 1 + 12 * pairs) as u64
}

const HEADER: u64 = 32;

fn body(tag: &str, len: usize) -> Bytes {
    let mut v = tag.as_bytes().to_vec();
    v.resize(len.max(tag.len()), b'.');
    Bytes::from(v)
}

type Queues = BTreeMap<u32, Vec<(u64, Option<Bytes>)>>;

fn queues(entries: &[(u32, &[(u64, &Bytes)])]) -> Queues {
    entries
        .iter()
        .map(|(q, ms)| {
            (
                *q,
                ms.iter().map(|(id, b)| (*id, Some((*b).clone()))).collect(),
            )
        })
        .collect()
}

fn append_ack_recover_round_trip(h: &dyn Harness) {
    let (log, rec) = open(h, config(64 * 1024));
    assert!(rec.queues.is_empty());
    assert_eq!(rec.next_message_id, 1);
    let (ba, bb, bc, bd) = (body("a", 1), body("b", 10), body("c", 100), body("d", 0));
    let a = log.append(&[1], ba.clone()).expect("append");
    let b = log.append(&[2], bb.clone()).expect("append");
    let c = log.append(&[1, 2], bc.clone()).expect("append");
    let d = log.append(&[1], bd.clone()).expect("append");
    assert!(a.id < b.id && b.id < c.id && c.id < d.id);
    assert!(a.lsn < b.lsn && c.lsn < d.lsn);
    log.ack(&[(1, a.id), (2, c.id)]).expect("ack");
    log.close().expect("close");

    let (log, rec) = open(h, config(64 * 1024));
    assert_eq!(
        rec.queues,
        queues(&[(1, &[(c.id, &bc), (d.id, &bd)]), (2, &[(b.id, &bb)])])
    );
    assert_eq!(rec.next_message_id, d.id + 1);
    assert_eq!(log.stats().live_messages, 3);
    // Appending continues in the same segment.
    let e = log.append(&[2], body("e", 5)).expect("append");
    assert_eq!(e.id, d.id + 1);
    log.sync().expect("sync");
    assert_eq!(segments(h).len(), 1);
}

fn multi_queue_message_is_written_once(h: &dyn Harness) {
    let (log, _) = open(h, config(64 * 1024));
    log.append(&[9], body("first", 10)).expect("append");
    log.sync().expect("sync");
    let before = disk_bytes(h);
    log.append(&[1, 2, 3, 4, 5], body("fanout", 100))
        .expect("append");
    log.sync().expect("sync");
    assert_eq!(disk_bytes(h) - before, message_record(5, 100));
}

fn reclamation_deletes_acked_segments_and_disk_use_falls(h: &dyn Harness) {
    let (log, _) = open(h, config(4096));
    let mut pairs = Vec::new();
    for i in 0..100u32 {
        let qs: &[u32] = if i % 2 == 0 { &[1] } else { &[1, 2] };
        let m = log.append(qs, body(&i.to_string(), 200)).expect("append");
        pairs.extend(qs.iter().map(|q| (*q, m.id)));
    }
    log.sync().expect("sync");
    let peak_segments = segments(h).len();
    let peak = disk_bytes(h);
    assert!(peak_segments >= 5, "{peak_segments} segments");
    assert!(peak > 100 * 200);
    assert_eq!(log.stats().disk_bytes, peak);

    for chunk in pairs.chunks(7) {
        log.ack(chunk).expect("ack");
    }
    log.sync().expect("sync");
    assert_eq!(segments(h).len(), 1, "only the active segment is left");
    let after = disk_bytes(h);
    assert!(after <= 4096, "{after} bytes left");
    let stats = log.stats();
    assert_eq!((stats.segments, stats.live_messages), (1, 0));
    assert_eq!(stats.disk_bytes, after);
    log.close().expect("close");

    let (_log, rec) = open(h, config(4096));
    assert!(rec.queues.is_empty());
}

fn message_ids_keep_increasing_across_reopen(h: &dyn Harness) {
    let cfg = || config(512);
    let (log, _) = open(h, cfg());
    // 470-byte bodies: every message record outgrows a 512-byte segment,
    // so each gets one of its own, and the acks below go to a third.
    let m1 = log.append(&[1], body("m1", 470)).expect("append");
    let m2 = log.append(&[1], body("m2", 470)).expect("append");
    log.ack(&[(1, m1.id), (1, m2.id)]).expect("ack");
    log.sync().expect("sync");
    assert_eq!(
        segments(h).len(),
        1,
        "no segment holding a message record is left"
    );
    log.close().expect("close");

    let (log, rec) = open(h, cfg());
    assert_eq!(rec.next_message_id, m2.id + 1);
    let m3 = log.append(&[1], body("m3", 1)).expect("append");
    assert_eq!(m3.id, m2.id + 1);
    log.close().expect("close");
    let (_log, rec) = open(h, cfg());
    assert_eq!(rec.next_message_id, m3.id + 1);
}

fn partial_ack_of_multi_queue_message(h: &dyn Harness) {
    let (log, _) = open(h, config(64 * 1024));
    let b = body("m", 20);
    let m = log.append(&[1, 2, 3], b.clone()).expect("append");
    log.ack(&[(2, m.id)]).expect("ack");
    log.close().expect("close");
    let (_log, rec) = open(h, config(64 * 1024));
    assert_eq!(
        rec.queues,
        queues(&[(1, &[(m.id, &b)]), (3, &[(m.id, &b)])])
    );
}

fn unknown_and_repeated_acks_write_nothing(h: &dyn Harness) {
    let (log, _) = open(h, config(64 * 1024));
    let m = log.append(&[1], body("m", 5)).expect("append");
    log.sync().expect("sync");
    let size0 = disk_bytes(h);
    log.ack(&[(1, m.id)]).expect("ack");
    log.sync().expect("sync");
    assert_eq!(disk_bytes(h), size0 + ack_record(1));
    log.ack(&[(1, m.id), (2, m.id), (1, 999)]).expect("ack");
    log.sync().expect("sync");
    assert_eq!(disk_bytes(h), size0 + ack_record(1));
    log.close().expect("close");
    let (_log, rec) = open(h, config(64 * 1024));
    assert!(rec.queues.is_empty());
}

/// Regression: a segment whose messages are all acked must stay while it
/// holds acks of messages in an older segment still on disk, or those
/// messages come back on recovery.
fn ack_records_outlive_the_messages_they_ack(h: &dyn Harness) {
    let cfg = || config(4096);
    let (log, _) = open(h, cfg());
    // 1025-byte records: three fit in a 4096-byte segment.
    let b = |t: &str| body(t, 1000);
    let a = log.append(&[1], b("A")).expect("append"); // segment 1
    let bm = log.append(&[1], b("B")).expect("append"); // segment 1
    let p = log.append(&[1], b("P")).expect("append"); // segment 1
    let x = log.append(&[1], b("X")).expect("append"); // segment 2
    log.ack(&[(1, bm.id), (1, p.id)]).expect("ack"); // segment 2
    let y = log.append(&[1], b("Y")).expect("append"); // segment 2
    let z = log.append(&[1], b("Z")).expect("append"); // segment 2
    let w = log.append(&[1], b("W")).expect("append"); // segment 3
    log.ack(&[(1, x.id), (1, y.id), (1, z.id)]).expect("ack"); // segment 3
    log.sync().expect("sync");
    assert_eq!(segments(h).len(), 3, "segment 2 is pinned by its acks");
    log.close().expect("close");

    // Twice: recovery must rebuild the references too, or it reclaims
    // segment 2 on open and the second recovery brings B and P back.
    for _ in 0..2 {
        let (log, rec) = open(h, cfg());
        assert_eq!(
            rec.queues,
            queues(&[(1, &[(a.id, &b("A")), (w.id, &b("W"))])])
        );
        assert_eq!(segments(h).len(), 3);
        log.close().expect("close");
    }
    let (log, _) = open(h, cfg());
    log.ack(&[(1, a.id)]).expect("ack");
    log.sync().expect("sync");
    assert_eq!(segments(h).len(), 1, "segments 1 and 2 go together");
    log.close().expect("close");
    let (_log, rec) = open(h, cfg());
    assert_eq!(rec.queues, queues(&[(1, &[(w.id, &b("W"))])]));
}

fn drop_queue_acks_all_its_messages(h: &dyn Harness) {
    let (log, _) = open(h, config(64 * 1024));
    let (b1, b2, b3) = (body("1", 3), body("2", 3), body("3", 3));
    let _m1 = log.append(&[1], b1).expect("append");
    let m2 = log.append(&[1, 2], b2.clone()).expect("append");
    let m3 = log.append(&[2], b3.clone()).expect("append");
    log.drop_queue(1).expect("drop");
    let b4 = body("4", 3);
    let m4 = log.append(&[1], b4.clone()).expect("append");
    log.close().expect("close");
    let (_log, rec) = open(h, config(64 * 1024));
    assert_eq!(
        rec.queues,
        queues(&[(1, &[(m4.id, &b4)]), (2, &[(m2.id, &b2), (m3.id, &b3)])])
    );
}

fn torn_tail_of_last_segment_is_truncated(h: &dyn Harness) {
    let (log, _) = open(h, config(64 * 1024));
    let bodies: Vec<Bytes> = (0..3).map(|i| body(&i.to_string(), 50)).collect();
    let ids: Vec<u64> = bodies
        .iter()
        .map(|b| log.append(&[1], b.clone()).expect("append").id)
        .collect();
    log.close().expect("close");
    let seg = segments(h).pop().expect("a segment");
    let len = h.read(&seg).len() as u64;

    // Garbage after the last record.
    h.patch(&seg, len, &[0xAB; 13]);
    let (log, rec) = open(h, config(64 * 1024));
    assert_eq!(rec.report.torn_tail_bytes, 13);
    assert_eq!(h.read(&seg).len() as u64, len, "file truncated back");
    let expected: Vec<(u64, Bytes)> = ids.iter().copied().zip(bodies.clone()).collect();
    assert_eq!(with_bodies(&rec.queues[&1]), expected);

    // A record cut short.
    log.append(&[1], body("torn", 50)).expect("append");
    log.close().expect("close");
    let full = h.read(&seg).len() as u64;
    h.backend()
        .open(&seg, false)
        .and_then(|mut f| f.set_len(full - 5))
        .expect("truncate");
    let (_log, rec) = open(h, config(64 * 1024));
    assert_eq!(rec.report.torn_tail_bytes, message_record(1, 50) - 5);
    assert_eq!(with_bodies(&rec.queues[&1]), expected);
}

fn mid_log_corruption_is_refused_or_skipped(h: &dyn Harness) {
    let (log, _) = open(h, config(4096));
    let b = |t: &str| body(t, 1000);
    let a = log.append(&[1], b("A")).expect("append");
    log.append(&[1], b("B")).expect("append");
    log.append(&[1], b("C")).expect("append");
    let d = log.append(&[1], b("D")).expect("append"); // second segment
    log.close().expect("close");
    let segs = segments(h);
    assert_eq!(segs.len(), 2);
    let b_offset = HEADER + message_record(1, 1000);
    h.patch(&segs[0], b_offset + 100, b"X");

    match MessageLog::open(h.backend(), h.dir(), config(4096)) {
        Err(StoreError::Corrupt {
            segment, offset, ..
        }) => {
            assert_eq!(segment, segs[0]);
            assert_eq!(offset, b_offset);
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }

    let tolerant = LogConfig {
        recovery: Recovery::TolerateCorruptTail,
        ..config(4096)
    };
    let (_log, rec) = open(h, tolerant);
    assert_eq!(
        rec.queues,
        queues(&[(1, &[(a.id, &b("A")), (d.id, &b("D"))])])
    );
    assert_eq!(rec.report.skipped, vec![(segs[0].clone(), b_offset)]);
}

fn torn_segment_header_is_removed(h: &dyn Harness) {
    let (log, _) = open(h, config(4096));
    let b = body("m", 10);
    let m = log.append(&[1], b.clone()).expect("append");
    log.close().expect("close");
    let last = segments(h).pop().expect("segment");
    let next = last.with_file_name("00000000000000000002.seg");
    assert_ne!(last, next);
    h.create(&next, b"LIEBRLOG\x01\x00");

    let (log, rec) = open(h, config(4096));
    assert_eq!(rec.report.dropped_segments, 1);
    assert_eq!(rec.queues, queues(&[(1, &[(m.id, &b)])]));
    assert_eq!(segments(h), vec![last]);
    let m2 = log.append(&[1], b.clone()).expect("append");
    log.close().expect("close");
    let (_log, rec) = open(h, config(4096));
    assert_eq!(rec.queues, queues(&[(1, &[(m.id, &b), (m2.id, &b)])]));
}

fn unsupported_version_is_refused(h: &dyn Harness) {
    let (log, _) = open(h, config(4096));
    log.close().expect("close");
    let seg = segments(h).pop().expect("segment");
    let mut header = h.read(&seg)[..32].to_vec();
    header[8..12].copy_from_slice(&7u32.to_le_bytes());
    let crc = crc32c::crc32c(&header[..28]);
    header[28..32].copy_from_slice(&crc.to_le_bytes());
    h.patch(&seg, 0, &header);
    match MessageLog::open(h.backend(), h.dir(), config(4096)) {
        Err(StoreError::UnsupportedVersion { version: 7, path }) => assert_eq!(path, seg),
        other => panic!("expected UnsupportedVersion, got {other:?}"),
    }
}

fn oversized_message_gets_its_own_segment(h: &dyn Harness) {
    let (log, _) = open(h, config(512));
    let small = body("s", 10);
    let big = body("big", 2000);
    let s1 = log.append(&[1], small.clone()).expect("append");
    let b = log.append(&[1], big.clone()).expect("append");
    let s2 = log.append(&[1], small.clone()).expect("append");
    log.sync().expect("sync");
    assert_eq!(segments(h).len(), 3);
    log.close().expect("close");
    let (_log, rec) = open(h, config(512));
    assert_eq!(
        rec.queues,
        queues(&[(1, &[(s1.id, &small), (b.id, &big), (s2.id, &small)])])
    );
}

fn recovery_streams_through_a_small_buffer(h: &dyn Harness) {
    let cfg = || LogConfig {
        read_buffer: 64,
        ..config(1 << 20)
    };
    let (log, _) = open(h, cfg());
    let mut expected = Vec::new();
    for i in 0..50usize {
        let b = body(&format!("m{i}"), (i * 61) % 3000);
        let m = log.append(&[4], b.clone()).expect("append");
        expected.push((m.id, b));
    }
    log.close().expect("close");
    let (_log, rec) = open(h, cfg());
    assert_eq!(with_bodies(&rec.queues[&4]), expected);
}

fn fsync_never_still_recovers_after_close(h: &dyn Harness) {
    let cfg = || LogConfig {
        fsync: FsyncPolicy::Never,
        ..config(1024)
    };
    let (log, _) = open(h, cfg());
    let mut expected = Vec::new();
    for i in 0..20 {
        let b = body(&i.to_string(), 100);
        let m = log.append(&[1], b.clone()).expect("append");
        expected.push((m.id, b));
    }
    log.wait_synced(log.synced_lsn()).expect("synced");
    drop(log); // dropping closes too
    let (_log, rec) = open(h, cfg());
    assert_eq!(with_bodies(&rec.queues[&1]), expected);
}

fn bad_appends_are_refused(h: &dyn Harness) {
    let cfg = LogConfig {
        max_message_size: 100,
        ..config(4096)
    };
    let (log, _) = open(h, cfg);
    assert!(matches!(
        log.append(&[], body("x", 1)),
        Err(StoreError::NoQueues)
    ));
    assert!(matches!(
        log.append(&[1, 2], body("x", 93)),
        Err(StoreError::TooLarge {
            size: 101,
            max: 100
        })
    ));
    let ok = log.append(&[1, 2], body("x", 92)).expect("fits");
    assert_eq!(ok.id, 1, "refused appends use no id");
}

fn sync_callbacks_see_every_batch(h: &dyn Harness) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let (log, _) = open(h, config(4096));
    let seen = Arc::new(AtomicU64::new(0));
    let s = seen.clone();
    log.on_sync(Box::new(move |lsn| {
        s.fetch_max(lsn.0, Ordering::SeqCst);
    }));
    let mut last = None;
    for i in 0..30 {
        last = Some(log.append(&[1], body(&i.to_string(), 30)).expect("append"));
    }
    let last = last.expect("appended");
    log.wait_synced(last.lsn).expect("synced");
    assert!(log.synced_lsn() >= last.lsn);
    // The callback runs right after the synced lsn is published.
    log.sync().expect("sync");
    assert!(seen.load(Ordering::SeqCst) >= last.lsn.0);
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
    append_ack_recover_round_trip,
    multi_queue_message_is_written_once,
    reclamation_deletes_acked_segments_and_disk_use_falls,
    message_ids_keep_increasing_across_reopen,
    partial_ack_of_multi_queue_message,
    unknown_and_repeated_acks_write_nothing,
    ack_records_outlive_the_messages_they_ack,
    drop_queue_acks_all_its_messages,
    torn_tail_of_last_segment_is_truncated,
    mid_log_corruption_is_refused_or_skipped,
    torn_segment_header_is_removed,
    unsupported_version_is_refused,
    oversized_message_gets_its_own_segment,
    recovery_streams_through_a_small_buffer,
    fsync_never_still_recovers_after_close,
    bad_appends_are_refused,
    sync_callbacks_see_every_batch,
);
