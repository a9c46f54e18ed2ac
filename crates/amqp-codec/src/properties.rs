//! Basic-class content properties and the content header that carries them.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::CodecError;
use crate::field::{FieldTable, ShortStr};
use crate::wire::{put_shortstr, Reader, Res};

/// Class id of `basic`, the only AMQP 0-9-1 class with content.
pub const BASIC_CLASS_ID: u16 = 60;

const CONTENT_TYPE: u16 = 1 << 15;
const CONTENT_ENCODING: u16 = 1 << 14;
const HEADERS: u16 = 1 << 13;
const DELIVERY_MODE: u16 = 1 << 12;
const PRIORITY: u16 = 1 << 11;
const CORRELATION_ID: u16 = 1 << 10;
const REPLY_TO: u16 = 1 << 9;
const EXPIRATION: u16 = 1 << 8;
const MESSAGE_ID: u16 = 1 << 7;
const TIMESTAMP: u16 = 1 << 6;
const TYPE: u16 = 1 << 5;
const USER_ID: u16 = 1 << 4;
const APP_ID: u16 = 1 << 3;
const CLUSTER_ID: u16 = 1 << 2;
/// Bit 1 is unused by the basic class; bit 0 would announce a second flags word.
const UNUSED: u16 = 1 << 1;
const CONTINUATION: u16 = 1;

/// The 14 properties of the basic class, each present or not.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BasicProperties {
    /// MIME content type.
    pub content_type: Option<ShortStr>,
    /// MIME content encoding.
    pub content_encoding: Option<ShortStr>,
    /// Application headers.
    pub headers: Option<FieldTable>,
    /// 1 = transient, 2 = persistent.
    pub delivery_mode: Option<u8>,
    /// Message priority, 0 to 9.
    pub priority: Option<u8>,
    /// Application correlation identifier.
    pub correlation_id: Option<ShortStr>,
    /// Address to reply to.
    pub reply_to: Option<ShortStr>,
    /// Per-message TTL in milliseconds, as a decimal string (RabbitMQ).
    pub expiration: Option<ShortStr>,
    /// Application message identifier.
    pub message_id: Option<ShortStr>,
    /// Message timestamp, seconds since the Unix epoch.
    pub timestamp: Option<u64>,
    /// Message type name (the `type` property).
    pub kind: Option<ShortStr>,
    /// Creating user id, validated by RabbitMQ against the connection's user.
    pub user_id: Option<ShortStr>,
    /// Creating application id.
    pub app_id: Option<ShortStr>,
    /// Deprecated cluster id.
    pub cluster_id: Option<ShortStr>,
}

impl BasicProperties {
    /// Decodes property flags (one u16 word) followed by the property list,
    /// filling `buf` exactly. A set continuation bit or unused flag bit,
    /// truncation, trailing bytes or invalid UTF-8 give
    /// [`CodecError::Syntax`] with class id 60 and method id 0.
    pub fn decode(buf: &Bytes) -> Result<Self, CodecError> {
        decode_properties(buf).map_err(|reason| CodecError::Syntax {
            class_id: BASIC_CLASS_ID,
            method_id: 0,
            reason,
        })
    }

    /// Appends property flags and property list to `out`, the form kept in
    /// [`ContentHeader::raw_properties`]. On error ([`CodecError::TooLong`])
    /// nothing is appended.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), CodecError> {
        let start = out.len();
        let result = self.encode_inner(out);
        if result.is_err() {
            out.truncate(start);
        }
        result
    }

    /// Whether `delivery_mode` is 2 (persistent).
    pub fn is_persistent(&self) -> bool {
        self.delivery_mode == Some(2)
    }

    fn flags(&self) -> u16 {
        let mut flags = 0;
        let mut set = |present: bool, bit: u16| {
            if present {
                flags |= bit;
            }
        };
        set(self.content_type.is_some(), CONTENT_TYPE);
        set(self.content_encoding.is_some(), CONTENT_ENCODING);
        set(self.headers.is_some(), HEADERS);
        set(self.delivery_mode.is_some(), DELIVERY_MODE);
        set(self.priority.is_some(), PRIORITY);
        set(self.correlation_id.is_some(), CORRELATION_ID);
        set(self.reply_to.is_some(), REPLY_TO);
        set(self.expiration.is_some(), EXPIRATION);
        set(self.message_id.is_some(), MESSAGE_ID);
        set(self.timestamp.is_some(), TIMESTAMP);
        set(self.kind.is_some(), TYPE);
        set(self.user_id.is_some(), USER_ID);
        set(self.app_id.is_some(), APP_ID);
        set(self.cluster_id.is_some(), CLUSTER_ID);
        flags
    }

    fn encode_inner(&self, out: &mut BytesMut) -> Result<(), CodecError> {
        out.put_u16(self.flags());
        let short = |out: &mut BytesMut, s: &Option<ShortStr>| match s {
            Some(s) => put_shortstr(out, s),
            None => Ok(()),
        };
        short(out, &self.content_type)?;
        short(out, &self.content_encoding)?;
        if let Some(h) = &self.headers {
            h.encode(out)?;
        }
        if let Some(v) = self.delivery_mode {
            out.put_u8(v);
        }
        if let Some(v) = self.priority {
            out.put_u8(v);
        }
        short(out, &self.correlation_id)?;
        short(out, &self.reply_to)?;
        short(out, &self.expiration)?;
        short(out, &self.message_id)?;
        if let Some(v) = self.timestamp {
            out.put_u64(v);
        }
        short(out, &self.kind)?;
        short(out, &self.user_id)?;
        short(out, &self.app_id)?;
        short(out, &self.cluster_id)?;
        Ok(())
    }
}

