//! The message stamp: what every benchmark message carries in its first 16
//! bytes, and the clock it is measured with.
//!
//! Layout (big-endian):
//!
//! | bytes | field |
//! |-------|-------|
//! | 0..8  | message id: producer number in the top [`PRODUCER_BITS`] bits, the producer's own sequence number (from 0) in the low [`SEQ_BITS`] |
//! | 8..16 | send time in nanoseconds since the run's start ([`Clock`]) |
//! | 16..  | zero padding up to `--size` |
//!
//! Putting the producer in the id lets a consumer tell producers apart
//! without any other header, so the same payload works on AMQP and MQTT.

use std::time::Instant;

/// Size of the stamp, and so the smallest message.
pub const STAMP_LEN: usize = 16;

/// Bits of the message id that hold the per-producer sequence number.
pub const SEQ_BITS: u32 = 40;
/// Bits of the message id that hold the producer number.
pub const PRODUCER_BITS: u32 = 64 - SEQ_BITS;
/// Largest sequence number a producer can send.
pub const MAX_SEQ: u64 = (1 << SEQ_BITS) - 1;
/// Most producers in one run.
pub const MAX_PRODUCERS: u32 = 1 << PRODUCER_BITS;

/// What a consumer reads back from a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Producer number, 0-based.
    pub producer: u32,
    /// The producer's sequence number, 0-based.
    pub seq: u64,
    /// Send time, ns since the run's start.
    pub sent_ns: u64,
}

/// The message id for `producer`'s message `seq`.
pub fn message_id(producer: u32, seq: u64) -> u64 {
    (u64::from(producer) << SEQ_BITS) | (seq & MAX_SEQ)
}

/// Writes the 16-byte stamp into the front of `out`.
///
/// # Panics
/// When `out` is shorter than [`STAMP_LEN`].
pub fn stamp(out: &mut [u8], producer: u32, seq: u64, sent_ns: u64) {
    out[..8].copy_from_slice(&message_id(producer, seq).to_be_bytes());
    out[8..16].copy_from_slice(&sent_ns.to_be_bytes());
}

/// Appends the stamp and `size - 16` bytes of padding (at least the stamp).
pub fn put_payload(out: &mut bytes::BytesMut, size: usize, producer: u32, seq: u64, sent_ns: u64) {
    let mut head = [0u8; STAMP_LEN];
    stamp(&mut head, producer, seq, sent_ns);
    out.extend_from_slice(&head);
    put_zeros(out, size.saturating_sub(STAMP_LEN));
}

/// Appends `n` zero bytes.
pub fn put_zeros(out: &mut bytes::BytesMut, n: usize) {
    static ZEROS: [u8; 4096] = [0; 4096];
    let mut left = n;
    while left > 0 {
        let k = left.min(ZEROS.len());
        out.extend_from_slice(&ZEROS[..k]);
        left -= k;
    }
}

/// Reads the stamp from the front of a payload; `None` when it is shorter
/// than [`STAMP_LEN`] (not a benchmark message).
pub fn parse(payload: &[u8]) -> Option<Stamp> {
    let id = u64::from_be_bytes(payload.get(..8)?.try_into().ok()?);
    let sent_ns = u64::from_be_bytes(payload.get(8..16)?.try_into().ok()?);
    Some(Stamp {
        producer: u32::try_from(id >> SEQ_BITS).unwrap_or(u32::MAX),
        seq: id & MAX_SEQ,
        sent_ns,
    })
}

/// The run's monotonic clock: every task of the process reads the same
/// start instant, so a consumer can subtract a producer's send time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
}

impl Clock {
    /// A clock starting now.
    pub fn start() -> Self {
        Self {
            start: Instant::now(),
        }
    }

    /// Nanoseconds since the start.
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The instant `ns` nanoseconds after the start.
    pub fn instant_at(&self, ns: u64) -> Instant {
        self.start + std::time::Duration::from_nanos(ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trips() {
        let mut buf = [0u8; 32];
        stamp(&mut buf, 7, 123_456, 987_654_321);
        let s = parse(&buf).unwrap();
        assert_eq!(
            s,
            Stamp {
                producer: 7,
                seq: 123_456,
                sent_ns: 987_654_321
            }
        );
    }

    #[test]
    fn stamp_extremes() {
        let mut buf = [0u8; 16];
        stamp(&mut buf, MAX_PRODUCERS - 1, MAX_SEQ, u64::MAX);
        let s = parse(&buf).unwrap();
        assert_eq!(s.producer, MAX_PRODUCERS - 1);
        assert_eq!(s.seq, MAX_SEQ);
        assert_eq!(s.sent_ns, u64::MAX);
        assert_eq!(parse(&buf[..15]), None);
    }

    #[test]
    fn put_payload_pads_to_size() {
        let mut out = bytes::BytesMut::new();
        put_payload(&mut out, 10_000, 1, 2, 3);
        assert_eq!(out.len(), 10_000);
        assert!(out[16..].iter().all(|&b| b == 0));
        assert_eq!(parse(&out).unwrap().seq, 2);
        let mut small = bytes::BytesMut::new();
        put_payload(&mut small, 4, 0, 0, 0);
        assert_eq!(small.len(), STAMP_LEN, "never shorter than the stamp");
    }

    #[test]
    fn clock_is_monotonic() {
        let c = Clock::start();
        let a = c.now_ns();
        let b = c.now_ns();
        assert!(b >= a);
    }
}
