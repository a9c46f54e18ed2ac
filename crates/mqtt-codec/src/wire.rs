//! Primitive readers and writers shared by every other module.
//!
//! Decoding never indexes: every read checks the length first through
//! `slice::get`, so a short or hostile input gives
//! [`DecodeError::MalformedPacket`], never a panic.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::Str;

/// The largest value a variable byte integer holds (4 bytes of 7 bits).
pub(crate) const VARINT_MAX: u32 = 268_435_455;

/// The longest string or binary field: its length is a u16.
pub(crate) const STRING_MAX: usize = 65_535;

pub(crate) type Res<T> = Result<T, DecodeError>;

pub(crate) const TRUNCATED: DecodeError = DecodeError::MalformedPacket("packet truncated");

/// Outcome of reading a variable byte integer from a prefix of the input.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Varint {
    /// More bytes are needed to finish it.
    Incomplete,
    /// The value, how many bytes encoded it, and whether that is the
    /// minimum number of bytes for the value.
    Done {
        value: u32,
        len: usize,
        minimal: bool,
    },
}

/// Reads a variable byte integer from the front of `bytes`.
///
/// Fails with [`DecodeError::MalformedPacket`] when a fourth byte still has
/// its continuation bit set: the integer would take a fifth byte.
pub(crate) fn read_varint(bytes: &[u8]) -> Res<Varint> {
    let mut value: u32 = 0;
    for (i, &b) in bytes.iter().take(4).enumerate() {
        value |= u32::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Varint::Done {
                value,
                len: i + 1,
                // A longer encoding than needed ends with a zero byte.
                minimal: i == 0 || b != 0,
            });
        }
    }
    if bytes.len() >= 4 {
        Err(DecodeError::MalformedPacket(
            "variable byte integer longer than 4 bytes",
        ))
    } else {
        Ok(Varint::Incomplete)
    }
}

/// Number of bytes the variable byte integer encoding of `v` takes.
pub(crate) fn varint_len(v: usize) -> usize {
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Writes `v`, which the caller has checked is at most [`VARINT_MAX`].
pub(crate) fn put_varint(out: &mut BytesMut, v: usize) {
    let mut v = v;
    loop {
        let byte = (v & 0x7F) as u8;
        v >>= 7;
        if v == 0 {
            out.put_u8(byte);
            return;
        }
        out.put_u8(byte | 0x80);
    }
}

/// Checks a string or binary field fits its u16 length.
pub(crate) fn check_str(len: usize) -> Result<usize, EncodeError> {
    if len > STRING_MAX {
        Err(EncodeError::StringTooLong)
    } else {
        Ok(2 + len)
    }
}

/// Writes a u16 length and the bytes; the length was checked by [`check_str`].
pub(crate) fn put_bin(out: &mut BytesMut, bytes: &[u8]) {
    out.put_u16(u16::try_from(bytes.len()).unwrap_or(u16::MAX));
    out.extend_from_slice(bytes);
}

/// A cursor over a frozen packet that hands out zero-copy slices of it.
pub(crate) struct Reader {
    buf: Bytes,
}

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Self {
        Self { buf }
    }

    /// Bytes not read yet.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Everything not read yet, as a slice of the input.
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    /// Fails unless the whole input was read.
    pub(crate) fn finish(&self, what: &'static str) -> Res<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::MalformedPacket(what))
        }
    }

    /// The next `n` bytes as a slice of the input.
    pub(crate) fn take(&mut self, n: usize) -> Res<Bytes> {
        if n > self.buf.len() {
            return Err(TRUNCATED);
        }
        Ok(self.buf.split_to(n))
    }

    fn array<const N: usize>(&mut self) -> Res<[u8; N]> {
        let out = self
            .buf
            .get(..N)
            .and_then(|s| <[u8; N]>::try_from(s).ok())
            .ok_or(TRUNCATED)?;
        self.buf.advance(N);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Res<u8> {
        self.array::<1>().map(u8::from_be_bytes)
    }

    pub(crate) fn u16(&mut self) -> Res<u16> {
        self.array().map(u16::from_be_bytes)
    }

    pub(crate) fn u32(&mut self) -> Res<u32> {
        self.array().map(u32::from_be_bytes)
    }

    /// A variable byte integer inside a packet (property length,
    /// subscription identifier): only in 5.0, so it must be minimal.
    pub(crate) fn varint(&mut self) -> Res<u32> {
        match read_varint(&self.buf)? {
            Varint::Done {
                value,
                len,
                minimal,
            } => {
                if !minimal {
                    return Err(DecodeError::MalformedPacket(
                        "variable byte integer not in its shortest form",
                    ));
                }
                self.buf.advance(len);
                Ok(value)
            }
            Varint::Incomplete => Err(TRUNCATED),
        }
    }

    /// Binary data: a u16 length and that many bytes.
    pub(crate) fn binary(&mut self) -> Res<Bytes> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }

    /// A UTF-8 encoded string: well-formed UTF-8 without U+0000.
    pub(crate) fn string(&mut self) -> Res<Str> {
        let bytes = self.binary()?;
        // In well-formed UTF-8 a zero byte can only be U+0000.
        if bytes.contains(&0) {
            return Err(DecodeError::MalformedPacket("U+0000 in a UTF-8 string"));
        }
        Str::try_from(bytes).map_err(|_| DecodeError::MalformedPacket("invalid UTF-8 string"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(v: usize) -> Vec<u8> {
        let mut out = BytesMut::new();
        put_varint(&mut out, v);
        out.to_vec()
    }

    #[test]
    fn varint_boundaries() {
        for (v, bytes) in [
            (0, &[0x00][..]),
            (127, &[0x7F]),
            (128, &[0x80, 0x01]),
            (16_383, &[0xFF, 0x7F]),
            (16_384, &[0x80, 0x80, 0x01]),
            (2_097_151, &[0xFF, 0xFF, 0x7F]),
            (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
            (268_435_455, &[0xFF, 0xFF, 0xFF, 0x7F]),
        ] {
            assert_eq!(encoded(v), bytes, "{v}");
            assert_eq!(varint_len(v), bytes.len(), "{v}");
            assert_eq!(
                read_varint(bytes),
                Ok(Varint::Done {
                    value: u32::try_from(v).unwrap_or(0),
                    len: bytes.len(),
                    minimal: true
                })
            );
            for cut in 0..bytes.len() {
                assert_eq!(read_varint(&bytes[..cut]), Ok(Varint::Incomplete));
            }
        }
    }

    #[test]
    fn varint_too_long_or_not_minimal() {
        assert!(read_varint(&[0x80, 0x80, 0x80, 0x80]).is_err());
        assert!(read_varint(&[0xFF, 0xFF, 0xFF, 0xFF, 0x01]).is_err());
        assert_eq!(
            read_varint(&[0x80, 0x00]),
            Ok(Varint::Done {
                value: 0,
                len: 2,
                minimal: false
            })
        );
        let mut r = Reader::new(Bytes::from_static(&[0x81, 0x00]));
        assert!(r.varint().is_err());
    }

    #[test]
    fn strings() {
        let mut r = Reader::new(Bytes::from_static(b"\x00\x02hi\x00\x01\x00\x00\x01\xff"));
        assert_eq!(r.string().as_deref().ok(), Some("hi"));
        assert!(r.string().is_err());
        assert!(r.string().is_err());
        let mut r = Reader::new(Bytes::from_static(b"\x00\x05hi"));
        assert_eq!(r.string(), Err(TRUNCATED));
    }
}
