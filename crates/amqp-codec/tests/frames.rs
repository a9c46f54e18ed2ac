//! `decode_frame`: partial input, limits, malformed frames; `write_content`
//! splitting.

use bytes::{Bytes, BytesMut};
use liebre_amqp_codec::*;

const FRAME_MAX: u32 = 131_072;

fn encoded(frame: &Frame) -> Vec<u8> {
    let mut out = BytesMut::new();
    assert_eq!(frame.encode(&mut out), Ok(()));
    out.to_vec()
}

fn sample_frames() -> Vec<Frame> {
    let args: FieldTable = [("x-max-length", FieldValue::I64(10))]
        .into_iter()
        .collect();
    let props = BasicProperties {
        content_type: Some(ShortStr::from("text/plain")),
        ..Default::default()
    };
    let header = ContentHeader::new(60, 3, props).unwrap_or_else(|e| panic!("{e}"));
    vec![
        Frame::Method {
            channel: 1,
            method: Method::QueueDeclare(QueueDeclare {
                queue: ShortStr::from("q"),
                passive: false,
                durable: true,
                exclusive: false,
                auto_delete: true,
                nowait: false,
                arguments: args,
            }),
        },
        Frame::Header { channel: 1, header },
        Frame::Body {
            channel: 1,
            payload: Bytes::from_static(b"abc"),
        },
        Frame::Body {
            channel: 1,
            payload: Bytes::new(),
        },
        Frame::Heartbeat { channel: 0 },
    ]
}

#[test]
fn every_prefix_of_a_frame_is_incomplete_and_consumes_nothing() {
    for frame in sample_frames() {
        let bytes = encoded(&frame);
        for len in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..len]);
            assert_eq!(
                decode_frame(&mut buf, FRAME_MAX),
                Ok(None),
                "{frame:?} cut to {len}"
            );
            assert_eq!(buf.len(), len);
        }
        let mut buf = BytesMut::from(&bytes[..]);
        assert_eq!(decode_frame(&mut buf, FRAME_MAX), Ok(Some(frame)));
        assert!(buf.is_empty());
    }
}

#[test]
fn back_to_back_frames_decode_in_order_and_leave_the_rest() {
    let frames = sample_frames();
    let mut all: Vec<u8> = frames.iter().flat_map(encoded).collect();
    all.extend_from_slice(&[1, 0]); // start of the next frame
    let mut buf = BytesMut::from(&all[..]);
    for frame in frames {
        assert_eq!(decode_frame(&mut buf, FRAME_MAX), Ok(Some(frame)));
    }
    assert_eq!(decode_frame(&mut buf, FRAME_MAX), Ok(None));
    assert_eq!(&buf[..], &[1, 0]);
}

#[test]
fn oversized_frame_is_refused_from_its_header_alone() {
    // Body frame declaring 1 MiB: refused with only 7 bytes buffered.
    let mut buf = BytesMut::from(&[3, 0, 1, 0, 0x10, 0, 0][..]);
    let got = decode_frame(&mut buf, FRAME_MAX);
    assert_eq!(
        got,
        Err(CodecError::FrameTooLarge {
            size: 0x10_0008,
            max: FRAME_MAX
        })
    );
    assert_eq!(got.map_err(|e| e.reply_code()), Err(501));
    assert_eq!(buf.len(), 7);

    // The limit is on the whole frame: payload + 8.
    let at_limit = (FRAME_MAX - 8).to_be_bytes();
    let mut buf = BytesMut::from(&[&[3, 0, 1][..], &at_limit].concat()[..]);
    assert_eq!(decode_frame(&mut buf, FRAME_MAX), Ok(None));
    let over = (FRAME_MAX - 7).to_be_bytes();
    let mut buf = BytesMut::from(&[&[3, 0, 1][..], &over].concat()[..]);
    assert_eq!(
        decode_frame(&mut buf, FRAME_MAX),
        Err(CodecError::FrameTooLarge {
            size: u64::from(FRAME_MAX) + 1,
            max: FRAME_MAX
        })
    );

    // A full frame of exactly frame_max bytes is fine.
    let body = Frame::Body {
        channel: 1,
        payload: Bytes::from(vec![7; 4096 - 8]),
    };
    let mut buf = BytesMut::from(&encoded(&body)[..]);
    assert_eq!(decode_frame(&mut buf, 4096), Ok(Some(body)));
}

