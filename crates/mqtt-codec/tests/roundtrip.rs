//! Property tests: every packet type encodes and decodes back to itself in
//! every protocol version, every prefix is incomplete, the hot-path
//! PUBLISH writer matches the generic encoder, and no input makes the
//! decoder panic.

use bytes::{Bytes, BytesMut};
use liebre_mqtt_codec::*;
use proptest::prelude::*;

const MAX: u32 = 1 << 24;

fn any_str() -> impl Strategy<Value = Str> {
    "[^\\x00]{0,12}".prop_map(Str::from)
}

fn topic_name() -> impl Strategy<Value = Str> {
    prop_oneof![
        "[a-z]{1,4}(/[a-z]{0,4}){0,3}",
        "[^+#\\x00]{1,10}",
        Just("$SYS/x".to_string())
    ]
    .prop_map(Str::from)
}

fn topic_filter() -> impl Strategy<Value = Str> {
    let level = prop_oneof!["[a-z]{0,4}", Just("+".to_string()), "[^+#/\\x00]{1,4}"];
    (prop::collection::vec(level, 1..4), any::<bool>()).prop_map(|(levels, hash)| {
        let mut f = levels.join("/");
        if hash {
            f.push_str(if f.is_empty() { "#" } else { "/#" });
        }
        if f.is_empty() {
            f.push('+');
        }
        Str::from(f)
    })
}

fn bytes() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..24).prop_map(Bytes::from)
}

fn opt<T: std::fmt::Debug>(s: impl Strategy<Value = T>) -> impl Strategy<Value = Option<T>> {
    prop::option::of(s)
}

/// Properties with every field set at random to a value the decoder
/// accepts; [`restrict`] keeps those a packet type allows.
fn properties() -> impl Strategy<Value = Properties> {
    (
        (
            opt(0u8..=1),
            opt(any::<u32>()),
            opt(any_str()),
            opt(topic_name()),
            opt(bytes()),
            prop::collection::vec(1u32..=268_435_455, 0..3),
            opt(any::<u32>()),
            opt(any_str()),
            opt(any::<u16>()),
        ),
        (
            opt(any_str()),
            opt(bytes()),
            opt(0u8..=1),
            opt(any::<u32>()),
            opt(0u8..=1),
            opt(any_str()),
            opt(any_str()),
            opt(any_str()),
            opt(1u16..),
        ),
        (
            opt(any::<u16>()),
            opt(1u16..),
            opt(0u8..=1),
            opt(0u8..=1),
            prop::collection::vec((any_str(), any_str()), 0..3),
            opt(1u32..),
            opt(0u8..=1),
            opt(0u8..=1),
            opt(0u8..=1),
        ),
    )
        .prop_map(
            |(
                (pfi, mei, ct, rt, cd, sids, sei, aci, ska),
                (am, ad, rpi, wdi, rri, ri, sr, rs, rm),
                (tam, ta, mq, ra, up, mps, wsa, sia, ssa),
            )| Properties {
                payload_format_indicator: pfi,
                message_expiry_interval: mei,
                content_type: ct,
                response_topic: rt,
                correlation_data: cd,
                subscription_identifiers: sids,
                session_expiry_interval: sei,
                assigned_client_identifier: aci,
                server_keep_alive: ska,
                authentication_method: am,
                authentication_data: ad,
                request_problem_information: rpi,
                will_delay_interval: wdi,
                request_response_information: rri,
                response_information: ri,
                server_reference: sr,
                reason_string: rs,
                receive_maximum: rm,
                topic_alias_maximum: tam,
                topic_alias: ta,
                maximum_qos: mq,
                retain_available: ra,
                user_properties: up,
                maximum_packet_size: mps,
                wildcard_subscription_available: wsa,
                subscription_identifier_available: sia,
                shared_subscription_available: ssa,
            },
        )
}

#[derive(Clone, Copy, PartialEq)]
enum Ctx {
    Connect,
    Will,
    ConnAck,
    Publish,
    Ack,
    Subscribe,
    Unsubscribe,
    Disconnect,
    Auth,
}

