//! The protocol header and frames: splitting a read buffer into frames and
//! writing frames out.
//!
//! A frame is `type:u8 channel:u16 size:u32`, `size` bytes of payload, and
//! the frame-end octet `0xCE`.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::CodecError;
use crate::method::Method;
use crate::properties::{decode_properties, ContentHeader};
use crate::wire::Reader;

/// The 8 bytes a client sends first: `AMQP` 0 0 9 1. The server answers a
/// wrong header with this one before closing.
pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";

/// Size of a frame's header: type, channel, payload size.
pub const FRAME_HEADER_SIZE: usize = 7;

/// The octet that ends every frame.
pub const FRAME_END: u8 = 0xCE;

/// The smallest `frame_max` a peer may negotiate.
pub const FRAME_MIN_SIZE: u32 = 4096;

/// Frame type octet of a method frame.
pub const FRAME_METHOD: u8 = 1;
/// Frame type octet of a content header frame.
pub const FRAME_HEADER: u8 = 2;
/// Frame type octet of a content body frame.
pub const FRAME_BODY: u8 = 3;
/// Frame type octet of a heartbeat frame.
pub const FRAME_HEARTBEAT: u8 = 8;

/// Bytes a frame adds around its payload: header plus frame-end.
const FRAME_OVERHEAD: usize = FRAME_HEADER_SIZE + 1;

/// Content header fields before the properties: class, weight, body size.
const CONTENT_HEADER_FIXED: usize = 12;

/// One AMQP frame.
// A header frame is large (14 optional properties), but frames are decoded
// one at a time and moved once into the connection; boxing would cost an
// allocation per message and change the public shape.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A method frame.
    Method {
        /// Channel number; 0 for the connection class.
        channel: u16,
        /// The method and its arguments.
        method: Method,
    },
    /// A content header frame.
    Header {
        /// Channel number.
        channel: u16,
        /// Class, body size and properties.
        header: ContentHeader,
    },
    /// A content body frame.
    Body {
        /// Channel number.
        channel: u16,
        /// The body bytes: a zero-copy slice of the read buffer.
        payload: Bytes,
    },
    /// A heartbeat frame.
    Heartbeat {
        /// Channel number; must be 0, which the connection checks.
        channel: u16,
    },
}

impl Frame {
    /// The frame's channel number.
    pub fn channel(&self) -> u16 {
        match *self {
            Self::Method { channel, .. }
            | Self::Header { channel, .. }
            | Self::Body { channel, .. }
            | Self::Heartbeat { channel } => channel,
        }
    }

    /// Appends the whole frame (header, payload, frame-end) to `out`.
    ///
    /// A content header is written with its `raw_properties` verbatim, or
    /// with `properties` encoded when `raw_properties` is empty; its weight
    /// is written as 0. Fails with [`CodecError::TooLong`] when a value or
    /// the payload is too long for its length field, in which case nothing
    /// is appended. The caller keeps frames within the peer's `frame_max`.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), CodecError> {
        match self {
            Self::Method { channel, method } => encode_method_frame(out, *channel, method),
            Self::Header { channel, header } => write_frame(out, FRAME_HEADER, *channel, |out| {
                out.put_u16(header.class_id);
                out.put_u16(0);
                out.put_u64(header.body_size);
                if header.raw_properties.is_empty() {
                    header.properties.encode(out)
                } else {
                    out.extend_from_slice(&header.raw_properties);
                    Ok(())
                }
            }),
            Self::Body { channel, payload } => write_frame(out, FRAME_BODY, *channel, |out| {
                out.extend_from_slice(payload);
                Ok(())
            }),
            Self::Heartbeat { channel } => write_frame(out, FRAME_HEARTBEAT, *channel, |_| Ok(())),
        }
    }
}

/// Appends a complete method frame for `method` on `channel` to `out`.
/// Nothing is appended on error (see [`Method::encode`]).
pub fn encode_method_frame(
    out: &mut BytesMut,
    channel: u16,
    method: &Method,
) -> Result<(), CodecError> {
    write_frame(out, FRAME_METHOD, channel, |out| method.encode(out))
}

/// Writes a frame header, the payload written by `payload`, the size and the
/// frame end; on error truncates `out` back to where it was.
fn write_frame(
    out: &mut BytesMut,
    kind: u8,
    channel: u16,
    payload: impl FnOnce(&mut BytesMut) -> Result<(), CodecError>,
) -> Result<(), CodecError> {
    let start = out.len();
    out.put_u8(kind);
    out.put_u16(channel);
    let size_at = crate::wire::begin_u32_len(out);
    let result = payload(out).and_then(|()| crate::wire::patch_u32_len(out, size_at));
    match result {
        Ok(()) => {
            out.put_u8(FRAME_END);
            Ok(())
        }
        Err(e) => {
            out.truncate(start);
            Err(e)
        }
    }
}

