//! MQTT 5.0 properties: one struct for every packet type, and the table of
//! which property each packet type may carry.
//!
//! On the wire, properties are a variable byte integer length followed by
//! `identifier value` pairs in any order. Decoding rejects an unknown
//! identifier (malformed), an identifier not allowed in the packet type
//! and a repeated single-valued property (protocol errors), and the values
//! the specification rules out. Encoding writes only the properties the
//! packet type allows, in identifier order, so a field set on the wrong
//! packet type is dropped rather than sent.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::wire::{check_str, put_bin, put_varint, varint_len, Reader, Res, VARINT_MAX};
use crate::Str;

/// MQTT 5.0 properties. Every packet type uses this one struct; each
/// packet type allows only some of the fields (see the specification's
/// table 2-4), and the codec ignores the others when encoding.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Properties {
    /// 0x01, PUBLISH and will: 0 unspecified bytes, 1 UTF-8 payload.
    pub payload_format_indicator: Option<u8>,
    /// 0x02, PUBLISH and will: lifetime of the message in seconds.
    pub message_expiry_interval: Option<u32>,
    /// 0x03, PUBLISH and will: content type of the payload.
    pub content_type: Option<Str>,
    /// 0x08, PUBLISH and will: topic name for a response.
    pub response_topic: Option<Str>,
    /// 0x09, PUBLISH and will: correlation data for a response.
    pub correlation_data: Option<Bytes>,
    /// 0x0B: in SUBSCRIBE at most one; in PUBLISH (server to client) one per
    /// matching subscription. Each is in 1..=268,435,455.
    pub subscription_identifiers: Vec<u32>,
    /// 0x11, CONNECT, CONNACK, DISCONNECT: seconds; `u32::MAX` never expires.
    pub session_expiry_interval: Option<u32>,
    /// 0x12, CONNACK: the client identifier the server assigned.
    pub assigned_client_identifier: Option<Str>,
    /// 0x13, CONNACK: keep alive the server imposes.
    pub server_keep_alive: Option<u16>,
    /// 0x15, CONNECT, CONNACK, AUTH: extended authentication method.
    pub authentication_method: Option<Str>,
    /// 0x16, CONNECT, CONNACK, AUTH: extended authentication data.
    pub authentication_data: Option<Bytes>,
    /// 0x17, CONNECT: 0 or 1.
    pub request_problem_information: Option<u8>,
    /// 0x18, will: seconds to wait before publishing the will.
    pub will_delay_interval: Option<u32>,
    /// 0x19, CONNECT: 0 or 1.
    pub request_response_information: Option<u8>,
    /// 0x1A, CONNACK: basis for response topics.
    pub response_information: Option<Str>,
    /// 0x1C, CONNACK, DISCONNECT: another server to use.
    pub server_reference: Option<Str>,
    /// 0x1F, CONNACK, acks, SUBACK, UNSUBACK, DISCONNECT, AUTH: human-readable diagnostics.
    pub reason_string: Option<Str>,
    /// 0x21, CONNECT, CONNACK: in-flight QoS 1 and 2 limit, never 0.
    pub receive_maximum: Option<u16>,
    /// 0x22, CONNECT, CONNACK: highest topic alias accepted.
    pub topic_alias_maximum: Option<u16>,
    /// 0x23, PUBLISH: topic alias, never 0.
    pub topic_alias: Option<u16>,
    /// 0x24, CONNACK: 0 or 1 (absent means 2).
    pub maximum_qos: Option<u8>,
    /// 0x25, CONNACK: 0 or 1.
    pub retain_available: Option<u8>,
    /// 0x26, every packet type: name/value pairs, in order, repeats allowed.
    pub user_properties: Vec<(Str, Str)>,
    /// 0x27, CONNECT, CONNACK: largest packet the sender accepts, never 0.
    pub maximum_packet_size: Option<u32>,
    /// 0x28, CONNACK: 0 or 1.
    pub wildcard_subscription_available: Option<u8>,
    /// 0x29, CONNACK: 0 or 1.
    pub subscription_identifier_available: Option<u8>,
    /// 0x2A, CONNACK: 0 or 1.
    pub shared_subscription_available: Option<u8>,
}

