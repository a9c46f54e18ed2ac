//! Golden byte vectors, written out by hand from the specification and
//! RabbitMQ's errata, checked in both directions.

use bytes::{Bytes, BytesMut};
use liebre_amqp_codec::*;

fn frame(bytes: &[u8]) -> Frame {
    let mut buf = BytesMut::from(bytes);
    let frame = decode_frame(&mut buf, 131_072);
    assert!(buf.is_empty(), "frame not fully consumed");
    match frame {
        Ok(Some(f)) => f,
        other => panic!("{other:?}"),
    }
}

fn method_frame(channel: u16, method: &Method) -> Vec<u8> {
    let mut out = BytesMut::new();
    assert_eq!(encode_method_frame(&mut out, channel, method), Ok(()));
    out.to_vec()
}

fn s(v: &str) -> ShortStr {
    ShortStr::from(v)
}

/// `connection.start` shaped as RabbitMQ sends it (fewer properties).
const CONNECTION_START: &[&[u8]] = &[
    &[1, 0, 0, 0, 0, 0, 129], // method frame, channel 0, 129 bytes
    &[0, 10, 0, 10],          // connection.start
    &[0, 9],                  // version 0-9
    &[0, 0, 0, 92],           // server-properties
    b"\x0ccapabilitiesF\x00\x00\x00\x22",
    b"\x12publisher_confirmst\x01",
    b"\x0abasic.nackt\x01",
    b"\x07productS\x00\x00\x00\x08RabbitMQ",
    b"\x07versionS\x00\x00\x00\x063.13.7",
    b"\x00\x00\x00\x0ePLAIN AMQPLAIN", // mechanisms
    b"\x00\x00\x00\x05en_US",          // locales
    &[0xCE],
];

#[test]
fn connection_start() {
    let expected = CONNECTION_START.concat();
    let capabilities: FieldTable = [
        ("publisher_confirms", FieldValue::Bool(true)),
        ("basic.nack", FieldValue::Bool(true)),
    ]
    .into_iter()
    .collect();
    let server_properties: FieldTable = [
        ("capabilities", FieldValue::Table(capabilities)),
        (
            "product",
            FieldValue::LongString(Bytes::from_static(b"RabbitMQ")),
        ),
        (
            "version",
            FieldValue::LongString(Bytes::from_static(b"3.13.7")),
        ),
    ]
    .into_iter()
    .collect();
    let method = Method::ConnectionStart(ConnectionStart {
        version_major: 0,
        version_minor: 9,
        server_properties,
        mechanisms: Bytes::from_static(b"PLAIN AMQPLAIN"),
        locales: Bytes::from_static(b"en_US"),
    });
    assert_eq!(method_frame(0, &method), expected);
    assert_eq!(frame(&expected), Frame::Method { channel: 0, method });
}

#[test]
fn connection_tune_open_close() {
    let tune = [
        &[1, 0, 0, 0, 0, 0, 12, 0, 10, 0, 30][..],
        &[0x07, 0xFF, 0, 2, 0, 0, 0, 60, 0xCE],
    ]
    .concat();
    let m = Method::ConnectionTune(ConnectionTune {
        channel_max: 2047,
        frame_max: 131_072,
        heartbeat: 60,
    });
    assert_eq!(method_frame(0, &m), tune);
    assert_eq!(
        frame(&tune),
        Frame::Method {
            channel: 0,
            method: m
        }
    );

    // As pika sends it: vhost "/", empty capabilities, insist bit clear.
    let open = [
        &[1, 0, 0, 0, 0, 0, 8, 0, 10, 0, 40][..],
        b"\x01/\x00\x00",
        &[0xCE],
    ]
    .concat();
    let m = Method::ConnectionOpen(ConnectionOpen {
        virtual_host: s("/"),
    });
    assert_eq!(method_frame(0, &m), open);
    // Reserved arguments are skipped whatever they hold.
    let old_client = [
        &[1, 0, 0, 0, 0, 0, 11, 0, 10, 0, 40][..],
        b"\x01/\x03abc\x01",
        &[0xCE],
    ]
    .concat();
    assert_eq!(
        frame(&old_client),
        Frame::Method {
            channel: 0,
            method: m
        }
    );

    let close = [
        &[1, 0, 0, 0, 0, 0, 25, 0, 10, 0, 50, 1, 64][..],
        b"\x0eACCESS_REFUSED",
        &[0, 60, 0, 40, 0xCE],
    ]
    .concat();
    let m = Method::ConnectionClose(ConnectionClose {
        reply_code: 320,
        reply_text: s("ACCESS_REFUSED"),
        class_id: 60,
        method_id: 40,
    });
    assert_eq!(method_frame(0, &m), close);
    assert_eq!(
        frame(&close),
        Frame::Method {
            channel: 0,
            method: m
        }
    );

    let close_ok = [1, 0, 0, 0, 0, 0, 4, 0, 10, 0, 51, 0xCE];
    assert_eq!(method_frame(0, &Method::ConnectionCloseOk), close_ok);
    assert_eq!(
        frame(&close_ok),
        Frame::Method {
            channel: 0,
            method: Method::ConnectionCloseOk
        }
    );
}

