//! Inputs the decoder must refuse, each with the error variant (and so the
//! 5.0 reason code) the specification calls for, plus the size limit.

use bytes::BytesMut;
use liebre_mqtt_codec::*;

const MAX: u32 = 1 << 20;
const V3: Option<Protocol> = Some(Protocol::V311);
const V5: Option<Protocol> = Some(Protocol::V5);

/// A packet with a one-byte remaining length.
fn pk(first: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![first, u8::try_from(body.len()).unwrap_or(0x7F)];
    assert!(body.len() < 128);
    v.extend_from_slice(body);
    v
}

fn err(bytes: &[u8], protocol: Option<Protocol>) -> DecodeError {
    let mut buf = BytesMut::from(bytes);
    match decode(&mut buf, protocol, MAX) {
        Err(e) => e,
        Ok(p) => panic!("{bytes:02X?} decoded as {p:?}"),
    }
}

fn malformed(bytes: &[u8], protocol: Option<Protocol>) {
    let e = err(bytes, protocol);
    assert!(
        matches!(e, DecodeError::MalformedPacket(_)),
        "{bytes:02X?}: {e:?}"
    );
    assert_eq!(e.reason_code(), 0x81);
}

fn protocol_error(bytes: &[u8], protocol: Option<Protocol>) {
    let e = err(bytes, protocol);
    assert!(
        matches!(e, DecodeError::ProtocolError(_)),
        "{bytes:02X?}: {e:?}"
    );
    assert_eq!(e.reason_code(), 0x82);
}

fn ok(bytes: &[u8], protocol: Option<Protocol>) -> Packet {
    let mut buf = BytesMut::from(bytes);
    match decode(&mut buf, protocol, MAX) {
        Ok(Some(p)) if buf.is_empty() => p,
        other => panic!("{bytes:02X?}: {other:?}"),
    }
}

#[test]
fn reserved_fixed_header_flags() {
    for first in [
        0x11, 0x21, 0x41, 0x58, 0x60, 0x63, 0x71, 0x80, 0x83, 0x94, 0xA0, 0xB1, 0xC1, 0xD2, 0xE4,
    ] {
        // Refused from the first byte alone, and with a full packet.
        let protocol = if first >> 4 == 1 { None } else { V3 };
        malformed(&[first], protocol);
        malformed(&pk(first, &[0x00, 0x01]), protocol);
    }
    malformed(&[0xF1], V5);
    malformed(&[0x00, 0x00], V3);
}

#[test]
fn remaining_length_of_five_bytes() {
    malformed(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F], V3);
    malformed(&[0x30, 0x80, 0x80, 0x80, 0x80], V3);
    malformed(&[0xC0, 0x80, 0x80, 0x80, 0x80, 0x00], V5);
}

#[test]
fn non_minimal_remaining_length() {
    // 5.0 requires the shortest encoding; 3.1.1 does not say so.
    malformed(&[0xC0, 0x80, 0x00], V5);
    assert_eq!(ok(&[0xC0, 0x80, 0x00], V3), Packet::PingReq);
    #[rustfmt::skip]
    let connect = [0x10, 0x8D, 0x00, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00];
    malformed(&connect, None);
}

#[test]
fn strings() {
    // Invalid UTF-8 (a lone continuation byte) and U+0000 in a topic name.
    malformed(&pk(0x30, &[0x00, 0x02, 0xC3, 0x28]), V3);
    malformed(&pk(0x30, &[0x00, 0x02, b'a', 0x00]), V3);
    malformed(&pk(0x30, &[0x00, 0x02, b'a', 0x00]), V5);
    // An encoded surrogate (U+D800) is not well-formed UTF-8.
    malformed(&pk(0x30, &[0x00, 0x03, 0xED, 0xA0, 0x80]), V3);
    // Overlong encoding of '/'.
    malformed(&pk(0x30, &[0x00, 0x02, 0xC0, 0xAF]), V3);
    // A string longer than the packet.
    malformed(&pk(0x30, &[0x00, 0x09, b'a']), V3);
    // U+FEFF is a valid character and stays.
    let Packet::Publish(p) = ok(&pk(0x30, &[0x00, 0x03, 0xEF, 0xBB, 0xBF]), V3) else {
        panic!("not a publish");
    };
    assert_eq!(&*p.topic, "\u{FEFF}");
}