/// Table 2-4 of the 5.0 specification, written out again independently of
/// the codec's own table: clears what `ctx` does not allow.
fn restrict(p: Properties, ctx: Ctx) -> Properties {
    use Ctx::*;
    let keep = |allowed: &[Ctx]| allowed.contains(&ctx);
    let mut p = p;
    macro_rules! only {
        ($field:ident, $($c:ident),*) => {
            if !keep(&[$($c),*]) {
                p.$field = Default::default();
            }
        };
    }
    only!(payload_format_indicator, Publish, Will);
    only!(message_expiry_interval, Publish, Will);
    only!(content_type, Publish, Will);
    only!(response_topic, Publish, Will);
    only!(correlation_data, Publish, Will);
    only!(subscription_identifiers, Publish, Subscribe);
    only!(session_expiry_interval, Connect, ConnAck, Disconnect);
    only!(assigned_client_identifier, ConnAck);
    only!(server_keep_alive, ConnAck);
    only!(authentication_method, Connect, ConnAck, Auth);
    only!(authentication_data, Connect, ConnAck, Auth);
    only!(request_problem_information, Connect);
    only!(will_delay_interval, Will);
    only!(request_response_information, Connect);
    only!(response_information, ConnAck);
    only!(server_reference, ConnAck, Disconnect);
    only!(reason_string, ConnAck, Ack, Disconnect, Auth);
    only!(receive_maximum, Connect, ConnAck);
    only!(topic_alias_maximum, Connect, ConnAck);
    only!(topic_alias, Publish);
    only!(maximum_qos, ConnAck);
    only!(retain_available, ConnAck);
    only!(maximum_packet_size, Connect, ConnAck);
    only!(wildcard_subscription_available, ConnAck);
    only!(subscription_identifier_available, ConnAck);
    only!(shared_subscription_available, ConnAck);
    if ctx == Subscribe {
        p.subscription_identifiers.truncate(1);
    }
    if ctx == Connect && p.authentication_data.is_some() && p.authentication_method.is_none() {
        p.authentication_method = Some(Str::from("m"));
    }
    p
}

fn props_for(protocol: Protocol, ctx: Ctx) -> BoxedStrategy<Properties> {
    if protocol.is_v5() {
        properties().prop_map(move |p| restrict(p, ctx)).boxed()
    } else {
        Just(Properties::default()).boxed()
    }
}

fn protocol() -> impl Strategy<Value = Protocol> {
    prop_oneof![
        Just(Protocol::V31),
        Just(Protocol::V311),
        Just(Protocol::V5)
    ]
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn code(protocol: Protocol, v3: &'static [u8], v5: &'static [u8]) -> BoxedStrategy<u8> {
    let codes = if protocol.is_v5() { v5 } else { v3 };
    prop::sample::select(codes).boxed()
}

const CONNACK_V3: &[u8] = &[0, 1, 2, 3, 4, 5];
const CONNACK_V5: &[u8] = &[
    0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95, 0x97,
    0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
];
const PUBACK_V5: &[u8] = &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];
const PUBREL_V5: &[u8] = &[0x00, 0x92];
const SUBACK_V3: &[u8] = &[0x00, 0x01, 0x02, 0x80];
const SUBACK_V5: &[u8] = &[
    0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
];
const UNSUBACK_V5: &[u8] = &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91];
const DISCONNECT_V5: &[u8] = &[
    0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94, 0x95,
    0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
];
const NONE: &[u8] = &[0];

fn will(protocol: Protocol) -> impl Strategy<Value = LastWill> {
    (
        topic_name(),
        bytes(),
        qos(),
        any::<bool>(),
        props_for(protocol, Ctx::Will),
    )
        .prop_map(|(topic, payload, qos, retain, properties)| LastWill {
            topic,
            payload,
            qos,
            retain,
            properties,
        })
}

fn connect(protocol: Protocol) -> impl Strategy<Value = Packet> {
    (
        any::<bool>(),
        any::<u16>(),
        any_str(),
        opt(will(protocol)),
        opt(any_str()),
        opt(bytes()),
        props_for(protocol, Ctx::Connect),
    )
        .prop_map(
            move |(clean_start, keep_alive, client_id, will, username, password, properties)| {
                // Before 5.0 a password needs a user name.
                let password = if protocol.is_v5() || username.is_some() {
                    password
                } else {
                    None
                };
                Packet::Connect(Connect {
                    protocol,
                    clean_start,
                    keep_alive,
                    client_id,
                    will,
                    username,
                    password,
                    properties,
                })
            },
        )
}

fn publish(protocol: Protocol) -> impl Strategy<Value = Publish> {
    (
        any::<bool>(),
        qos(),
        any::<bool>(),
        topic_name(),
        1u16..,
        bytes(),
        props_for(protocol, Ctx::Publish),
        any::<bool>(),
    )
        .prop_map(
            move |(dup, qos, retain, topic, id, payload, properties, alias_only)| {
                let at_most_once = qos == QoS::AtMostOnce;
                // In 5.0 the topic may be left empty when an alias is given.
                let topic = if alias_only && properties.topic_alias.is_some() {
                    Str::new()
                } else {
                    topic
                };
                Publish {
                    dup: dup && !at_most_once,
                    qos,
                    retain,
                    topic,
                    packet_id: if at_most_once { 0 } else { id },
                    payload,
                    properties,
                }
            },
        )
}

