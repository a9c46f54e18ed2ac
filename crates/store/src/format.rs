//! The on-disk format of the message log, byte by byte (also in
//! `docs/store-format.md`). All integers are little-endian.
//!
//! A segment file, `<dir>/<number as 20 decimal digits>.seg`, is a 32-byte
//! header followed by records:
//!
//! ```text
//! header   0..8    magic "LIEBRLOG"
//!          8..12   format version (u32) = 1
//!          12..20  segment number (u64), the same as in the file name
//!          20..28  base message id (u64): the id the next message would have
//!                  had when the segment was created
//!          28..32  CRC32C (u32) of bytes 0..28
//! record   0..4    length (u32) of what follows the checksum: kind + payload
//!          4..8    CRC32C (u32) of those `length` bytes
//!          8       kind (u8): 1 message, 2 ack
//!          9..     payload
//! message  id (u64) | queue count n (u32) | n queue ids (u32 each) | body (rest)
//! ack      m pairs of (queue id u32, message id u64), m = payload length / 12
//! ```

use std::io;
use std::path::{Path, PathBuf};

use crate::backend::BackendFile;

/// The first eight bytes of every segment file.
pub(crate) const MAGIC: [u8; 8] = *b"LIEBRLOG";
/// The format version this build writes and reads.
pub(crate) const VERSION: u32 = 1;
/// Size of the segment header.
pub(crate) const HEADER_LEN: u64 = 32;
/// Size of a record's length and checksum fields.
pub(crate) const RECORD_HEADER_LEN: usize = 8;
/// Record kind: a message routed to one or more queues.
pub(crate) const KIND_MESSAGE: u8 = 1;
/// Record kind: acknowledgements of (queue, message) pairs.
pub(crate) const KIND_ACK: u8 = 2;
/// Fixed part of a message record: header, kind, id, queue count.
pub(crate) const MESSAGE_OVERHEAD: usize = RECORD_HEADER_LEN + 1 + 8 + 4;
/// Bytes per (queue, message) pair in an ack record.
pub(crate) const ACK_PAIR_LEN: usize = 12;
/// Most pairs one ack record holds; longer lists take several records.
pub(crate) const MAX_ACK_PAIRS: usize = 65_536;
/// File name suffix of segment files.
const SUFFIX: &str = ".seg";

/// The path of segment `number` in `dir`.
pub(crate) fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:020}{SUFFIX}"))
}

/// The segment number a file name stands for, if it is a segment's name.
pub(crate) fn parse_segment_name(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    let digits = name.strip_suffix(SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A decoded segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    pub(crate) number: u64,
    pub(crate) base_id: u64,
}

/// Why a segment header could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeaderError {
    /// Shorter than a header, wrong magic or wrong checksum.
    Invalid(&'static str),
    /// A valid header of a format version this build cannot read.
    Version(u32),
}

pub(crate) fn encode_header(header: SegmentHeader) -> [u8; HEADER_LEN as usize] {
    let mut out = [0u8; HEADER_LEN as usize];
    out[0..8].copy_from_slice(&MAGIC);
    out[8..12].copy_from_slice(&VERSION.to_le_bytes());
    out[12..20].copy_from_slice(&header.number.to_le_bytes());
    out[20..28].copy_from_slice(&header.base_id.to_le_bytes());
    let crc = crc32c::crc32c(&out[0..28]);
    out[28..32].copy_from_slice(&crc.to_le_bytes());
    out
}

pub(crate) fn decode_header(bytes: &[u8]) -> Result<SegmentHeader, HeaderError> {
    let Some(bytes) = bytes.get(..HEADER_LEN as usize) else {
        return Err(HeaderError::Invalid("segment shorter than its header"));
    };
    if bytes[0..8] != MAGIC {
        return Err(HeaderError::Invalid("bad segment magic"));
    }
    if crc32c::crc32c(&bytes[0..28]) != le_u32(&bytes[28..32]) {
        return Err(HeaderError::Invalid("segment header checksum mismatch"));
    }
    let version = le_u32(&bytes[8..12]);
    if version != VERSION {
        return Err(HeaderError::Version(version));
    }
    Ok(SegmentHeader {
        number: le_u64(&bytes[12..20]),
        base_id: le_u64(&bytes[20..28]),
    })
}

/// The encoded size of a message record.
pub(crate) fn message_record_len(queues: usize, body: usize) -> usize {
    MESSAGE_OVERHEAD + 4 * queues + body
}

/// The encoded size of an ack record of `pairs` pairs.
pub(crate) fn ack_record_len(pairs: usize) -> usize {
    RECORD_HEADER_LEN + 1 + ACK_PAIR_LEN * pairs
}

/// Appends a message record to `out`.
pub(crate) fn encode_message(out: &mut Vec<u8>, id: u64, queues: &[u32], body: &[u8]) {
    let start = begin_record(
        out,
        KIND_MESSAGE,
        message_record_len(queues.len(), body.len()),
    );
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&(queues.len() as u32).to_le_bytes());
    for q in queues {
        out.extend_from_slice(&q.to_le_bytes());
    }
    out.extend_from_slice(body);
    finish_record(out, start);
}

