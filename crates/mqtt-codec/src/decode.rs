//! Splitting a read buffer into packets: the fixed header, then one parser
//! per packet type.
//!
//! A packet is a first byte (type in the high nibble, flags in the low
//! one), the remaining length as a variable byte integer of 1 to 4 bytes,
//! and that many bytes of variable header and payload.

use bytes::{Buf, BytesMut};

use crate::error::DecodeError;
use crate::packet::{
    Auth, ConnAck, Connect, Disconnect, LastWill, Packet, Protocol, PubAck, Publish, QoS, SubAck,
    Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe,
};
use crate::properties::{self, Context, Properties};
use crate::topic::{shared_subscription, valid_topic_filter, valid_topic_name, SHARED_PREFIX};
use crate::wire::{read_varint, Reader, Res, Varint};

const CONNECT: u8 = 1;
const CONNACK: u8 = 2;
const PUBLISH: u8 = 3;
const PUBACK: u8 = 4;
const PUBREC: u8 = 5;
const PUBREL: u8 = 6;
const PUBCOMP: u8 = 7;
const SUBSCRIBE: u8 = 8;
const SUBACK: u8 = 9;
const UNSUBSCRIBE: u8 = 10;
const UNSUBACK: u8 = 11;
const PINGREQ: u8 = 12;
const PINGRESP: u8 = 13;
const DISCONNECT: u8 = 14;
const AUTH: u8 = 15;

/// CONNACK reason codes of 5.0.
const CONNACK_V5: &[u8] = &[
    0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95, 0x97,
    0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
];
/// PUBACK and PUBREC reason codes.
const PUBACK_V5: &[u8] = &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];
/// PUBREL and PUBCOMP reason codes.
const PUBREL_V5: &[u8] = &[0x00, 0x92];
/// SUBACK return codes of 3.x.
const SUBACK_V3: &[u8] = &[0x00, 0x01, 0x02, 0x80];
/// SUBACK reason codes of 5.0.
const SUBACK_V5: &[u8] = &[
    0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
];
/// UNSUBACK reason codes.
const UNSUBACK_V5: &[u8] = &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91];
/// DISCONNECT reason codes.
const DISCONNECT_V5: &[u8] = &[
    0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94, 0x95,
    0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
];
/// AUTH reason codes.
const AUTH_V5: &[u8] = &[0x00, 0x18, 0x19];

fn check_code(code: u8, allowed: &[u8], what: &'static str) -> Res<u8> {
    if allowed.contains(&code) {
        Ok(code)
    } else {
        Err(DecodeError::ProtocolError(what))
    }
}

/// Decodes one packet from the front of `buf`.
///
/// `protocol` is `None` before the connection's CONNECT: then only a
/// CONNECT is accepted and anything else is
/// [`DecodeError::ProtocolError`]`("first packet must be CONNECT")`. After
/// it, it is the connection's protocol (a CONNECT is still decoded, with
/// its own protocol: refusing a second one is the caller's job).
///
/// `max_size` is the largest packet accepted, fixed header included; 0
/// means no limit. A larger declared size is refused with
/// [`DecodeError::PacketTooLarge`] as soon as the fixed header is
/// buffered, without waiting for the rest. The first byte (packet type and
/// flags) is checked as soon as it arrives.
///
/// Returns `Ok(None)`, consuming nothing, while the packet is incomplete.
/// A complete packet is split off `buf` without copying: strings, binary
/// fields and the payload are slices of it. After an error the packet may
/// have been consumed; the connection must be closed anyway.
pub fn decode(
    buf: &mut BytesMut,
    protocol: Option<Protocol>,
    max_size: u32,
) -> Result<Option<Packet>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let kind = first >> 4;
    let flags = first & 0x0F;
    check_first_byte(kind, flags, protocol)?;
    let (remaining, len_bytes, minimal) = match read_varint(buf.get(1..).unwrap_or_default())? {
        Varint::Incomplete => return Ok(None),
        Varint::Done {
            value,
            len,
            minimal,
        } => (value, len, minimal),
    };
    let max = if max_size == 0 { u32::MAX } else { max_size };
    let header = 1 + len_bytes;
    let size = header as u64 + u64::from(remaining);
    let too_large = DecodeError::PacketTooLarge { size, max };
    if size > u64::from(max) {
        return Err(too_large);
    }
    let size = usize::try_from(size).map_err(|_| too_large)?;
    if buf.len() < size {
        return Ok(None);
    }
    let mut frame = buf.split_to(size).freeze();
    frame.advance(header);
    let r = Reader::new(frame);
    let packet = match (kind, protocol) {
        (CONNECT, _) => {
            let connect = decode_connect(r)?;
            check_minimal(connect.protocol, minimal)?;
            Packet::Connect(connect)
        }
        (_, Some(p)) => {
            check_minimal(p, minimal)?;
            decode_body(kind, flags, r, p)?
        }
        (_, None) => return Err(first_packet_error()),
    };
    Ok(Some(packet))
}