impl Properties {
    /// True when no property is set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
const CONTENT_TYPE: u8 = 0x03;
const RESPONSE_TOPIC: u8 = 0x08;
const CORRELATION_DATA: u8 = 0x09;
const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
const SERVER_KEEP_ALIVE: u8 = 0x13;
const AUTHENTICATION_METHOD: u8 = 0x15;
const AUTHENTICATION_DATA: u8 = 0x16;
const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
const WILL_DELAY_INTERVAL: u8 = 0x18;
const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
const RESPONSE_INFORMATION: u8 = 0x1A;
const SERVER_REFERENCE: u8 = 0x1C;
const REASON_STRING: u8 = 0x1F;
const RECEIVE_MAXIMUM: u8 = 0x21;
const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
const TOPIC_ALIAS: u8 = 0x23;
const MAXIMUM_QOS: u8 = 0x24;
const RETAIN_AVAILABLE: u8 = 0x25;
const USER_PROPERTY: u8 = 0x26;
const MAXIMUM_PACKET_SIZE: u8 = 0x27;
const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;

const fn bit(id: u8) -> u64 {
    1 << id
}

const fn mask(ids: &[u8]) -> u64 {
    let mut m = 0;
    let mut i = 0;
    while i < ids.len() {
        m |= bit(ids[i]);
        i += 1;
    }
    m
}

/// Every property identifier MQTT 5.0 defines.
const KNOWN: u64 = mask(&[
    PAYLOAD_FORMAT_INDICATOR,
    MESSAGE_EXPIRY_INTERVAL,
    CONTENT_TYPE,
    RESPONSE_TOPIC,
    CORRELATION_DATA,
    SUBSCRIPTION_IDENTIFIER,
    SESSION_EXPIRY_INTERVAL,
    ASSIGNED_CLIENT_IDENTIFIER,
    SERVER_KEEP_ALIVE,
    AUTHENTICATION_METHOD,
    AUTHENTICATION_DATA,
    REQUEST_PROBLEM_INFORMATION,
    WILL_DELAY_INTERVAL,
    REQUEST_RESPONSE_INFORMATION,
    RESPONSE_INFORMATION,
    SERVER_REFERENCE,
    REASON_STRING,
    RECEIVE_MAXIMUM,
    TOPIC_ALIAS_MAXIMUM,
    TOPIC_ALIAS,
    MAXIMUM_QOS,
    RETAIN_AVAILABLE,
    USER_PROPERTY,
    MAXIMUM_PACKET_SIZE,
    WILDCARD_SUBSCRIPTION_AVAILABLE,
    SUBSCRIPTION_IDENTIFIER_AVAILABLE,
    SHARED_SUBSCRIPTION_AVAILABLE,
]);

/// Where a property list sits: each place allows its own set of properties.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Context {
    Connect,
    Will,
    ConnAck,
    Publish,
    /// PUBACK, PUBREC, PUBREL, PUBCOMP.
    Ack,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

impl Context {
    fn allowed(self) -> u64 {
        match self {
            Self::Connect => mask(&[
                SESSION_EXPIRY_INTERVAL,
                AUTHENTICATION_METHOD,
                AUTHENTICATION_DATA,
                REQUEST_PROBLEM_INFORMATION,
                REQUEST_RESPONSE_INFORMATION,
                RECEIVE_MAXIMUM,
                TOPIC_ALIAS_MAXIMUM,
                USER_PROPERTY,
                MAXIMUM_PACKET_SIZE,
            ]),
            Self::Will => mask(&[
                PAYLOAD_FORMAT_INDICATOR,
                MESSAGE_EXPIRY_INTERVAL,
                CONTENT_TYPE,
                RESPONSE_TOPIC,
                CORRELATION_DATA,
                WILL_DELAY_INTERVAL,
                USER_PROPERTY,
            ]),
            Self::ConnAck => mask(&[
                SESSION_EXPIRY_INTERVAL,
                ASSIGNED_CLIENT_IDENTIFIER,
                SERVER_KEEP_ALIVE,
                AUTHENTICATION_METHOD,
                AUTHENTICATION_DATA,
                RESPONSE_INFORMATION,
                SERVER_REFERENCE,
                REASON_STRING,
                RECEIVE_MAXIMUM,
                TOPIC_ALIAS_MAXIMUM,
                MAXIMUM_QOS,
                RETAIN_AVAILABLE,
                USER_PROPERTY,
                MAXIMUM_PACKET_SIZE,
                WILDCARD_SUBSCRIPTION_AVAILABLE,
                SUBSCRIPTION_IDENTIFIER_AVAILABLE,
                SHARED_SUBSCRIPTION_AVAILABLE,
            ]),
            Self::Publish => mask(&[
                PAYLOAD_FORMAT_INDICATOR,
                MESSAGE_EXPIRY_INTERVAL,
                CONTENT_TYPE,
                RESPONSE_TOPIC,
                CORRELATION_DATA,
                SUBSCRIPTION_IDENTIFIER,
                TOPIC_ALIAS,
                USER_PROPERTY,
            ]),
            Self::Ack | Self::SubAck | Self::UnsubAck => mask(&[REASON_STRING, USER_PROPERTY]),
            Self::Subscribe => mask(&[SUBSCRIPTION_IDENTIFIER, USER_PROPERTY]),
            Self::Unsubscribe => mask(&[USER_PROPERTY]),
            Self::Disconnect => mask(&[
                SESSION_EXPIRY_INTERVAL,
                SERVER_REFERENCE,
                REASON_STRING,
                USER_PROPERTY,
            ]),
            Self::Auth => mask(&[
                AUTHENTICATION_METHOD,
                AUTHENTICATION_DATA,
                REASON_STRING,
                USER_PROPERTY,
            ]),
        }
    }