/// Consumes the protocol header from `buf`.
///
/// `Ok(None)` while fewer than 8 bytes are buffered and they could still be
/// a valid header; `Ok(Some(()))` once the exact [`PROTOCOL_HEADER`] was
/// consumed; [`CodecError::BadProtocolHeader`] otherwise, as soon as the
/// bytes buffered cannot start one (e.g. `GET ` or an AMQP 1.0 header).
pub fn decode_protocol_header(buf: &mut BytesMut) -> Result<Option<()>, CodecError> {
    let n = buf.len().min(PROTOCOL_HEADER.len());
    if buf.get(..n) != PROTOCOL_HEADER.get(..n) {
        return Err(CodecError::BadProtocolHeader);
    }
    if n < PROTOCOL_HEADER.len() {
        return Ok(None);
    }
    let _ = buf.split_to(PROTOCOL_HEADER.len());
    Ok(Some(()))
}

/// Takes one complete frame off the front of `buf`.
///
/// Returns `Ok(None)`, consuming nothing, until the whole frame is
/// buffered. The frame header is checked as soon as its 7 bytes are there:
/// an unknown type gives [`CodecError::UnknownFrameType`], and a declared
/// size (payload + 8) above `frame_max` gives [`CodecError::FrameTooLarge`]
/// at once, so an oversized frame is never buffered. `frame_max` 0 means no
/// limit (`u32::MAX`). A frame-end octet other than `0xCE` gives
/// [`CodecError::BadFrameEnd`].
///
/// The frame is split off `buf` without copying: body payloads and strings
/// in method arguments are slices of the same allocation. On a method or
/// content header decoding error the frame has been consumed.
pub fn decode_frame(buf: &mut BytesMut, frame_max: u32) -> Result<Option<Frame>, CodecError> {
    let (kind, channel, size) = match buf.get(..FRAME_HEADER_SIZE) {
        Some(&[kind, c0, c1, s0, s1, s2, s3]) => (
            kind,
            u16::from_be_bytes([c0, c1]),
            u32::from_be_bytes([s0, s1, s2, s3]),
        ),
        _ => return Ok(None),
    };
    if !matches!(
        kind,
        FRAME_METHOD | FRAME_HEADER | FRAME_BODY | FRAME_HEARTBEAT
    ) {
        return Err(CodecError::UnknownFrameType(kind));
    }
    let max = if frame_max == 0 { u32::MAX } else { frame_max };
    let total = u64::from(size) + FRAME_OVERHEAD as u64;
    if total > u64::from(max) {
        return Err(CodecError::FrameTooLarge { size: total, max });
    }
    let too_large = CodecError::FrameTooLarge { size: total, max };
    let payload_len = usize::try_from(size).map_err(|_| too_large.clone())?;
    let frame_len = payload_len.checked_add(FRAME_OVERHEAD).ok_or(too_large)?;
    match buf.get(frame_len - 1) {
        None => return Ok(None),
        Some(&FRAME_END) => {}
        Some(_) => return Err(CodecError::BadFrameEnd),
    }
    let frame = buf.split_to(frame_len).freeze();
    let payload = frame.slice(FRAME_HEADER_SIZE..FRAME_HEADER_SIZE + payload_len);
    decode_payload(kind, channel, payload).map(Some)
}

fn decode_payload(kind: u8, channel: u16, payload: Bytes) -> Result<Frame, CodecError> {
    match kind {
        FRAME_METHOD => {
            let mut r = Reader::new(&payload);
            let ids = r.u16().and_then(|c| Ok((c, r.u16()?)));
            let (class_id, method_id) = ids.map_err(|_| CodecError::MalformedFrame {
                reason: "method frame shorter than its class and method ids",
            })?;
            let args = payload.slice(4..);
            let method = Method::decode(class_id, method_id, &args)?;
            Ok(Frame::Method { channel, method })
        }
        FRAME_HEADER => {
            let mut r = Reader::new(&payload);
            let fixed = r.u16().and_then(|class| Ok((class, r.u16()?, r.u64()?)));
            let (class_id, _weight, body_size) = fixed.map_err(|_| CodecError::MalformedFrame {
                reason: "content header shorter than class, weight and body size",
            })?;
            let raw_properties = payload.slice(CONTENT_HEADER_FIXED..);
            let properties =
                decode_properties(&raw_properties).map_err(|reason| CodecError::Syntax {
                    class_id,
                    method_id: 0,
                    reason,
                })?;
            let properties = Box::new(properties);
            let header = ContentHeader {
                class_id,
                body_size,
                properties,
                raw_properties,
            };
            Ok(Frame::Header { channel, header })
        }
        FRAME_BODY => Ok(Frame::Body { channel, payload }),
        FRAME_HEARTBEAT if payload.is_empty() => Ok(Frame::Heartbeat { channel }),
        FRAME_HEARTBEAT => Err(CodecError::MalformedFrame {
            reason: "heartbeat frame with a payload",
        }),
        _ => Err(CodecError::UnknownFrameType(kind)),
    }
}
