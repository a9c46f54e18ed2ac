//! Golden byte vectors, written out by hand from the OASIS MQTT 3.1.1 and
//! 5.0 specifications, checked in both directions, and cut at every byte.

use bytes::{Bytes, BytesMut};
use liebre_mqtt_codec::*;

const MAX: u32 = 1 << 20;

fn s(v: &str) -> Str {
    Str::from(v)
}

fn b(v: &'static [u8]) -> Bytes {
    Bytes::from_static(v)
}

/// Decodes `bytes` as one whole packet for `protocol`.
fn decoded(bytes: &[u8], protocol: Option<Protocol>) -> Packet {
    let mut buf = BytesMut::from(bytes);
    let packet = decode(&mut buf, protocol, MAX);
    assert!(buf.is_empty(), "packet not fully consumed: {packet:?}");
    match packet {
        Ok(Some(p)) => p,
        other => panic!("{bytes:02X?}: {other:?}"),
    }
}

fn encoded(packet: &Packet, protocol: Protocol) -> Vec<u8> {
    let mut out = BytesMut::new();
    if let Err(e) = encode(packet, protocol, &mut out) {
        panic!("{packet:?}: {e}");
    }
    out.to_vec()
}

/// Both directions, and every strict prefix is incomplete and left alone.
fn golden(bytes: &[u8], protocol: Protocol, decode_as: Option<Protocol>, packet: &Packet) {
    assert_eq!(
        encoded(packet, protocol),
        bytes,
        "encoding {}",
        packet.name()
    );
    assert_eq!(&decoded(bytes, decode_as), packet);
    for len in 0..bytes.len() {
        let mut buf = BytesMut::from(&bytes[..len]);
        assert_eq!(
            decode(&mut buf, decode_as, MAX),
            Ok(None),
            "{} cut to {len}",
            packet.name()
        );
        assert_eq!(buf.len(), len, "a prefix was consumed");
    }
}

#[rustfmt::skip]
const CONNECT_V311: &[u8] = &[
    0x10, 35,
    0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name
    0x04,                               // level 4
    0xEE,                               // user, password, will retain, will QoS 1, will, clean
    0x00, 0x3C,                         // keep alive 60
    0x00, 0x06, b'l', b'i', b'e', b'b', b'r', b'e',
    0x00, 0x03, b'b', b'y', b'e',       // will topic
    0x00, 0x04, b'g', b'o', b'n', b'e', // will payload
    0x00, 0x01, b'u',                   // user name
    0x00, 0x01, b'p',                   // password
];