    /// Whether `id` may appear more than once here.
    fn repeatable(self, id: u8) -> bool {
        id == USER_PROPERTY || (id == SUBSCRIPTION_IDENTIFIER && self == Self::Publish)
    }
}

/// One property value, borrowed, as the encoder sees it.
enum Value<'a> {
    Byte(u8),
    U16(u16),
    U32(u32),
    Varint(u32),
    Str(&'a str),
    Bin(&'a [u8]),
    Pair(&'a str, &'a str),
}

impl Value<'_> {
    /// Encoded length of the value (without the identifier), checking that
    /// it can be encoded.
    fn len(&self) -> Result<usize, EncodeError> {
        Ok(match *self {
            Self::Byte(_) => 1,
            Self::U16(_) => 2,
            Self::U32(_) => 4,
            Self::Varint(v) if v > VARINT_MAX => return Err(EncodeError::TooLarge),
            Self::Varint(v) => varint_len(v as usize),
            Self::Str(s) => check_str(s.len())?,
            Self::Bin(b) => check_str(b.len())?,
            Self::Pair(k, v) => check_str(k.len())? + check_str(v.len())?,
        })
    }

    fn put(&self, out: &mut BytesMut) {
        match *self {
            Self::Byte(v) => out.put_u8(v),
            Self::U16(v) => out.put_u16(v),
            Self::U32(v) => out.put_u32(v),
            Self::Varint(v) => put_varint(out, v as usize),
            Self::Str(s) => put_bin(out, s.as_bytes()),
            Self::Bin(b) => put_bin(out, b),
            Self::Pair(k, v) => {
                put_bin(out, k.as_bytes());
                put_bin(out, v.as_bytes());
            }
        }
    }
}

impl Properties {
    /// Calls `f` with every property set that `ctx` allows, in identifier
    /// order (user properties and subscription identifiers in their order).
    fn visit<E>(
        &self,
        ctx: Context,
        mut f: impl FnMut(u8, Value<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let allowed = ctx.allowed();
        let mut one = |id: u8, v: Option<Value<'_>>| match v {
            Some(v) if allowed & bit(id) != 0 => f(id, v),
            _ => Ok(()),
        };
        one(
            PAYLOAD_FORMAT_INDICATOR,
            self.payload_format_indicator.map(Value::Byte),
        )?;
        one(
            MESSAGE_EXPIRY_INTERVAL,
            self.message_expiry_interval.map(Value::U32),
        )?;
        one(CONTENT_TYPE, self.content_type.as_deref().map(Value::Str))?;
        one(
            RESPONSE_TOPIC,
            self.response_topic.as_deref().map(Value::Str),
        )?;
        one(
            CORRELATION_DATA,
            self.correlation_data.as_deref().map(Value::Bin),
        )?;
        for &id in &self.subscription_identifiers {
            one(SUBSCRIPTION_IDENTIFIER, Some(Value::Varint(id)))?;
        }
        one(
            SESSION_EXPIRY_INTERVAL,
            self.session_expiry_interval.map(Value::U32),
        )?;
        one(
            ASSIGNED_CLIENT_IDENTIFIER,
            self.assigned_client_identifier.as_deref().map(Value::Str),
        )?;
        one(SERVER_KEEP_ALIVE, self.server_keep_alive.map(Value::U16))?;
        one(
            AUTHENTICATION_METHOD,
            self.authentication_method.as_deref().map(Value::Str),
        )?;
        one(
            AUTHENTICATION_DATA,
            self.authentication_data.as_deref().map(Value::Bin),
        )?;
        one(
            REQUEST_PROBLEM_INFORMATION,
            self.request_problem_information.map(Value::Byte),
        )?;
        one(
            WILL_DELAY_INTERVAL,
            self.will_delay_interval.map(Value::U32),
        )?;
        one(
            REQUEST_RESPONSE_INFORMATION,
            self.request_response_information.map(Value::Byte),
        )?;
        one(
            RESPONSE_INFORMATION,
            self.response_information.as_deref().map(Value::Str),
        )?;
        one(
            SERVER_REFERENCE,
            self.server_reference.as_deref().map(Value::Str),
        )?;
        one(REASON_STRING, self.reason_string.as_deref().map(Value::Str))?;
        one(RECEIVE_MAXIMUM, self.receive_maximum.map(Value::U16))?;
        one(
            TOPIC_ALIAS_MAXIMUM,
            self.topic_alias_maximum.map(Value::U16),
        )?;
        one(TOPIC_ALIAS, self.topic_alias.map(Value::U16))?;
        one(MAXIMUM_QOS, self.maximum_qos.map(Value::Byte))?;
        one(RETAIN_AVAILABLE, self.retain_available.map(Value::Byte))?;
        for (k, v) in &self.user_properties {
            one(USER_PROPERTY, Some(Value::Pair(k, v)))?;
        }
        one(
            MAXIMUM_PACKET_SIZE,
            self.maximum_packet_size.map(Value::U32),
        )?;
        one(
            WILDCARD_SUBSCRIPTION_AVAILABLE,
            self.wildcard_subscription_available.map(Value::Byte),
        )?;
        one(
            SUBSCRIPTION_IDENTIFIER_AVAILABLE,
            self.subscription_identifier_available.map(Value::Byte),
        )?;
        one(
            SHARED_SUBSCRIPTION_AVAILABLE,
            self.shared_subscription_available.map(Value::Byte),
        )
    }

