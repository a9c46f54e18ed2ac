//! Property flags and list of a content header: decoding must not panic,
//! and decoded properties must encode to bytes that decode to them again.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use liebre_amqp_codec::BasicProperties;

fuzz_target!(|data: &[u8]| {
    let Ok(props) = BasicProperties::decode(&Bytes::copy_from_slice(data)) else {
        return;
    };
    let mut out = BytesMut::new();
    if let Err(e) = props.encode(&mut out) {
        panic!("decoded properties do not encode: {e}: {props:?}");
    }
    let again = BasicProperties::decode(&out.freeze());
    assert_eq!(again.as_ref(), Ok(&props), "re-decoded properties differ");
});