#[test]
fn connect_v311() {
    let packet = Packet::Connect(Connect {
        protocol: Protocol::V311,
        clean_start: true,
        keep_alive: 60,
        client_id: s("liebre"),
        will: Some(LastWill {
            topic: s("bye"),
            payload: b(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Properties::default(),
        }),
        username: Some(s("u")),
        password: Some(b(b"p")),
        properties: Properties::default(),
    });
    golden(CONNECT_V311, Protocol::V311, None, &packet);
    // The CONNECT's own level decides, whatever the caller passes.
    assert_eq!(decoded(CONNECT_V311, Some(Protocol::V5)), packet);
    assert_eq!(encoded(&packet, Protocol::V5), CONNECT_V311);
    assert_eq!(connect_protocol(CONNECT_V311), Some(Protocol::V311));
}

#[rustfmt::skip]
const CONNECT_V5: &[u8] = &[
    0x10, 44,
    0x00, 0x04, b'M', b'Q', b'T', b'T',
    0x05,                               // level 5
    0x06,                               // will, clean start
    0x00, 0x1E,                         // keep alive 30
    15,                                 // properties
    0x11, 0x00, 0x00, 0x0E, 0x10,       //   session expiry 3600
    0x21, 0x00, 0x14,                   //   receive maximum 20
    0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v', // user property
    0x00, 0x02, b'c', b'1',             // client id
    7,                                  // will properties
    0x01, 0x01,                         //   payload format indicator 1
    0x18, 0x00, 0x00, 0x00, 0x05,       //   will delay 5
    0x00, 0x01, b'w',                   // will topic
    0x00, 0x01, b'x',                   // will payload
];

#[test]
fn connect_v5_with_will_and_properties() {
    let packet = Packet::Connect(Connect {
        protocol: Protocol::V5,
        clean_start: true,
        keep_alive: 30,
        client_id: s("c1"),
        will: Some(LastWill {
            topic: s("w"),
            payload: b(b"x"),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Properties {
                payload_format_indicator: Some(1),
                will_delay_interval: Some(5),
                ..Default::default()
            },
        }),
        username: None,
        password: None,
        properties: Properties {
            session_expiry_interval: Some(3600),
            receive_maximum: Some(20),
            user_properties: vec![(s("k"), s("v"))],
            ..Default::default()
        },
    });
    golden(CONNECT_V5, Protocol::V5, None, &packet);
    assert_eq!(connect_protocol(CONNECT_V5), Some(Protocol::V5));
}

#[rustfmt::skip]
const CONNECT_V31: &[u8] = &[
    0x10, 17,
    0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p',
    0x03, 0x02, 0x00, 0x0A,
    0x00, 0x03, b'a', b'b', b'c',
];

#[test]
fn connect_v31() {
    let packet = Packet::Connect(Connect {
        protocol: Protocol::V31,
        clean_start: true,
        keep_alive: 10,
        client_id: s("abc"),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    });
    golden(CONNECT_V31, Protocol::V31, None, &packet);
    assert_eq!(connect_protocol(CONNECT_V31), Some(Protocol::V31));
    assert_eq!(connect_protocol(&CONNECT_V31[..9]), None);
}

#[test]
fn connect_v5_password_without_user_name() {
    #[rustfmt::skip]
    let bytes = [
        0x10, 17, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x40, 0x00, 0x00, 0x00,
        0x00, 0x00, // empty client id
        0x00, 0x02, 0xFF, 0x00, // binary password
    ];
    let packet = Packet::Connect(Connect {
        protocol: Protocol::V5,
        clean_start: false,
        keep_alive: 0,
        client_id: s(""),
        will: None,
        username: None,
        password: Some(b(&[0xFF, 0x00])),
        properties: Properties::default(),
    });
    golden(&bytes, Protocol::V5, None, &packet);
}

#[test]
fn connack() {
    let v311 = Packet::ConnAck(ConnAck {
        session_present: true,
        code: 0,
        properties: Properties::default(),
    });
    golden(
        &[0x20, 0x02, 0x01, 0x00],
        Protocol::V311,
        Some(Protocol::V311),
        &v311,
    );
    let refused = Packet::ConnAck(ConnAck {
        session_present: false,
        code: 5,
        properties: Properties::default(),
    });
    golden(
        &[0x20, 0x02, 0x00, 0x05],
        Protocol::V311,
        Some(Protocol::V311),
        &refused,
    );

    #[rustfmt::skip]
    let bytes = [
        0x20, 12, 0x00, 0x00,
        9,                            // properties
        0x12, 0x00, 0x01, b'a',       //   assigned client id
        0x22, 0x00, 0x0A,             //   topic alias maximum 10
        0x24, 0x01,                   //   maximum QoS 1
    ];
    let v5 = Packet::ConnAck(ConnAck {
        session_present: false,
        code: 0,
        properties: Properties {
            assigned_client_identifier: Some(s("a")),
            topic_alias_maximum: Some(10),
            maximum_qos: Some(1),
            ..Default::default()
        },
    });
    golden(&bytes, Protocol::V5, Some(Protocol::V5), &v5);
    let unsupported = Packet::ConnAck(ConnAck {
        session_present: false,
        code: 0x84,
        properties: Properties::default(),
    });
    golden(
        &[0x20, 0x03, 0x00, 0x84, 0x00],
        Protocol::V5,
        Some(Protocol::V5),
        &unsupported,
    );
}

#[test]
fn publish_qos0_v311() {
    let packet = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: true,
        topic: s("a/b"),
        packet_id: 0,
        payload: b(b"hi"),
        properties: Properties::default(),
    });
    let bytes = [0x31, 7, 0x00, 0x03, b'a', b'/', b'b', b'h', b'i'];
    golden(&bytes, Protocol::V311, Some(Protocol::V311), &packet);
}

#[test]
fn publish_qos1_v311_dup() {
    let packet = Packet::Publish(Publish {
        dup: true,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: s("a/b"),
        packet_id: 10,
        payload: b(b"hi"),
        properties: Properties::default(),
    });
    let bytes = [
        0x3A, 9, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x0A, b'h', b'i',
    ];
    golden(&bytes, Protocol::V311, Some(Protocol::V311), &packet);
}