#[test]
fn frame_max_zero_means_no_limit() {
    let mut buf = BytesMut::from(&[3, 0, 1, 0x7F, 0xFF, 0xFF, 0xFF][..]);
    assert_eq!(decode_frame(&mut buf, 0), Ok(None));
    let mut buf = BytesMut::from(&[3, 0, 1, 0xFF, 0xFF, 0xFF, 0xFF][..]);
    assert_eq!(
        decode_frame(&mut buf, 0),
        Err(CodecError::FrameTooLarge {
            size: u64::from(u32::MAX) + 8,
            max: u32::MAX
        })
    );
}

#[test]
fn bad_frame_end() {
    let mut bytes = encoded(&Frame::Heartbeat { channel: 0 });
    if let Some(end) = bytes.last_mut() {
        *end = 0xCD;
    }
    let mut buf = BytesMut::from(&bytes[..]);
    assert_eq!(
        decode_frame(&mut buf, FRAME_MAX),
        Err(CodecError::BadFrameEnd)
    );
}

#[test]
fn unknown_frame_type_is_refused_from_its_header_alone() {
    for kind in [0, 4, 7, 9, b'A', 0xFF] {
        let mut buf = BytesMut::from(&[kind, 0, 0, 0, 0, 0, 0][..]);
        assert_eq!(
            decode_frame(&mut buf, FRAME_MAX),
            Err(CodecError::UnknownFrameType(kind))
        );
    }
    // A second protocol header sent mid-connection.
    let mut buf = BytesMut::from(&PROTOCOL_HEADER[..]);
    assert_eq!(
        decode_frame(&mut buf, FRAME_MAX),
        Err(CodecError::UnknownFrameType(b'A'))
    );
}

fn method_bytes(channel: u16, payload: &[u8]) -> BytesMut {
    let len = u32::try_from(payload.len()).unwrap_or(0).to_be_bytes();
    let ch = channel.to_be_bytes();
    BytesMut::from(&[&[1, ch[0], ch[1]][..], &len, payload, &[0xCE]].concat()[..])
}

#[test]
fn malformed_method_frames() {
    // basic.publish cut after the exchange name: no routing key, no bits.
    let mut buf = method_bytes(1, &[0, 60, 0, 40, 0, 0, 1, b'e']);
    assert_eq!(
        decode_frame(&mut buf, FRAME_MAX),
        Err(CodecError::Syntax {
            class_id: 60,
            method_id: 40,
            reason: "truncated"
        })
    );
    assert!(buf.is_empty(), "a malformed frame is still consumed");

    // Trailing bytes after basic.ack's arguments.
    let mut buf = method_bytes(1, &[0, 60, 0, 80, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0]);
    let got = decode_frame(&mut buf, FRAME_MAX);
    assert_eq!(
        got,
        Err(CodecError::Syntax {
            class_id: 60,
            method_id: 80,
            reason: "trailing bytes after method arguments"
        })
    );
    assert_eq!(got.map_err(|e| e.reply_code()), Err(502));

    // Invalid UTF-8 in queue.declare's queue name.
    let mut buf = method_bytes(1, &[0, 50, 0, 10, 0, 0, 2, 0xC3, 0x28, 0, 0, 0, 0, 0]);
    assert!(matches!(
        decode_frame(&mut buf, FRAME_MAX),
        Err(CodecError::Syntax {
            class_id: 50,
            method_id: 10,
            reason: "invalid UTF-8 in shortstr"
        })
    ));

    // Unknown field type in basic.consume's arguments.
    let mut buf = method_bytes(
        1,
        &[0, 60, 0, 20, 0, 0, 1, b'q', 0, 0, 0, 0, 0, 3, 1, b'k', b'?'],
    );
    assert!(matches!(
        decode_frame(&mut buf, FRAME_MAX),
        Err(CodecError::Syntax {
            class_id: 60,
            method_id: 20,
            reason: "unknown field value type"
        })
    ));

    // Unknown method.
    let mut buf = method_bytes(1, &[0, 60, 0, 41]);
    let got = decode_frame(&mut buf, FRAME_MAX);
    assert_eq!(
        got,
        Err(CodecError::UnknownMethod {
            class_id: 60,
            method_id: 41
        })
    );
    assert_eq!(got.map_err(|e| e.reply_code()), Err(540));

    // Too short for the ids.
    let mut buf = method_bytes(1, &[0, 60, 0]);
    assert!(matches!(
        decode_frame(&mut buf, FRAME_MAX),
        Err(CodecError::MalformedFrame { .. })
    ));
}