#[test]
fn publish_flags_and_topic() {
    malformed(&pk(0x36, &[0x00, 0x01, b'a', 0x00, 0x01]), V3); // QoS 3
    malformed(&[0x36], V5);
    malformed(&pk(0x38, &[0x00, 0x01, b'a']), V3); // DUP at QoS 0
    malformed(&pk(0x30, &[0x00, 0x03, b'a', b'/', b'+']), V3);
    malformed(&pk(0x30, &[0x00, 0x01, b'#', 0x00]), V5);
    malformed(&pk(0x30, &[0x00, 0x03, b'a', b'#', b'b']), V3);
    malformed(&pk(0x30, &[0x00, 0x00]), V3); // empty topic
    protocol_error(&pk(0x30, &[0x00, 0x00, 0x00]), V5); // empty topic, no alias
    malformed(&pk(0x32, &[0x00, 0x01, b'a', 0x00, 0x00]), V3); // packet id 0
    malformed(&pk(0x34, &[0x00, 0x01, b'a', 0x00, 0x00, 0x00]), V5);
    malformed(&pk(0x32, &[0x00, 0x01, b'a', 0x00]), V3); // truncated id
}

#[test]
fn properties() {
    let publish = |props: &[u8]| {
        let mut body = vec![0x00, 0x01, b't', u8::try_from(props.len()).unwrap_or(0)];
        body.extend_from_slice(props);
        pk(0x30, &body)
    };
    assert!(matches!(
        ok(&publish(&[0x01, 0x01]), V5),
        Packet::Publish(_)
    ));
    protocol_error(&publish(&[0x01, 0x01, 0x01, 0x00]), V5); // twice
                                                             // Topic alias 0: its own reason code, 0x94 Topic Alias invalid.
    let e = err(&publish(&[0x23, 0x00, 0x00]), V5);
    assert_eq!(e, DecodeError::TopicAliasInvalid);
    assert_eq!(e.reason_code(), 0x94);
    protocol_error(&publish(&[0x11, 0x00, 0x00, 0x00, 0x01]), V5); // session expiry
    protocol_error(&publish(&[0x01, 0x02]), V5); // payload format 2
    protocol_error(&publish(&[0x0B, 0x00]), V5); // subscription id 0
    protocol_error(&publish(&[0x08, 0x00, 0x01, b'#']), V5); // wildcard response topic
    malformed(&publish(&[0x05, 0x00]), V5); // unknown identifier
    malformed(&publish(&[0x80, 0x01]), V5); // not a one-byte identifier
    malformed(&publish(&[0x02, 0x00, 0x00]), V5); // value overruns the list
    malformed(&publish(&[0x0B, 0x80, 0x00]), V5); // non-minimal varint
    malformed(&publish(&[0x0B, 0xFF, 0xFF, 0xFF, 0xFF]), V5); // 5-byte varint
    malformed(&publish(&[0x26, 0x00, 0x01, b'k', 0x00, 0x01, 0xFF]), V5); // bad UTF-8
                                                                          // Property length longer than the packet.
    malformed(&pk(0x30, &[0x00, 0x01, b't', 0x05, 0x01, 0x01]), V5);
    // Non-minimal property length.
    malformed(&pk(0x30, &[0x00, 0x01, b't', 0x80, 0x00]), V5);
    // Two subscription identifiers are fine in PUBLISH, not in SUBSCRIBE.
    let Packet::Publish(p) = ok(&publish(&[0x0B, 0x01, 0x0B, 0x02]), V5) else {
        panic!("not a publish");
    };
    assert_eq!(p.properties.subscription_identifiers, [1, 2]);
    protocol_error(
        &pk(
            0x82,
            &[
                0x00, 0x01, 0x04, 0x0B, 0x01, 0x0B, 0x02, 0x00, 0x01, b'a', 0x00,
            ],
        ),
        V5,
    );
    protocol_error(
        &pk(
            0x82,
            &[0x00, 0x01, 0x02, 0x0B, 0x00, 0x00, 0x01, b'a', 0x00],
        ),
        V5,
    );
    // Reason string in UNSUBSCRIBE is not allowed.
    protocol_error(
        &pk(
            0xA2,
            &[0x00, 0x01, 0x04, 0x1F, 0x00, 0x01, b'r', 0x00, 0x01, b'a'],
        ),
        V5,
    );
}