#[test]
fn publish_qos0_v5_without_properties() {
    let packet = Packet::Publish(Publish {
        topic: s("t"),
        payload: b(b"p"),
        ..Default::default()
    });
    let bytes = [0x30, 5, 0x00, 0x01, b't', 0x00, b'p'];
    golden(&bytes, Protocol::V5, Some(Protocol::V5), &packet);
}

#[rustfmt::skip]
const PUBLISH_V5: &[u8] = &[
    0x32, 26,
    0x00, 0x01, b't',             // topic
    0x00, 0x01,                   // packet id 1
    19,                           // properties
    0x01, 0x01,                   //   payload format indicator
    0x02, 0x00, 0x00, 0x00, 0x3C, //   message expiry 60
    0x03, 0x00, 0x01, b'c',       //   content type
    0x0B, 0x01,                   //   subscription id 1
    0x0B, 0xC8, 0x01,             //   subscription id 200
    0x23, 0x00, 0x03,             //   topic alias 3
    b'p',
];

fn publish_v5() -> Publish {
    Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: s("t"),
        packet_id: 1,
        payload: b(b"p"),
        properties: Properties {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(60),
            content_type: Some(s("c")),
            subscription_identifiers: vec![1, 200],
            topic_alias: Some(3),
            ..Default::default()
        },
    }
}

#[test]
fn publish_qos1_v5_with_properties() {
    let publish = publish_v5();
    golden(
        PUBLISH_V5,
        Protocol::V5,
        Some(Protocol::V5),
        &Packet::Publish(publish.clone()),
    );
    let mut out = BytesMut::new();
    let written = write_publish(
        &mut out,
        Protocol::V5,
        false,
        QoS::AtLeastOnce,
        false,
        "t",
        1,
        Some(&publish.properties),
        b"p",
    );
    assert_eq!(written, Ok(()));
    assert_eq!(&out[..], PUBLISH_V5);
    let size = publish_size(
        Protocol::V5,
        "t",
        QoS::AtLeastOnce,
        Some(&publish.properties),
        1,
    );
    assert_eq!(size, PUBLISH_V5.len());
}

#[test]
fn publish_v5_empty_topic_with_alias() {
    let packet = Packet::Publish(Publish {
        topic: s(""),
        payload: b(b"z"),
        properties: Properties {
            topic_alias: Some(7),
            ..Default::default()
        },
        ..Default::default()
    });
    let bytes = [0x30, 7, 0x00, 0x00, 3, 0x23, 0x00, 0x07, b'z'];
    golden(&bytes, Protocol::V5, Some(Protocol::V5), &packet);
}

#[test]
fn publish_payload_is_zero_copy() {
    let mut buf = BytesMut::from(PUBLISH_V5);
    let start = buf.as_ptr() as usize;
    let Ok(Some(Packet::Publish(p))) = decode(&mut buf, Some(Protocol::V5), MAX) else {
        panic!("not a publish");
    };
    assert_eq!(p.payload.as_ptr() as usize, start + PUBLISH_V5.len() - 1);
    assert_eq!(p.topic.as_ptr() as usize, start + 4);
}

#[test]
fn subscribe_v5_with_options() {
    #[rustfmt::skip]
    let bytes = [
        0x82, 15, 0x00, 0x02,
        2, 0x0B, 0x05,                  // subscription identifier 5
        0x00, 0x03, b'a', b'/', b'+', 0x2D, // QoS 1, no local, retain as published, handling 2
        0x00, 0x01, b'#', 0x12,         // QoS 2, retain handling 1
    ];
    let packet = Packet::Subscribe(Subscribe {
        packet_id: 2,
        filters: vec![
            (
                s("a/+"),
                SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: 2,
                },
            ),
            (
                s("#"),
                SubscriptionOptions {
                    qos: QoS::ExactlyOnce,
                    no_local: false,
                    retain_as_published: false,
                    retain_handling: 1,
                },
            ),
        ],
        properties: Properties {
            subscription_identifiers: vec![5],
            ..Default::default()
        },
    });
    golden(&bytes, Protocol::V5, Some(Protocol::V5), &packet);
}

#[test]
fn subscribe_v311() {
    let bytes = [0x82, 8, 0x00, 0x01, 0x00, 0x03, b'a', b'/', b'#', 0x01];
    let packet = Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![(
            s("a/#"),
            SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..Default::default()
            },
        )],
        properties: Properties::default(),
    });
    golden(&bytes, Protocol::V311, Some(Protocol::V311), &packet);
}