fn first_packet_error() -> DecodeError {
    DecodeError::ProtocolError("first packet must be CONNECT")
}

/// 5.0 requires the shortest encoding of a variable byte integer; 3.x
/// does not say so, and a non-minimal remaining length is accepted there.
fn check_minimal(p: Protocol, minimal: bool) -> Res<()> {
    if p.is_v5() && !minimal {
        Err(DecodeError::MalformedPacket(
            "remaining length not in its shortest form",
        ))
    } else {
        Ok(())
    }
}

/// Checks the packet type and its flags, and that the packet may come now.
fn check_first_byte(kind: u8, flags: u8, protocol: Option<Protocol>) -> Res<()> {
    if protocol.is_none() && kind != CONNECT {
        return Err(first_packet_error());
    }
    match kind {
        0 => Err(DecodeError::MalformedPacket("reserved packet type 0")),
        AUTH if !protocol.is_some_and(Protocol::is_v5) => {
            Err(DecodeError::ProtocolError("AUTH packet before MQTT 5.0"))
        }
        PUBLISH => {
            let qos = (flags >> 1) & 3;
            if qos == 3 {
                Err(DecodeError::MalformedPacket("PUBLISH with QoS 3"))
            } else if qos == 0 && flags & 0b1000 != 0 {
                Err(DecodeError::MalformedPacket(
                    "DUP flag set on a QoS 0 PUBLISH",
                ))
            } else {
                Ok(())
            }
        }
        PUBREL | SUBSCRIBE | UNSUBSCRIBE if flags != 0b0010 => Err(DecodeError::MalformedPacket(
            "fixed header flags of PUBREL, SUBSCRIBE or UNSUBSCRIBE not 0010",
        )),
        PUBREL | SUBSCRIBE | UNSUBSCRIBE => Ok(()),
        _ if flags != 0 => Err(DecodeError::MalformedPacket(
            "reserved fixed header flags set",
        )),
        _ => Ok(()),
    }
}