#[test]
fn malformed_header_and_heartbeat_frames() {
    // Content header with a continuation flag set.
    let bytes = [
        &[2, 0, 1, 0, 0, 0, 14, 0, 60, 0, 0][..],
        &[0; 8],
        &[0, 1, 0xCE],
    ]
    .concat();
    let mut buf = BytesMut::from(&bytes[..]);
    assert_eq!(
        decode_frame(&mut buf, FRAME_MAX),
        Err(CodecError::Syntax {
            class_id: 60,
            method_id: 0,
            reason: "property flags continuation bit set"
        })
    );
    // Content header too short for its fixed fields.
    let mut buf = BytesMut::from(&[2, 0, 1, 0, 0, 0, 4, 0, 60, 0, 0, 0xCE][..]);
    assert!(matches!(
        decode_frame(&mut buf, FRAME_MAX),
        Err(CodecError::MalformedFrame { .. })
    ));
    // Content header with no property flags at all.
    let bytes = [&[2, 0, 1, 0, 0, 0, 12, 0, 60, 0, 0][..], &[0; 8], &[0xCE]].concat();
    let mut buf = BytesMut::from(&bytes[..]);
    assert!(matches!(
        decode_frame(&mut buf, FRAME_MAX),
        Err(CodecError::Syntax { class_id: 60, .. })
    ));
    // Heartbeat carrying a payload.
    let mut buf = BytesMut::from(&[8, 0, 0, 0, 0, 0, 1, 0, 0xCE][..]);
    assert!(matches!(
        decode_frame(&mut buf, FRAME_MAX),
        Err(CodecError::MalformedFrame { .. })
    ));
}

#[test]
fn body_payload_is_a_slice_of_the_read_buffer() {
    let mut buf = BytesMut::from(
        &encoded(&Frame::Body {
            channel: 5,
            payload: Bytes::from_static(b"payload"),
        })[..],
    );
    let base = buf.as_ptr();
    match decode_frame(&mut buf, FRAME_MAX) {
        Ok(Some(Frame::Body {
            channel: 5,
            payload,
        })) => {
            assert_eq!(&payload[..], b"payload");
            assert_eq!(payload.as_ptr(), base.wrapping_add(FRAME_HEADER_SIZE));
        }
        other => panic!("{other:?}"),
    }
}

/// Decodes every frame in `bytes`, which must all be complete.
fn decode_all(bytes: &[u8], frame_max: u32) -> Vec<Frame> {
    let mut buf = BytesMut::from(bytes);
    let mut frames = Vec::new();
    loop {
        match decode_frame(&mut buf, frame_max) {
            Ok(Some(f)) => frames.push(f),
            Ok(None) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(buf.is_empty());
    frames
}

#[test]
fn write_content_splits_the_body_at_frame_max() {
    let frame_max = 4096;
    let chunk = (frame_max - 8) as usize;
    let body: Bytes = (0..3 * chunk + 1)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into();
    let mut out = BytesMut::new();
    hot::write_content(&mut out, 4, 60, &[0, 0], &body, frame_max);
    let frames = decode_all(&out, frame_max);
    assert_eq!(frames.len(), 5);
    let mut received = BytesMut::new();
    let mut sizes = Vec::new();
    for frame in &frames[1..] {
        match frame {
            Frame::Body {
                channel: 4,
                payload,
            } => {
                sizes.push(payload.len());
                received.extend_from_slice(payload);
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(sizes, [chunk, chunk, chunk, 1]);
    assert_eq!(received.freeze(), body);
    match &frames[0] {
        Frame::Header { channel: 4, header } => {
            assert_eq!(header.body_size, body.len() as u64);
            assert_eq!(header.class_id, 60);
            assert_eq!(*header.properties, BasicProperties::default());
        }
        other => panic!("{other:?}"),
    }

    // Exactly three full frames.
    let mut out = BytesMut::new();
    hot::write_content(
        &mut out,
        4,
        60,
        &[0, 0],
        &body.slice(..3 * chunk),
        frame_max,
    );
    assert_eq!(decode_all(&out, frame_max).len(), 4);
}

#[test]
fn write_content_with_an_empty_body_writes_only_the_header() {
    let mut out = BytesMut::new();
    hot::write_content(&mut out, 1, 60, &[0x10, 0x00, 2], &Bytes::new(), 4096);
    let frames = decode_all(&out, 4096);
    assert_eq!(frames.len(), 1);
    match &frames[0] {
        Frame::Header { header, .. } => {
            assert_eq!(header.body_size, 0);
            assert!(header.properties.is_persistent());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn write_content_without_frame_max_writes_one_body_frame() {
    let body = Bytes::from(vec![1; 100_000]);
    let mut out = BytesMut::new();
    hot::write_content(&mut out, 1, 60, &[0, 0], &body, 0);
    assert_eq!(decode_all(&out, 0).len(), 2);
}
