//! Field tables and field values, with RabbitMQ's type tags.
//!
//! The tags are those of RabbitMQ's errata to the 0-9-1 specification
//! (`rabbit_binary_parser`), which differ from the specification's own table:
//!
//! | tag | type | variant |
//! |-----|------|---------|
//! | `t` | boolean | [`FieldValue::Bool`] |
//! | `b` | i8 | [`FieldValue::I8`] |
//! | `B` | u8 | [`FieldValue::U8`] |
//! | `s` | i16 | [`FieldValue::I16`] |
//! | `u` | u16 | [`FieldValue::U16`] |
//! | `I` | i32 | [`FieldValue::I32`] |
//! | `i` | u32 | [`FieldValue::U32`] |
//! | `l` | i64 | [`FieldValue::I64`] |
//! | `L` | u64 (not RabbitMQ's; some clients send it) | [`FieldValue::U64`] |
//! | `f` | f32 | [`FieldValue::F32`] |
//! | `d` | f64 | [`FieldValue::F64`] |
//! | `D` | decimal: scale octet, u32 value | [`FieldValue::Decimal`] |
//! | `S` | longstr | [`FieldValue::LongString`] (and [`FieldValue::ShortString`] on encode) |
//! | `A` | array | [`FieldValue::Array`] |
//! | `T` | timestamp u64 | [`FieldValue::Timestamp`] |
//! | `F` | table | [`FieldValue::Table`] |
//! | `V` | void | [`FieldValue::Void`] |
//! | `x` | byte array | [`FieldValue::ByteArray`] |
//!
//! Any other tag is a syntax error. Tables keep wire order and duplicate
//! keys, so a decoded table encodes back to the same bytes.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::CodecError;
use crate::wire::{begin_u32_len, patch_u32_len, put_longstr, put_shortstr, Reader, Res};

/// An AMQP shortstr: at most 255 bytes of UTF-8. Decoded as a zero-copy
/// slice of the input after UTF-8 validation.
pub use bytestring::ByteString as ShortStr;

/// An AMQP longstr: up to 4 GiB of arbitrary bytes (not necessarily UTF-8).
pub type LongStr = Bytes;

/// Deepest nesting of tables and arrays accepted, the outermost table
/// counting as level 1. Deeper input is a syntax error when decoding and
/// [`CodecError::TooLong`] when encoding, so neither can overflow the stack.
pub const MAX_NESTING_DEPTH: usize = 100;

const TOO_DEEP: &str = "field table nested too deeply";

/// One value in a field table or field array.
///
/// Equality compares floats bit for bit (so `NaN == NaN` and `0.0 != -0.0`):
/// two values are equal exactly when they encode to the same bytes, except
/// that [`ShortString`](Self::ShortString) and
/// [`LongString`](Self::LongString) holding the same text differ.
#[derive(Debug, Clone)]
pub enum FieldValue {
    /// `t`: boolean. Any non-zero octet decodes as `true`, as in RabbitMQ.
    Bool(bool),
    /// `b`: signed 8-bit integer.
    I8(i8),
    /// `B`: unsigned 8-bit integer.
    U8(u8),
    /// `s`: signed 16-bit integer (RabbitMQ's meaning of `s`).
    I16(i16),
    /// `u`: unsigned 16-bit integer.
    U16(u16),
    /// `I`: signed 32-bit integer.
    I32(i32),
    /// `i`: unsigned 32-bit integer.
    U32(u32),
    /// `l`: signed 64-bit integer.
    I64(i64),
    /// `L`: unsigned 64-bit integer; not in RabbitMQ's table, but some
    /// clients send it.
    U64(u64),
    /// `f`: 32-bit IEEE float.
    F32(f32),
    /// `d`: 64-bit IEEE float.
    F64(f64),
    /// `D`: decimal, `value / 10^scale`.
    Decimal {
        /// Number of decimal digits after the point.
        scale: u8,
        /// Unscaled value.
        value: u32,
    },
    /// A short string. RabbitMQ uses `s` for i16, so no tag decodes to this
    /// variant; it is encoded as a longstr (`S`) and decodes back as
    /// [`LongString`](Self::LongString).
    ShortString(ShortStr),
    /// `S`: long string, arbitrary bytes.
    LongString(Bytes),
    /// `A`: array of values.
    Array(Vec<FieldValue>),
    /// `T`: timestamp, seconds since the Unix epoch.
    Timestamp(u64),
    /// `F`: nested field table.
    Table(FieldTable),
    /// `V`: no value.
    Void,
    /// `x`: byte array (RabbitMQ extension).
    ByteArray(Bytes),
}