/// Appends an ack record of `pairs` (queue, message) to `out`.
pub(crate) fn encode_ack(out: &mut Vec<u8>, pairs: &[(u32, u64)]) {
    let start = begin_record(out, KIND_ACK, ack_record_len(pairs.len()));
    for (queue, id) in pairs {
        out.extend_from_slice(&queue.to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
    }
    finish_record(out, start);
}

fn begin_record(out: &mut Vec<u8>, kind: u8, total: usize) -> usize {
    out.reserve(total);
    let start = out.len();
    out.extend_from_slice(&[0u8; RECORD_HEADER_LEN]);
    out.push(kind);
    start
}

fn finish_record(out: &mut [u8], start: usize) {
    let covered = &out[start + RECORD_HEADER_LEN..];
    // Callers keep records far below 4 GiB (`max_message_size`).
    let len = covered.len() as u32;
    let crc = crc32c::crc32c(covered);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// A decoded record, borrowing the reader's buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Record<'a> {
    /// A message: its id, the queues it was routed to, its opaque body.
    Message {
        id: u64,
        queues: QueueIds<'a>,
        body: &'a [u8],
    },
    /// Acknowledgements.
    Ack(AckPairs<'a>),
}

/// The queue ids of a message record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QueueIds<'a>(&'a [u8]);

impl QueueIds<'_> {
    pub(crate) fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.chunks_exact(4).map(le_u32)
    }

    #[cfg(test)]
    pub(crate) fn to_vec(self) -> Vec<u32> {
        self.iter().collect()
    }
}

/// The (queue, message) pairs of an ack record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AckPairs<'a>(&'a [u8]);

impl AckPairs<'_> {
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.0
            .chunks_exact(ACK_PAIR_LEN)
            .map(|c| (le_u32(&c[0..4]), le_u64(&c[4..12])))
    }
}

/// Interprets a record's kind and payload (its checksum already checked).
pub(crate) fn parse_record(kind: u8, payload: &[u8]) -> Result<Record<'_>, &'static str> {
    match kind {
        KIND_MESSAGE => {
            if payload.len() < 12 {
                return Err("message record shorter than its fixed fields");
            }
            let id = le_u64(&payload[0..8]);
            let count = le_u32(&payload[8..12]) as usize;
            let ids_end = count
                .checked_mul(4)
                .and_then(|n| n.checked_add(12))
                .filter(|end| *end <= payload.len())
                .ok_or("message record queue list runs past the record")?;
            Ok(Record::Message {
                id,
                queues: QueueIds(&payload[12..ids_end]),
                body: &payload[ids_end..],
            })
        }
        KIND_ACK => {
            if !payload.len().is_multiple_of(ACK_PAIR_LEN) {
                return Err("ack record length is not a multiple of 12");
            }
            Ok(Record::Ack(AckPairs(payload)))
        }
        _ => Err("unknown record kind"),
    }
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// What [`SegmentReader::next`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Next<'a> {
    /// A record whose checksum holds, at `offset` in the file.
    Record {
        offset: u64,
        kind: u8,
        payload: &'a [u8],
    },
    /// The end of the file, exactly at a record boundary.
    End,
    /// Bytes at `offset` that are not a whole, valid record: a torn write
    /// or corruption.
    Bad { offset: u64, reason: &'static str },
}

/// Reads the records of one segment front to back through a buffer of
/// bounded size (grown only for a record larger than it), so recovery never
/// holds a whole segment in memory.
#[derive(Debug)]
pub(crate) struct SegmentReader<'f> {
    file: &'f dyn BackendFile,
    len: u64,
    buf: Vec<u8>,
    /// File offset of `buf[start]`.
    offset: u64,
    start: usize,
    end: usize,
    chunk: usize,
}

