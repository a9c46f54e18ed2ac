//! Fault injection: a failed write or fsync poisons the log for good, and
//! nothing after it is ever reported synced.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use liebre_store::{Health, LogConfig, StoreError};

use crate::common::{config, open, wait_until, with_bodies, CrashHarness, ReleaseSyncs};

fn is_poisoned<T: std::fmt::Debug>(r: Result<T, StoreError>) -> bool {
    matches!(r, Err(StoreError::Poisoned { .. }))
}

/// Opens a log on `h` whose callbacks record the highest lsn they saw.
fn open_watched(h: &CrashHarness, cfg: LogConfig) -> (liebre_store::MessageLog, Arc<AtomicU64>) {
    let (log, _) = open(h, cfg);
    let seen = Arc::new(AtomicU64::new(0));
    let s = seen.clone();
    log.on_sync(Box::new(move |lsn| {
        s.fetch_max(lsn.0, Ordering::SeqCst);
    }));
    (log, seen)
}

#[test]
fn failed_fsync_poisons_the_log() {
    let h = CrashHarness::default();
    let (log, seen) = open_watched(&h, config(1 << 20));
    let failures = Arc::new(AtomicU64::new(0));
    let f = failures.clone();
    log.on_failure(Box::new(move || {
        f.fetch_add(1, Ordering::SeqCst);
    }));
    let a = log.append(&[1], Bytes::from_static(b"a")).expect("append");
    log.wait_synced(a.lsn).expect("synced");
    assert_eq!(failures.load(Ordering::SeqCst), 0);

    h.crash.fail_next_sync();
    let b = log.append(&[1], Bytes::from_static(b"b")).expect("queued");
    assert!(is_poisoned(log.wait_synced(b.lsn)));
    assert_eq!(log.synced_lsn(), a.lsn, "the failed batch is not reported");
    assert_eq!(seen.load(Ordering::SeqCst), a.lsn.0, "nor given to on_sync");
    wait_until("on_failure ran", || failures.load(Ordering::SeqCst) == 1);

    match log.health() {
        Health::Poisoned { cause } => assert!(cause.to_string().contains("fsync")),
        other => panic!("expected poisoned, got {other:?}"),
    }
    assert!(is_poisoned(log.append(&[1], Bytes::from_static(b"c"))));
    assert!(is_poisoned(log.try_append(&[1], Bytes::from_static(b"c"))));
    assert!(is_poisoned(log.ack(&[(1, a.id)])));
    assert!(is_poisoned(log.sync()));
    assert_eq!(log.synced_lsn(), a.lsn);
    assert!(is_poisoned(log.close()));

    // What the kernel did not sync is gone after a crash; a survives.
    h.crash.crash();
    let (_log, rec) = open(&h, config(1 << 20));
    assert_eq!(
        with_bodies(&rec.queues[&1]),
        vec![(a.id, Bytes::from_static(b"a"))]
    );
}

#[test]
fn failed_write_poisons_the_log() {
    let h = CrashHarness::default();
    let (log, seen) = open_watched(&h, config(1 << 20));
    h.crash.fail_next_write();
    let a = log.append(&[1], Bytes::from_static(b"a")).expect("queued");
    assert!(is_poisoned(log.wait_synced(a.lsn)));
    assert_eq!(seen.load(Ordering::SeqCst), 0);
    assert!(is_poisoned(log.append(&[1], Bytes::from_static(b"b"))));
    assert!(matches!(log.health(), Health::Poisoned { .. }));
}

#[test]
fn failed_fsync_while_creating_a_segment_poisons_the_log() {
    let h = CrashHarness::default();
    let (log, seen) = open_watched(&h, config(512));
    let a = log.append(&[1], Bytes::from(vec![1; 400])).expect("append");
    log.wait_synced(a.lsn).expect("synced");
    h.crash.fail_next_sync(); // the new segment's header sync
    let b = log.append(&[1], Bytes::from(vec![2; 400])).expect("queued");
    assert!(is_poisoned(log.wait_synced(b.lsn)));
    assert_eq!(seen.load(Ordering::SeqCst), a.lsn.0);
    assert!(is_poisoned(log.append(&[1], Bytes::from_static(b"c"))));
}

#[test]
fn try_append_reports_full_when_the_disk_stalls() {
    let h = CrashHarness::default();
    let cfg = LogConfig {
        queue_capacity: 4,
        ..config(1 << 20)
    };
    let (log, _) = open(&h, cfg.clone());
    let _release = ReleaseSyncs(h.crash.clone());
    h.crash.hold_syncs();
    let mut last = log.append(&[1], Bytes::from_static(b"0")).expect("append");
    wait_until("the writer waits in fsync", || h.crash.held_syncs() > 0);
    for i in 1..=4u8 {
        last = log
            .try_append(&[1], Bytes::from(vec![b'0' + i]))
            .expect("room");
    }
    assert!(matches!(
        log.try_append(&[1], Bytes::from_static(b"5")),
        Err(StoreError::Full)
    ));
    assert!(matches!(log.try_ack(&[(1, 1)]), Err(StoreError::Full)));
    h.crash.release_syncs();
    log.wait_synced(last.lsn).expect("synced");
    log.close().expect("close");
    let (_log, rec) = open(&h, cfg);
    assert_eq!(rec.queues[&1].len(), 5, "a refused append left no trace");
}
