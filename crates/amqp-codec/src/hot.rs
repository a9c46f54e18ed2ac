//! Hot-path encoders for what the broker writes once per message.
//!
//! These are hand-written rather than going through [`Method`](crate::Method)
//! because they run once per message and must not allocate: no `Method`
//! value (with its `ShortStr`s) is built, each frame's size is computed up
//! front, `out` is reserved once and the bytes are written straight into it.
//! They produce exactly the bytes [`encode_method_frame`](crate::encode_method_frame)
//! would for the same method (tests check this).
//!
//! They cannot fail: their string arguments come from broker state that was
//! validated on the way in, so a shortstr over 255 bytes can only be a bug;
//! it is truncated at a character boundary instead of panicking.

use bytes::{BufMut, Bytes, BytesMut};

use crate::frame::{
    FRAME_BODY, FRAME_END, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD, FRAME_MIN_SIZE,
};

const BASIC: u16 = 60;
const BASIC_RETURN: u16 = 50;
const BASIC_DELIVER: u16 = 60;
const BASIC_GET_OK: u16 = 71;
const BASIC_ACK: u16 = 80;
const BASIC_NACK: u16 = 120;

/// Frame header plus frame-end.
const OVERHEAD: usize = 8;

/// `s` cut to at most 255 bytes, at a character boundary.
fn short(s: &str) -> &str {
    let mut end = s.len().min(255);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}

fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Encoded size of a shortstr already passed through [`short`].
fn short_len(s: &str) -> usize {
    1 + s.len()
}

fn put_short(out: &mut BytesMut, s: &str) {
    // `s` went through `short`, so its length fits an octet.
    out.put_u8(u8::try_from(s.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(s.as_bytes());
}

/// Reserves room for a method frame with `args_len` bytes of arguments and
/// writes everything up to the arguments.
fn begin_method(out: &mut BytesMut, channel: u16, method_id: u16, args_len: usize) {
    let payload = 4 + args_len;
    out.reserve(payload + OVERHEAD);
    out.put_u8(FRAME_METHOD);
    out.put_u16(channel);
    out.put_u32(len_u32(payload));
    out.put_u16(BASIC);
    out.put_u16(method_id);
}

/// Appends a complete `basic.deliver` method frame.
pub fn write_basic_deliver(
    out: &mut BytesMut,
    channel: u16,
    consumer_tag: &str,
    delivery_tag: u64,
    redelivered: bool,
    exchange: &str,
    routing_key: &str,
) {
    let (consumer_tag, exchange, routing_key) =
        (short(consumer_tag), short(exchange), short(routing_key));
    let args = short_len(consumer_tag) + 8 + 1 + short_len(exchange) + short_len(routing_key);
    begin_method(out, channel, BASIC_DELIVER, args);
    put_short(out, consumer_tag);
    out.put_u64(delivery_tag);
    out.put_u8(u8::from(redelivered));
    put_short(out, exchange);
    put_short(out, routing_key);
    out.put_u8(FRAME_END);
}

/// Appends a complete `basic.get-ok` method frame.
pub fn write_basic_get_ok(
    out: &mut BytesMut,
    channel: u16,
    delivery_tag: u64,
    redelivered: bool,
    exchange: &str,
    routing_key: &str,
    message_count: u32,
) {
    let (exchange, routing_key) = (short(exchange), short(routing_key));
    let args = 8 + 1 + short_len(exchange) + short_len(routing_key) + 4;
    begin_method(out, channel, BASIC_GET_OK, args);
    out.put_u64(delivery_tag);
    out.put_u8(u8::from(redelivered));
    put_short(out, exchange);
    put_short(out, routing_key);
    out.put_u32(message_count);
    out.put_u8(FRAME_END);
}

/// Appends a complete `basic.return` method frame.
pub fn write_basic_return(
    out: &mut BytesMut,
    channel: u16,
    reply_code: u16,
    reply_text: &str,
    exchange: &str,
    routing_key: &str,
) {
    let (reply_text, exchange, routing_key) =
        (short(reply_text), short(exchange), short(routing_key));
    let args = 2 + short_len(reply_text) + short_len(exchange) + short_len(routing_key);
    begin_method(out, channel, BASIC_RETURN, args);
    out.put_u16(reply_code);
    put_short(out, reply_text);
    put_short(out, exchange);
    put_short(out, routing_key);
    out.put_u8(FRAME_END);
}

/// Appends a complete `basic.ack` method frame (publisher confirms).
pub fn write_basic_ack(out: &mut BytesMut, channel: u16, delivery_tag: u64, multiple: bool) {
    begin_method(out, channel, BASIC_ACK, 9);
    out.put_u64(delivery_tag);
    out.put_u8(u8::from(multiple));
    out.put_u8(FRAME_END);
}

/// Appends a complete `basic.nack` method frame (publisher confirms).
pub fn write_basic_nack(
    out: &mut BytesMut,
    channel: u16,
    delivery_tag: u64,
    multiple: bool,
    requeue: bool,
) {
    begin_method(out, channel, BASIC_NACK, 9);
    out.put_u64(delivery_tag);
    out.put_u8(u8::from(multiple) | u8::from(requeue) << 1);
    out.put_u8(FRAME_END);
}

/// Appends a message's content: a content header frame carrying
/// `raw_properties` (property flags + list) verbatim with a body size of
/// `body.len()`, then `body` in body frames of at most `frame_max - 8`
/// payload bytes each (none for an empty body).
///
/// `frame_max` 0 means no limit; a non-zero value below
/// [`FRAME_MIN_SIZE`], which negotiation never allows, is raised to it.
/// Empty `raw_properties` (never the case for a received message) are
/// written as "no properties".
pub fn write_content(
    out: &mut BytesMut,
    channel: u16,
    class_id: u16,
    raw_properties: &[u8],
    body: &Bytes,
    frame_max: u32,
) {
    let raw_properties: &[u8] = if raw_properties.is_empty() {
        &[0, 0]
    } else {
        raw_properties
    };
    let max = if frame_max == 0 {
        u32::MAX
    } else {
        frame_max.max(FRAME_MIN_SIZE)
    };
    let chunk = usize::try_from(max).unwrap_or(usize::MAX) - OVERHEAD;
    let body_frames = body.len().div_ceil(chunk);
    let header_payload = 12 + raw_properties.len();
    out.reserve(header_payload + OVERHEAD + body.len() + body_frames * OVERHEAD);

    out.put_u8(FRAME_HEADER);
    out.put_u16(channel);
    out.put_u32(len_u32(header_payload));
    out.put_u16(class_id);
    out.put_u16(0);
    out.put_u64(body.len() as u64);
    out.extend_from_slice(raw_properties);
    out.put_u8(FRAME_END);

    for part in body.chunks(chunk) {
        out.put_u8(FRAME_BODY);
        out.put_u16(channel);
        out.put_u32(len_u32(part.len()));
        out.extend_from_slice(part);
        out.put_u8(FRAME_END);
    }
}

/// Appends a heartbeat frame (channel 0, empty payload).
pub fn write_heartbeat(out: &mut BytesMut) {
    out.extend_from_slice(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_truncates_at_a_char_boundary() {
        assert_eq!(short("abc"), "abc");
        let s = "é".repeat(200); // 400 bytes, 2 per char
        assert_eq!(short(&s).len(), 254);
        assert_eq!(short(&"a".repeat(300)).len(), 255);
    }
}
