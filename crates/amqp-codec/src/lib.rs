//! AMQP 0-9-1 encoding and decoding, with RabbitMQ's semantics and extensions.
//!
//! The crate is pure and I/O-free: functions over byte buffers
//! ([`bytes::BytesMut`] in, [`bytes::Bytes`] slices out), no tokio, no
//! sockets, no clocks. The negotiated maximum frame size is passed in by the
//! caller. Input bytes are controlled by clients, so decoding never panics
//! and never indexes out of bounds, and a frame larger than `frame_max` is
//! refused from its 7-byte header, before its payload is buffered. The
//! decoders are fuzzed (see `fuzz/` at the workspace root).
//!
//! Decoding is zero-copy: a frame is split off the read buffer and frozen,
//! and body payloads, longstrs and shortstrs (after UTF-8 validation) are
//! slices of it.
//!
//! # Layout
//!
//! - `error`: [`CodecError`] and the reply code each error
//!   closes the connection with.
//! - `frame`: the protocol header, [`decode_frame`], [`Frame`] and
//!   [`encode_method_frame`].
//! - `method`: [`Method`], one variant per method of AMQP 0-9-1 and
//!   RabbitMQ's extensions, and one argument struct per method that has any.
//! - `properties`: [`BasicProperties`] and [`ContentHeader`].
//! - `field`: [`FieldTable`] and [`FieldValue`] with RabbitMQ's type tags.
//! - [`hot`]: allocation-free encoders for the frames written once per
//!   message (`basic.deliver`, content, acks).
//!
//! # Example
//!
//! ```
//! use bytes::BytesMut;
//! use liebre_amqp_codec::{decode_frame, encode_method_frame, Frame, Method};
//!
//! let mut wire = BytesMut::new();
//! encode_method_frame(&mut wire, 0, &Method::ConnectionCloseOk)?;
//! let frame = decode_frame(&mut wire, 131_072)?;
//! assert_eq!(frame, Some(Frame::Method { channel: 0, method: Method::ConnectionCloseOk }));
//! assert!(wire.is_empty());
//! # Ok::<(), liebre_amqp_codec::CodecError>(())
//! ```

#![warn(missing_docs)]

mod error;
mod field;
mod frame;
pub mod hot;
mod method;
mod properties;
mod wire;

pub use error::CodecError;
pub use field::{FieldTable, FieldValue, LongStr, ShortStr, MAX_NESTING_DEPTH};
pub use frame::{
    decode_frame, decode_protocol_header, encode_method_frame, Frame, FRAME_BODY, FRAME_END,
    FRAME_HEADER, FRAME_HEADER_SIZE, FRAME_HEARTBEAT, FRAME_METHOD, FRAME_MIN_SIZE,
    PROTOCOL_HEADER,
};
pub use method::*;
pub use properties::{BasicProperties, ContentHeader, BASIC_CLASS_ID};
