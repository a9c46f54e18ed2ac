//! Group commit: many concurrent appends share few fsyncs.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use liebre_store::{Backend, FileBackend, LogConfig, MemoryBackend, MessageLog};

use crate::common::{with_bodies, SlowSync, TempDir};

const THREADS: u32 = 4;
const PER_THREAD: u32 = 2_500;

fn many_appends_share_fsyncs(inner: Arc<dyn Backend>, dir: PathBuf) {
    let syncs = Arc::new(AtomicU64::new(0));
    // Each fsync takes a millisecond, as on a real disk; the assertion
    // below counts fsyncs, it does not time anything.
    let backend: Arc<dyn Backend> = Arc::new(SlowSync {
        inner,
        syncs: syncs.clone(),
        delay: Duration::from_millis(1),
    });
    let (log, _) = MessageLog::open(backend.clone(), &dir, LogConfig::default()).expect("open");
    let log = Arc::new(log);
    let before = syncs.load(Ordering::SeqCst);
    let threads: Vec<_> = (1..=THREADS)
        .map(|q| {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut last = None;
                for i in 0..PER_THREAD {
                    let body = Bytes::from(format!("{q}-{i}"));
                    last = Some(log.append(&[q], body).expect("append"));
                }
                last.expect("appended")
            })
        })
        .collect();
    let lasts: Vec<_> = threads
        .into_iter()
        .map(|t| t.join().expect("thread"))
        .collect();
    for last in &lasts {
        log.wait_synced(last.lsn).expect("synced");
    }
    let fsyncs = syncs.load(Ordering::SeqCst) - before;
    let appends = u64::from(THREADS * PER_THREAD);
    assert!(fsyncs >= 1);
    assert!(
        fsyncs < appends / 10,
        "{fsyncs} fsyncs for {appends} appends"
    );
    assert!(log.stats().batches < appends / 10);
    Arc::into_inner(log)
        .expect("sole owner")
        .close()
        .expect("close");

    let (_log, rec) = MessageLog::open(backend, &dir, LogConfig::default()).expect("reopen");
    for q in 1..=THREADS {
        let bodies: Vec<Bytes> = with_bodies(&rec.queues[&q])
            .into_iter()
            .map(|(_, b)| b)
            .collect();
        let expected: Vec<Bytes> = (0..PER_THREAD)
            .map(|i| Bytes::from(format!("{q}-{i}")))
            .collect();
        assert_eq!(bodies, expected, "queue {q} in publish order");
    }
}

#[test]
fn group_commit_on_memory() {
    many_appends_share_fsyncs(Arc::new(MemoryBackend::new()), PathBuf::from("/data/msgs"));
}

#[test]
fn group_commit_on_files() {
    let tmp = TempDir::new("group-commit");
    many_appends_share_fsyncs(Arc::new(FileBackend::new()), tmp.path().join("msgs"));
}
