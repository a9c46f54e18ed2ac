//! The message log: persistent messages of durable queues, and their
//! acknowledgements, in an append-only log of checksummed records.
//!
//! A message routed to several durable queues is written once, with the
//! list of its queues; acknowledgements are written as (queue, message)
//! pairs, batched. Segment files are deleted once every message in them is
//! acknowledged (the exact rule is in `index.rs` and
//! `docs/store-format.md`).
//!
//! # Group commit
//!
//! One writer thread owns the files. [`MessageLog::append`] and
//! [`MessageLog::ack`] send a command to it over a bounded channel (a full
//! channel blocks the caller: back-pressure from the disk to publishers) and
//! return at once with the command's log sequence number, an [`Lsn`]. The
//! writer takes every command waiting, writes them with one `write`, calls
//! `fsync` once, then publishes the highest [`Lsn`] of the batch as synced:
//! [`MessageLog::synced_lsn`] and every callback registered with
//! [`MessageLog::on_sync`]. A publisher confirm or PUBACK for a message may be
//! sent once its append's [`Lsn`] is at or below the synced one.
//!
//! A failed write or fsync poisons the log: nothing after it is reported
//! synced, and every later call fails with [`StoreError::Poisoned`]. (After
//! a failed fsync the kernel may have dropped the dirty pages; retrying
//! would report data as durable that is not.)
//!
//! # Reading bodies back
//!
//! [`MessageLog::read`] returns the bodies of live messages from the
//! segment files, so that the broker need not keep every body of a long
//! queue in memory. The index knows the segment and offset of every live
//! message's record; the reader goes straight there, through a small cache
//! of open read handles. On open, [`LogConfig::recovered_bodies_per_queue`]
//! bounds how many bodies per queue recovery returns; the others are read
//! later the same way.
//!
//! # Layout
//! - `mod.rs` (here): configuration, the public handle [`MessageLog`].
//! - `index`: live messages and where their records are, per-segment
//!   counts, the reclamation rule.
//! - `read`: reading records back at known offsets; the handle cache.
//! - `recovery`: scanning the segments on open.
//! - `writer`: the writer thread (batching, rolling segments, fsync,
//!   reclamation).

mod index;
mod read;
mod recovery;
mod writer;

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;

use bytes::Bytes;
use parking_lot::{Condvar, Mutex, RwLock};

use self::index::Index;
use self::read::Handles;
use crate::backend::Backend;
use crate::error::{Result, StoreError};
use crate::format::segment_path;

/// The segment format version this build writes.
pub const FORMAT_VERSION: u32 = crate::format::VERSION;

/// A log sequence number: the position of an append or ack in the log's
/// order. Every call that writes gets the next one; a call's effect is
/// durable once [`MessageLog::synced_lsn`] is at or above its `Lsn`.
///
/// Sequence numbers live in memory only: they start again at 1 each time
/// the log is opened. (Message ids, which are stored, never go back.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// When the writer calls `fsync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncPolicy {
    /// Fsync every batch before reporting it synced. The default, and the
    /// only setting under which a confirmed message survives a crash.
    #[default]
    Always,
    /// Never fsync a batch: report it synced as soon as it is written to
    /// the OS. **Unsafe**: a crash of the machine (not only of the broker)
    /// loses confirmed messages. For benchmarks only. (Segments are still
    /// fsynced when they fill up, and on [`MessageLog::sync`] and close.)
    Never,
}

/// What recovery does with a bad record that is not at the tail of the
/// last segment.
///
/// A bad record at the tail of the **last** segment is always dropped (the
/// file is truncated there, and a warning logged): it is a write that a
/// crash interrupted, which was never reported synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Recovery {
    /// Refuse to open the log ([`StoreError::Corrupt`]). The default: an
    /// operator decides.
    #[default]
    Strict,
    /// Log an error, keep the records before the bad one, skip the rest of
    /// that segment and go on with the next. Messages (and acks) after the
    /// damage in that segment are lost.
    TolerateCorruptTail,
}