fn decode_body(kind: u8, flags: u8, mut r: Reader, p: Protocol) -> Res<Packet> {
    let v5 = p.is_v5();
    Ok(match kind {
        CONNACK => Packet::ConnAck(decode_connack(r, p)?),
        PUBLISH => Packet::Publish(decode_publish(r, flags, p)?),
        PUBACK => Packet::PubAck(decode_ack(r, p, PUBACK_V5)?),
        PUBREC => Packet::PubRec(decode_ack(r, p, PUBACK_V5)?),
        PUBREL => Packet::PubRel(decode_ack(r, p, PUBREL_V5)?),
        PUBCOMP => Packet::PubComp(decode_ack(r, p, PUBREL_V5)?),
        SUBSCRIBE => Packet::Subscribe(decode_subscribe(r, p)?),
        SUBACK => {
            let packet_id = packet_id(&mut r)?;
            let properties = props(&mut r, v5, Context::SubAck)?;
            let allowed = if v5 { SUBACK_V5 } else { SUBACK_V3 };
            let codes = r
                .rest()
                .iter()
                .map(|&c| check_code(c, allowed, "unknown SUBACK return code"))
                .collect::<Res<_>>()?;
            Packet::SubAck(SubAck {
                packet_id,
                codes,
                properties,
            })
        }
        UNSUBSCRIBE => {
            let packet_id = packet_id(&mut r)?;
            let properties = props(&mut r, v5, Context::Unsubscribe)?;
            let mut filters = Vec::new();
            while !r.is_empty() {
                let filter = r.string()?;
                check_filter(&filter, v5)?;
                filters.push(filter);
            }
            if filters.is_empty() {
                return Err(DecodeError::ProtocolError(
                    "UNSUBSCRIBE without topic filters",
                ));
            }
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                filters,
                properties,
            })
        }
        UNSUBACK => {
            let packet_id = packet_id(&mut r)?;
            let properties = props(&mut r, v5, Context::UnsubAck)?;
            let codes = if v5 {
                r.rest()
                    .iter()
                    .map(|&c| check_code(c, UNSUBACK_V5, "unknown UNSUBACK reason code"))
                    .collect::<Res<_>>()?
            } else {
                r.finish("UNSUBACK longer than 2 bytes")?;
                Vec::new()
            };
            Packet::UnsubAck(UnsubAck {
                packet_id,
                codes,
                properties,
            })
        }
        PINGREQ => {
            r.finish("PINGREQ with a remaining length")?;
            Packet::PingReq
        }
        PINGRESP => {
            r.finish("PINGRESP with a remaining length")?;
            Packet::PingResp
        }
        DISCONNECT => {
            let (reason, properties) = reason_and_props(&mut r, v5, Context::Disconnect)?;
            r.finish("trailing bytes after DISCONNECT properties")?;
            let reason = check_code(reason, DISCONNECT_V5, "unknown DISCONNECT reason code")?;
            Packet::Disconnect(Disconnect { reason, properties })
        }
        AUTH => {
            let (reason, properties) = reason_and_props(&mut r, v5, Context::Auth)?;
            r.finish("trailing bytes after AUTH properties")?;
            let reason = check_code(reason, AUTH_V5, "unknown AUTH reason code")?;
            Packet::Auth(Auth { reason, properties })
        }
        // CONNECT is decoded by the caller and 0 was refused from the
        // first byte; the type is a nibble, so nothing else remains.
        _ => return Err(DecodeError::MalformedPacket("unexpected packet type")),
    })
}

/// A packet identifier, which must not be 0.
fn packet_id(r: &mut Reader) -> Res<u16> {
    match r.u16()? {
        0 => Err(DecodeError::MalformedPacket("packet identifier 0")),
        id => Ok(id),
    }
}

/// A property list in 5.0, nothing before.
fn props(r: &mut Reader, v5: bool, ctx: Context) -> Res<Properties> {
    if v5 {
        properties::decode(r, ctx)
    } else {
        Ok(Properties::default())
    }
}

/// The optional reason code and properties of DISCONNECT and AUTH in 5.0:
/// both can be left out (reason 0, no properties), or only the properties.
fn reason_and_props(r: &mut Reader, v5: bool, ctx: Context) -> Res<(u8, Properties)> {
    if !v5 || r.is_empty() {
        return Ok((0, Properties::default()));
    }
    let reason = r.u8()?;
    let properties = if r.is_empty() {
        Properties::default()
    } else {
        properties::decode(r, ctx)?
    };
    Ok((reason, properties))
}

