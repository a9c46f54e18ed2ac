//! Frames as a client sends them after the protocol header: decode until
//! the input runs out or is rejected; every decoded frame must encode, and
//! decode again to an equal frame.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use liebre_amqp_codec::{decode_frame, Frame};

const FRAME_MAX: u32 = 131_072;

fn reencode(frame: &Frame) {
    let mut out = BytesMut::new();
    if let Err(e) = frame.encode(&mut out) {
        panic!("decoded frame does not encode: {e}: {frame:?}");
    }
    match decode_frame(&mut out, FRAME_MAX) {
        Ok(Some(again)) => assert_eq!(&again, frame, "re-decoded frame differs"),
        other => panic!("re-encoded frame does not decode: {other:?}: {frame:?}"),
    }
    assert!(out.is_empty(), "re-encoded frame has trailing bytes");
}

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = decode_frame(&mut buf, FRAME_MAX) {
        reencode(&frame);
    }
});
