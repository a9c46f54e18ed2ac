//! Primitive readers and writers shared by every other module.
//!
//! Decoding never indexes: every read goes through [`Reader::take`] or
//! `slice::get`, so a short or hostile input gives an error, not a panic.
//! Errors are bare reasons here; the caller knows which method or header it
//! was decoding and turns them into [`CodecError::Syntax`].

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::CodecError;
use crate::field::ShortStr;

/// Result of a primitive read: the reason is wrapped by the caller.
pub(crate) type Res<T> = Result<T, &'static str>;

/// Reason given for every read past the end of the input.
pub(crate) const TRUNCATED: &str = "truncated";

/// A cursor over a `Bytes` that hands out zero-copy slices of it.
pub(crate) struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
    /// The octet holding the bits being read and how many of them were used;
    /// reset by every non-bit read so that only consecutive bits share one.
    bits: Option<(u8, u8)>,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a Bytes) -> Self {
        Self {
            buf,
            pos: 0,
            bits: None,
        }
    }

    /// Bytes not read yet.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// The next `n` bytes as a slice of the input, or an error if fewer are left.
    pub(crate) fn take(&mut self, n: usize) -> Res<Bytes> {
        let end = self.pos.checked_add(n).ok_or(TRUNCATED)?;
        if end > self.buf.len() {
            return Err(TRUNCATED);
        }
        let out = self.buf.slice(self.pos..end);
        self.pos = end;
        self.bits = None;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Res<[u8; N]> {
        let end = self.pos.checked_add(N).ok_or(TRUNCATED)?;
        let bytes = self.buf.get(self.pos..end).ok_or(TRUNCATED)?;
        let out = <[u8; N]>::try_from(bytes).map_err(|_| TRUNCATED)?;
        self.pos = end;
        self.bits = None;
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

    pub(crate) fn u64(&mut self) -> Res<u64> {
        self.array().map(u64::from_be_bytes)
    }

    /// One bit; consecutive bits share an octet, low bit first.
    pub(crate) fn bit(&mut self) -> Res<bool> {
        let (octet, used) = match self.bits {
            Some((octet, used)) if used < 8 => (octet, used),
            _ => (self.u8()?, 0),
        };
        self.bits = Some((octet, used + 1));
        Ok(octet & (1 << used) != 0)
    }

    /// A shortstr, which must be UTF-8.
    pub(crate) fn shortstr(&mut self) -> Res<ShortStr> {
        let len = self.u8()?;
        let bytes = self.take(usize::from(len))?;
        ShortStr::try_from(bytes).map_err(|_| "invalid UTF-8 in shortstr")
    }

    /// A reserved shortstr: skipped without looking at its content.
    pub(crate) fn skip_shortstr(&mut self) -> Res<()> {
        let len = self.u8()?;
        self.take(usize::from(len)).map(drop)
    }

    /// A longstr: a u32 length and that many bytes, as a slice of the input.
    pub(crate) fn longstr(&mut self) -> Res<Bytes> {
        let len = self.u32()?;
        let len = usize::try_from(len).map_err(|_| TRUNCATED)?;
        self.take(len)
    }
}

/// Writes method arguments, packing consecutive bits into one octet.
pub(crate) struct ArgWriter<'a> {
    out: &'a mut BytesMut,
    /// Position of the octet receiving bits and how many it holds.
    bits: Option<(usize, u8)>,
}

impl<'a> ArgWriter<'a> {
    pub(crate) fn new(out: &'a mut BytesMut) -> Self {
        Self { out, bits: None }
    }

    pub(crate) fn u8(&mut self, v: u8) {
        self.bits = None;
        self.out.put_u8(v);
    }

    pub(crate) fn u16(&mut self, v: u16) {
        self.bits = None;
        self.out.put_u16(v);
    }

    pub(crate) fn u32(&mut self, v: u32) {
        self.bits = None;
        self.out.put_u32(v);
    }

    pub(crate) fn u64(&mut self, v: u64) {
        self.bits = None;
        self.out.put_u64(v);
    }

    pub(crate) fn bit(&mut self, v: bool) {
        match self.bits {
            Some((pos, used)) if used < 8 => {
                if v {
                    if let Some(octet) = self.out.get_mut(pos) {
                        *octet |= 1 << used;
                    }
                }
                self.bits = Some((pos, used + 1));
            }
            _ => {
                self.out.put_u8(u8::from(v));
                self.bits = Some((self.out.len() - 1, 1));
            }
        }
    }