/// A 3.1.1 or 5.0 CONNECT with these flags and the bytes after keep alive.
fn connect(level: u8, flags: u8, rest: &[u8]) -> Vec<u8> {
    let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', level, flags, 0x00, 0x0A];
    body.extend_from_slice(rest);
    pk(0x10, &body)
}

#[test]
fn connect_flags() {
    let client = [0x00, 0x01, b'c'];
    assert!(matches!(
        ok(&connect(4, 0x02, &client), None),
        Packet::Connect(_)
    ));
    malformed(&connect(4, 0x03, &client), None); // reserved bit
    malformed(&connect(4, 0x1C, &client), None); // will QoS 3
    malformed(&connect(4, 0x08, &client), None); // will QoS without will
    malformed(&connect(4, 0x20, &client), None); // will retain without will
    malformed(
        &connect(4, 0x40, &[0x00, 0x01, b'c', 0x00, 0x01, b'p']),
        None,
    ); // password, no user
    malformed(&connect(4, 0x02, &[0x00, 0x01, b'c', 0x00]), None); // trailing byte
    malformed(&connect(4, 0x80, &client), None); // user name flag, no user name
    malformed(&connect(4, 0x02, &[0x00, 0x05, b'c']), None); // truncated client id
                                                             // Will topic with a wildcard.
    malformed(
        &connect(4, 0x04, &[0x00, 0x01, b'c', 0x00, 0x01, b'+', 0x00, 0x00]),
        None,
    );
    // 5.0: property checks.
    malformed(&connect(5, 0x02, &client), None); // no property length
    protocol_error(
        &connect(5, 0x02, &[0x03, 0x21, 0x00, 0x00, 0x00, 0x01, b'c']),
        None,
    );
    protocol_error(
        &connect(
            5,
            0x02,
            &[0x05, 0x27, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, b'c'],
        ),
        None,
    );
    protocol_error(
        &connect(5, 0x02, &[0x02, 0x17, 0x02, 0x00, 0x01, b'c']),
        None,
    );
    protocol_error(
        &connect(5, 0x02, &[0x03, 0x16, 0x00, 0x00, 0x00, 0x01, b'c']),
        None,
    );
    protocol_error(
        &connect(5, 0x02, &[0x02, 0x01, 0x01, 0x00, 0x01, b'c']),
        None,
    ); // will prop in CONNECT
       // Will delay in the CONNECT properties instead of the will's.
    protocol_error(
        &connect(
            5,
            0x06,
            &[
                0x05, 0x18, 0, 0, 0, 1, 0x00, 0x01, b'c', 0x00, 0x00, 0x01, b'w', 0x00, 0x00,
            ],
        ),
        None,
    );
}