/// Settings of the message log.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Target size of a segment file in bytes (default 64 MiB). A segment
    /// is closed when the next record would not fit; a record larger than
    /// this gets a segment of its own.
    pub segment_size: u64,
    /// When to fsync (default [`FsyncPolicy::Always`]).
    pub fsync: FsyncPolicy,
    /// What to do with corruption found on open (default [`Recovery::Strict`]).
    pub recovery: Recovery,
    /// How many appends and acks may wait for the writer before `append`
    /// blocks (default 8192).
    pub queue_capacity: usize,
    /// The writer stops taking commands into a batch once it holds this
    /// many bytes of records (default 4 MiB).
    pub max_batch_bytes: usize,
    /// Largest message accepted by `append`: body plus 4 bytes per queue
    /// (default 512 MiB, the largest message RabbitMQ can be set to accept).
    pub max_message_size: usize,
    /// Size of the buffer segments are read through on recovery (default
    /// 1 MiB). [`MessageLog::read`] reads at most 64 KiB at a time, or
    /// this if smaller (a larger record is read whole).
    pub read_buffer: usize,
    /// How many messages of each queue, the first in id order, recovery
    /// returns with their body (default `usize::MAX`: all of them). The
    /// others come back as ids only, their bodies to be fetched with
    /// [`MessageLog::read`] when needed; recovery then holds no more
    /// bodies in memory than this many per queue.
    pub recovered_bodies_per_queue: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            segment_size: 64 * 1024 * 1024,
            fsync: FsyncPolicy::Always,
            recovery: Recovery::Strict,
            queue_capacity: 8192,
            max_batch_bytes: 4 * 1024 * 1024,
            max_message_size: 512 * 1024 * 1024,
            read_buffer: 1024 * 1024,
            recovered_bodies_per_queue: usize::MAX,
        }
    }
}

/// What [`MessageLog::append`] gives back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The message's id, to acknowledge it with.
    pub id: u64,
    /// The append's sequence number: the message is durable once
    /// [`MessageLog::synced_lsn`] reaches it.
    pub lsn: Lsn,
}

/// The live messages found on open.
#[derive(Debug, Default)]
pub struct Recovered {
    /// For each queue id, its unacknowledged messages in id (= publish)
    /// order, as `(message id, the bytes given to append)`. A message routed
    /// to several queues appears under each that has not acknowledged it,
    /// sharing one buffer.
    ///
    /// The body is `Some` for the first
    /// [`LogConfig::recovered_bodies_per_queue`] messages of each queue and
    /// `None` for the rest (never `None` with the default setting): read
    /// those with [`MessageLog::read`]. A message routed to several queues
    /// may have its body under one queue and not under another.
    pub queues: BTreeMap<u32, Vec<(u64, Option<Bytes>)>>,
    /// The id the next appended message gets.
    pub next_message_id: u64,
    /// What recovery found and did, for logs.
    pub report: RecoveryReport,
}

/// Details of a recovery.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segment files read.
    pub segments: usize,
    /// Valid records read.
    pub records: u64,
    /// Bytes dropped from the tail of the last segment (a torn write).
    pub torn_tail_bytes: u64,
    /// Segment files removed because their header was torn (a crash while
    /// a segment was being created).
    pub dropped_segments: usize,
    /// Under [`Recovery::TolerateCorruptTail`]: the segments whose records
    /// were skipped from an offset on, with that offset.
    pub skipped: Vec<(PathBuf, u64)>,
}

/// The state of the log.
#[derive(Debug, Clone)]
pub enum Health {
    /// Accepting writes.
    Ok,
    /// A write or fsync failed; nothing more is accepted.
    Poisoned {
        /// The failure.
        cause: Arc<io::Error>,
    },
    /// The writer thread has stopped (closed, or it died).
    Stopped,
}

