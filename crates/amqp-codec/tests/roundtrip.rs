//! Property tests: everything encodes and decodes back to itself, byte for
//! byte, and no input makes the decoder panic.

use bytes::{Bytes, BytesMut};
use liebre_amqp_codec::*;
use proptest::prelude::*;

fn short_str() -> impl Strategy<Value = ShortStr> {
    // At most 60 chars of up to 4 bytes: always within 255 bytes.
    "\\PC{0,60}".prop_map(ShortStr::from)
}

fn bytes() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from)
}

/// Every variant except `ShortString`, which encodes as a longstr.
fn field_value() -> impl Strategy<Value = FieldValue> {
    let leaf = prop_oneof![
        any::<bool>().prop_map(FieldValue::Bool),
        any::<i8>().prop_map(FieldValue::I8),
        any::<u8>().prop_map(FieldValue::U8),
        any::<i16>().prop_map(FieldValue::I16),
        any::<u16>().prop_map(FieldValue::U16),
        any::<i32>().prop_map(FieldValue::I32),
        any::<u32>().prop_map(FieldValue::U32),
        any::<i64>().prop_map(FieldValue::I64),
        any::<u64>().prop_map(FieldValue::U64),
        // From bits, so NaNs with payloads and negative zero are covered.
        any::<u32>().prop_map(|b| FieldValue::F32(f32::from_bits(b))),
        any::<u64>().prop_map(|b| FieldValue::F64(f64::from_bits(b))),
        (any::<u8>(), any::<u32>()).prop_map(|(scale, value)| FieldValue::Decimal { scale, value }),
        bytes().prop_map(FieldValue::LongString),
        any::<u64>().prop_map(FieldValue::Timestamp),
        Just(FieldValue::Void),
        bytes().prop_map(FieldValue::ByteArray),
    ];
    leaf.prop_recursive(4, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(FieldValue::Array),
            prop::collection::vec((short_str(), inner), 0..6)
                .prop_map(|e| FieldValue::Table(FieldTable(e))),
        ]
    })
}

fn field_table() -> impl Strategy<Value = FieldTable> {
    prop::collection::vec((short_str(), field_value()), 0..8).prop_map(FieldTable)
}

fn opt<T: std::fmt::Debug>(s: impl Strategy<Value = T>) -> impl Strategy<Value = Option<T>> {
    prop::option::of(s)
}

fn properties() -> impl Strategy<Value = BasicProperties> {
    (
        (
            opt(short_str()),
            opt(short_str()),
            opt(field_table()),
            opt(any::<u8>()),
            opt(any::<u8>()),
        ),
        (
            opt(short_str()),
            opt(short_str()),
            opt(short_str()),
            opt(short_str()),
            opt(any::<u64>()),
        ),
        (
            opt(short_str()),
            opt(short_str()),
            opt(short_str()),
            opt(short_str()),
        ),
    )
        .prop_map(
            |((ct, ce, h, dm, p), (cid, rt, exp, mid, ts), (kind, uid, app, cl))| BasicProperties {
                content_type: ct,
                content_encoding: ce,
                headers: h,
                delivery_mode: dm,
                priority: p,
                correlation_id: cid,
                reply_to: rt,
                expiration: exp,
                message_id: mid,
                timestamp: ts,
                kind,
                user_id: uid,
                app_id: app,
                cluster_id: cl,
            },
        )
}