#[test]
fn suback() {
    let v311 = Packet::SubAck(SubAck {
        packet_id: 1,
        codes: vec![0x00, 0x80],
        properties: Properties::default(),
    });
    golden(
        &[0x90, 4, 0x00, 0x01, 0x00, 0x80],
        Protocol::V311,
        Some(Protocol::V311),
        &v311,
    );
    let v5 = Packet::SubAck(SubAck {
        packet_id: 2,
        codes: vec![0x01, 0x02, 0x87],
        properties: Properties::default(),
    });
    let bytes = [0x90, 6, 0x00, 0x02, 0x00, 0x01, 0x02, 0x87];
    golden(&bytes, Protocol::V5, Some(Protocol::V5), &v5);
}

#[test]
fn unsubscribe_and_unsuback() {
    let unsubscribe = Packet::Unsubscribe(Unsubscribe {
        packet_id: 3,
        filters: vec![s("a")],
        properties: Properties::default(),
    });
    let bytes = [0xA2, 5, 0x00, 0x03, 0x00, 0x01, b'a'];
    golden(&bytes, Protocol::V311, Some(Protocol::V311), &unsubscribe);
    let bytes = [0xA2, 6, 0x00, 0x03, 0x00, 0x00, 0x01, b'a'];
    golden(&bytes, Protocol::V5, Some(Protocol::V5), &unsubscribe);

    let v311 = Packet::UnsubAck(UnsubAck {
        packet_id: 3,
        codes: vec![],
        properties: Properties::default(),
    });
    golden(
        &[0xB0, 2, 0x00, 0x03],
        Protocol::V311,
        Some(Protocol::V311),
        &v311,
    );
    let v5 = Packet::UnsubAck(UnsubAck {
        packet_id: 3,
        codes: vec![0x00, 0x11],
        properties: Properties::default(),
    });
    golden(
        &[0xB0, 5, 0x00, 0x03, 0x00, 0x00, 0x11],
        Protocol::V5,
        Some(Protocol::V5),
        &v5,
    );
}

#[test]
fn pubrel_flags_and_acks() {
    let rel = |reason| {
        Packet::PubRel(PubAck {
            packet_id: 7,
            reason,
            properties: Properties::default(),
        })
    };
    golden(
        &[0x62, 2, 0x00, 0x07],
        Protocol::V311,
        Some(Protocol::V311),
        &rel(0),
    );
    golden(
        &[0x62, 2, 0x00, 0x07],
        Protocol::V5,
        Some(Protocol::V5),
        &rel(0),
    );
    golden(
        &[0x62, 3, 0x00, 0x07, 0x92],
        Protocol::V5,
        Some(Protocol::V5),
        &rel(0x92),
    );
    // A 5.0 PUBREL may spell out reason 0 and an empty property list.
    assert_eq!(
        decoded(&[0x62, 4, 0x00, 0x07, 0x00, 0x00], Some(Protocol::V5)),
        rel(0)
    );
    assert_eq!(
        decoded(&[0x62, 3, 0x00, 0x07, 0x00], Some(Protocol::V5)),
        rel(0)
    );
    let ack = |packet_id| PubAck {
        packet_id,
        reason: 0,
        properties: Properties::default(),
    };
    golden(
        &[0x40, 2, 0x00, 0x01],
        Protocol::V311,
        Some(Protocol::V311),
        &Packet::PubAck(ack(1)),
    );
    golden(
        &[0x50, 2, 0x00, 0x02],
        Protocol::V311,
        Some(Protocol::V311),
        &Packet::PubRec(ack(2)),
    );
    golden(
        &[0x70, 2, 0x00, 0x03],
        Protocol::V311,
        Some(Protocol::V311),
        &Packet::PubComp(ack(3)),
    );

    #[rustfmt::skip]
    let bytes = [0x40, 9, 0x00, 0x05, 0x10, 5, 0x1F, 0x00, 0x02, b'n', b'o'];
    let puback = Packet::PubAck(PubAck {
        packet_id: 5,
        reason: 0x10,
        properties: Properties {
            reason_string: Some(s("no")),
            ..Default::default()
        },
    });
    golden(&bytes, Protocol::V5, Some(Protocol::V5), &puback);
}

#[test]
fn ping() {
    golden(
        &[0xC0, 0],
        Protocol::V311,
        Some(Protocol::V311),
        &Packet::PingReq,
    );
    golden(
        &[0xD0, 0],
        Protocol::V5,
        Some(Protocol::V5),
        &Packet::PingResp,
    );
}