/// Counters for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Segment files on disk.
    pub segments: u64,
    /// Bytes of segment files on disk.
    pub disk_bytes: u64,
    /// Messages some queue has not acknowledged yet.
    pub live_messages: u64,
    /// Fsyncs done (batches and segment rolls).
    pub fsyncs: u64,
    /// Batches written.
    pub batches: u64,
    /// The highest synced sequence number.
    pub synced_lsn: Lsn,
}

/// A callback run by the writer thread after each synced batch.
pub type SyncCallback = Box<dyn Fn(Lsn) + Send + Sync>;

/// A callback run by the writer thread once, when a write or fsync fails
/// and the log is poisoned: nothing after the synced [`Lsn`] will be.
pub type FailureCallback = Box<dyn Fn() + Send + Sync>;

/// A command for the writer thread. Every one carries its [`Lsn`].
enum Cmd {
    Append {
        lsn: u64,
        id: u64,
        queues: Vec<u32>,
        body: Bytes,
    },
    Ack {
        lsn: u64,
        pairs: Vec<(u32, u64)>,
    },
    DropQueue {
        lsn: u64,
        queue: u32,
    },
    Sync {
        lsn: u64,
        reply: SyncSender<Result<Lsn>>,
    },
}

/// State shared by the handle and the writer thread.
struct Shared {
    /// Live messages, where their records are, segments. Changed by the
    /// writer only (never across I/O); read by [`MessageLog::read`].
    index: RwLock<Index>,
    /// Every message id below this one has been handed out by `append`.
    assigned_below: AtomicU64,
    /// Every message id below this one is written to its segment file (or
    /// was never handed out); the writer notifies `synced_cv` when it moves.
    written_below: AtomicU64,
    /// Read handles of segment files, for [`MessageLog::read`].
    handles: Mutex<Handles>,
    synced: AtomicU64,
    poison: Mutex<Option<Arc<io::Error>>>,
    stopped: AtomicBool,
    /// Waiters of `wait_synced`; the writer notifies after each batch.
    wake: Mutex<()>,
    synced_cv: Condvar,
    callbacks: RwLock<Vec<SyncCallback>>,
    failure_callbacks: RwLock<Vec<FailureCallback>>,
    segments: AtomicU64,
    disk_bytes: AtomicU64,
    live_messages: AtomicU64,
    fsyncs: AtomicU64,
    batches: AtomicU64,
}

impl Shared {
    fn poisoned(&self) -> Option<Arc<io::Error>> {
        self.poison.lock().clone()
    }

    /// Why a send to the writer failed: it poisoned itself, or it stopped.
    fn gone(&self) -> StoreError {
        match self.poisoned() {
            Some(cause) => StoreError::Poisoned { cause },
            None => StoreError::Closed,
        }
    }

    fn notify(&self) {
        let _guard = self.wake.lock();
        self.synced_cv.notify_all();
    }
}

/// The sending side, behind one mutex so that message ids and sequence
/// numbers are handed out in the order commands reach the writer (and so
/// are written): ids increase along the log.
struct Sender {
    tx: Option<SyncSender<Cmd>>,
    next_id: u64,
    next_lsn: u64,
}

/// The message log. Cheap to share behind an `Arc`; every method takes
/// `&self`, and [`MessageLog::read`] may be called from any number of
/// threads at once.
///
/// Methods that write (`append`, `ack`, `drop_queue`) do not wait for the
/// disk: they queue a command and return its [`Lsn`]. They block only when
/// the writer is `queue_capacity` commands behind; the `try_` variants
/// return [`StoreError::Full`] instead.
pub struct MessageLog {
    shared: Arc<Shared>,
    sender: Mutex<Sender>,
    writer: Mutex<Option<JoinHandle<Result<()>>>>,
    backend: Arc<dyn Backend>,
    dir: PathBuf,
    max_message_size: usize,
    /// Most bytes one read of [`MessageLog::read`] asks for.
    read_chunk: usize,
}

impl fmt::Debug for MessageLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageLog")
            .field("dir", &self.dir)
            .field("synced_lsn", &self.synced_lsn())
            .finish_non_exhaustive()
    }
}