fn decode_connect(mut r: Reader) -> Res<Connect> {
    let name = r.string()?;
    let level = r.u8()?;
    let protocol = match (&*name, level) {
        ("MQTT", 4) => Protocol::V311,
        ("MQTT", 5) => Protocol::V5,
        ("MQIsdp", 3) => Protocol::V31,
        _ => return Err(DecodeError::UnsupportedProtocol { level }),
    };
    let v5 = protocol.is_v5();
    let flags = r.u8()?;
    if flags & 0x01 != 0 {
        return Err(DecodeError::MalformedPacket("reserved CONNECT flag set"));
    }
    let clean_start = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos =
        QoS::from_u8((flags >> 3) & 3).ok_or(DecodeError::MalformedPacket("will QoS 3"))?;
    let will_retain = flags & 0x20 != 0;
    let password_flag = flags & 0x40 != 0;
    let username_flag = flags & 0x80 != 0;
    if !will_flag && (will_qos != QoS::AtMostOnce || will_retain) {
        return Err(DecodeError::MalformedPacket(
            "will QoS or will retain set without the will flag",
        ));
    }
    if !v5 && password_flag && !username_flag {
        return Err(DecodeError::MalformedPacket(
            "password flag set without the user name flag",
        ));
    }
    let keep_alive = r.u16()?;
    let properties = props(&mut r, v5, Context::Connect)?;
    if properties.authentication_data.is_some() && properties.authentication_method.is_none() {
        return Err(DecodeError::ProtocolError(
            "authentication data without authentication method",
        ));
    }
    let client_id = r.string()?;
    let will = if will_flag {
        let properties = props(&mut r, v5, Context::Will)?;
        let topic = r.string()?;
        if !valid_topic_name(&topic) {
            return Err(DecodeError::MalformedPacket(
                "will topic empty or holding a wildcard",
            ));
        }
        let payload = r.binary()?;
        Some(LastWill {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = if username_flag {
        Some(r.string()?)
    } else {
        None
    };
    let password = if password_flag {
        Some(r.binary()?)
    } else {
        None
    };
    r.finish("trailing bytes after CONNECT payload")?;
    Ok(Connect {
        protocol,
        clean_start,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

fn decode_connack(mut r: Reader, p: Protocol) -> Res<ConnAck> {
    let flags = r.u8()?;
    let code = r.u8()?;
    // In 3.1 the first byte is unused; from 3.1.1 on, bits 7-1 are reserved.
    let session_present = p != Protocol::V31 && flags & 0x01 != 0;
    if p != Protocol::V31 && flags & 0xFE != 0 {
        return Err(DecodeError::MalformedPacket("reserved CONNACK flags set"));
    }
    let code = if p.is_v5() {
        check_code(code, CONNACK_V5, "unknown CONNACK reason code")?
    } else {
        check_code(code, &[0, 1, 2, 3, 4, 5], "unknown CONNACK return code")?
    };
    if session_present && code != 0 {
        return Err(DecodeError::ProtocolError(
            "session present with a non-zero CONNACK code",
        ));
    }
    let properties = props(&mut r, p.is_v5(), Context::ConnAck)?;
    r.finish("trailing bytes after CONNACK")?;
    Ok(ConnAck {
        session_present,
        code,
        properties,
    })
}

fn decode_publish(mut r: Reader, flags: u8, p: Protocol) -> Res<Publish> {
    let v5 = p.is_v5();
    // QoS 3 was refused with the first byte.
    let qos =
        QoS::from_u8((flags >> 1) & 3).ok_or(DecodeError::MalformedPacket("PUBLISH with QoS 3"))?;
    let topic = r.string()?;
    let packet_id = if qos == QoS::AtMostOnce {
        0
    } else {
        packet_id(&mut r)?
    };
    let properties = props(&mut r, v5, Context::Publish)?;
    if topic.is_empty() {
        if !v5 {
            return Err(DecodeError::MalformedPacket("empty PUBLISH topic name"));
        }
        if properties.topic_alias.is_none() {
            return Err(DecodeError::ProtocolError(
                "empty PUBLISH topic name without a topic alias",
            ));
        }
    } else if !valid_topic_name(&topic) {
        return Err(DecodeError::MalformedPacket(
            "wildcard character in a PUBLISH topic name",
        ));
    }
    Ok(Publish {
        dup: flags & 0b1000 != 0,
        qos,
        retain: flags & 0b0001 != 0,
        topic,
        packet_id,
        payload: r.rest(),
        properties,
    })
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP: in 5.0 the reason code and the
/// properties can each be left out from the end.
fn decode_ack(mut r: Reader, p: Protocol, codes: &[u8]) -> Res<PubAck> {
    let packet_id = packet_id(&mut r)?;
    let (reason, properties) = reason_and_props(&mut r, p.is_v5(), Context::Ack)?;
    r.finish("trailing bytes after acknowledgement")?;
    let reason = check_code(
        reason,
        codes,
        "reason code not allowed in this acknowledgement",
    )?;
    Ok(PubAck {
        packet_id,
        reason,
        properties,
    })
}

fn decode_subscribe(mut r: Reader, p: Protocol) -> Res<Subscribe> {
    let v5 = p.is_v5();
    let packet_id = packet_id(&mut r)?;
    let properties = props(&mut r, v5, Context::Subscribe)?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = r.string()?;
        let options = subscription_options(r.u8()?, v5)?;
        check_filter(&filter, v5)?;
        if v5 && options.no_local && filter.starts_with(SHARED_PREFIX) {
            return Err(DecodeError::ProtocolError(
                "no local set on a shared subscription",
            ));
        }
        filters.push((filter, options));
    }
    if filters.is_empty() {
        return Err(DecodeError::ProtocolError(
            "SUBSCRIBE without topic filters",
        ));
    }
    Ok(Subscribe {
        packet_id,
        filters,
        properties,
    })
}

fn subscription_options(byte: u8, v5: bool) -> Res<SubscriptionOptions> {
    let reserved = if v5 { 0xC0 } else { 0xFC };
    if byte & reserved != 0 {
        return Err(DecodeError::MalformedPacket(
            "reserved subscription option bits set",
        ));
    }
    let qos = match QoS::from_u8(byte & 3) {
        Some(qos) => qos,
        // 3.1.1 calls it malformed, 5.0 a protocol error.
        None if v5 => return Err(DecodeError::ProtocolError("subscription QoS 3")),
        None => return Err(DecodeError::MalformedPacket("subscription QoS 3")),
    };
    let retain_handling = (byte >> 4) & 3;
    if retain_handling == 3 {
        return Err(DecodeError::ProtocolError("retain handling 3"));
    }
    Ok(SubscriptionOptions {
        qos,
        no_local: byte & 0x04 != 0,
        retain_as_published: byte & 0x08 != 0,
        retain_handling,
    })
}

/// Wildcard placement; in 5.0 also the form of a shared subscription.
fn check_filter(filter: &str, v5: bool) -> Res<()> {
    if !valid_topic_filter(filter) {
        return Err(DecodeError::MalformedPacket("invalid topic filter"));
    }
    if v5 && filter.starts_with(SHARED_PREFIX) && shared_subscription(filter).is_none() {
        return Err(DecodeError::MalformedPacket(
            "invalid shared subscription topic filter",
        ));
    }
    Ok(())
}

/// The protocol version a CONNECT at the front of `buf` declares, without
/// consuming anything; `None` when `buf` does not start with a CONNECT
/// whose protocol name and level are buffered and known.
///
/// [`decode`] consumes a packet it rejects, and its errors do not say
/// which version the client spoke. A caller that wants to answer a bad
/// first packet with a CONNACK in the client's format (5.0 reason code
/// 0x81 or 0x82 rather than closing) calls this first.
pub fn connect_protocol(buf: &[u8]) -> Option<Protocol> {
    if buf.first() != Some(&(CONNECT << 4)) {
        return None;
    }
    let Ok(Varint::Done { len, .. }) = read_varint(buf.get(1..)?) else {
        return None;
    };
    let rest = buf.get(1 + len..)?;
    match rest.get(..7)? {
        [0, 4, b'M', b'Q', b'T', b'T', 4] => Some(Protocol::V311),
        [0, 4, b'M', b'Q', b'T', b'T', 5] => Some(Protocol::V5),
        [0, 6, b'M', b'Q', b'I', b's', b'd'] if rest.get(7..9)? == b"p\x03" => Some(Protocol::V31),
        _ => None,
    }
}