    /// Length of the property list (without its own length prefix) as
    /// encoded for `ctx`; fails when a value cannot be encoded or the list
    /// is longer than a variable byte integer holds.
    pub(crate) fn encoded_len(&self, ctx: Context) -> Result<usize, EncodeError> {
        let mut len = 0usize;
        self.visit(ctx, |_, v| {
            len = len.saturating_add(1 + v.len()?);
            Ok(())
        })?;
        if len > VARINT_MAX as usize {
            return Err(EncodeError::TooLarge);
        }
        Ok(len)
    }

    /// Writes the length prefix and the properties; `len` is what
    /// [`Properties::encoded_len`] returned for the same `ctx`.
    pub(crate) fn put(&self, ctx: Context, len: usize, out: &mut BytesMut) {
        put_varint(out, len);
        let _ = self.visit(ctx, |id, v| {
            out.put_u8(id);
            v.put(out);
            Ok::<(), EncodeError>(())
        });
    }
}

/// Size of a property list with its length prefix.
pub(crate) fn with_prefix(len: usize) -> usize {
    varint_len(len) + len
}

/// Stores a single-valued property; [`decode`] has already refused a
/// second occurrence of its identifier.
fn set_once<T>(slot: &mut Option<T>, v: T) {
    *slot = Some(v);
}

fn zero_or_one(v: u8, what: &'static str) -> Res<u8> {
    if v <= 1 {
        Ok(v)
    } else {
        Err(DecodeError::ProtocolError(what))
    }
}

fn nonzero<T: Default + PartialEq>(v: T, what: &'static str) -> Res<T> {
    if v == T::default() {
        Err(DecodeError::ProtocolError(what))
    } else {
        Ok(v)
    }
}

/// Reads a property length and the property list it covers.
pub(crate) fn decode(r: &mut Reader, ctx: Context) -> Res<Properties> {
    let len = r.varint()?;
    let len = usize::try_from(len).map_err(|_| crate::wire::TRUNCATED)?;
    if len > r.remaining() {
        return Err(DecodeError::MalformedPacket(
            "property length exceeds the packet",
        ));
    }
    let mut r = Reader::new(r.take(len)?);
    let mut p = Properties::default();
    let mut seen = 0u64;
    let allowed = ctx.allowed();
    while !r.is_empty() {
        let id = r.u8()?;
        let b = if id < 64 { bit(id) } else { 0 };
        if KNOWN & b == 0 {
            return Err(DecodeError::MalformedPacket("unknown property identifier"));
        }
        if allowed & b == 0 {
            return Err(DecodeError::ProtocolError(
                "property not allowed in this packet",
            ));
        }
        if !ctx.repeatable(id) {
            if seen & b != 0 {
                return Err(DecodeError::ProtocolError("property included twice"));
            }
            seen |= b;
        }
        match id {
            PAYLOAD_FORMAT_INDICATOR => set_once(
                &mut p.payload_format_indicator,
                zero_or_one(r.u8()?, "payload format indicator not 0 or 1")?,
            ),
            MESSAGE_EXPIRY_INTERVAL => set_once(&mut p.message_expiry_interval, r.u32()?),
            CONTENT_TYPE => set_once(&mut p.content_type, r.string()?),
            RESPONSE_TOPIC => {
                let topic = r.string()?;
                if !crate::topic::valid_topic_name(&topic) {
                    return Err(DecodeError::ProtocolError("invalid response topic"));
                }
                set_once(&mut p.response_topic, topic);
            }
            CORRELATION_DATA => set_once(&mut p.correlation_data, r.binary()?),
            SUBSCRIPTION_IDENTIFIER => {
                // A varint cannot exceed VARINT_MAX, so only 0 is out of range.
                let id = nonzero(r.varint()?, "subscription identifier 0")?;
                p.subscription_identifiers.push(id);
            }
            SESSION_EXPIRY_INTERVAL => set_once(&mut p.session_expiry_interval, r.u32()?),
            ASSIGNED_CLIENT_IDENTIFIER => set_once(&mut p.assigned_client_identifier, r.string()?),
            SERVER_KEEP_ALIVE => set_once(&mut p.server_keep_alive, r.u16()?),
            AUTHENTICATION_METHOD => set_once(&mut p.authentication_method, r.string()?),
            AUTHENTICATION_DATA => set_once(&mut p.authentication_data, r.binary()?),
            REQUEST_PROBLEM_INFORMATION => set_once(
                &mut p.request_problem_information,
                zero_or_one(r.u8()?, "request problem information not 0 or 1")?,
            ),
            WILL_DELAY_INTERVAL => set_once(&mut p.will_delay_interval, r.u32()?),
            REQUEST_RESPONSE_INFORMATION => set_once(
                &mut p.request_response_information,
                zero_or_one(r.u8()?, "request response information not 0 or 1")?,
            ),
            RESPONSE_INFORMATION => set_once(&mut p.response_information, r.string()?),
            SERVER_REFERENCE => set_once(&mut p.server_reference, r.string()?),
            REASON_STRING => set_once(&mut p.reason_string, r.string()?),
            RECEIVE_MAXIMUM => set_once(
                &mut p.receive_maximum,
                nonzero(r.u16()?, "receive maximum 0")?,
            ),
            TOPIC_ALIAS_MAXIMUM => set_once(&mut p.topic_alias_maximum, r.u16()?),
            TOPIC_ALIAS => match r.u16()? {
                0 => return Err(DecodeError::TopicAliasInvalid),
                alias => set_once(&mut p.topic_alias, alias),
            },
            MAXIMUM_QOS => set_once(
                &mut p.maximum_qos,
                zero_or_one(r.u8()?, "maximum QoS not 0 or 1")?,
            ),
            RETAIN_AVAILABLE => set_once(
                &mut p.retain_available,
                zero_or_one(r.u8()?, "retain available not 0 or 1")?,
            ),
            USER_PROPERTY => {
                let k = r.string()?;
                let v = r.string()?;
                p.user_properties.push((k, v));
            }
            MAXIMUM_PACKET_SIZE => set_once(
                &mut p.maximum_packet_size,
                nonzero(r.u32()?, "maximum packet size 0")?,
            ),
            WILDCARD_SUBSCRIPTION_AVAILABLE => set_once(
                &mut p.wildcard_subscription_available,
                zero_or_one(r.u8()?, "wildcard subscription available not 0 or 1")?,
            ),
            SUBSCRIPTION_IDENTIFIER_AVAILABLE => set_once(
                &mut p.subscription_identifier_available,
                zero_or_one(r.u8()?, "subscription identifier available not 0 or 1")?,
            ),
            SHARED_SUBSCRIPTION_AVAILABLE => set_once(
                &mut p.shared_subscription_available,
                zero_or_one(r.u8()?, "shared subscription available not 0 or 1")?,
            ),
            _ => return Err(DecodeError::MalformedPacket("unknown property identifier")),
        }
    }
    Ok(p)
}