impl MessageLog {
    /// Opens (or creates) the log in `dir`, recovers it, and starts its
    /// writer thread. Returns the live messages found.
    ///
    /// Two processes must not open the same directory: [`crate::Store::open`]
    /// takes the metadata database's lock first, which guarantees it.
    pub fn open(
        backend: Arc<dyn Backend>,
        dir: impl Into<PathBuf>,
        config: LogConfig,
    ) -> Result<(Self, Recovered)> {
        let dir = dir.into();
        let mut recovered = recovery::recover(backend.as_ref(), &dir, &config)?;
        let next_id = recovered.next_id;
        let shared = Arc::new(Shared {
            index: RwLock::new(std::mem::take(&mut recovered.index)),
            assigned_below: AtomicU64::new(next_id),
            written_below: AtomicU64::new(next_id),
            handles: Mutex::new(Handles::default()),
            synced: AtomicU64::new(0),
            poison: Mutex::new(None),
            stopped: AtomicBool::new(false),
            wake: Mutex::new(()),
            synced_cv: Condvar::new(),
            callbacks: RwLock::new(Vec::new()),
            failure_callbacks: RwLock::new(Vec::new()),
            segments: AtomicU64::new(0),
            disk_bytes: AtomicU64::new(0),
            live_messages: AtomicU64::new(0),
            fsyncs: AtomicU64::new(0),
            batches: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::sync_channel(config.queue_capacity.max(1));
        let max_message_size = config.max_message_size;
        let read_chunk = read::READ_CHUNK.min(config.read_buffer);
        let (mut writer, result) = writer::Writer::new(
            backend.clone(),
            dir.clone(),
            config,
            recovered,
            shared.clone(),
        )?;
        let handle = std::thread::Builder::new()
            .name("liebre-store-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::io("spawn writer thread for", dir.clone(), e))?;
        let log = Self {
            shared,
            sender: Mutex::new(Sender {
                tx: Some(tx),
                next_id,
                next_lsn: 0,
            }),
            writer: Mutex::new(Some(handle)),
            backend,
            dir,
            max_message_size,
            read_chunk,
        };
        Ok((log, result))
    }

    /// The directory holding the segment files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn check_message(&self, queues: &[u32], body: &Bytes) -> Result<Vec<u32>> {
        if queues.is_empty() {
            return Err(StoreError::NoQueues);
        }
        let size = body.len().saturating_add(queues.len().saturating_mul(4));
        if size > self.max_message_size || size > u32::MAX as usize - 64 {
            return Err(StoreError::TooLarge {
                size,
                max: self.max_message_size,
            });
        }
        let mut queues = queues.to_vec();
        queues.sort_unstable();
        queues.dedup();
        Ok(queues)
    }

    /// Queues a command built from the next id and lsn; `blocking` picks
    /// `send` or `try_send`.
    fn submit(
        &self,
        blocking: bool,
        with_id: bool,
        make: impl FnOnce(u64, u64) -> Cmd,
    ) -> Result<(u64, Lsn)> {
        let mut s = self.sender.lock();
        if let Some(cause) = self.shared.poisoned() {
            return Err(StoreError::Poisoned { cause });
        }
        let tx = s.tx.as_ref().ok_or(StoreError::Closed)?;
        let (id, lsn) = (s.next_id, s.next_lsn + 1);
        let cmd = make(id, lsn);
        if blocking {
            tx.send(cmd).map_err(|_| self.shared.gone())?;
        } else {
            tx.try_send(cmd).map_err(|e| match e {
                TrySendError::Full(_) => StoreError::Full,
                TrySendError::Disconnected(_) => self.shared.gone(),
            })?;
        }
        s.next_lsn = lsn;
        if with_id {
            s.next_id += 1;
            self.shared
                .assigned_below
                .store(s.next_id, Ordering::Release);
        }
        Ok((id, Lsn(lsn)))
    }

    /// Appends a message routed to `queues` (durable queue ids; duplicates
    /// are ignored). `body` is the broker's encoded message, stored as is.
    /// Blocks while the writer's queue is full.
    ///
    /// The message is durable once [`MessageLog::synced_lsn`] reaches the
    /// returned `lsn`: only then may its publisher be confirmed.
    pub fn append(&self, queues: &[u32], body: Bytes) -> Result<Appended> {
        self.append_inner(queues, body, true)
    }

    /// [`MessageLog::append`] that fails with [`StoreError::Full`] instead
    /// of blocking (for async callers, which can then wait elsewhere).
    pub fn try_append(&self, queues: &[u32], body: Bytes) -> Result<Appended> {
        self.append_inner(queues, body, false)
    }

    fn append_inner(&self, queues: &[u32], body: Bytes, blocking: bool) -> Result<Appended> {
        let queues = self.check_message(queues, &body)?;
        let (id, lsn) = self.submit(blocking, true, |id, lsn| Cmd::Append {
            lsn,
            id,
            queues,
            body,
        })?;
        Ok(Appended { id, lsn })
    }

    /// Records that each `(queue id, message id)` pair was acknowledged
    /// (or otherwise removed from the queue: rejected, expired,
    /// dead-lettered). Pairs that are not live are ignored. Blocks while the
    /// writer's queue is full. Waiting for the ack to be synced is not
    /// needed for correctness: an ack lost in a crash means a redelivery.
    pub fn ack(&self, pairs: &[(u32, u64)]) -> Result<Lsn> {
        self.ack_inner(pairs, true)
    }

    /// [`MessageLog::ack`] that fails with [`StoreError::Full`] instead of
    /// blocking.
    pub fn try_ack(&self, pairs: &[(u32, u64)]) -> Result<Lsn> {
        self.ack_inner(pairs, false)
    }

    fn ack_inner(&self, pairs: &[(u32, u64)], blocking: bool) -> Result<Lsn> {
        let pairs = pairs.to_vec();
        Ok(self
            .submit(blocking, false, |_, lsn| Cmd::Ack { lsn, pairs })?
            .1)
    }

    /// Acknowledges every live message of `queue` for that queue: what a
    /// queue deletion or purge must do. Blocks while the writer's queue is
    /// full.
    pub fn drop_queue(&self, queue: u32) -> Result<Lsn> {
        Ok(self
            .submit(true, false, |_, lsn| Cmd::DropQueue { lsn, queue })?
            .1)
    }

    /// The bodies (the `body` given to [`MessageLog::append`]) of the live
    /// messages among `ids`, as `(id, body)` in ascending id order. `ids`
    /// may be in any order and hold duplicates. An id that is not live (acked
    /// by every queue it was routed to, or never appended) is left out.
    ///
    /// A message is read from its segment file once the writer has written
    /// it there (before its fsync): for a message appended a moment ago
    /// this waits for its batch. Acks take effect here when the writer
    /// takes them in, at the latest once their [`Lsn`] is synced; until
    /// then an acked message may still be returned.
    ///
    /// Reading consecutive messages costs about one file read per 64 KiB of
    /// them. Fails with [`StoreError::Poisoned`] once the log is poisoned,
    /// [`StoreError::Closed`] if it has to wait for a writer that has
    /// stopped, [`StoreError::Corrupt`] if a record's checksum does not
    /// verify (no wrong data is ever returned), and [`StoreError::Io`] if
    /// a read fails.
    pub fn read(&self, ids: &[u64]) -> Result<Vec<(u64, Bytes)>> {
        let shared = &self.shared;
        if let Some(cause) = shared.poisoned() {
            return Err(StoreError::Poisoned { cause });
        }
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        // Ids not handed out yet are not live; the others may have to be
        // written first.
        let assigned = shared.assigned_below.load(Ordering::Acquire);
        ids.truncate(ids.partition_point(|id| *id < assigned));
        let Some(&last) = ids.last() else {
            return Ok(Vec::new());
        };
        self.wait_written(last)?;

        // (segment, offset, id) of each live one, and segment lengths.
        let mut locs: Vec<(u64, u64, u64)> = Vec::with_capacity(ids.len());
        let mut lens: Vec<(u64, u64)> = Vec::new();
        {
            let index = shared.index.read();
            for &id in &ids {
                if let Some((segment, offset)) = index.location(id) {
                    locs.push((segment, offset, id));
                }
            }
            locs.sort_unstable();
            for &(segment, ..) in &locs {
                if lens.last().is_none_or(|(s, _)| *s != segment) {
                    lens.push((segment, index.segment_size(segment).unwrap_or(0)));
                }
            }
        }

        let mut out = Vec::with_capacity(locs.len());
        let mut wanted: Vec<(u64, u64)> = Vec::new();
        let mut rest = &locs[..];
        for (segment, len) in lens {
            let n = rest.partition_point(|l| l.0 == segment);
            wanted.clear();
            wanted.extend(rest[..n].iter().map(|&(_, offset, id)| (id, offset)));
            rest = &rest[n..];
            self.read_segment(segment, len, &wanted, &mut out)?;
        }
        out.sort_unstable_by_key(|(id, _)| *id);
        Ok(out)
    }

    /// Reads records of one segment through a cached (or newly opened)
    /// handle, which goes back to the cache afterwards.
    fn read_segment(
        &self,
        segment: u64,
        len: u64,
        wanted: &[(u64, u64)],
        out: &mut Vec<(u64, Bytes)>,
    ) -> Result<()> {
        let cached = self.shared.handles.lock().take(segment);
        let file = match cached {
            Some(file) => file,
            None => {
                let path = segment_path(&self.dir, segment);
                match self.backend.open(&path, false) {
                    Ok(file) => file,
                    // Reclaimed since the lookup: its messages died since.
                    Err(e)
                        if e.kind() == io::ErrorKind::NotFound
                            && self.shared.index.read().segment_size(segment).is_none() =>
                    {
                        return Ok(());
                    }
                    Err(e) => return Err(StoreError::io("open", path, e)),
                }
            }
        };
        read::read_segment(
            file.as_ref(),
            &self.dir,
            segment,
            len,
            wanted,
            self.read_chunk,
            out,
        )?;
        // Only while the segment exists: the writer forgets a reclaimed
        // segment's handles after removing it from the index.
        let mut handles = self.shared.handles.lock();
        if self.shared.index.read().segment_size(segment).is_some() {
            handles.put(segment, file);
        }
        Ok(())
    }

    /// Blocks until message `id` (handed out already) is written to its
    /// segment file.
    fn wait_written(&self, id: u64) -> Result<()> {
        let shared = &self.shared;
        if shared.written_below.load(Ordering::Acquire) > id {
            return Ok(());
        }
        let mut guard = shared.wake.lock();
        loop {
            if shared.written_below.load(Ordering::Acquire) > id {
                return Ok(());
            }
            if let Some(cause) = shared.poisoned() {
                return Err(StoreError::Poisoned { cause });
            }
            if shared.stopped.load(Ordering::Acquire) {
                return Err(StoreError::Closed);
            }
            shared.synced_cv.wait(&mut guard);
        }
    }

    /// Writes and fsyncs everything queued so far, whatever the
    /// [`FsyncPolicy`], runs reclamation, and waits for it. Returns the
    /// synced [`Lsn`].
    pub fn sync(&self) -> Result<Lsn> {
        let (reply, done) = mpsc::sync_channel(1);
        self.submit(true, false, |_, lsn| Cmd::Sync { lsn, reply })?;
        done.recv().map_err(|_| self.shared.gone())?
    }

    /// The highest sequence number whose command is durable (or, under
    /// [`FsyncPolicy::Never`], written).
    pub fn synced_lsn(&self) -> Lsn {
        Lsn(self.shared.synced.load(Ordering::Acquire))
    }

    /// Blocks until `lsn` is synced. Fails if the log is poisoned or stops
    /// first.
    pub fn wait_synced(&self, lsn: Lsn) -> Result<()> {
        let mut guard = self.shared.wake.lock();
        loop {
            if self.synced_lsn() >= lsn {
                return Ok(());
            }
            if let Some(cause) = self.shared.poisoned() {
                return Err(StoreError::Poisoned { cause });
            }
            if self.shared.stopped.load(Ordering::Acquire) {
                return Err(StoreError::Closed);
            }
            self.shared.synced_cv.wait(&mut guard);
        }
    }

    /// Registers a callback, run on the writer thread with the new synced
    /// [`Lsn`] after every batch (never for a batch whose write or fsync
    /// failed). It must be quick and must not block or call into this log
    /// (a full queue would deadlock): the broker uses it to wake the
    /// connections that wait for confirms.
    pub fn on_sync(&self, callback: SyncCallback) {
        self.shared.callbacks.write().push(callback);
    }

    /// Registers a callback, run on the writer thread when a write or
    /// fsync fails and poisons the log (so never again after that). The
    /// broker uses it to release the connections that wait for confirms.
    pub fn on_failure(&self, callback: FailureCallback) {
        self.shared.failure_callbacks.write().push(callback);
    }

    /// Whether the log still accepts writes.
    pub fn health(&self) -> Health {
        if let Some(cause) = self.shared.poisoned() {
            Health::Poisoned { cause }
        } else if self.shared.stopped.load(Ordering::Acquire) {
            Health::Stopped
        } else {
            Health::Ok
        }
    }

    /// Counters, as of the last batch.
    pub fn stats(&self) -> LogStats {
        let s = &self.shared;
        LogStats {
            segments: s.segments.load(Ordering::Relaxed),
            disk_bytes: s.disk_bytes.load(Ordering::Relaxed),
            live_messages: s.live_messages.load(Ordering::Relaxed),
            fsyncs: s.fsyncs.load(Ordering::Relaxed),
            batches: s.batches.load(Ordering::Relaxed),
            synced_lsn: self.synced_lsn(),
        }
    }

    /// Stops the writer after it has written and fsynced everything queued,
    /// and reports how that went. Dropping the log does the same, ignoring
    /// the result.
    pub fn close(self) -> Result<()> {
        self.shutdown()
    }

    /// [`MessageLog::close`] through a shared reference: for an owner that
    /// others may still hold (their later calls fail with
    /// [`StoreError::Closed`]).
    pub fn stop(&self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&self) -> Result<()> {
        // Dropping the sender lets the writer drain the channel and stop.
        drop(self.sender.lock().tx.take());
        let handle = self.writer.lock().take();
        match handle {
            Some(h) => h.join().map_err(|_| StoreError::Closed)?,
            None => Ok(()),
        }
    }
}

impl Drop for MessageLog {
    fn drop(&mut self) {
        if let Err(error) = self.shutdown() {
            tracing::debug!(message = "Message log closed with an error.", %error);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::MemoryBackend;

    /// Read handles of reclaimed segments are closed, not kept.
    #[test]
    fn reclaimed_segments_lose_their_read_handles() {
        let config = LogConfig {
            segment_size: 512,
            ..LogConfig::default()
        };
        let (log, _) =
            MessageLog::open(Arc::new(MemoryBackend::new()), "/msgs", config).expect("open");
        let ids: Vec<u64> = (0..100u8)
            .map(|i| {
                log.append(&[1], Bytes::from(vec![i; 50]))
                    .expect("append")
                    .id
            })
            .collect();
        assert_eq!(log.read(&ids).expect("read").len(), 100);
        let cached = log.shared.handles.lock().len();
        assert!(cached > 5, "{cached} handles cached");
        let pairs: Vec<(u32, u64)> = ids.iter().map(|id| (1, *id)).collect();
        log.ack(&pairs).expect("ack");
        log.sync().expect("sync");
        assert_eq!(log.stats().segments, 1);
        assert!(log.shared.handles.lock().len() <= 1);
        assert!(log.read(&ids).expect("read").is_empty());
    }
}