impl PartialEq for FieldValue {
    fn eq(&self, other: &Self) -> bool {
        use FieldValue as V;
        match (self, other) {
            (V::Bool(a), V::Bool(b)) => a == b,
            (V::I8(a), V::I8(b)) => a == b,
            (V::U8(a), V::U8(b)) => a == b,
            (V::I16(a), V::I16(b)) => a == b,
            (V::U16(a), V::U16(b)) => a == b,
            (V::I32(a), V::I32(b)) => a == b,
            (V::U32(a), V::U32(b)) => a == b,
            (V::I64(a), V::I64(b)) => a == b,
            (V::U64(a), V::U64(b)) => a == b,
            (V::F32(a), V::F32(b)) => a.to_bits() == b.to_bits(),
            (V::F64(a), V::F64(b)) => a.to_bits() == b.to_bits(),
            (
                V::Decimal {
                    scale: s1,
                    value: v1,
                },
                V::Decimal {
                    scale: s2,
                    value: v2,
                },
            ) => s1 == s2 && v1 == v2,
            (V::ShortString(a), V::ShortString(b)) => a == b,
            (V::LongString(a), V::LongString(b)) => a == b,
            (V::Array(a), V::Array(b)) => a == b,
            (V::Timestamp(a), V::Timestamp(b)) => a == b,
            (V::Table(a), V::Table(b)) => a == b,
            (V::Void, V::Void) => true,
            (V::ByteArray(a), V::ByteArray(b)) => a == b,
            _ => false,
        }
    }
}

