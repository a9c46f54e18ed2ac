//! The writer thread: the only code that writes segment files.
//!
//! Each turn of its loop is one batch: block for a command, take every
//! other command already waiting (up to `max_batch_bytes` of records),
//! encode them into one buffer, write it, fsync once, publish the batch's
//! highest [`Lsn`] as synced, run the `on_sync` callbacks, then delete the
//! segments that became reclaimable.
//!
//! Ordering that crash safety rests on:
//! - a full segment is fsynced before the next one is created, and a new
//!   segment's header is fsynced, and its directory entry made durable,
//!   before any record goes into it: only the last segment can have a torn
//!   tail;
//! - nothing is reported synced before the fsync that covers it returns;
//! - segments are deleted only after the batch whose acks freed them is
//!   fsynced, one at a time in ascending order with a directory fsync
//!   after each, so a deletion never becomes durable before the deletion
//!   of a segment whose messages it acknowledges.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};
use std::sync::Arc;

use super::recovery::RecoveredLog;
use super::{Cmd, FsyncPolicy, LogConfig, Lsn, Recovered, Shared};
use crate::backend::{Backend, BackendFile};
use crate::error::{Result, StoreError};
use crate::format::{
    ack_record_len, encode_ack, encode_header, encode_message, message_record_len, segment_path,
    SegmentHeader, HEADER_LEN, MAX_ACK_PAIRS,
};

/// The segment records are appended to.
struct Active {
    number: u64,
    file: Box<dyn BackendFile>,
    /// Bytes written to the file (the buffer not included).
    len: u64,
}

/// What one batch collected besides its records.
#[derive(Default)]
struct Batch {
    last_lsn: u64,
    bytes: usize,
    force_sync: bool,
    replies: Vec<SyncSender<Result<Lsn>>>,
}

pub(super) struct Writer {
    backend: Arc<dyn Backend>,
    dir: PathBuf,
    config: LogConfig,
    active: Active,
    next_segment: u64,
    /// The id of the next message; the base id of the next segment.
    next_id: u64,
    /// Records encoded for the active segment, not written yet.
    buf: Vec<u8>,
    /// The active segment has written, unsynced bytes.
    dirty: bool,
    /// Something happened that may have made a segment reclaimable.
    reclaim_due: bool,
    shared: Arc<Shared>,
}

/// Creates segment `number`, with its header durable and its directory
/// entry too.
fn create_segment(
    backend: &dyn Backend,
    dir: &Path,
    number: u64,
    base_id: u64,
) -> io::Result<Box<dyn BackendFile>> {
    let path = segment_path(dir, number);
    let mut file = backend.open(&path, true)?;
    file.set_len(0)?;
    file.write_all_at(0, &encode_header(SegmentHeader { number, base_id }))?;
    file.sync_data()?;
    backend.sync_dir(dir)?;
    tracing::debug!(message = "Segment created.", path = %path.display(), base_id);
    Ok(file)
}

/// Marks the writer stopped however its thread ends, panics included, so
/// that `wait_synced` callers do not wait forever.
struct StopGuard(Arc<Shared>);

impl Drop for StopGuard {
    fn drop(&mut self) {
        self.0.stopped.store(true, Ordering::Release);
        self.0.notify();
    }
}

impl Writer {
    /// Takes over from recovery (whose index is in `shared` already):
    /// creates the first segment if there is none, and reclaims what
    /// recovery found fully acknowledged.
    pub(super) fn new(
        backend: Arc<dyn Backend>,
        dir: PathBuf,
        config: LogConfig,
        recovered: RecoveredLog,
        shared: Arc<Shared>,
    ) -> Result<(Self, Recovered)> {
        let RecoveredLog {
            index: _,
            active,
            next_id,
            mut next_segment,
            recovered,
        } = recovered;
        let active = match active {
            Some((number, file, len)) => Active { number, file, len },
            None => {
                let number = next_segment;
                let file = create_segment(backend.as_ref(), &dir, number, next_id)
                    .map_err(|e| StoreError::io("create segment", segment_path(&dir, number), e))?;
                next_segment += 1;
                shared.index.write().add_segment(number, HEADER_LEN);
                Active {
                    number,
                    file,
                    len: HEADER_LEN,
                }
            }
        };
        let mut writer = Self {
            backend,
            dir,
            config,
            active,
            next_segment,
            next_id,
            buf: Vec::new(),
            dirty: false,
            reclaim_due: true,
            shared,
        };
        writer
            .reclaim()
            .map_err(|e| StoreError::io("reclaim segments in", writer.dir.clone(), e))?;
        writer.publish_stats();
        Ok((writer, recovered))
    }