#[test]
fn unsupported_protocols() {
    let client = [0x00, 0x01, b'c'];
    assert_eq!(
        err(&connect(6, 0x02, &client), None),
        DecodeError::UnsupportedProtocol { level: 6 }
    );
    assert_eq!(
        err(&connect(3, 0x02, &client), None),
        DecodeError::UnsupportedProtocol { level: 3 }
    );
    let mqisdp4 = pk(
        0x10,
        &[
            0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x04, 0x02, 0x00, 0x0A, 0x00, 0x01,
            b'c',
        ],
    );
    assert_eq!(
        err(&mqisdp4, None),
        DecodeError::UnsupportedProtocol { level: 4 }
    );
    let other = pk(
        0x10,
        &[
            0x00, 0x04, b'm', b'q', b't', b't', 0x04, 0x02, 0x00, 0x0A, 0x00, 0x01, b'c',
        ],
    );
    let e = err(&other, None);
    assert_eq!(e, DecodeError::UnsupportedProtocol { level: 4 });
    assert_eq!(e.reason_code(), 0x84);
    assert_eq!(connect_protocol(&other), None);
}

#[test]
fn packet_order() {
    // Anything but CONNECT first is a protocol error, from its first byte.
    protocol_error(&[0x30], None);
    protocol_error(&[0xC0, 0x00], None);
    protocol_error(&[0xF0, 0x00], V3);
    protocol_error(&[0xF0, 0x00], Some(Protocol::V31));
    assert_eq!(ok(&[0xF0, 0x00], V5), Packet::Auth(Auth::default()));
}

#[test]
fn packet_identifiers() {
    malformed(&pk(0x82, &[0x00, 0x00, 0x00, 0x01, b'a', 0x00]), V3);
    malformed(&pk(0x82, &[0x00, 0x00, 0x00, 0x00, 0x01, b'a', 0x00]), V5);
    malformed(&pk(0xA2, &[0x00, 0x00, 0x00, 0x01, b'a']), V3);
    malformed(&pk(0x40, &[0x00, 0x00]), V3);
    malformed(&pk(0x62, &[0x00, 0x00]), V5);
    malformed(&pk(0x90, &[0x00, 0x00, 0x00]), V3);
}

#[test]
fn subscribe_payload() {
    let sub = |filter: &[u8], options: u8, v5: bool| {
        let mut body = vec![0x00, 0x01];
        if v5 {
            body.push(0);
        }
        body.extend_from_slice(&[0x00, u8::try_from(filter.len()).unwrap_or(0)]);
        body.extend_from_slice(filter);
        body.push(options);
        pk(0x82, &body)
    };
    assert!(matches!(
        ok(&sub(b"a/#", 0x00, false), V3),
        Packet::Subscribe(_)
    ));
    malformed(&sub(b"a/#/b", 0x00, false), V3);
    malformed(&sub(b"a/#/b", 0x00, true), V5);
    malformed(&sub(b"a#", 0x00, false), V3);
    malformed(&sub(b"a/b+", 0x00, true), V5);
    malformed(&sub(b"", 0x00, false), V3);
    malformed(&sub(b"a", 0x04, false), V3); // reserved bits in 3.1.1
    malformed(&sub(b"a", 0x03, false), V3); // QoS 3 in 3.1.1
    malformed(&sub(b"a", 0x40, true), V5); // reserved bits in 5.0
    protocol_error(&sub(b"a", 0x03, true), V5); // QoS 3 in 5.0
    protocol_error(&sub(b"a", 0x30, true), V5); // retain handling 3
    protocol_error(&sub(b"$share/g/a", 0x04, true), V5); // no local, shared
    malformed(&sub(b"$share/g", 0x00, true), V5);
    malformed(&sub(b"$share/+/a", 0x00, true), V5);
    assert!(matches!(
        ok(&sub(b"$share/g/a/#", 0x01, true), V5),
        Packet::Subscribe(_)
    ));
    // Missing options byte.
    malformed(&pk(0x82, &[0x00, 0x01, 0x00, 0x01, b'a']), V3);
    // No topic filter at all.
    protocol_error(&pk(0x82, &[0x00, 0x01]), V3);
    protocol_error(&pk(0x82, &[0x00, 0x01, 0x00]), V5);
    protocol_error(&pk(0xA2, &[0x00, 0x01]), V3);
    protocol_error(&pk(0xA2, &[0x00, 0x01, 0x00]), V5);
    malformed(&pk(0xA2, &[0x00, 0x01, 0x00, 0x02, b'#', b'a']), V3);
}