fn ack(protocol: Protocol, codes: &'static [u8]) -> impl Strategy<Value = PubAck> {
    (
        1u16..,
        code(protocol, NONE, codes),
        props_for(protocol, Ctx::Ack),
    )
        .prop_map(|(packet_id, reason, properties)| PubAck {
            packet_id,
            reason,
            properties,
        })
}

fn options(protocol: Protocol) -> impl Strategy<Value = SubscriptionOptions> {
    (qos(), any::<bool>(), any::<bool>(), 0u8..=2).prop_map(move |(qos, nl, rap, rh)| {
        if protocol.is_v5() {
            SubscriptionOptions {
                qos,
                no_local: nl,
                retain_as_published: rap,
                retain_handling: rh,
            }
        } else {
            SubscriptionOptions {
                qos,
                ..Default::default()
            }
        }
    })
}

fn packet(protocol: Protocol) -> BoxedStrategy<Packet> {
    let v5 = protocol.is_v5();
    let connack = (
        any::<bool>(),
        code(protocol, CONNACK_V3, CONNACK_V5),
        props_for(protocol, Ctx::ConnAck),
    )
        .prop_map(move |(sp, code, properties)| {
            Packet::ConnAck(ConnAck {
                session_present: sp && code == 0 && protocol != Protocol::V31,
                code,
                properties,
            })
        });
    let subscribe = (
        1u16..,
        prop::collection::vec((topic_filter(), options(protocol)), 1..4),
        props_for(protocol, Ctx::Subscribe),
    )
        .prop_map(|(packet_id, filters, properties)| {
            Packet::Subscribe(Subscribe {
                packet_id,
                filters,
                properties,
            })
        });
    let suback = (
        1u16..,
        prop::collection::vec(code(protocol, SUBACK_V3, SUBACK_V5), 1..4),
        props_for(protocol, Ctx::Ack),
    )
        .prop_map(|(packet_id, codes, properties)| {
            Packet::SubAck(SubAck {
                packet_id,
                codes,
                properties,
            })
        });
    let unsubscribe = (
        1u16..,
        prop::collection::vec(topic_filter(), 1..4),
        props_for(protocol, Ctx::Unsubscribe),
    )
        .prop_map(|(packet_id, filters, properties)| {
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                filters,
                properties,
            })
        });
    let unsuback = (
        1u16..,
        prop::collection::vec(code(protocol, NONE, UNSUBACK_V5), 1..4),
        props_for(protocol, Ctx::Ack),
    )
        .prop_map(move |(packet_id, codes, properties)| {
            Packet::UnsubAck(UnsubAck {
                packet_id,
                codes: if v5 { codes } else { Vec::new() },
                properties,
            })
        });
    let disconnect = (
        code(protocol, NONE, DISCONNECT_V5),
        props_for(protocol, Ctx::Disconnect),
    )
        .prop_map(|(reason, properties)| Packet::Disconnect(Disconnect { reason, properties }));
    let auth = (
        prop::sample::select(&[0x00u8, 0x18, 0x19][..]),
        props_for(protocol, Ctx::Auth),
    )
        .prop_map(|(reason, properties)| Packet::Auth(Auth { reason, properties }));
    let common = prop_oneof![
        connect(protocol),
        connack,
        publish(protocol).prop_map(Packet::Publish),
        ack(protocol, PUBACK_V5).prop_map(Packet::PubAck),
        ack(protocol, PUBACK_V5).prop_map(Packet::PubRec),
        ack(protocol, PUBREL_V5).prop_map(Packet::PubRel),
        ack(protocol, PUBREL_V5).prop_map(Packet::PubComp),
        subscribe,
        suback,
        unsubscribe,
        unsuback,
        Just(Packet::PingReq),
        Just(Packet::PingResp),
        disconnect,
    ];
    if v5 {
        prop_oneof![10 => common, 1 => auth].boxed()
    } else {
        common.boxed()
    }
}

fn protocol_and_packet() -> impl Strategy<Value = (Protocol, Packet)> {
    protocol().prop_flat_map(|p| (Just(p), packet(p)))
}

fn encoded(packet: &Packet, protocol: Protocol) -> BytesMut {
    let mut out = BytesMut::new();
    if let Err(e) = encode(packet, protocol, &mut out) {
        panic!("{packet:?} does not encode: {e}");
    }
    out
}