fn method() -> impl Strategy<Value = Method> {
    let b = any::<bool>;
    let queue_and_exchange = prop_oneof![
        (
            short_str(),
            short_str(),
            b(),
            b(),
            b(),
            b(),
            b(),
            field_table()
        )
            .prop_map(
                |(exchange, kind, passive, durable, auto_delete, internal, nowait, arguments)| {
                    Method::ExchangeDeclare(ExchangeDeclare {
                        exchange,
                        kind,
                        passive,
                        durable,
                        auto_delete,
                        internal,
                        nowait,
                        arguments,
                    })
                }
            ),
        (short_str(), short_str(), short_str(), b(), field_table()).prop_map(
            |(destination, source, routing_key, nowait, arguments)| {
                Method::ExchangeBind(ExchangeBind {
                    destination,
                    source,
                    routing_key,
                    nowait,
                    arguments,
                })
            }
        ),
        (short_str(), b(), b(), b(), b(), b(), field_table()).prop_map(
            |(queue, passive, durable, exclusive, auto_delete, nowait, arguments)| {
                Method::QueueDeclare(QueueDeclare {
                    queue,
                    passive,
                    durable,
                    exclusive,
                    auto_delete,
                    nowait,
                    arguments,
                })
            }
        ),
        (short_str(), any::<u32>(), any::<u32>()).prop_map(
            |(queue, message_count, consumer_count)| {
                Method::QueueDeclareOk(QueueDeclareOk {
                    queue,
                    message_count,
                    consumer_count,
                })
            }
        ),
        (short_str(), b(), b(), b()).prop_map(|(queue, if_unused, if_empty, nowait)| {
            Method::QueueDelete(QueueDelete {
                queue,
                if_unused,
                if_empty,
                nowait,
            })
        }),
        (short_str(), short_str(), short_str(), field_table()).prop_map(
            |(queue, exchange, routing_key, arguments)| {
                Method::QueueUnbind(QueueUnbind {
                    queue,
                    exchange,
                    routing_key,
                    arguments,
                })
            }
        ),
    ];
    let basic = prop_oneof![
        (short_str(), short_str(), b(), b()).prop_map(
            |(exchange, routing_key, mandatory, immediate)| {
                Method::BasicPublish(BasicPublish {
                    exchange,
                    routing_key,
                    mandatory,
                    immediate,
                })
            }
        ),
        (short_str(), any::<u64>(), b(), short_str(), short_str()).prop_map(
            |(consumer_tag, delivery_tag, redelivered, exchange, routing_key)| {
                Method::BasicDeliver(BasicDeliver {
                    consumer_tag,
                    delivery_tag,
                    redelivered,
                    exchange,
                    routing_key,
                })
            }
        ),
        (short_str(), short_str(), b(), b(), b(), b(), field_table()).prop_map(
            |(queue, consumer_tag, no_local, no_ack, exclusive, nowait, arguments)| {
                Method::BasicConsume(BasicConsume {
                    queue,
                    consumer_tag,
                    no_local,
                    no_ack,
                    exclusive,
                    nowait,
                    arguments,
                })
            }
        ),
        (any::<u32>(), any::<u16>(), b()).prop_map(|(prefetch_size, prefetch_count, global)| {
            Method::BasicQos(BasicQos {
                prefetch_size,
                prefetch_count,
                global,
            })
        }),
        (any::<u64>(), b(), b()).prop_map(|(delivery_tag, multiple, requeue)| {
            Method::BasicNack(BasicNack {
                delivery_tag,
                multiple,
                requeue,
            })
        }),
        (any::<u64>(), b(), short_str(), short_str(), any::<u32>()).prop_map(
            |(delivery_tag, redelivered, exchange, routing_key, message_count)| {
                Method::BasicGetOk(BasicGetOk {
                    delivery_tag,
                    redelivered,
                    exchange,
                    routing_key,
                    message_count,
                })
            }
        ),
        Just(Method::BasicGetEmpty),
    ];
    let connection_and_channel = prop_oneof![
        (any::<u16>(), short_str(), any::<u16>(), any::<u16>()).prop_map(
            |(reply_code, reply_text, class_id, method_id)| {
                Method::ConnectionClose(ConnectionClose {
                    reply_code,
                    reply_text,
                    class_id,
                    method_id,
                })
            }
        ),
        (any::<u16>(), short_str(), any::<u16>(), any::<u16>()).prop_map(
            |(reply_code, reply_text, class_id, method_id)| {
                Method::ChannelClose(ChannelClose {
                    reply_code,
                    reply_text,
                    class_id,
                    method_id,
                })
            }
        ),
        (any::<u8>(), any::<u8>(), field_table(), bytes(), bytes()).prop_map(
            |(version_major, version_minor, server_properties, mechanisms, locales)| {
                Method::ConnectionStart(ConnectionStart {
                    version_major,
                    version_minor,
                    server_properties,
                    mechanisms,
                    locales,
                })
            }
        ),
        (field_table(), short_str(), bytes(), short_str()).prop_map(
            |(client_properties, mechanism, response, locale)| {
                Method::ConnectionStartOk(ConnectionStartOk {
                    client_properties,
                    mechanism,
                    response,
                    locale,
                })
            }
        ),
        (any::<u16>(), any::<u32>(), any::<u16>()).prop_map(
            |(channel_max, frame_max, heartbeat)| {
                Method::ConnectionTuneOk(ConnectionTuneOk {
                    channel_max,
                    frame_max,
                    heartbeat,
                })
            }
        ),
        short_str()
            .prop_map(|virtual_host| Method::ConnectionOpen(ConnectionOpen { virtual_host })),
        (short_str(), b(), b(), b(), b(), b()).prop_map(
            |(realm, exclusive, passive, active, write, read)| {
                Method::AccessRequest(AccessRequest {
                    realm,
                    exclusive,
                    passive,
                    active,
                    write,
                    read,
                })
            }
        ),
        Just(Method::ChannelOpen),
        Just(Method::TxCommitOk),
    ];
    prop_oneof![queue_and_exchange, basic, connection_and_channel]
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (any::<u16>(), method()).prop_map(|(channel, method)| Frame::Method { channel, method }),
        (any::<u16>(), any::<u16>(), any::<u64>(), properties()).prop_map(
            |(channel, class_id, size, p)| {
                let header =
                    ContentHeader::new(class_id, size, p).unwrap_or_else(|e| panic!("{e}"));
                Frame::Header { channel, header }
            }
        ),
        (any::<u16>(), prop::collection::vec(any::<u8>(), 0..300)).prop_map(|(channel, b)| {
            Frame::Body {
                channel,
                payload: Bytes::from(b),
            }
        }),
        any::<u16>().prop_map(|channel| Frame::Heartbeat { channel }),
    ]
}

