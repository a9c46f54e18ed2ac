//! Recovery: scan every segment in order and rebuild the index, then read
//! the bodies to return.
//!
//! - Segments are read front to back through a bounded buffer. This first
//!   pass keeps no body: only, per live message, its queues and where its
//!   record is.
//! - A second pass reads the bodies of the first
//!   `recovered_bodies_per_queue` live messages of each queue, straight
//!   from their offsets (`read.rs`); the others are returned as ids.
//! - A message record makes the message live for its queues; an ack record
//!   removes (queue, message) pairs, and is ignored for messages not known
//!   (their segment was reclaimed, so they were acked already).
//! - The first bad record of the **last** segment ends the log: the file is
//!   truncated there (a write interrupted by a crash, never reported synced).
//!   A bad record anywhere else is corruption, handled per [`Recovery`].
//! - A last segment no longer than its header, with a bad header, is a
//!   crash while creating it: it is removed.
//! - The next message id is above every id seen and at least every
//!   segment's base id, so ids keep increasing even when every segment
//!   holding messages was reclaimed.

use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;

use super::index::Index;
use super::read::read_segment;
use super::{LogConfig, Recovered, Recovery, RecoveryReport};
use crate::backend::{read_exact_at, Backend, BackendFile};
use crate::error::{Result, StoreError};
use crate::format::{
    decode_header, parse_record, parse_segment_name, segment_path, HeaderError, Next, Record,
    SegmentReader, HEADER_LEN,
};

/// What `Recovered::queues` holds.
type Queues = BTreeMap<u32, Vec<(u64, Option<Bytes>)>>;

/// The first message id of a new log.
pub(crate) const FIRST_MESSAGE_ID: u64 = 1;

/// What the writer starts from.
pub(crate) struct RecoveredLog {
    pub(crate) index: Index,
    /// The last segment, to keep appending to: number, file, length.
    pub(crate) active: Option<(u64, Box<dyn BackendFile>, u64)>,
    pub(crate) next_id: u64,
    pub(crate) next_segment: u64,
    pub(crate) recovered: Recovered,
}

pub(crate) fn recover(
    backend: &dyn Backend,
    dir: &Path,
    config: &LogConfig,
) -> Result<RecoveredLog> {
    backend
        .create_dir_all(dir)
        .map_err(|e| StoreError::io("create directory", dir, e))?;
    let mut numbers = Vec::new();
    for path in backend
        .list(dir)
        .map_err(|e| StoreError::io("list", dir, e))?
    {
        match parse_segment_name(&path) {
            Some(n) => numbers.push(n),
            None => {
                tracing::warn!(message = "Ignoring a file that is not a segment.", path = %path.display())
            }
        }
    }
    numbers.sort_unstable();
    let mut report = RecoveryReport::default();
    let last = numbers.last().copied();
    if let Some(number) = last {
        if drop_torn_creation(backend, dir, number)? {
            numbers.pop();
            report.dropped_segments += 1;
        }
    }

    let mut index = Index::default();
    let mut next_id = FIRST_MESSAGE_ID;
    let mut active = None;
    let last_left = numbers.last().copied();

    for &number in &numbers {
        let is_last = Some(number) == last_left;
        let path = segment_path(dir, number);
        let mut file = backend
            .open(&path, false)
            .map_err(|e| StoreError::io("open", &path, e))?;
        let file_len = file.len().map_err(|e| StoreError::io("stat", &path, e))?;
        report.segments += 1;

        let mut head = vec![0u8; file_len.min(HEADER_LEN) as usize];
        read_exact_at(file.as_ref(), 0, &mut head).map_err(|e| StoreError::io("read", &path, e))?;
        let header = decode_header(&head).and_then(|h| {
            if h.number == number {
                Ok(h)
            } else {
                Err(HeaderError::Invalid(
                    "segment number in header does not match its name",
                ))
            }
        });
        let header = match header {
            Ok(h) => h,
            Err(HeaderError::Version(version)) => {
                return Err(StoreError::UnsupportedVersion { path, version })
            }
            Err(HeaderError::Invalid(reason)) => match config.recovery {
                Recovery::Strict => {
                    return Err(StoreError::Corrupt {
                        segment: path,
                        offset: 0,
                        reason,
                    })
                }
                Recovery::TolerateCorruptTail => {
                    tracing::error!(
                        message = "Skipping a segment with a corrupt header.",
                        path = %path.display(),
                        reason,
                    );
                    // Known but empty: reclaimed like any segment without
                    // live messages.
                    index.add_segment(number, file_len);
                    report.skipped.push((path, 0));
                    continue;
                }
            },
        };
        next_id = next_id.max(header.base_id);
        index.add_segment(number, file_len);

        let mut reader =
            SegmentReader::new(file.as_ref(), file_len, HEADER_LEN, config.read_buffer);
        let bad = loop {
            let (offset, kind, payload) = match reader
                .next()
                .map_err(|e| StoreError::io("read", &path, e))?
            {
                Next::End => break None,
                Next::Bad { offset, reason } => break Some((offset, reason)),
                Next::Record {
                    offset,
                    kind,
                    payload,
                } => (offset, kind, payload),
            };
            match parse_record(kind, payload) {
                Err(reason) => break Some((offset, reason)),
                Ok(Record::Message { id, queues, .. }) => {
                    report.records += 1;
                    next_id = next_id.max(id.saturating_add(1));
                    if !index.add_message(number, offset, id, queues.iter()) {
                        tracing::warn!(message = "Ignoring a repeated message id.", id, path = %path.display());
                    }
                }
                Ok(Record::Ack(pairs)) => {
                    report.records += 1;
                    for (queue, id) in pairs.iter() {
                        if let Some(acked) = index.ack(queue, id) {
                            index.add_ref(number, acked.segment);
                        }
                    }
                }
            }
        };
        drop(reader);

        let mut len = file_len;
        if let Some((offset, reason)) = bad {
            if is_last {
                tracing::warn!(
                    message = "Dropping a torn write at the end of the log.",
                    path = %path.display(),
                    offset,
                    bytes = file_len - offset,
                    reason,
                );
                file.set_len(offset)
                    .map_err(|e| StoreError::io("truncate", &path, e))?;
                file.sync_data()
                    .map_err(|e| StoreError::io("sync", &path, e))?;
                report.torn_tail_bytes = file_len - offset;
                len = offset;
                index.set_size(number, len);
            } else {
                match config.recovery {
                    Recovery::Strict => {
                        return Err(StoreError::Corrupt {
                            segment: path,
                            offset,
                            reason,
                        })
                    }
                    Recovery::TolerateCorruptTail => {
                        tracing::error!(
                            message = "Skipping the rest of a corrupt segment.",
                            path = %path.display(),
                            offset,
                            reason,
                        );
                        report.skipped.push((path, offset));
                    }
                }
            }
        }
        if is_last {
            active = Some((number, file, len));
        }
    }

    let queues = recovered_queues(
        backend,
        dir,
        &index,
        config.recovered_bodies_per_queue,
        config.read_buffer,
    )?;
    Ok(RecoveredLog {
        index,
        active,
        next_id,
        next_segment: last.map_or(1, |n| n + 1),
        recovered: Recovered {
            queues,
            next_message_id: next_id,
            report,
        },
    })
}