/// What the receiver passes: nothing before CONNECT.
fn session(packet: &Packet, protocol: Protocol) -> Option<Protocol> {
    match packet {
        Packet::Connect(_) => None,
        _ => Some(protocol),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn encode_then_decode_gives_the_same_packet((protocol, packet) in protocol_and_packet()) {
        let mut buf = encoded(&packet, protocol);
        let decoded = decode(&mut buf, session(&packet, protocol), MAX);
        prop_assert_eq!(decoded, Ok(Some(packet)));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn every_prefix_is_incomplete((protocol, packet) in protocol_and_packet()) {
        let bytes = encoded(&packet, protocol);
        for len in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..len]);
            prop_assert_eq!(decode(&mut buf, session(&packet, protocol), MAX), Ok(None));
            prop_assert_eq!(buf.len(), len);
        }
    }

    #[test]
    fn stream_cut_anywhere_decodes_the_same(
        (protocol, packets) in protocol().prop_flat_map(|p| (Just(p), prop::collection::vec(packet(p), 1..5))),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let packets: Vec<Packet> = packets
            .into_iter()
            .filter(|p| !matches!(p, Packet::Connect(_)))
            .collect();
        let mut wire = BytesMut::new();
        for p in &packets {
            wire.extend_from_slice(&encoded(p, protocol));
        }
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
        points.push(wire.len());
        points.sort_unstable();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let mut at = 0;
        for point in points {
            buf.extend_from_slice(&wire[at..point]);
            at = point;
            while let Some(p) = decode(&mut buf, Some(protocol), MAX).map_err(|e| TestCaseError::fail(e.to_string()))? {
                got.push(p);
            }
        }
        prop_assert_eq!(got, packets);
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn write_publish_matches_encode(
        (protocol, publish, with_props) in protocol().prop_flat_map(|p| (Just(p), publish(p), any::<bool>()))
    ) {
        let expected = encoded(&Packet::Publish(publish.clone()), protocol);
        let properties = (with_props || !publish.properties.is_empty()).then_some(&publish.properties);
        let mut out = BytesMut::from(&b"before"[..]);
        let written = write_publish(
            &mut out,
            protocol,
            publish.dup,
            publish.qos,
            publish.retain,
            &publish.topic,
            publish.packet_id,
            properties,
            &publish.payload,
        );
        prop_assert_eq!(written, Ok(()));
        prop_assert_eq!(&out[..6], b"before");
        prop_assert_eq!(&out[6..], &expected[..]);
        let size = publish_size(protocol, &publish.topic, publish.qos, properties, publish.payload.len());
        prop_assert_eq!(size, expected.len());
    }

    #[test]
    fn random_bytes_never_panic(
        selector in 0u8..4,
        data in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let protocol = [Some(Protocol::V31), Some(Protocol::V311), Some(Protocol::V5), None][usize::from(selector)];
        decode_all(&mut BytesMut::from(&data[..]), protocol)?;
    }
}

/// Decodes `buf` in a loop as the fuzz target does; every packet must
/// survive encode and decode.
fn decode_all(buf: &mut BytesMut, protocol: Option<Protocol>) -> Result<(), TestCaseError> {
    let mut protocol = protocol;
    while let Ok(Some(packet)) = decode(buf, protocol, 4096) {
        if let Packet::Connect(c) = &packet {
            protocol.get_or_insert(c.protocol);
        }
        let p = match &packet {
            Packet::Connect(c) => c.protocol,
            _ => protocol.unwrap_or(Protocol::V311),
        };
        let mut again = encoded(&packet, p);
        prop_assert_eq!(
            decode(&mut again, session(&packet, p), MAX),
            Ok(Some(packet))
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// Valid packets with a few bytes overwritten, inserted or removed:
    /// a stable-toolchain stand-in for the `mqtt_packet` fuzz target that
    /// gets past the first byte far more often than random input.
    #[test]
    fn mutated_packets_never_panic(
        (protocol, packets) in protocol().prop_flat_map(|p| (Just(p), prop::collection::vec(packet(p), 1..4))),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..4),
        none_first in any::<bool>(),
    ) {
        let mut wire = Vec::new();
        for p in &packets {
            wire.extend_from_slice(&encoded(p, protocol));
        }
        for (at, byte, kind) in edits {
            let i = at.index(wire.len() + 1);
            match kind {
                0 if i < wire.len() => wire[i] = byte,
                1 if i < wire.len() => {
                    wire.remove(i);
                }
                _ => wire.insert(i, byte),
            }
        }
        let session = if none_first { None } else { Some(protocol) };
        decode_all(&mut BytesMut::from(&wire[..]), session)?;
    }
}

#[test]
fn v5_fields_are_dropped_for_3x() {
    let props = Properties {
        reason_string: Some(Str::from("r")),
        user_properties: vec![(Str::from("k"), Str::from("v"))],
        ..Default::default()
    };
    let ack = Packet::PubAck(PubAck {
        packet_id: 9,
        reason: 0x10,
        properties: props.clone(),
    });
    assert_eq!(&encoded(&ack, Protocol::V311)[..], &[0x40, 2, 0, 9]);
    let sub = Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![(
            Str::from("a"),
            SubscriptionOptions {
                qos: QoS::ExactlyOnce,
                no_local: true,
                retain_as_published: true,
                retain_handling: 2,
            },
        )],
        properties: props.clone(),
    });
    assert_eq!(
        &encoded(&sub, Protocol::V311)[..],
        &[0x82, 6, 0, 1, 0, 1, b'a', 2]
    );
    let unsuback = Packet::UnsubAck(UnsubAck {
        packet_id: 1,
        codes: vec![0x11],
        properties: props.clone(),
    });
    assert_eq!(&encoded(&unsuback, Protocol::V311)[..], &[0xB0, 2, 0, 1]);
    let connack = Packet::ConnAck(ConnAck {
        session_present: true,
        code: 0,
        properties: props,
    });
    assert_eq!(&encoded(&connack, Protocol::V311)[..], &[0x20, 2, 1, 0]);
    assert_eq!(&encoded(&connack, Protocol::V31)[..], &[0x20, 2, 0, 0]);
}

