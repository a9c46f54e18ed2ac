//! The `mqtt_packet` fuzz target's loop, run on its seed corpus
//! (`fuzz/corpus/mqtt_packet/`) with the stable toolchain: every seed
//! decodes to its end and each packet survives encode and decode.

use std::path::Path;

use bytes::BytesMut;
use liebre_mqtt_codec::*;

const MAX_SIZE: u32 = 1 << 20;

/// Same as the fuzz target, but returns the packets and what is left.
fn run(data: &[u8]) -> (Vec<Packet>, usize) {
    let Some((&selector, rest)) = data.split_first() else {
        return (Vec::new(), 0);
    };
    let mut protocol = match selector % 4 {
        0 => Some(Protocol::V31),
        1 => Some(Protocol::V311),
        2 => Some(Protocol::V5),
        _ => None,
    };
    let mut buf = BytesMut::from(rest);
    let mut packets = Vec::new();
    loop {
        match decode(&mut buf, protocol, MAX_SIZE) {
            Ok(Some(packet)) => {
                if let Packet::Connect(c) = &packet {
                    protocol.get_or_insert(c.protocol);
                }
                let p = protocol.unwrap_or(Protocol::V311);
                let (p, session) = match &packet {
                    Packet::Connect(c) => (c.protocol, None),
                    _ => (p, Some(p)),
                };
                let mut out = BytesMut::new();
                assert_eq!(encode(&packet, p, &mut out), Ok(()), "{packet:?}");
                assert_eq!(
                    decode(&mut out, session, MAX_SIZE),
                    Ok(Some(packet.clone()))
                );
                assert!(out.is_empty());
                packets.push(packet);
            }
            Ok(None) => break,
            Err(e) => panic!("seed rejected: {e}"),
        }
    }
    (packets, buf.len())
}

#[test]
fn every_seed_decodes_to_its_end() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/mqtt_packet");
    let mut seeds = 0;
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(data.len() < 1024, "{} is over 1 KiB", path.display());
        let (packets, left) = run(&data);
        assert_eq!(left, 0, "{}: bytes left over", path.display());
        assert!(
            packets.len() >= 4,
            "{}: {} packets",
            path.display(),
            packets.len()
        );
        seeds += 1;
    }
    assert!(seeds >= 5, "{seeds} seeds");
}