/// The second pass: every live message under each of its queues, in id
/// order, with the body read back for the first `budget` of each queue.
fn recovered_queues(
    backend: &dyn Backend,
    dir: &Path,
    index: &Index,
    budget: usize,
    read_buffer: usize,
) -> Result<Queues> {
    let mut queues = Queues::new();
    // (segment, offset, id) of the messages whose body is returned.
    let mut wanted: Vec<(u64, u64, u64)> = Vec::new();
    for m in index.live_in_order() {
        let mut needed = false;
        for queue in m.queues() {
            let list = queues.entry(queue).or_default();
            needed |= list.len() < budget;
            list.push((m.id, None));
        }
        if needed {
            let (segment, offset) = m.location();
            wanted.push((segment, offset, m.id));
        }
    }
    wanted.sort_unstable();

    let mut bodies: Vec<(u64, Bytes)> = Vec::with_capacity(wanted.len());
    let mut locs: Vec<(u64, u64)> = Vec::new();
    let mut rest = &wanted[..];
    while let Some(&(segment, ..)) = rest.first() {
        let n = rest.partition_point(|w| w.0 == segment);
        locs.clear();
        locs.extend(rest[..n].iter().map(|&(_, offset, id)| (id, offset)));
        rest = &rest[n..];
        let path = segment_path(dir, segment);
        let file = backend
            .open(&path, false)
            .map_err(|e| StoreError::io("open", &path, e))?;
        let len = index.segment_size(segment).unwrap_or(0);
        read_segment(
            file.as_ref(),
            dir,
            segment,
            len,
            &locs,
            read_buffer,
            &mut bodies,
        )?;
    }
    bodies.sort_unstable_by_key(|(id, _)| *id);

    for list in queues.values_mut() {
        for (id, body) in list.iter_mut().take(budget) {
            if let Ok(i) = bodies.binary_search_by_key(id, |(b, _)| *b) {
                *body = Some(bodies[i].1.clone());
            }
        }
    }
    Ok(queues)
}

/// Removes segment `number` if it is a crash while creating it: a file no
/// longer than a header whose header is not valid (a segment's header is
/// fsynced before any record is written to it). Returns whether it did.
fn drop_torn_creation(backend: &dyn Backend, dir: &Path, number: u64) -> Result<bool> {
    let path = segment_path(dir, number);
    let file = backend
        .open(&path, false)
        .map_err(|e| StoreError::io("open", &path, e))?;
    let file_len = file.len().map_err(|e| StoreError::io("stat", &path, e))?;
    if file_len > HEADER_LEN {
        return Ok(false);
    }
    let mut head = vec![0u8; file_len as usize];
    read_exact_at(file.as_ref(), 0, &mut head).map_err(|e| StoreError::io("read", &path, e))?;
    let reason = match decode_header(&head) {
        Err(HeaderError::Invalid(reason)) => reason,
        Ok(_) | Err(HeaderError::Version(_)) => return Ok(false),
    };
    drop(file);
    tracing::warn!(
        message = "Removing a segment whose creation a crash interrupted.",
        path = %path.display(),
        reason,
    );
    backend
        .remove(&path)
        .map_err(|e| StoreError::io("remove", &path, e))?;
    backend
        .sync_dir(dir)
        .map_err(|e| StoreError::io("sync directory", dir, e))?;
    Ok(true)
}