#[test]
fn properties_not_allowed_are_not_written() {
    // Session expiry is not a PUBLISH property: left out, not sent.
    let publish = Publish {
        topic: Str::from("t"),
        properties: Properties {
            session_expiry_interval: Some(5),
            ..Default::default()
        },
        ..Default::default()
    };
    let bytes = encoded(&Packet::Publish(publish.clone()), Protocol::V5);
    assert_eq!(&bytes[..], &[0x30, 4, 0, 1, b't', 0]);
    let mut out = BytesMut::new();
    let written = write_publish(
        &mut out,
        Protocol::V5,
        false,
        QoS::AtMostOnce,
        false,
        "t",
        0,
        Some(&publish.properties),
        b"",
    );
    assert_eq!(written, Ok(()));
    assert_eq!(out, bytes);
}

#[test]
fn encode_errors_append_nothing() {
    let long = Str::from("x".repeat(65_536));
    let publish = Packet::Publish(Publish {
        topic: long.clone(),
        ..Default::default()
    });
    let mut out = BytesMut::from(&b"keep"[..]);
    assert_eq!(
        encode(&publish, Protocol::V311, &mut out),
        Err(EncodeError::StringTooLong)
    );
    assert_eq!(&out[..], b"keep");
    let written = write_publish(
        &mut out,
        Protocol::V5,
        false,
        QoS::AtMostOnce,
        false,
        &long,
        0,
        None,
        b"",
    );
    assert_eq!(written, Err(EncodeError::StringTooLong));
    assert_eq!(&out[..], b"keep");
    assert_eq!(
        publish_size(Protocol::V5, &long, QoS::AtMostOnce, None, 0),
        usize::MAX
    );
    // Just fits: 65,535 bytes of topic.
    let fits = "y".repeat(65_535);
    assert_eq!(
        publish_size(Protocol::V311, &fits, QoS::AtMostOnce, None, 0),
        1 + 3 + 2 + 65_535
    );

    let sub_id = Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![(Str::from("a"), SubscriptionOptions::default())],
        properties: Properties {
            subscription_identifiers: vec![268_435_456],
            ..Default::default()
        },
    });
    assert_eq!(
        encode(&sub_id, Protocol::V5, &mut out),
        Err(EncodeError::TooLarge)
    );
    let user = Packet::Disconnect(Disconnect {
        reason: 0,
        properties: Properties {
            user_properties: vec![(Str::from("k"), long)],
            ..Default::default()
        },
    });
    assert_eq!(
        encode(&user, Protocol::V5, &mut out),
        Err(EncodeError::StringTooLong)
    );
    // ... but in 3.1.1 the properties are not sent, so it encodes.
    assert_eq!(encode(&user, Protocol::V311, &mut out), Ok(()));
    assert_eq!(&out[..], b"keep\xE0\x00");

    // A payload too big for the remaining length.
    assert_eq!(
        publish_size(Protocol::V311, "t", QoS::AtMostOnce, None, 268_435_455),
        usize::MAX
    );
    assert_eq!(
        publish_size(Protocol::V311, "t", QoS::AtMostOnce, None, 268_435_455 - 3),
        268_435_455 + 5
    );
}