    /// The thread's body. Returns when every sender is gone (after a final
    /// fsync) or at the first I/O failure (after poisoning the log).
    pub(super) fn run(&mut self, rx: Receiver<Cmd>) -> Result<()> {
        let _stop = StopGuard(self.shared.clone());
        loop {
            let Ok(first) = rx.recv() else {
                return self.finish();
            };
            let mut batch = Batch::default();
            let mut disconnected = false;
            let mut step = self.handle(first, &mut batch);
            while step.is_ok() && batch.bytes < self.config.max_batch_bytes {
                match rx.try_recv() {
                    Ok(cmd) => step = self.handle(cmd, &mut batch),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        disconnected = true;
                        break;
                    }
                }
            }
            if let Err(e) = step.and_then(|()| self.commit(&mut batch)) {
                return Err(self.poison(e, batch.replies));
            }
            if disconnected {
                return self.finish();
            }
        }
    }

    /// Encodes one command into the batch.
    fn handle(&mut self, cmd: Cmd, batch: &mut Batch) -> io::Result<()> {
        match cmd {
            Cmd::Append {
                lsn,
                id,
                queues,
                body,
            } => {
                let size = message_record_len(queues.len(), body.len());
                self.reserve(size)?;
                let offset = self.active.len + self.buf.len() as u64;
                encode_message(&mut self.buf, id, &queues, &body);
                self.shared
                    .index
                    .write()
                    .add_message(self.active.number, offset, id, queues);
                self.next_id = self.next_id.max(id + 1);
                batch.bytes += size;
                batch.last_lsn = lsn;
            }
            Cmd::Ack { lsn, pairs } => {
                self.write_acks(pairs, batch)?;
                batch.last_lsn = lsn;
            }
            Cmd::DropQueue { lsn, queue } => {
                let pairs = self.shared.index.read().pairs_of_queue(queue);
                self.write_acks(pairs, batch)?;
                batch.last_lsn = lsn;
            }
            Cmd::Sync { lsn, reply } => {
                batch.force_sync = true;
                batch.replies.push(reply);
                batch.last_lsn = lsn;
            }
        }
        Ok(())
    }

    /// Applies the live pairs among `pairs` and encodes them as ack
    /// records; the others are dropped (nothing to acknowledge).
    fn write_acks(&mut self, pairs: Vec<(u32, u64)>, batch: &mut Batch) -> io::Result<()> {
        let mut live = Vec::new();
        let mut targets = Vec::new();
        {
            let mut index = self.shared.index.write();
            for (queue, id) in pairs {
                if let Some(acked) = index.ack(queue, id) {
                    live.push((queue, id));
                    targets.push(acked.segment);
                    self.reclaim_due |= acked.died;
                }
            }
        }
        for (chunk, segments) in live
            .chunks(MAX_ACK_PAIRS)
            .zip(targets.chunks(MAX_ACK_PAIRS))
        {
            let size = ack_record_len(chunk.len());
            self.reserve(size)?;
            encode_ack(&mut self.buf, chunk);
            let mut index = self.shared.index.write();
            for &segment in segments {
                index.add_ref(self.active.number, segment);
            }
            batch.bytes += size;
        }
        Ok(())
    }

    /// Makes room for a record of `size` bytes: rolls to a new segment when
    /// it would not fit in the active one (unless that one has no record
    /// yet: an oversized record gets a segment of its own).
    fn reserve(&mut self, size: usize) -> io::Result<()> {
        let used = self.active.len + self.buf.len() as u64;
        if used > HEADER_LEN && used + size as u64 > self.config.segment_size {
            self.flush_buf()?;
            self.roll()?;
        }
        Ok(())
    }

    fn flush_buf(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.active.file.write_all_at(self.active.len, &self.buf)?;
        self.active.len += self.buf.len() as u64;
        self.shared
            .index
            .write()
            .set_size(self.active.number, self.active.len);
        // Readers may now read every message handled so far.
        self.shared
            .written_below
            .store(self.next_id, Ordering::Release);
        self.shared.notify();
        self.dirty = true;
        self.buf.clear();
        // Give back the memory of an unusually large batch or message.
        if self.buf.capacity() > 2 * self.config.max_batch_bytes {
            self.buf = Vec::new();
        }
        Ok(())
    }

    fn sync_active(&mut self) -> io::Result<()> {
        self.active.file.sync_data()?;
        self.shared.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.dirty = false;
        Ok(())
    }

    /// Closes the active segment (fsynced whatever the policy) and starts
    /// the next.
    fn roll(&mut self) -> io::Result<()> {
        if self.dirty {
            self.sync_active()?;
        }
        let number = self.next_segment;
        let file = create_segment(self.backend.as_ref(), &self.dir, number, self.next_id)?;
        self.shared.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.next_segment += 1;
        self.shared.index.write().add_segment(number, HEADER_LEN);
        self.active = Active {
            number,
            file,
            len: HEADER_LEN,
        };
        self.reclaim_due = true;
        Ok(())
    }

    /// Ends a batch: write, fsync, publish, reclaim, answer `sync` callers.
    fn commit(&mut self, batch: &mut Batch) -> io::Result<()> {
        self.flush_buf()?;
        if self.dirty && (self.config.fsync == FsyncPolicy::Always || batch.force_sync) {
            self.sync_active()?;
        }
        self.shared.batches.fetch_add(1, Ordering::Relaxed);
        if batch.last_lsn > 0 {
            self.shared.synced.store(batch.last_lsn, Ordering::Release);
            self.shared.notify();
            let lsn = Lsn(batch.last_lsn);
            for callback in self.shared.callbacks.read().iter() {
                callback(lsn);
            }
        }
        self.reclaim()?;
        self.publish_stats();
        for reply in batch.replies.drain(..) {
            // A caller that gave up waiting is no error.
            let _ = reply.send(Ok(Lsn(batch.last_lsn)));
        }
        Ok(())
    }

    /// Deletes every reclaimable segment, oldest first, each deletion made
    /// durable before the next.
    fn reclaim(&mut self) -> io::Result<()> {
        if !std::mem::take(&mut self.reclaim_due) {
            return Ok(());
        }
        let reclaimable = self.shared.index.read().reclaimable(self.active.number);
        for number in reclaimable {
            let path = segment_path(&self.dir, number);
            // Out of the index first (no message in it is live, so no
            // reader looks it up), then its read handles closed: a reader
            // still using one does not put it back (see `MessageLog::read`).
            self.shared.index.write().remove_segment(number);
            self.shared.handles.lock().forget(number);
            self.backend.remove(&path)?;
            self.backend.sync_dir(&self.dir)?;
            tracing::debug!(message = "Segment reclaimed.", path = %path.display());
        }
        Ok(())
    }

    fn publish_stats(&self) {
        let s = &self.shared;
        let index = s.index.read();
        s.segments
            .store(index.segments.len() as u64, Ordering::Relaxed);
        s.disk_bytes.store(index.disk_bytes(), Ordering::Relaxed);
        s.live_messages
            .store(index.live_messages(), Ordering::Relaxed);
    }

    /// Every sender is gone: make what was written durable and stop.
    fn finish(&mut self) -> Result<()> {
        let done = self.flush_buf().and_then(|()| {
            if self.dirty {
                self.sync_active()
            } else {
                Ok(())
            }
        });
        match done {
            Ok(()) => {
                self.publish_stats();
                Ok(())
            }
            Err(e) => Err(self.poison(e, Vec::new())),
        }
    }

    /// Records the failure for every later caller and wakes every waiter.
    fn poison(&mut self, error: io::Error, replies: Vec<SyncSender<Result<Lsn>>>) -> StoreError {
        tracing::error!(
            message = "Message log write failed; the log is poisoned and accepts no more writes.",
            dir = %self.dir.display(),
            %error,
        );
        let cause = Arc::new(error);
        *self.shared.poison.lock() = Some(cause.clone());
        self.shared.notify();
        for callback in self.shared.failure_callbacks.read().iter() {
            callback();
        }
        for reply in replies {
            let _ = reply.send(Err(StoreError::Poisoned {
                cause: cause.clone(),
            }));
        }
        StoreError::Poisoned { cause }
    }
}
