//! The hot path: PUBLISH written straight from borrowed parts.
//!
//! The broker writes one PUBLISH per delivered message, so these do not
//! build a [`Packet`](crate::Packet): the size is computed up front, `out`
//! is reserved once and the bytes are written into it, with no allocation
//! besides `out`'s own growth. They produce exactly the bytes
//! [`encode`](crate::encode) gives for the same `Packet::Publish` (tests
//! check this).

use bytes::{BufMut, BytesMut};

use crate::error::EncodeError;
use crate::packet::{Protocol, QoS};
use crate::properties::{with_prefix, Context, Properties};
use crate::wire::{check_str, put_bin, put_varint, varint_len, VARINT_MAX};

/// First byte of a PUBLISH: type 3 and the DUP, QoS and RETAIN flags.
pub(crate) fn first_byte(dup: bool, qos: QoS, retain: bool) -> u8 {
    0x30 | u8::from(dup) << 3 | (qos as u8) << 1 | u8::from(retain)
}

/// Remaining length and property list length, checking every length.
fn sizes(
    protocol: Protocol,
    topic: &str,
    qos: QoS,
    properties: Option<&Properties>,
    payload_len: usize,
) -> Result<(usize, usize), EncodeError> {
    let props = match properties {
        Some(p) if protocol.is_v5() => p.encoded_len(Context::Publish)?,
        _ => 0,
    };
    let mut body = check_str(topic.len())?;
    if qos != QoS::AtMostOnce {
        body += 2;
    }
    if protocol.is_v5() {
        body += with_prefix(props);
    }
    let body = body.saturating_add(payload_len);
    if body > VARINT_MAX as usize {
        return Err(EncodeError::TooLarge);
    }
    Ok((body, props))
}

/// Size in bytes of the PUBLISH [`write_publish`] writes for the same
/// arguments, fixed header included, so the caller can compare it with
/// the client's Maximum Packet Size first. `usize::MAX` when
/// `write_publish` would fail.
pub fn publish_size(
    protocol: Protocol,
    topic: &str,
    qos: QoS,
    properties: Option<&Properties>,
    payload_len: usize,
) -> usize {
    match sizes(protocol, topic, qos, properties, payload_len) {
        Ok((body, _)) => 1 + varint_len(body) + body,
        Err(_) => usize::MAX,
    }
}

/// Appends a complete PUBLISH: fixed header, topic, packet identifier when
/// `qos` is above 0, in 5.0 the properties (an empty list when
/// `properties` is `None`; only those PUBLISH allows), then the payload.
///
/// `topic` is written as given: it may be empty in 5.0 when a topic alias
/// is set. Fails, appending nothing, when the topic or a property string is
/// longer than 65,535 bytes or the packet longer than 268,435,455 + 5 bytes.
#[allow(clippy::too_many_arguments)]
pub fn write_publish(
    out: &mut BytesMut,
    protocol: Protocol,
    dup: bool,
    qos: QoS,
    retain: bool,
    topic: &str,
    packet_id: u16,
    properties: Option<&Properties>,
    payload: &[u8],
) -> Result<(), EncodeError> {
    let (body, props) = sizes(protocol, topic, qos, properties, payload.len())?;
    out.reserve(1 + varint_len(body) + body);
    out.put_u8(first_byte(dup, qos, retain));
    put_varint(out, body);
    put_bin(out, topic.as_bytes());
    if qos != QoS::AtMostOnce {
        out.put_u16(packet_id);
    }
    if protocol.is_v5() {
        match properties {
            Some(p) => p.put(Context::Publish, props, out),
            None => out.put_u8(0),
        }
    }
    out.extend_from_slice(payload);
    Ok(())
}