impl<'f> SegmentReader<'f> {
    /// A reader starting at `offset` of a file of `len` bytes.
    pub(crate) fn new(file: &'f dyn BackendFile, len: u64, offset: u64, chunk: usize) -> Self {
        Self {
            file,
            len,
            buf: Vec::new(),
            offset,
            start: 0,
            end: 0,
            chunk: chunk.max(64),
        }
    }

    /// Makes at least `need` bytes available from `start`; false when the
    /// file ends first.
    fn fill(&mut self, need: usize) -> io::Result<bool> {
        if self.end - self.start >= need {
            return Ok(true);
        }
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        // Read `chunk` bytes at a time, more only for a larger record.
        let target = need.max(self.chunk);
        if self.buf.len() < target {
            self.buf.resize(target, 0);
        }
        while self.end < need {
            let at = self.offset + self.end as u64;
            if at >= self.len {
                return Ok(false);
            }
            // Never read past the length recovery decided on.
            let room =
                (target - self.end).min(usize::try_from(self.len - at).unwrap_or(usize::MAX));
            match self
                .file
                .read_at(at, &mut self.buf[self.end..self.end + room])
            {
                Ok(0) => return Ok(false),
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Moves to `offset`, where the next record is read from. Bytes
    /// already buffered are kept when `offset` lies within them (a forward
    /// skip costs no read); otherwise the buffer is emptied.
    pub(crate) fn seek(&mut self, offset: u64) {
        let buffered = (self.end - self.start) as u64;
        match offset.checked_sub(self.offset) {
            Some(skip) if skip <= buffered => {
                // `skip` fits: it is at most the buffered length.
                self.start += skip as usize;
            }
            _ => {
                self.start = 0;
                self.end = 0;
            }
        }
        self.offset = offset;
    }

    /// Sets how many bytes each read of the file asks for (at least 64).
    pub(crate) fn set_chunk(&mut self, chunk: usize) {
        self.chunk = chunk.max(64);
    }

    /// The next record, the end, or the first bad bytes.
    pub(crate) fn next(&mut self) -> io::Result<Next<'_>> {
        let offset = self.offset;
        if offset >= self.len {
            return Ok(Next::End);
        }
        if !self.fill(RECORD_HEADER_LEN)? {
            return Ok(Next::Bad {
                offset,
                reason: "truncated record header",
            });
        }
        let h = &self.buf[self.start..self.start + RECORD_HEADER_LEN];
        let len = le_u32(&h[0..4]) as usize;
        let crc = le_u32(&h[4..8]);
        if len == 0 {
            return Ok(Next::Bad {
                offset,
                reason: "zero-length record",
            });
        }
        let remaining = self.len - offset - RECORD_HEADER_LEN as u64;
        if len as u64 > remaining {
            return Ok(Next::Bad {
                offset,
                reason: "record runs past the end of the segment",
            });
        }
        if !self.fill(RECORD_HEADER_LEN + len)? {
            return Ok(Next::Bad {
                offset,
                reason: "record runs past the end of the segment",
            });
        }
        let body_start = self.start + RECORD_HEADER_LEN;
        let body_end = body_start + len;
        if crc32c::crc32c(&self.buf[body_start..body_end]) != crc {
            return Ok(Next::Bad {
                offset,
                reason: "record checksum mismatch",
            });
        }
        self.start = body_end;
        self.offset += (RECORD_HEADER_LEN + len) as u64;
        Ok(Next::Record {
            offset,
            kind: self.buf[body_start],
            payload: &self.buf[body_start + 1..body_end],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Backend, MemoryBackend};

    #[test]
    fn header_round_trip_and_rejects_damage() {
        let h = SegmentHeader {
            number: 7,
            base_id: 1234,
        };
        let mut bytes = encode_header(h);
        assert_eq!(decode_header(&bytes), Ok(h));
        assert!(matches!(
            decode_header(&bytes[..31]),
            Err(HeaderError::Invalid(_))
        ));
        bytes[21] ^= 1;
        assert!(matches!(
            decode_header(&bytes),
            Err(HeaderError::Invalid(_))
        ));
    }

    #[test]
    fn header_with_future_version_is_reported_as_such() {
        let mut bytes = encode_header(SegmentHeader {
            number: 1,
            base_id: 1,
        });
        bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
        let crc = crc32c::crc32c(&bytes[0..28]);
        bytes[28..32].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode_header(&bytes), Err(HeaderError::Version(2)));
    }

    #[test]
    fn segment_names() {
        let p = segment_path(Path::new("/d"), 42);
        assert_eq!(p, Path::new("/d/00000000000000000042.seg"));
        assert_eq!(parse_segment_name(&p), Some(42));
        assert_eq!(parse_segment_name(Path::new("/d/42.seg")), None);
        assert_eq!(
            parse_segment_name(Path::new("/d/0000000000000000004x.seg")),
            None
        );
        assert_eq!(
            parse_segment_name(Path::new("/d/00000000000000000042.tmp")),
            None
        );
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    /// The bytes shown in docs/store-format.md.
    #[test]
    fn golden_bytes_match_the_documentation() {
        assert_eq!(
            encode_header(SegmentHeader {
                number: 1,
                base_id: 1
            })
            .to_vec(),
            unhex("4c494542524c4f47010000000100000000000000010000000000000051f3a67b")
        );
        let mut msg = Vec::new();
        encode_message(&mut msg, 1, &[3, 5], b"hello");
        assert_eq!(
            msg,
            unhex("1a00000017bf41c801010000000000000002000000030000000500000068656c6c6f")
        );
        assert_eq!(msg.len(), message_record_len(2, 5));
        let mut ack = Vec::new();
        encode_ack(&mut ack, &[(3, 1), (5, 1)]);
        assert_eq!(
            ack,
            unhex("19000000b3172d0002030000000100000000000000050000000100000000000000")
        );
        let Ok(Record::Message { id, queues, body }) = parse_record(msg[8], &msg[9..]) else {
            panic!("not a message")
        };
        assert_eq!((id, queues.to_vec(), body), (1, vec![3, 5], &b"hello"[..]));
    }

    #[test]
    fn ack_record_round_trip() {
        let mut out = Vec::new();
        let pairs = [(1u32, 10u64), (2, u64::MAX)];
        encode_ack(&mut out, &pairs);
        assert_eq!(out.len(), ack_record_len(2));
        let Ok(Record::Ack(got)) = parse_record(out[8], &out[9..]) else {
            panic!("not an ack")
        };
        assert_eq!(got.iter().collect::<Vec<_>>(), pairs);
    }

    #[test]
    fn malformed_payloads_are_refused() {
        assert!(parse_record(KIND_MESSAGE, &[0; 11]).is_err());
        let mut p = vec![0u8; 12];
        p[8..12].copy_from_slice(&5u32.to_le_bytes());
        assert!(parse_record(KIND_MESSAGE, &p).is_err());
        assert!(parse_record(KIND_ACK, &[0; 13]).is_err());
        assert!(parse_record(9, &[]).is_err());
    }

    /// Records larger than the read buffer and records straddling buffer
    /// refills come out whole.
    #[test]
    fn reader_handles_records_across_and_beyond_its_buffer() {
        let backend = MemoryBackend::new();
        backend.create_dir_all(Path::new("/d")).expect("dir");
        let mut file = backend.open(Path::new("/d/f"), true).expect("open");
        let mut bytes = Vec::new();
        let bodies: Vec<Vec<u8>> = (0..50u8).map(|i| vec![i; usize::from(i) * 7]).collect();
        for (i, body) in bodies.iter().enumerate() {
            encode_message(&mut bytes, i as u64, &[1], body);
        }
        file.write_all_at(0, &bytes).expect("write");
        let mut reader = SegmentReader::new(file.as_ref(), bytes.len() as u64, 0, 64);
        for (i, body) in bodies.iter().enumerate() {
            let Next::Record { kind, payload, .. } = reader.next().expect("io") else {
                panic!("expected record {i}")
            };
            let Ok(Record::Message { id, body: got, .. }) = parse_record(kind, payload) else {
                panic!("bad record {i}")
            };
            assert_eq!(id, i as u64);
            assert_eq!(got, &body[..]);
        }
        assert_eq!(reader.next().expect("io"), Next::End);
    }

    /// Seeking forward inside the buffer reads nothing more; seeking
    /// elsewhere refills it; a chunk bounds each read.
    #[test]
    fn reader_seeks_to_record_offsets() {
        #[derive(Debug)]
        struct Counting(Box<dyn BackendFile>, std::cell::Cell<usize>);
        impl BackendFile for Counting {
            fn len(&self) -> io::Result<u64> {
                self.0.len()
            }
            fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
                self.1.set(self.1.get() + 1);
                self.0.read_at(offset, buf)
            }
            fn write_all_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
                self.0.write_all_at(offset, data)
            }
            fn set_len(&mut self, len: u64) -> io::Result<()> {
                self.0.set_len(len)
            }
            fn sync_data(&mut self) -> io::Result<()> {
                self.0.sync_data()
            }
        }
        let backend = MemoryBackend::new();
        backend.create_dir_all(Path::new("/d")).expect("dir");
        let mut file = backend.open(Path::new("/d/f"), true).expect("open");
        let mut bytes = Vec::new();
        let mut offsets = Vec::new();
        for i in 0..100u64 {
            offsets.push(bytes.len() as u64);
            encode_message(&mut bytes, i, &[1], &[i as u8; 20]);
        }
        file.write_all_at(0, &bytes).expect("write");
        let file = Counting(file, std::cell::Cell::new(0));
        let id_at = |reader: &mut SegmentReader<'_>, offset: u64| {
            reader.seek(offset);
            let Next::Record { kind, payload, .. } = reader.next().expect("io") else {
                panic!("no record at {offset}")
            };
            let Ok(Record::Message { id, .. }) = parse_record(kind, payload) else {
                panic!("not a message")
            };
            id
        };
        let mut reader = SegmentReader::new(&file, bytes.len() as u64, offsets[3], 4096);
        assert_eq!(id_at(&mut reader, offsets[3]), 3);
        assert_eq!(file.1.get(), 1);
        // Forward within the buffer: no read.
        assert_eq!(id_at(&mut reader, offsets[10]), 10);
        assert_eq!(id_at(&mut reader, offsets[50]), 50);
        assert_eq!(file.1.get(), 1);
        // Backwards: a new read.
        assert_eq!(id_at(&mut reader, offsets[0]), 0);
        assert_eq!(file.1.get(), 2);
        // A small chunk: one read per record past the 4096 bytes buffered.
        reader.set_chunk(64);
        assert_eq!(id_at(&mut reader, offsets[95]), 95);
        assert_eq!(id_at(&mut reader, offsets[99]), 99);
        assert_eq!(file.1.get(), 4);
    }

    #[test]
    fn reader_reports_torn_and_corrupt_records() {
        let backend = MemoryBackend::new();
        backend.create_dir_all(Path::new("/d")).expect("dir");
        let mut file = backend.open(Path::new("/d/f"), true).expect("open");
        let mut bytes = Vec::new();
        encode_message(&mut bytes, 1, &[1], b"first");
        let second = bytes.len() as u64;
        encode_message(&mut bytes, 2, &[1], b"second");
        file.write_all_at(0, &bytes).expect("write");

        // Torn: the file ends inside the second record.
        let mut reader = SegmentReader::new(file.as_ref(), bytes.len() as u64 - 1, 0, 1024);
        assert!(matches!(
            reader.next().expect("io"),
            Next::Record { offset: 0, .. }
        ));
        assert!(matches!(reader.next().expect("io"), Next::Bad { offset, .. } if offset == second));

        // Corrupt: a flipped bit in the second record's body.
        let last = bytes.len() as u64 - 1;
        file.write_all_at(last, &[bytes[bytes.len() - 1] ^ 0x40])
            .expect("write");
        let mut reader = SegmentReader::new(file.as_ref(), bytes.len() as u64, 0, 1024);
        assert!(matches!(reader.next().expect("io"), Next::Record { .. }));
        assert_eq!(
            reader.next().expect("io"),
            Next::Bad {
                offset: second,
                reason: "record checksum mismatch"
            }
        );
    }
}