/// Property flags and list, with errors as bare reasons for the caller to wrap.
pub(crate) fn decode_properties(buf: &Bytes) -> Res<BasicProperties> {
    let mut r = Reader::new(buf);
    let flags = r.u16()?;
    if flags & CONTINUATION != 0 {
        return Err("property flags continuation bit set");
    }
    if flags & UNUSED != 0 {
        return Err("unused property flag set");
    }
    let has = |bit: u16| flags & bit != 0;
    let mut p = BasicProperties::default();
    if has(CONTENT_TYPE) {
        p.content_type = Some(r.shortstr()?);
    }
    if has(CONTENT_ENCODING) {
        p.content_encoding = Some(r.shortstr()?);
    }
    if has(HEADERS) {
        p.headers = Some(r.table()?);
    }
    if has(DELIVERY_MODE) {
        p.delivery_mode = Some(r.u8()?);
    }
    if has(PRIORITY) {
        p.priority = Some(r.u8()?);
    }
    if has(CORRELATION_ID) {
        p.correlation_id = Some(r.shortstr()?);
    }
    if has(REPLY_TO) {
        p.reply_to = Some(r.shortstr()?);
    }
    if has(EXPIRATION) {
        p.expiration = Some(r.shortstr()?);
    }
    if has(MESSAGE_ID) {
        p.message_id = Some(r.shortstr()?);
    }
    if has(TIMESTAMP) {
        p.timestamp = Some(r.u64()?);
    }
    if has(TYPE) {
        p.kind = Some(r.shortstr()?);
    }
    if has(USER_ID) {
        p.user_id = Some(r.shortstr()?);
    }
    if has(APP_ID) {
        p.app_id = Some(r.shortstr()?);
    }
    if has(CLUSTER_ID) {
        p.cluster_id = Some(r.shortstr()?);
    }
    if r.remaining() != 0 {
        return Err("trailing bytes after property list");
    }
    Ok(p)
}

/// The payload of a content header frame.
#[derive(Debug, Clone, PartialEq)]
pub struct ContentHeader {
    /// Class of the content: 60 (basic) in practice.
    pub class_id: u16,
    /// Total size of the body frames that follow.
    pub body_size: u64,
    /// The decoded properties. Boxed: they are 368 bytes, and a header is
    /// moved from the decoder through the channel into the message; a
    /// pointer keeps every frame and message small and those moves cheap
    /// (in the publish path's profile, copying them was the largest single
    /// item).
    pub properties: Box<BasicProperties>,
    /// The property flags + property list exactly as received, so the broker
    /// can write them out again without re-encoding. When empty (never the
    /// case for a decoded header), [`Frame::encode`](crate::Frame::encode)
    /// encodes `properties` instead.
    pub raw_properties: Bytes,
}

impl ContentHeader {
    /// A header for a body of `body_size` bytes, with `raw_properties`
    /// encoded from `properties`.
    pub fn new(
        class_id: u16,
        body_size: u64,
        properties: impl Into<Box<BasicProperties>>,
    ) -> Result<Self, CodecError> {
        let properties = properties.into();
        let mut raw = BytesMut::new();
        properties.encode(&mut raw)?;
        Ok(Self {
            class_id,
            body_size,
            properties,
            raw_properties: raw.freeze(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FieldValue;

    #[test]
    fn empty_properties_are_two_zero_bytes() {
        let mut out = BytesMut::new();
        assert_eq!(BasicProperties::default().encode(&mut out), Ok(()));
        assert_eq!(&out[..], &[0, 0]);
        assert_eq!(
            BasicProperties::decode(&out.freeze()),
            Ok(BasicProperties::default())
        );
    }

    #[test]
    fn persistent_message() {
        let p = BasicProperties {
            delivery_mode: Some(2),
            ..Default::default()
        };
        assert!(p.is_persistent());
        let mut out = BytesMut::new();
        assert_eq!(p.encode(&mut out), Ok(()));
        assert_eq!(&out[..], &[0x10, 0x00, 2]);
        assert!(!BasicProperties {
            delivery_mode: Some(1),
            ..Default::default()
        }
        .is_persistent());
    }

    #[test]
    fn bad_flags_and_lengths_are_syntax_errors() {
        let cases: &[(&[u8], &str)] = &[
            (&[0x00, 0x01], "property flags continuation bit set"),
            (&[0x00, 0x02], "unused property flag set"),
            (&[0x80, 0x00, 5, b'a'], crate::wire::TRUNCATED),
            (&[0x10, 0x00], crate::wire::TRUNCATED),
            (&[0x10, 0x00, 2, 0], "trailing bytes after property list"),
            (&[0x80, 0x00, 1, 0xFF], "invalid UTF-8 in shortstr"),
            (&[0x00], crate::wire::TRUNCATED),
        ];
        for (bytes, reason) in cases {
            let got = BasicProperties::decode(&Bytes::copy_from_slice(bytes));
            assert_eq!(
                got,
                Err(CodecError::Syntax {
                    class_id: 60,
                    method_id: 0,
                    reason
                }),
                "{bytes:?}"
            );
        }
    }

    #[test]
    fn too_long_shortstr_is_refused_and_appends_nothing() {
        let p = BasicProperties {
            headers: Some([("a", FieldValue::Void)].into_iter().collect()),
            app_id: Some(ShortStr::from("x".repeat(256))),
            ..Default::default()
        };
        let mut out = BytesMut::new();
        assert_eq!(p.encode(&mut out), Err(CodecError::TooLong));
        assert!(out.is_empty());
        assert_eq!(ContentHeader::new(60, 0, p), Err(CodecError::TooLong));
    }
}