#[test]
fn basic_publish() {
    let bytes = [
        &[1, 0, 1, 0, 0, 0, 21, 0, 60, 0, 40, 0, 0][..],
        b"\x0aamq.direct\x02rk",
        &[0x01, 0xCE],
    ]
    .concat();
    let m = Method::BasicPublish(BasicPublish {
        exchange: s("amq.direct"),
        routing_key: s("rk"),
        mandatory: true,
        immediate: false,
    });
    assert_eq!(method_frame(1, &m), bytes);
    assert_eq!(
        frame(&bytes),
        Frame::Method {
            channel: 1,
            method: m
        }
    );

    // immediate is the second bit of the same octet
    let m = Method::BasicPublish(BasicPublish {
        exchange: s(""),
        routing_key: s("q"),
        mandatory: false,
        immediate: true,
    });
    assert_eq!(
        method_frame(7, &m),
        [&[1, 0, 7, 0, 0, 0, 10, 0, 60, 0, 40, 0, 0, 0, 1, b'q', 0x02, 0xCE][..]].concat()
    );
}

#[test]
fn exchange_declare_packs_five_bits() {
    let args: FieldTable = [(
        "alternate-exchange",
        FieldValue::LongString(Bytes::from_static(b"ae")),
    )]
    .into_iter()
    .collect();
    let m = Method::ExchangeDeclare(ExchangeDeclare {
        exchange: s("logs"),
        kind: s("topic"),
        passive: false,
        durable: true,
        auto_delete: false,
        internal: false,
        nowait: true,
        arguments: args,
    });
    let bytes = [
        &[1, 0, 1, 0, 0, 0, 48, 0, 40, 0, 10, 0, 0][..],
        b"\x04logs\x05topic",
        &[0b1_0010],
        &[0, 0, 0, 26],
        b"\x12alternate-exchangeS\x00\x00\x00\x02ae",
        &[0xCE],
    ]
    .concat();
    assert_eq!(method_frame(1, &m), bytes);
    assert_eq!(
        frame(&bytes),
        Frame::Method {
            channel: 1,
            method: m
        }
    );
}

#[test]
fn basic_deliver_hot_and_generic_agree() {
    let golden = [
        &[1, 0, 3, 0, 0, 0, 34, 0, 60, 0, 60][..],
        b"\x0damq.ctag-1234",
        &[0, 0, 0, 0, 0, 0, 1, 0x2A], // delivery tag 298
        &[1],                         // redelivered
        b"\x02ex\x03r.k",
        &[0xCE],
    ]
    .concat();
    let mut hot = BytesMut::new();
    hot::write_basic_deliver(&mut hot, 3, "amq.ctag-1234", 298, true, "ex", "r.k");
    let generic = method_frame(
        3,
        &Method::BasicDeliver(BasicDeliver {
            consumer_tag: s("amq.ctag-1234"),
            delivery_tag: 298,
            redelivered: true,
            exchange: s("ex"),
            routing_key: s("r.k"),
        }),
    );
    assert_eq!(hot.to_vec(), golden);
    assert_eq!(generic, golden);
}