#[test]
fn disconnect() {
    let normal = Packet::Disconnect(Disconnect::default());
    golden(&[0xE0, 0], Protocol::V311, Some(Protocol::V311), &normal);
    golden(&[0xE0, 0], Protocol::V5, Some(Protocol::V5), &normal);
    let taken_over = Packet::Disconnect(Disconnect {
        reason: 0x8E,
        properties: Properties::default(),
    });
    golden(
        &[0xE0, 1, 0x8E],
        Protocol::V5,
        Some(Protocol::V5),
        &taken_over,
    );
    let with_will = Packet::Disconnect(Disconnect {
        reason: 0x04,
        properties: Properties {
            session_expiry_interval: Some(0),
            ..Default::default()
        },
    });
    let bytes = [0xE0, 7, 0x04, 5, 0x11, 0x00, 0x00, 0x00, 0x00];
    golden(&bytes, Protocol::V5, Some(Protocol::V5), &with_will);
    // 3.1.1 has no reason code: it is dropped.
    assert_eq!(encoded(&taken_over, Protocol::V311), [0xE0, 0]);
}

#[test]
fn auth() {
    #[rustfmt::skip]
    let bytes = [
        0xF0, 15, 0x18, 13,
        0x15, 0x00, 0x05, b'S', b'C', b'R', b'A', b'M',
        0x16, 0x00, 0x02, 0x01, 0x02,
    ];
    let packet = Packet::Auth(Auth {
        reason: 0x18,
        properties: Properties {
            authentication_method: Some(s("SCRAM")),
            authentication_data: Some(b(&[1, 2])),
            ..Default::default()
        },
    });
    golden(&bytes, Protocol::V5, Some(Protocol::V5), &packet);
    golden(
        &[0xF0, 0],
        Protocol::V5,
        Some(Protocol::V5),
        &Packet::Auth(Auth::default()),
    );
    let mut out = BytesMut::new();
    assert_eq!(
        encode(&packet, Protocol::V311, &mut out).err(),
        Some(EncodeError::NotInProtocol)
    );
    assert!(out.is_empty());
}

#[test]
fn several_packets_in_one_buffer() {
    let mut buf = BytesMut::new();
    buf.extend_from_slice(CONNECT_V5);
    buf.extend_from_slice(PUBLISH_V5);
    buf.extend_from_slice(&[0xC0, 0x00, 0xE0]);
    assert!(matches!(
        decode(&mut buf, None, MAX),
        Ok(Some(Packet::Connect(_)))
    ));
    assert!(matches!(
        decode(&mut buf, Some(Protocol::V5), MAX),
        Ok(Some(Packet::Publish(_)))
    ));
    assert_eq!(
        decode(&mut buf, Some(Protocol::V5), MAX),
        Ok(Some(Packet::PingReq))
    );
    assert_eq!(decode(&mut buf, Some(Protocol::V5), MAX), Ok(None));
    assert_eq!(&buf[..], &[0xE0]);
}

#[test]
fn long_remaining_length() {
    // 200 bytes of payload: a two-byte remaining length.
    let payload = vec![7u8; 200];
    let packet = Packet::Publish(Publish {
        topic: s("x"),
        payload: Bytes::from(payload.clone()),
        ..Default::default()
    });
    let mut bytes = vec![0x30, 0xCB, 0x01, 0x00, 0x01, b'x'];
    bytes.extend_from_slice(&payload);
    golden(&bytes, Protocol::V311, Some(Protocol::V311), &packet);
}

#[test]
fn names() {
    assert_eq!(Packet::PingReq.name(), "PINGREQ");
    assert_eq!(Packet::PubRel(PubAck::default()).name(), "PUBREL");
    assert_eq!(Packet::Auth(Auth::default()).packet_type(), 15);
    assert_eq!(Protocol::V31.level(), 3);
    assert_eq!(Protocol::V311.level(), 4);
    assert_eq!(Protocol::V5.level(), 5);
    assert!(Protocol::V5.is_v5() && !Protocol::V311.is_v5());
    assert!(Protocol::V31 < Protocol::V311 && Protocol::V311 < Protocol::V5);
    assert_eq!(QoS::from_u8(2), Some(QoS::ExactlyOnce));
    assert_eq!(QoS::from_u8(3), None);
    assert_eq!(QoS::default(), QoS::AtMostOnce);
}
