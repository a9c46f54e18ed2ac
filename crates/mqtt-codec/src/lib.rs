//! MQTT 3.1, 3.1.1 and 5.0 control packets: decoding and encoding.
//!
//! The crate is pure and I/O-free: functions over byte buffers
//! ([`bytes::BytesMut`] in, [`bytes::Bytes`] slices out), no tokio, no
//! sockets, no clocks. Input bytes are controlled by clients, so decoding
//! never panics and never indexes out of bounds, and a packet larger than
//! the caller's maximum is refused from its fixed header, before the rest
//! is buffered. The decoder is fuzzed (see `fuzz/` at the workspace root).
//!
//! Decoding is zero-copy: a packet is split off the read buffer and
//! frozen, and payloads, binary fields and strings (after UTF-8
//! validation) are slices of it.
//!
//! Decoding enforces the packet format rules of the OASIS specifications:
//! fixed header flags, remaining length, string encoding, flag
//! combinations in CONNECT, packet identifiers, subscription options, topic
//! name and filter syntax, and for 5.0 which properties each packet type
//! may carry, once or repeatedly, with which values, and which reason codes.
//! Each violation is a [`DecodeError`] whose [`DecodeError::reason_code`]
//! is the 5.0 reason code to disconnect with. Session rules (a second
//! CONNECT, topic alias ranges, receive maximum, client identifier rules of
//! 3.1) belong to the caller.
//!
//! # Layout
//!
//! - `error`: [`DecodeError`] with its reason codes, and [`EncodeError`].
//! - `packet`: [`Protocol`], [`QoS`], [`Packet`] and one struct per
//!   packet type that has fields.
//! - `properties`: [`Properties`], the 5.0 property list shared by every
//!   packet type, and the table of which properties each type allows.
//! - `decode`: [`decode`], the fixed header and one parser per packet
//!   type; [`connect_protocol`] peeks at a CONNECT's protocol version.
//! - `encode`: [`encode`], a sizing pass then a writing pass.
//! - `publish`: [`write_publish`] and [`publish_size`], the allocation-free
//!   PUBLISH writer for the delivery path.
//! - [`topic`]: topic name, topic filter and shared subscription syntax.
//! - `wire`: the byte-level reader and writers.
//!
//! # Example
//!
//! ```
//! use bytes::BytesMut;
//! use liebre_mqtt_codec::{decode, encode, Packet, Protocol};
//!
//! let mut wire = BytesMut::new();
//! encode(&Packet::PingReq, Protocol::V311, &mut wire)?;
//! assert_eq!(&wire[..], &[0xC0, 0x00]);
//! let packet = decode(&mut wire, Some(Protocol::V311), 1024)?;
//! assert_eq!(packet, Some(Packet::PingReq));
//! assert!(wire.is_empty());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

mod decode;
mod encode;
mod error;
mod packet;
mod properties;
mod publish;
pub mod topic;
mod wire;

/// A UTF-8 encoded string of the protocol: a zero-copy slice of the
/// decoded packet, validated as well-formed UTF-8 without U+0000.
pub use bytestring::ByteString as Str;

pub use decode::{connect_protocol, decode};
pub use encode::encode;
pub use error::{DecodeError, EncodeError};
pub use packet::{
    Auth, ConnAck, Connect, Disconnect, LastWill, Packet, Protocol, PubAck, PubComp, PubRec,
    PubRel, Publish, QoS, SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe,
};
pub use properties::Properties;
pub use publish::{publish_size, write_publish};

/// The largest remaining length a packet can declare: 268,435,455 bytes.
pub const MAX_REMAINING_LENGTH: u32 = wire::VARINT_MAX;