#[test]
fn other_hot_encoders_agree_with_generic_ones() {
    let mut out = BytesMut::new();
    hot::write_basic_get_ok(&mut out, 2, 7, false, "", "queue-a", 12);
    let m = Method::BasicGetOk(BasicGetOk {
        delivery_tag: 7,
        redelivered: false,
        exchange: s(""),
        routing_key: s("queue-a"),
        message_count: 12,
    });
    assert_eq!(out.to_vec(), method_frame(2, &m));

    let mut out = BytesMut::new();
    hot::write_basic_return(&mut out, 2, 312, "NO_ROUTE", "amq.topic", "a.b");
    let m = Method::BasicReturn(BasicReturn {
        reply_code: 312,
        reply_text: s("NO_ROUTE"),
        exchange: s("amq.topic"),
        routing_key: s("a.b"),
    });
    assert_eq!(out.to_vec(), method_frame(2, &m));

    for multiple in [false, true] {
        let mut out = BytesMut::new();
        hot::write_basic_ack(&mut out, 9, u64::MAX, multiple);
        let m = Method::BasicAck(BasicAck {
            delivery_tag: u64::MAX,
            multiple,
        });
        assert_eq!(out.to_vec(), method_frame(9, &m));
        for requeue in [false, true] {
            let mut out = BytesMut::new();
            hot::write_basic_nack(&mut out, 9, 5, multiple, requeue);
            let m = Method::BasicNack(BasicNack {
                delivery_tag: 5,
                multiple,
                requeue,
            });
            assert_eq!(out.to_vec(), method_frame(9, &m));
        }
    }

    let mut out = BytesMut::new();
    hot::write_heartbeat(&mut out);
    assert_eq!(&out[..], &[8, 0, 0, 0, 0, 0, 0, 0xCE]);
    assert_eq!(frame(&out), Frame::Heartbeat { channel: 0 });
    let mut generic = BytesMut::new();
    assert_eq!(Frame::Heartbeat { channel: 0 }.encode(&mut generic), Ok(()));
    assert_eq!(generic, out);
}

#[test]
fn hot_encoders_truncate_overlong_shortstrs() {
    let long = "ü".repeat(200); // 400 bytes
    let mut out = BytesMut::new();
    hot::write_basic_deliver(&mut out, 1, &long, 1, false, &long, &"k".repeat(300));
    match frame(&out) {
        Frame::Method {
            method: Method::BasicDeliver(d),
            ..
        } => {
            assert_eq!(d.consumer_tag.len(), 254);
            assert_eq!(d.exchange.len(), 254);
            assert_eq!(d.routing_key.len(), 255);
        }
        other => panic!("{other:?}"),
    }
    // The generic encoder refuses instead, and writes nothing.
    let m = Method::BasicConsumeOk(BasicConsumeOk {
        consumer_tag: ShortStr::from(long),
    });
    let mut out = BytesMut::from(&b"keep"[..]);
    assert_eq!(
        encode_method_frame(&mut out, 1, &m),
        Err(CodecError::TooLong)
    );
    assert_eq!(&out[..], b"keep");
}

/// All 14 basic properties, in flag order.
const ALL_PROPERTIES: &[&[u8]] = &[
    &[0xFF, 0xFC],
    b"\x10application/json",
    b"\x04gzip",
    &[0, 0, 0, 7, 1, b'a', b'I', 0, 0, 0, 1], // headers {a: I32 1}
    &[2],                                     // delivery-mode
    &[5],                                     // priority
    b"\x02c1",
    b"\x02rq",
    b"\x0560000",
    b"\x02m1",
    &[0, 0, 0, 0, 0x65, 0x53, 0xF1, 0x00], // timestamp 1700000000
    b"\x02t1",
    b"\x05guest",
    b"\x03app",
    b"\x02cl",
];

