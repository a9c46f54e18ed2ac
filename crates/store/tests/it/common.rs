//! Shared helpers: temporary directories, one harness per backend.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use liebre_store::{
    Backend, BackendFile, CrashBackend, FileBackend, LogConfig, MemoryBackend, MessageLog,
    Recovered,
};

/// A directory under the system temp dir, removed on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(name: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "liebre-store-{}-{}-{}",
            std::process::id(),
            name,
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A backend plus the means to look at and damage what it stores.
pub(crate) trait Harness {
    fn backend(&self) -> Arc<dyn Backend>;
    /// The log directory.
    fn dir(&self) -> PathBuf;
    /// A file's bytes.
    fn read(&self, path: &Path) -> Vec<u8>;
    /// Durably overwrites bytes of a file.
    fn patch(&self, path: &Path, offset: u64, data: &[u8]);
    /// Durably creates a file with these bytes.
    fn create(&self, path: &Path, data: &[u8]) {
        let mut f = self.backend().open(path, true).expect("create");
        f.write_all_at(0, data).expect("write");
        f.sync_data().expect("sync");
        self.backend().sync_dir(&self.dir()).expect("sync dir");
    }
}

pub(crate) struct FileHarness {
    tmp: TempDir,
}

impl FileHarness {
    pub(crate) fn new(name: &str) -> Self {
        Self {
            tmp: TempDir::new(name),
        }
    }
}

impl Harness for FileHarness {
    fn backend(&self) -> Arc<dyn Backend> {
        Arc::new(FileBackend::new())
    }
    fn dir(&self) -> PathBuf {
        self.tmp.path().join("msgs")
    }
    fn read(&self, path: &Path) -> Vec<u8> {
        std::fs::read(path).expect("read")
    }
    fn patch(&self, path: &Path, offset: u64, data: &[u8]) {
        let mut f = FileBackend::new().open(path, false).expect("open");
        f.write_all_at(offset, data).expect("patch");
        f.sync_data().expect("sync");
    }
}

#[derive(Default)]
pub(crate) struct MemHarness {
    pub(crate) mem: MemoryBackend,
}

impl Harness for MemHarness {
    fn backend(&self) -> Arc<dyn Backend> {
        Arc::new(self.mem.clone())
    }
    fn dir(&self) -> PathBuf {
        PathBuf::from("/data/msgs")
    }
    fn read(&self, path: &Path) -> Vec<u8> {
        self.mem.read_file(path).expect("file exists")
    }
    fn patch(&self, path: &Path, offset: u64, data: &[u8]) {
        assert!(self.mem.patch_file(path, offset, data));
    }
}

#[derive(Default)]
pub(crate) struct CrashHarness {
    pub(crate) crash: CrashBackend,
}

impl Harness for CrashHarness {
    fn backend(&self) -> Arc<dyn Backend> {
        Arc::new(self.crash.clone())
    }
    fn dir(&self) -> PathBuf {
        PathBuf::from("/data/msgs")
    }
    fn read(&self, path: &Path) -> Vec<u8> {
        self.crash.read_file(path).expect("file exists")
    }
    fn patch(&self, path: &Path, offset: u64, data: &[u8]) {
        assert!(self.crash.patch_file(path, offset, data));
    }
}

/// A config with segments of `segment_size` bytes.
pub(crate) fn config(segment_size: u64) -> LogConfig {
    LogConfig {
        segment_size,
        ..LogConfig::default()
    }
}

pub(crate) fn open(h: &dyn Harness, config: LogConfig) -> (MessageLog, Recovered) {
    MessageLog::open(h.backend(), h.dir(), config).expect("open log")
}

/// The segment files of the log, sorted.
pub(crate) fn segments(h: &dyn Harness) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = h
        .backend()
        .list(&h.dir())
        .expect("list")
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

/// Bytes of all segment files, as the backend reports them.
pub(crate) fn disk_bytes(h: &dyn Harness) -> u64 {
    let b = h.backend();
    segments(h)
        .iter()
        .map(|p| b.open(p, false).and_then(|f| f.len()).expect("len"))
        .sum()
}

/// A backend wrapper that counts `sync_data` calls and makes each take a
/// while, as a disk's does.
#[derive(Debug)]
pub(crate) struct SlowSync {
    pub(crate) inner: Arc<dyn Backend>,
    pub(crate) syncs: Arc<AtomicU64>,
    pub(crate) delay: std::time::Duration,
}

impl Backend for SlowSync {
    fn open(&self, path: &Path, create: bool) -> io::Result<Box<dyn BackendFile>> {
        Ok(Box::new(SlowFile {
            inner: self.inner.open(path, create)?,
            syncs: self.syncs.clone(),
            delay: self.delay,
        }))
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        self.inner.list(dir)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        self.inner.remove(path)
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.inner.create_dir_all(dir)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.inner.sync_dir(dir)
    }
}

#[derive(Debug)]
struct SlowFile {
    inner: Box<dyn BackendFile>,
    syncs: Arc<AtomicU64>,
    delay: std::time::Duration,
}

impl BackendFile for SlowFile {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read_at(offset, buf)
    }
    fn write_all_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.inner.write_all_at(offset, data)
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn sync_data(&mut self) -> io::Result<()> {
        std::thread::sleep(self.delay);
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.inner.sync_data()
    }
}

/// Waits (up to ten seconds, then fails) until `cond` holds.
pub(crate) fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        std::thread::yield_now();
    }
}

/// Releases held syncs when dropped, so that a failing test does not hang
/// in the log's drop (which waits for the writer's last fsync). Declare
/// it after the log: locals drop in reverse order.
pub(crate) struct ReleaseSyncs(pub(crate) CrashBackend);

impl Drop for ReleaseSyncs {
    fn drop(&mut self) {
        self.0.release_syncs();
    }
}

/// A recovered queue's messages, every one of which must have come back
/// with its body.
pub(crate) fn with_bodies(list: &[(u64, Option<Bytes>)]) -> Vec<(u64, Bytes)> {
    list.iter()
        .map(|(id, body)| {
            let body = body
                .clone()
                .unwrap_or_else(|| panic!("message {id} recovered without its body"));
            (*id, body)
        })
        .collect()
}

/// Proptest cases: `default`, or `PROPTEST_CASES` when set (for long runs).
pub(crate) fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