impl FieldValue {
    /// The text of a [`ShortString`](Self::ShortString), or of a
    /// [`LongString`](Self::LongString) that is valid UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::ShortString(s) => Some(s),
            Self::LongString(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// The value of any integer variant (`b B s u I i l L`) that fits an i64.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Self::I8(v) => Some(v.into()),
            Self::U8(v) => Some(v.into()),
            Self::I16(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::I32(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::I64(v) => Some(v),
            Self::U64(v) => i64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value of a [`Bool`](Self::Bool).
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The table of a [`Table`](Self::Table).
    pub fn as_table(&self) -> Option<&FieldTable> {
        match self {
            Self::Table(t) => Some(t),
            _ => None,
        }
    }

    /// The values of an [`Array`](Self::Array).
    pub fn as_array(&self) -> Option<&[FieldValue]> {
        match self {
            Self::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The type tag this value is encoded with.
    pub fn tag(&self) -> u8 {
        match self {
            Self::Bool(_) => b't',
            Self::I8(_) => b'b',
            Self::U8(_) => b'B',
            Self::I16(_) => b's',
            Self::U16(_) => b'u',
            Self::I32(_) => b'I',
            Self::U32(_) => b'i',
            Self::I64(_) => b'l',
            Self::U64(_) => b'L',
            Self::F32(_) => b'f',
            Self::F64(_) => b'd',
            Self::Decimal { .. } => b'D',
            Self::ShortString(_) | Self::LongString(_) => b'S',
            Self::Array(_) => b'A',
            Self::Timestamp(_) => b'T',
            Self::Table(_) => b'F',
            Self::Void => b'V',
            Self::ByteArray(_) => b'x',
        }
    }
}

/// An AMQP field table: `(name, value)` pairs in wire order.
///
/// Duplicate names are kept as received so that a table round-trips byte
/// for byte; [`get`](Self::get) returns the first, [`insert`](Self::insert)
/// replaces the first.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FieldTable(pub Vec<(ShortStr, FieldValue)>);

impl FieldTable {
    /// An empty table.
    pub fn new() -> Self {
        Self(Vec::new())
    }

    /// The value of the first entry named `key`.
    pub fn get(&self, key: &str) -> Option<&FieldValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The value of the first entry named `key`, mutably.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut FieldValue> {
        self.0.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Sets `key` to `value`: replaces the first entry of that name in
    /// place, or appends a new entry.
    pub fn insert(&mut self, key: impl Into<ShortStr>, value: FieldValue) {
        let key = key.into();
        match self.get_mut(&key) {
            Some(v) => *v = value,
            None => self.0.push((key, value)),
        }
    }

    /// Removes every entry named `key`, returning the first one's value.
    pub fn remove(&mut self, key: &str) -> Option<FieldValue> {
        let pos = self.0.iter().position(|(k, _)| k == key)?;
        let (_, value) = self.0.remove(pos);
        self.0.retain(|(k, _)| k != key);
        Some(value)
    }

    /// Whether the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of entries, duplicates included.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The entries in wire order.
    pub fn iter(&self) -> std::slice::Iter<'_, (ShortStr, FieldValue)> {
        self.0.iter()
    }

    /// Appends the table to `out` as on the wire: a u32 byte length, then
    /// the entries. On error nothing is appended.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), CodecError> {
        let start = out.len();
        let result = write_table(out, self, 1);
        if result.is_err() {
            out.truncate(start);
        }
        result
    }

    /// Decodes a table as on the wire (u32 length then entries) that fills
    /// `buf` exactly. Strings are zero-copy slices of `buf`. Errors are
    /// [`CodecError::Syntax`] with class and method id 0.
    pub fn decode(buf: &Bytes) -> Result<Self, CodecError> {
        let syntax = |reason| CodecError::Syntax {
            class_id: 0,
            method_id: 0,
            reason,
        };
        let mut r = Reader::new(buf);
        let table = r.table().map_err(syntax)?;
        if r.remaining() != 0 {
            return Err(syntax("trailing bytes after field table"));
        }
        Ok(table)
    }
}

impl<'a> IntoIterator for &'a FieldTable {
    type Item = &'a (ShortStr, FieldValue);
    type IntoIter = std::slice::Iter<'a, (ShortStr, FieldValue)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl IntoIterator for FieldTable {
    type Item = (ShortStr, FieldValue);
    type IntoIter = std::vec::IntoIter<(ShortStr, FieldValue)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<K: Into<ShortStr>> FromIterator<(K, FieldValue)> for FieldTable {
    /// Collects entries in order, keeping duplicates.
    fn from_iter<I: IntoIterator<Item = (K, FieldValue)>>(iter: I) -> Self {
        Self(iter.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }
}

impl From<Vec<(ShortStr, FieldValue)>> for FieldTable {
    fn from(entries: Vec<(ShortStr, FieldValue)>) -> Self {
        Self(entries)
    }
}

// ---- decoding ---------------------------------------------------------------

impl Reader<'_> {
    /// A field table at the top level of method arguments or properties.
    pub(crate) fn table(&mut self) -> Res<FieldTable> {
        read_table(self, 1)
    }
}

fn read_table(r: &mut Reader<'_>, depth: usize) -> Res<FieldTable> {
    if depth > MAX_NESTING_DEPTH {
        return Err(TOO_DEEP);
    }
    let body = r.longstr()?;
    let mut r = Reader::new(&body);
    let mut entries = Vec::new();
    while r.remaining() > 0 {
        let key = r.shortstr()?;
        let value = read_value(&mut r, depth)?;
        entries.push((key, value));
    }
    Ok(FieldTable(entries))
}

fn read_array(r: &mut Reader<'_>, depth: usize) -> Res<Vec<FieldValue>> {
    if depth > MAX_NESTING_DEPTH {
        return Err(TOO_DEEP);
    }
    let body = r.longstr()?;
    let mut r = Reader::new(&body);
    let mut values = Vec::new();
    while r.remaining() > 0 {
        values.push(read_value(&mut r, depth)?);
    }
    Ok(values)
}

/// One tagged value inside a table or array at nesting level `depth`.
fn read_value(r: &mut Reader<'_>, depth: usize) -> Res<FieldValue> {
    let tag = r.u8()?;
    Ok(match tag {
        b't' => FieldValue::Bool(r.u8()? != 0),
        b'b' => FieldValue::I8(i8::from_be_bytes([r.u8()?])),
        b'B' => FieldValue::U8(r.u8()?),
        b's' => FieldValue::I16(r.u16()? as i16),
        b'u' => FieldValue::U16(r.u16()?),
        b'I' => FieldValue::I32(r.u32()? as i32),
        b'i' => FieldValue::U32(r.u32()?),
        b'l' => FieldValue::I64(r.u64()? as i64),
        b'L' => FieldValue::U64(r.u64()?),
        b'f' => FieldValue::F32(f32::from_bits(r.u32()?)),
        b'd' => FieldValue::F64(f64::from_bits(r.u64()?)),
        b'D' => FieldValue::Decimal {
            scale: r.u8()?,
            value: r.u32()?,
        },
        b'S' => FieldValue::LongString(r.longstr()?),
        b'A' => FieldValue::Array(read_array(r, depth + 1)?),
        b'T' => FieldValue::Timestamp(r.u64()?),
        b'F' => FieldValue::Table(read_table(r, depth + 1)?),
        b'V' => FieldValue::Void,
        b'x' => FieldValue::ByteArray(r.longstr()?),
        _ => return Err("unknown field value type"),
    })
}

// ---- encoding ---------------------------------------------------------------

fn write_table(out: &mut BytesMut, table: &FieldTable, depth: usize) -> Result<(), CodecError> {
    if depth > MAX_NESTING_DEPTH {
        return Err(CodecError::TooLong);
    }
    let at = begin_u32_len(out);
    for (key, value) in table.iter() {
        put_shortstr(out, key)?;
        write_value(out, value, depth)?;
    }
    patch_u32_len(out, at)
}

fn write_value(out: &mut BytesMut, value: &FieldValue, depth: usize) -> Result<(), CodecError> {
    out.put_u8(value.tag());
    match value {
        FieldValue::Bool(v) => out.put_u8(u8::from(*v)),
        FieldValue::I8(v) => out.put_i8(*v),
        FieldValue::U8(v) => out.put_u8(*v),
        FieldValue::I16(v) => out.put_i16(*v),
        FieldValue::U16(v) => out.put_u16(*v),
        FieldValue::I32(v) => out.put_i32(*v),
        FieldValue::U32(v) => out.put_u32(*v),
        FieldValue::I64(v) => out.put_i64(*v),
        FieldValue::U64(v) => out.put_u64(*v),
        FieldValue::F32(v) => out.put_u32(v.to_bits()),
        FieldValue::F64(v) => out.put_u64(v.to_bits()),
        FieldValue::Decimal { scale, value } => {
            out.put_u8(*scale);
            out.put_u32(*value);
        }
        FieldValue::ShortString(s) => put_longstr(out, s.as_bytes())?,
        FieldValue::LongString(b) | FieldValue::ByteArray(b) => put_longstr(out, b)?,
        FieldValue::Array(values) => {
            if depth + 1 > MAX_NESTING_DEPTH {
                return Err(CodecError::TooLong);
            }
            let at = begin_u32_len(out);
            for v in values {
                write_value(out, v, depth + 1)?;
            }
            patch_u32_len(out, at)?;
        }
        FieldValue::Timestamp(v) => out.put_u64(*v),
        FieldValue::Table(t) => write_table(out, t, depth + 1)?,
        FieldValue::Void => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(t: &FieldTable) -> Bytes {
        let mut out = BytesMut::new();
        assert_eq!(t.encode(&mut out), Ok(()));
        let bytes = out.freeze();
        assert_eq!(FieldTable::decode(&bytes).as_ref(), Ok(t));
        bytes
    }

    /// A table nested `levels` deep, the outer table counting as one,
    /// alternating arrays and tables inside.
    fn nested(levels: usize) -> FieldTable {
        let mut v = FieldValue::Void;
        for i in 1..levels {
            v = if i % 2 == 0 {
                FieldValue::Array(vec![v])
            } else {
                FieldValue::Table([("n", v)].into_iter().collect())
            };
        }
        [("n", v)].into_iter().collect()
    }

    #[test]
    fn get_insert_remove_keep_order() {
        let mut t = FieldTable::new();
        t.insert("b", FieldValue::I32(1));
        t.insert("a", FieldValue::Bool(true));
        t.insert("b", FieldValue::I32(2));
        assert_eq!(t.len(), 2);
        assert_eq!(t.get("b"), Some(&FieldValue::I32(2)));
        assert_eq!(
            t.iter().map(|(k, _)| &**k).collect::<Vec<&str>>(),
            ["b", "a"]
        );
        assert_eq!(t.remove("b"), Some(FieldValue::I32(2)));
        assert_eq!(t.get("b"), None);
        assert!(!t.is_empty());
    }

    #[test]
    fn accessors() {
        assert_eq!(
            FieldValue::LongString(Bytes::from_static(b"hi")).as_str(),
            Some("hi")
        );
        assert_eq!(
            FieldValue::LongString(Bytes::from_static(&[0xFF])).as_str(),
            None
        );
        assert_eq!(
            FieldValue::ShortString(ShortStr::from("x")).as_str(),
            Some("x")
        );
        assert_eq!(FieldValue::U8(7).as_i64(), Some(7));
        assert_eq!(FieldValue::I16(-7).as_i64(), Some(-7));
        assert_eq!(
            FieldValue::U32(u32::MAX).as_i64(),
            Some(i64::from(u32::MAX))
        );
        assert_eq!(FieldValue::U64(u64::MAX).as_i64(), None);
        assert_eq!(FieldValue::Timestamp(1).as_i64(), None);
        assert_eq!(FieldValue::Bool(false).as_bool(), Some(false));
        assert_eq!(FieldValue::I8(0).as_bool(), None);
    }

    #[test]
    fn floats_compare_bitwise() {
        assert_eq!(FieldValue::F64(f64::NAN), FieldValue::F64(f64::NAN));
        assert_ne!(FieldValue::F32(0.0), FieldValue::F32(-0.0));
        let t: FieldTable = [("nan", FieldValue::F32(f32::NAN))].into_iter().collect();
        roundtrip(&t);
    }

    #[test]
    fn nesting_limit_is_exactly_100_levels() {
        let ok = nested(MAX_NESTING_DEPTH);
        roundtrip(&ok);

        let deep = nested(MAX_NESTING_DEPTH + 1);
        assert_eq!(deep.encode(&mut BytesMut::new()), Err(CodecError::TooLong));

        // Hand-built 101 levels of nested arrays: 'A' len ... around a void.
        let mut bytes = vec![b'V'];
        for _ in 0..MAX_NESTING_DEPTH {
            let len = u32::try_from(bytes.len()).unwrap_or(0);
            let mut next = vec![b'A'];
            next.extend_from_slice(&len.to_be_bytes());
            next.extend_from_slice(&bytes);
            bytes = next;
        }
        let mut table = vec![1, b'k'];
        table.extend_from_slice(&bytes);
        let mut wire = u32::try_from(table.len())
            .unwrap_or(0)
            .to_be_bytes()
            .to_vec();
        wire.extend_from_slice(&table);
        let err = FieldTable::decode(&Bytes::from(wire));
        assert!(
            matches!(
                err,
                Err(CodecError::Syntax {
                    reason: TOO_DEEP,
                    ..
                })
            ),
            "{err:?}"
        );
    }

    #[test]
    fn very_deep_input_does_not_overflow_the_stack() {
        // 100k nested 'F' headers: rejected at level 101 without recursing further.
        let levels = 100_000usize;
        let mut wire = Vec::with_capacity(levels * 7);
        for i in 0..levels {
            let remaining = (levels - i) * 7;
            wire.extend_from_slice(&u32::try_from(remaining).unwrap_or(0).to_be_bytes());
            wire.extend_from_slice(&[1, b'k', b'F']);
        }
        wire.extend_from_slice(&[0, 0, 0, 0]);
        assert!(FieldTable::decode(&Bytes::from(wire)).is_err());
    }

    #[test]
    fn bad_input_is_a_syntax_error() {
        let cases: &[&[u8]] = &[
            &[0, 0, 0, 3, 1, b'k', b'Z'],                   // unknown tag
            &[0, 0, 0, 2, 1, b'k'],                         // missing tag
            &[0, 0, 0, 4, 1, b'k', b'I', 0],                // truncated value inside table
            &[0, 0, 0, 9, 1, b'k', b'S', 0, 0, 0, 9, 0, 0], // string longer than table
            &[0, 0, 0, 3, 1, 0xFF, b'V'],                   // key not UTF-8
            &[0, 0, 0, 0, 0],                               // trailing byte
            &[0, 0, 1],                                     // truncated length
        ];
        for case in cases {
            let err = FieldTable::decode(&Bytes::copy_from_slice(case));
            assert!(
                matches!(
                    err,
                    Err(CodecError::Syntax {
                        class_id: 0,
                        method_id: 0,
                        ..
                    })
                ),
                "{case:?}: {err:?}"
            );
        }
    }

    #[test]
    fn short_string_encodes_as_longstr() {
        let t: FieldTable = [("k", FieldValue::ShortString(ShortStr::from("v")))]
            .into_iter()
            .collect();
        let mut out = BytesMut::new();
        assert_eq!(t.encode(&mut out), Ok(()));
        assert_eq!(&out[..], b"\x00\x00\x00\x08\x01kS\x00\x00\x00\x01v");
        let back = FieldTable::decode(&out.freeze());
        assert_eq!(
            back.ok().and_then(|t| t.get("k").cloned()),
            Some(FieldValue::LongString(Bytes::from_static(b"v")))
        );
    }

    #[test]
    fn failed_encode_appends_nothing() {
        let t: FieldTable = [(ShortStr::from("a".repeat(300)), FieldValue::Void)]
            .into_iter()
            .collect();
        let mut out = BytesMut::from(&b"xy"[..]);
        assert_eq!(t.encode(&mut out), Err(CodecError::TooLong));
        assert_eq!(&out[..], b"xy");
    }
}