fn all_properties() -> BasicProperties {
    BasicProperties {
        content_type: Some(s("application/json")),
        content_encoding: Some(s("gzip")),
        headers: Some([("a", FieldValue::I32(1))].into_iter().collect()),
        delivery_mode: Some(2),
        priority: Some(5),
        correlation_id: Some(s("c1")),
        reply_to: Some(s("rq")),
        expiration: Some(s("60000")),
        message_id: Some(s("m1")),
        timestamp: Some(1_700_000_000),
        kind: Some(s("t1")),
        user_id: Some(s("guest")),
        app_id: Some(s("app")),
        cluster_id: Some(s("cl")),
    }
}

#[test]
fn content_header_with_all_14_properties() {
    let props = ALL_PROPERTIES.concat();
    assert_eq!(props.len(), 76);
    let expected = all_properties();
    let mut out = BytesMut::new();
    assert_eq!(expected.encode(&mut out), Ok(()));
    assert_eq!(out.to_vec(), props);
    assert_eq!(
        BasicProperties::decode(&Bytes::from(props.clone())),
        Ok(expected.clone())
    );

    let bytes = [
        &[2, 0, 1, 0, 0, 0, 88, 0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5][..],
        &props,
        &[0xCE],
    ]
    .concat();
    let header = ContentHeader::new(60, 5, expected.clone());
    let header = header.unwrap_or_else(|e| panic!("{e}"));
    let f = Frame::Header {
        channel: 1,
        header: header.clone(),
    };
    let mut out = BytesMut::new();
    assert_eq!(f.encode(&mut out), Ok(()));
    assert_eq!(out.to_vec(), bytes);
    let decoded = frame(&bytes);
    assert_eq!(decoded, f);
    match decoded {
        Frame::Header { header, .. } => {
            assert_eq!(header.raw_properties, props);
            assert!(header.properties.is_persistent());
        }
        other => panic!("{other:?}"),
    }

    // The hot path writes the same header from the raw bytes.
    let mut out = BytesMut::new();
    hot::write_content(
        &mut out,
        1,
        60,
        &props,
        &Bytes::from_static(b"hello"),
        131_072,
    );
    let body = [3, 0, 1, 0, 0, 0, 5, b'h', b'e', b'l', b'l', b'o', 0xCE];
    assert_eq!(out.to_vec(), [&bytes[..], &body].concat());
}

#[test]
fn raw_properties_are_written_verbatim() {
    // Raw bytes win over `properties` when re-encoding a received header,
    // and are not normalised (here: a non-canonical `t` octet inside headers).
    let raw = Bytes::from_static(&[0x20, 0x00, 0, 0, 0, 4, 1, b'x', b't', 7]);
    let decoded = BasicProperties::decode(&raw);
    let props = decoded.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        props.headers.as_ref().and_then(|h| h.get("x")),
        Some(&FieldValue::Bool(true))
    );
    let header = ContentHeader {
        class_id: 60,
        body_size: 0,
        properties: Box::new(props),
        raw_properties: raw.clone(),
    };
    let mut out = BytesMut::new();
    assert_eq!(
        Frame::Header { channel: 1, header }.encode(&mut out),
        Ok(())
    );
    assert_eq!(out.get(19..29), Some(&raw[..]));
}

/// A field table holding every type, nested table and array included.
const EVERY_TYPE: &[&[u8]] = &[
    &[0, 0, 0, 150],
    &[1, b't', b't', 1],
    &[1, b'b', b'b', 0xFF],
    &[1, b'B', b'B', 0xFF],
    &[1, b's', b's', 0xFF, 0xFE],
    &[1, b'u', b'u', 0xFF, 0xFF],
    &[1, b'I', b'I', 0xFF, 0xFF, 0xFF, 0xFD],
    &[1, b'i', b'i', 0xEE, 0x6B, 0x28, 0x00],
    &[
        1, b'l', b'l', 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFC,
    ],
    &[
        1, b'L', b'L', 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
    ],
    &[1, b'f', b'f', 0x3F, 0xC0, 0, 0],
    &[1, b'd', b'd', 0xC0, 0x02, 0, 0, 0, 0, 0, 0],
    &[1, b'D', b'D', 2, 0, 0, 0x30, 0x39],
    &[1, b'S', b'S', 0, 0, 0, 2, b'h', b'i'],
    &[
        1, b'A', b'A', 0, 0, 0, 12, b'I', 0, 0, 0, 1, b'S', 0, 0, 0, 1, b'x', b'V',
    ],
    &[1, b'T', b'T', 0, 0, 0, 0, 0x65, 0x53, 0xF1, 0x00],
    &[1, b'F', b'F', 0, 0, 0, 7, 1, b'n', b'F', 0, 0, 0, 0],
    &[1, b'V', b'V'],
    &[1, b'x', b'x', 0, 0, 0, 3, 0, 1, 0xFF],
];

