//! Reading message bodies back from the segments: [`super::MessageLog::read`]
//! and the second pass of recovery.
//!
//! The index keeps, for every live message, the segment and byte offset of
//! its record, so a read needs no search: the wanted records of one segment
//! are visited in offset order through one [`SegmentReader`], which skips
//! forward inside its buffer when the next wanted record is already there
//! and otherwise reads just enough to cover the wanted records close
//! together (consecutive messages of a queue come in one read). Every
//! record returned has had its checksum verified; a record that fails, or
//! that is not the message the index says it is, is
//! [`StoreError::Corrupt`].

use std::collections::HashMap;
use std::path::Path;

use bytes::Bytes;

use crate::backend::BackendFile;
use crate::error::{Result, StoreError};
use crate::format::{parse_record, segment_path, Next, Record, SegmentReader};

/// Most bytes one read of a segment file asks for (unless one record is
/// bigger) when serving [`super::MessageLog::read`].
pub(crate) const READ_CHUNK: usize = 64 * 1024;
/// What a read asks for beyond the start of the last wanted record it
/// covers, whose length is not known before its header is read. A larger
/// record takes a second read.
const TAIL: usize = 4 * 1024;
/// Most read handles kept open, over all segments.
pub(crate) const MAX_READ_HANDLES: usize = 64;

/// Reads the message records of segment `number` (`len` bytes written) at
/// `locs`, pairs of (message id, record offset) sorted by offset, and
/// appends `(id, body)` to `out` in that order. Reads ask for at most
/// `max_chunk` bytes unless a record is larger.
pub(crate) fn read_segment(
    file: &dyn BackendFile,
    dir: &Path,
    number: u64,
    len: u64,
    locs: &[(u64, u64)],
    max_chunk: usize,
    out: &mut Vec<(u64, Bytes)>,
) -> Result<()> {
    let Some(&(_, first)) = locs.first() else {
        return Ok(());
    };
    let max_chunk = max_chunk.max(128);
    let tail = TAIL.min(max_chunk / 2);
    let reach = (max_chunk - tail) as u64;
    let mut reader = SegmentReader::new(file, len, first, max_chunk);
    let mut run_end = 0;
    for (i, &(id, offset)) in locs.iter().enumerate() {
        // If the buffer must be refilled here, one read covers every
        // wanted record starting within `reach` of this one.
        run_end = run_end.max(i);
        while run_end + 1 < locs.len() && locs[run_end + 1].1.saturating_sub(offset) <= reach {
            run_end += 1;
        }
        let span = locs[run_end].1 - offset;
        // `span` is at most `reach`, which is a usize.
        reader.set_chunk(span as usize + tail);
        reader.seek(offset);
        let corrupt = |reason| StoreError::Corrupt {
            segment: segment_path(dir, number),
            offset,
            reason,
        };
        let next = reader
            .next()
            .map_err(|e| StoreError::io("read", segment_path(dir, number), e))?;
        match next {
            Next::Record { kind, payload, .. } => match parse_record(kind, payload) {
                Ok(Record::Message { id: got, body, .. }) if got == id => {
                    out.push((id, Bytes::copy_from_slice(body)));
                }
                Ok(_) => {
                    return Err(corrupt(
                        "the record at a live message's offset is not that message",
                    ))
                }
                Err(reason) => return Err(corrupt(reason)),
            },
            Next::Bad { reason, .. } => return Err(corrupt(reason)),
            Next::End => return Err(corrupt("segment ends before a live message's record")),
        }
    }
    Ok(())
}

/// Open read handles of segment files, kept between reads. A handle is
/// taken out while in use (a [`BackendFile`] is not `Sync`: a read may be a
/// seek then a read), so concurrent readers of one segment use different
/// handles; the writer drops a segment's handles when it reclaims it.
#[derive(Default)]
pub(crate) struct Handles {
    files: HashMap<u64, Vec<Box<dyn BackendFile>>>,
    count: usize,
}

impl Handles {
    /// A cached handle of segment `number`, if there is one.
    pub(crate) fn take(&mut self, number: u64) -> Option<Box<dyn BackendFile>> {
        let list = self.files.get_mut(&number)?;
        let file = list.pop();
        if list.is_empty() {
            self.files.remove(&number);
        }
        if file.is_some() {
            self.count -= 1;
        }
        file
    }

    /// Keeps `file` for the next read of segment `number`, unless the
    /// cache is full (then it is closed).
    pub(crate) fn put(&mut self, number: u64, file: Box<dyn BackendFile>) {
        if self.count < MAX_READ_HANDLES {
            self.files.entry(number).or_default().push(file);
            self.count += 1;
        }
    }

    /// Closes the handles of segment `number`.
    pub(crate) fn forget(&mut self, number: u64) {
        if let Some(list) = self.files.remove(&number) {
            self.count -= list.len();
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Backend, MemoryBackend};

    #[test]
    fn handle_cache_is_bounded_and_forgets_segments() {
        let backend = MemoryBackend::new();
        backend.create_dir_all(Path::new("/d")).expect("dir");
        let open = || backend.open(Path::new("/d/f"), true).expect("open");
        let mut handles = Handles::default();
        assert!(handles.take(1).is_none());
        for _ in 0..3 {
            handles.put(1, open());
        }
        handles.put(2, open());
        assert_eq!(handles.len(), 4);
        assert!(handles.take(1).is_some());
        assert_eq!(handles.len(), 3);
        handles.forget(1);
        assert_eq!(handles.len(), 1);
        assert!(handles.take(1).is_none());
        for _ in 0..2 * MAX_READ_HANDLES {
            handles.put(3, open());
        }
        assert_eq!(handles.len(), MAX_READ_HANDLES);
    }
}