    pub(crate) fn shortstr(&mut self, s: &str) -> Result<(), CodecError> {
        self.bits = None;
        put_shortstr(self.out, s)
    }

    pub(crate) fn longstr(&mut self, b: &[u8]) -> Result<(), CodecError> {
        self.bits = None;
        put_longstr(self.out, b)
    }

    pub(crate) fn table(&mut self, t: &crate::FieldTable) -> Result<(), CodecError> {
        self.bits = None;
        t.encode(self.out)
    }
}

/// A shortstr: one length octet, so at most 255 bytes.
pub(crate) fn put_shortstr(out: &mut BytesMut, s: &str) -> Result<(), CodecError> {
    let len = u8::try_from(s.len()).map_err(|_| CodecError::TooLong)?;
    out.put_u8(len);
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

/// A longstr: a u32 length and the bytes.
pub(crate) fn put_longstr(out: &mut BytesMut, b: &[u8]) -> Result<(), CodecError> {
    let len = u32::try_from(b.len()).map_err(|_| CodecError::TooLong)?;
    out.put_u32(len);
    out.extend_from_slice(b);
    Ok(())
}

/// Reserves a u32 length to be filled in by [`patch_u32_len`].
pub(crate) fn begin_u32_len(out: &mut BytesMut) -> usize {
    let at = out.len();
    out.put_u32(0);
    at
}

/// Writes the number of bytes written after the length reserved at `at`.
pub(crate) fn patch_u32_len(out: &mut BytesMut, at: usize) -> Result<(), CodecError> {
    let len = out.len().saturating_sub(at).saturating_sub(4);
    let len = u32::try_from(len).map_err(|_| CodecError::TooLong)?;
    let slot = out
        .get_mut(at..at.saturating_add(4))
        .ok_or(CodecError::TooLong)?;
    slot.copy_from_slice(&len.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_pack_low_bit_first_and_split_after_eight() {
        let mut out = BytesMut::new();
        let mut w = ArgWriter::new(&mut out);
        let pattern = [true, false, true, true, false, false, false, true, true];
        for b in pattern {
            w.bit(b);
        }
        w.u8(7);
        w.bit(true);
        assert_eq!(&out[..], &[0b1000_1101, 0b0000_0001, 7, 1]);

        let bytes = out.freeze();
        let mut r = Reader::new(&bytes);
        for b in pattern {
            assert_eq!(r.bit(), Ok(b));
        }
        assert_eq!(r.u8(), Ok(7));
        assert_eq!(r.bit(), Ok(true));
        assert_eq!(r.remaining(), 0);
        assert_eq!(r.u8(), Err(TRUNCATED));
    }

    #[test]
    fn reads_past_the_end_fail() {
        let bytes = Bytes::from_static(&[0, 1, 2]);
        let mut r = Reader::new(&bytes);
        assert_eq!(r.u32(), Err(TRUNCATED));
        assert_eq!(r.u16(), Ok(1));
        assert_eq!(r.shortstr(), Err(TRUNCATED));
        let long = Bytes::from_static(&[0xFF, 0xFF, 0xFF, 0xFF, 0]);
        assert_eq!(Reader::new(&long).longstr(), Err(TRUNCATED));
    }

    #[test]
    fn shortstr_is_utf8_checked_and_zero_copy() {
        let bytes = Bytes::from_static(&[2, 0xC3, 0x28]);
        assert!(Reader::new(&bytes).shortstr().is_err());
        let bytes = Bytes::from_static(b"\x03abc");
        let s = Reader::new(&bytes).shortstr();
        assert_eq!(s.as_deref(), Ok("abc"));
        let s = s.unwrap_or_default();
        assert_eq!(s.as_bytes().as_ptr(), bytes[1..].as_ptr());
    }

    #[test]
    fn long_shortstr_is_refused() {
        let mut out = BytesMut::new();
        assert_eq!(put_shortstr(&mut out, &"a".repeat(255)), Ok(()));
        assert_eq!(
            put_shortstr(&mut out, &"a".repeat(256)),
            Err(CodecError::TooLong)
        );
    }
}
