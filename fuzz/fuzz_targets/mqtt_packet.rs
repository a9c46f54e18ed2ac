//! MQTT packets as a client (or server) sends them. The first input byte
//! picks the session's protocol (`% 4`: 3.1, 3.1.1, 5.0, or none yet, so
//! the stream must start with a CONNECT, whose protocol then applies);
//! the rest is decoded until it runs out or is rejected. Every decoded
//! packet must encode, and decode again to an equal packet.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use liebre_mqtt_codec::{decode, encode, Packet, Protocol};

const MAX_SIZE: u32 = 1 << 20;

fn reencode(packet: &Packet, protocol: Protocol) {
    // A CONNECT is encoded for its own protocol and read before any.
    let (protocol, session) = match packet {
        Packet::Connect(c) => (c.protocol, None),
        _ => (protocol, Some(protocol)),
    };
    let mut out = BytesMut::new();
    if let Err(e) = encode(packet, protocol, &mut out) {
        panic!("decoded packet does not encode: {e}: {packet:?}");
    }
    match decode(&mut out, session, MAX_SIZE) {
        Ok(Some(again)) => assert_eq!(&again, packet, "re-decoded packet differs"),
        other => panic!("re-encoded packet does not decode: {other:?}: {packet:?}"),
    }
    assert!(out.is_empty(), "re-encoded packet has trailing bytes");
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let mut protocol = match selector % 4 {
        0 => Some(Protocol::V31),
        1 => Some(Protocol::V311),
        2 => Some(Protocol::V5),
        _ => None,
    };
    let mut buf = BytesMut::from(rest);
    while let Ok(Some(packet)) = decode(&mut buf, protocol, MAX_SIZE) {
        if let Packet::Connect(c) = &packet {
            protocol.get_or_insert(c.protocol);
        }
        reencode(&packet, protocol.unwrap_or(Protocol::V311));
    }
});