fn every_type() -> FieldTable {
    let nested: FieldTable = [("n", FieldValue::Table(FieldTable::new()))]
        .into_iter()
        .collect();
    [
        ("t", FieldValue::Bool(true)),
        ("b", FieldValue::I8(-1)),
        ("B", FieldValue::U8(255)),
        ("s", FieldValue::I16(-2)),
        ("u", FieldValue::U16(65535)),
        ("I", FieldValue::I32(-3)),
        ("i", FieldValue::U32(4_000_000_000)),
        ("l", FieldValue::I64(-4)),
        ("L", FieldValue::U64(u64::MAX)),
        ("f", FieldValue::F32(1.5)),
        ("d", FieldValue::F64(-2.25)),
        (
            "D",
            FieldValue::Decimal {
                scale: 2,
                value: 12345,
            },
        ),
        ("S", FieldValue::LongString(Bytes::from_static(b"hi"))),
        (
            "A",
            FieldValue::Array(vec![
                FieldValue::I32(1),
                FieldValue::LongString(Bytes::from_static(b"x")),
                FieldValue::Void,
            ]),
        ),
        ("T", FieldValue::Timestamp(1_700_000_000)),
        ("F", FieldValue::Table(nested)),
        ("V", FieldValue::Void),
        (
            "x",
            FieldValue::ByteArray(Bytes::from_static(&[0, 1, 0xFF])),
        ),
    ]
    .into_iter()
    .collect()
}

#[test]
fn field_table_with_every_type() {
    let bytes = EVERY_TYPE.concat();
    let table = every_type();
    let mut out = BytesMut::new();
    assert_eq!(table.encode(&mut out), Ok(()));
    assert_eq!(out.to_vec(), bytes);
    let decoded = FieldTable::decode(&Bytes::from(bytes));
    assert_eq!(decoded.as_ref(), Ok(&table));
    let decoded = decoded.unwrap_or_default();
    assert_eq!(
        decoded.get("D"),
        Some(&FieldValue::Decimal {
            scale: 2,
            value: 12345
        })
    );
    assert_eq!(
        decoded.get("T"),
        Some(&FieldValue::Timestamp(1_700_000_000))
    );
    assert_eq!(decoded.get("l").and_then(FieldValue::as_i64), Some(-4));
    assert_eq!(
        decoded.get("x"),
        Some(&FieldValue::ByteArray(Bytes::from_static(&[0, 1, 0xFF])))
    );
}

#[test]
fn protocol_header() {
    assert_eq!(PROTOCOL_HEADER, b"AMQP\x00\x00\x09\x01");
    let mut buf = BytesMut::new();
    for (i, byte) in PROTOCOL_HEADER.iter().enumerate() {
        assert_eq!(decode_protocol_header(&mut buf), Ok(None), "prefix {i}");
        buf.extend_from_slice(&[*byte]);
    }
    buf.extend_from_slice(&[1, 0, 0]);
    assert_eq!(decode_protocol_header(&mut buf), Ok(Some(())));
    assert_eq!(&buf[..], &[1, 0, 0]);

    for bad in [
        &b"AMQP\x01\x01\x00\x0a"[..],
        b"AMQP\x00\x00\x09\x00",
        b"AMQP\x03\x01\x00\x00",
        b"GET ",
        b"X",
    ] {
        let mut buf = BytesMut::from(bad);
        assert_eq!(
            decode_protocol_header(&mut buf),
            Err(CodecError::BadProtocolHeader),
            "{bad:?}"
        );
    }
}