/// Decodes frames from `bytes` until an error or the end, checking that
/// every decoded frame encodes and decodes again to itself and, if `exact`
/// (canonical input: reserved fields zero, bits and booleans 0 or 1), back
/// to the very bytes it came from. Returns the frames decoded.
fn decode_reencode(bytes: &[u8], frame_max: u32, exact: bool) -> Result<Vec<Frame>, TestCaseError> {
    let mut buf = BytesMut::from(bytes);
    let mut frames = Vec::new();
    loop {
        let before = buf.clone();
        match decode_frame(&mut buf, frame_max) {
            Ok(Some(frame)) => {
                let consumed = before.len() - buf.len();
                let mut out = BytesMut::new();
                prop_assert_eq!(frame.encode(&mut out), Ok(()));
                let mut again = out.clone();
                prop_assert_eq!(decode_frame(&mut again, frame_max), Ok(Some(frame.clone())));
                // Header weight is written as 0, so compare with it cleared.
                let mut original = before.get(..consumed).unwrap_or_default().to_vec();
                if let (Frame::Header { .. }, Some(weight)) = (&frame, original.get_mut(9..11)) {
                    weight.copy_from_slice(&[0, 0]);
                }
                if exact {
                    prop_assert_eq!(&out[..], &original[..]);
                }
                frames.push(frame);
            }
            Ok(None) | Err(_) => return Ok(frames),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn field_table_round_trips(table in field_table()) {
        let mut out = BytesMut::new();
        prop_assert_eq!(table.encode(&mut out), Ok(()));
        let bytes = out.freeze();
        let back = FieldTable::decode(&bytes);
        prop_assert_eq!(back.as_ref(), Ok(&table));
        let mut again = BytesMut::new();
        prop_assert_eq!(back.map(|t| t.encode(&mut again)), Ok(Ok(())));
        prop_assert_eq!(again.freeze(), bytes);
    }

    #[test]
    fn properties_round_trip(props in properties()) {
        let mut out = BytesMut::new();
        prop_assert_eq!(props.encode(&mut out), Ok(()));
        let bytes = out.freeze();
        let back = BasicProperties::decode(&bytes);
        prop_assert_eq!(back.as_ref(), Ok(&props));
        let mut again = BytesMut::new();
        prop_assert_eq!(back.map(|p| p.encode(&mut again)), Ok(Ok(())));
        prop_assert_eq!(again.freeze(), bytes);
    }

    #[test]
    fn methods_round_trip(method in method()) {
        let mut out = BytesMut::new();
        prop_assert_eq!(method.encode(&mut out), Ok(()));
        let bytes = out.freeze();
        let back = Method::decode(method.class_id(), method.method_id(), &bytes.slice(4..));
        prop_assert_eq!(back.as_ref(), Ok(&method));
        let mut again = BytesMut::new();
        prop_assert_eq!(back.map(|m| m.encode(&mut again)), Ok(Ok(())));
        prop_assert_eq!(again.freeze(), bytes);
    }

    #[test]
    fn frames_round_trip(frames in prop::collection::vec(frame(), 1..5)) {
        let mut out = BytesMut::new();
        for f in &frames {
            prop_assert_eq!(f.encode(&mut out), Ok(()));
        }
        let decoded = decode_reencode(&out, 0, true)?;
        prop_assert_eq!(decoded, frames);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512), frame_max in prop_oneof![Just(0u32), Just(4096), Just(131_072), any::<u32>()]) {
        decode_reencode(&bytes, frame_max, false)?;
        let _ = FieldTable::decode(&Bytes::from(bytes.clone()));
        let _ = BasicProperties::decode(&Bytes::from(bytes.clone()));
        let _ = decode_protocol_header(&mut BytesMut::from(&bytes[..]));
    }

    #[test]
    fn mutated_frames_never_panic(
        frames in prop::collection::vec(frame(), 1..4),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let mut out = BytesMut::new();
        for f in &frames {
            prop_assert_eq!(f.encode(&mut out), Ok(()));
        }
        let mut bytes = out.to_vec();
        for (at, value) in flips {
            let i = at.index(bytes.len());
            if let Some(b) = bytes.get_mut(i) {
                *b = value;
            }
        }
        decode_reencode(&bytes, 131_072, false)?;
    }
}