#[test]
fn lengths_and_reason_codes() {
    malformed(&pk(0xC0, &[0x00]), V3);
    malformed(&pk(0xD0, &[0x00]), V5);
    malformed(&pk(0xE0, &[0x00]), V3);
    malformed(&pk(0x40, &[0x00, 0x01, 0x00]), V3);
    malformed(&pk(0xB0, &[0x00, 0x01, 0x00]), V3);
    malformed(&pk(0x20, &[0x00, 0x00, 0x00]), V3);
    malformed(&pk(0x20, &[0x00]), V3);
    malformed(&pk(0x20, &[0x02, 0x00]), V3); // reserved CONNACK flag
    protocol_error(&pk(0x20, &[0x00, 0x06]), V3); // return code 6
    protocol_error(&pk(0x20, &[0x01, 0x05]), V3); // session present with an error
    protocol_error(&pk(0x20, &[0x00, 0x01, 0x00]), V5);
    malformed(&pk(0x20, &[0x00, 0x00]), V5); // no property length
    protocol_error(&pk(0x40, &[0x00, 0x01, 0x01]), V5);
    protocol_error(&pk(0x62, &[0x00, 0x01, 0x10]), V5);
    protocol_error(&pk(0x90, &[0x00, 0x01, 0x03]), V3);
    protocol_error(&pk(0x90, &[0x00, 0x01, 0x00, 0x03]), V5);
    protocol_error(&pk(0xB0, &[0x00, 0x01, 0x00, 0x01]), V5);
    protocol_error(&pk(0xE0, &[0x05]), V5);
    protocol_error(&pk(0xF0, &[0x01]), V5);
    malformed(&pk(0xE0, &[0x00, 0x00, 0x00]), V5); // trailing byte
    malformed(&pk(0x40, &[0x00, 0x01, 0x00, 0x00, 0x00]), V5);
    // A 3.1 CONNACK's first byte is unused.
    assert_eq!(
        ok(&pk(0x20, &[0x01, 0x00]), Some(Protocol::V31)),
        Packet::ConnAck(ConnAck::default())
    );
}

#[test]
fn oversized_packet_refused_from_its_fixed_header() {
    // Declares 268,435,455 bytes; only the fixed header is buffered.
    let mut buf = BytesMut::from(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F][..]);
    assert_eq!(
        decode(&mut buf, V3, 1024),
        Err(DecodeError::PacketTooLarge {
            size: 268_435_460,
            max: 1024
        })
    );
    assert_eq!(
        DecodeError::PacketTooLarge { size: 2, max: 1 }.reason_code(),
        0x95
    );
    // Also before CONNECT.
    let mut buf = BytesMut::from(&[0x10, 0x80, 0x08][..]);
    assert_eq!(
        decode(&mut buf, None, 1024),
        Err(DecodeError::PacketTooLarge {
            size: 1027,
            max: 1024
        })
    );
    // The limit counts the fixed header: 2 + 8 = 10 bytes.
    let packet = pk(0x30, &[0x00, 0x01, b'a', 1, 2, 3, 4, 5]);
    assert!(matches!(
        decode(&mut BytesMut::from(&packet[..]), V3, 10),
        Ok(Some(_))
    ));
    assert_eq!(
        decode(&mut BytesMut::from(&packet[..2]), V3, 9),
        Err(DecodeError::PacketTooLarge { size: 10, max: 9 })
    );
    // 0 means no limit.
    assert_eq!(
        decode(
            &mut BytesMut::from(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F][..]),
            V3,
            0
        ),
        Ok(None)
    );
}
