//! The packet types: one struct per control packet that has fields, and
//! [`Packet`] over all of them.

use bytes::Bytes;

use crate::properties::Properties;
use crate::Str;

/// The protocol version a connection speaks, fixed by its CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// MQTT 3.1: protocol name `MQIsdp`, level 3.
    V31,
    /// MQTT 3.1.1: protocol name `MQTT`, level 4.
    V311,
    /// MQTT 5.0: protocol name `MQTT`, level 5.
    V5,
}

impl Protocol {
    /// The protocol level byte of CONNECT.
    pub fn level(self) -> u8 {
        match self {
            Self::V31 => 3,
            Self::V311 => 4,
            Self::V5 => 5,
        }
    }

    /// True for MQTT 5.0, where packets carry properties and reason codes.
    pub fn is_v5(self) -> bool {
        self == Self::V5
    }

    /// The protocol name CONNECT carries: `MQIsdp` for 3.1, `MQTT` otherwise.
    pub fn name(self) -> &'static str {
        match self {
            Self::V31 => "MQIsdp",
            Self::V311 | Self::V5 => "MQTT",
        }
    }
}

/// Quality of service of a message or subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum QoS {
    /// 0: fire and forget.
    #[default]
    AtMostOnce = 0,
    /// 1: acknowledged with PUBACK, may be duplicated.
    AtLeastOnce = 1,
    /// 2: four-way handshake, delivered once.
    ExactlyOnce = 2,
}

impl QoS {
    /// The QoS with this number; `None` for 3 and above.
    pub fn from_u8(v: u8) -> Option<QoS> {
        match v {
            0 => Some(Self::AtMostOnce),
            1 => Some(Self::AtLeastOnce),
            2 => Some(Self::ExactlyOnce),
            _ => None,
        }
    }
}

/// The will message of a CONNECT.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LastWill {
    /// Topic name to publish the will on; never empty, no wildcards.
    pub topic: Str,
    /// The will payload.
    pub payload: Bytes,
    /// QoS to publish it with.
    pub qos: QoS,
    /// Whether to publish it retained.
    pub retain: bool,
    /// Will properties (5.0): will delay, expiry, content type...
    pub properties: Properties,
}

/// CONNECT: the first packet a client sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// Protocol version, from the protocol name and level.
    pub protocol: Protocol,
    /// Clean session (3.x) or clean start (5.0).
    pub clean_start: bool,
    /// Keep alive in seconds; 0 disables it.
    pub keep_alive: u16,
    /// Client identifier; may be empty.
    pub client_id: Str,
    /// The will message, when the will flag is set.
    pub will: Option<LastWill>,
    /// User name, when the user name flag is set.
    pub username: Option<Str>,
    /// Password, when the password flag is set.
    pub password: Option<Bytes>,
    /// CONNECT properties (5.0).
    pub properties: Properties,
}

/// CONNACK: the server's answer to CONNECT.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnAck {
    /// Session present flag.
    pub session_present: bool,
    /// Return code (3.x, 0 to 5) or reason code (5.0).
    pub code: u8,
    /// CONNACK properties (5.0).
    pub properties: Properties,
}

/// PUBLISH: an application message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Publish {
    /// Redelivery flag; always false at QoS 0.
    pub dup: bool,
    /// Delivery QoS.
    pub qos: QoS,
    /// Retain flag.
    pub retain: bool,
    /// Topic name; may be empty in 5.0 when a topic alias is set.
    pub topic: Str,
    /// Packet identifier; 0 at QoS 0, non-zero otherwise.
    pub packet_id: u16,
    /// The payload: a zero-copy slice of the read buffer.
    pub payload: Bytes,
    /// PUBLISH properties (5.0).
    pub properties: Properties,
}

/// PUBACK, and with the same fields PUBREC, PUBREL and PUBCOMP.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PubAck {
    /// Packet identifier of the PUBLISH (or PUBREL) acknowledged.
    pub packet_id: u16,
    /// Reason code (5.0); 0 success. Not sent in 3.x.
    pub reason: u8,
    /// Reason string and user properties (5.0).
    pub properties: Properties,
}

/// PUBREC: same fields as [`PubAck`].
pub type PubRec = PubAck;
/// PUBREL: same fields as [`PubAck`].
pub type PubRel = PubAck;
/// PUBCOMP: same fields as [`PubAck`].
pub type PubComp = PubAck;

/// Options of one subscription in a SUBSCRIBE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SubscriptionOptions {
    /// Maximum QoS granted to messages of this subscription.
    pub qos: QoS,
    /// 5.0: do not deliver the client's own publications.
    pub no_local: bool,
    /// 5.0: keep the retain flag of forwarded messages.
    pub retain_as_published: bool,
    /// 5.0: 0 send retained messages on subscribe, 1 only for a new
    /// subscription, 2 never.
    pub retain_handling: u8,
}

/// SUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Subscribe {
    /// Packet identifier, non-zero.
    pub packet_id: u16,
    /// Topic filters and their options, at least one.
    pub filters: Vec<(Str, SubscriptionOptions)>,
    /// Subscription identifier and user properties (5.0).
    pub properties: Properties,
}

/// SUBACK.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SubAck {
    /// Packet identifier of the SUBSCRIBE.
    pub packet_id: u16,
    /// One return code (3.x: 0, 1, 2, 0x80) or reason code (5.0) per filter.
    pub codes: Vec<u8>,
    /// Reason string and user properties (5.0).
    pub properties: Properties,
}

/// UNSUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Unsubscribe {
    /// Packet identifier, non-zero.
    pub packet_id: u16,
    /// Topic filters, at least one.
    pub filters: Vec<Str>,
    /// User properties (5.0).
    pub properties: Properties,
}

/// UNSUBACK.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnsubAck {
    /// Packet identifier of the UNSUBSCRIBE.
    pub packet_id: u16,
    /// One reason code per filter (5.0); empty and not sent in 3.x.
    pub codes: Vec<u8>,
    /// Reason string and user properties (5.0).
    pub properties: Properties,
}

/// DISCONNECT.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Disconnect {
    /// Reason code (5.0); 0 normal disconnection. Not sent in 3.x.
    pub reason: u8,
    /// Session expiry, server reference, reason string, user properties (5.0).
    pub properties: Properties,
}

/// AUTH (5.0 only).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Auth {
    /// 0 success, 0x18 continue authentication, 0x19 re-authenticate.
    pub reason: u8,
    /// Authentication method and data, reason string, user properties.
    pub properties: Properties,
}

/// One MQTT control packet.
// CONNECT is large (two property sets), but packets are decoded one at a
// time and moved once; boxing would cost an allocation per PUBLISH.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// CONNECT, type 1.
    Connect(Connect),
    /// CONNACK, type 2.
    ConnAck(ConnAck),
    /// PUBLISH, type 3.
    Publish(Publish),
    /// PUBACK, type 4.
    PubAck(PubAck),
    /// PUBREC, type 5.
    PubRec(PubAck),
    /// PUBREL, type 6.
    PubRel(PubAck),
    /// PUBCOMP, type 7.
    PubComp(PubAck),
    /// SUBSCRIBE, type 8.
    Subscribe(Subscribe),
    /// SUBACK, type 9.
    SubAck(SubAck),
    /// UNSUBSCRIBE, type 10.
    Unsubscribe(Unsubscribe),
    /// UNSUBACK, type 11.
    UnsubAck(UnsubAck),
    /// PINGREQ, type 12.
    PingReq,
    /// PINGRESP, type 13.
    PingResp,
    /// DISCONNECT, type 14.
    Disconnect(Disconnect),
    /// AUTH, type 15 (5.0 only).
    Auth(Auth),
}

impl Packet {
    /// The packet type's name as the specification spells it, e.g. `"PUBLISH"`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Connect(_) => "CONNECT",
            Self::ConnAck(_) => "CONNACK",
            Self::Publish(_) => "PUBLISH",
            Self::PubAck(_) => "PUBACK",
            Self::PubRec(_) => "PUBREC",
            Self::PubRel(_) => "PUBREL",
            Self::PubComp(_) => "PUBCOMP",
            Self::Subscribe(_) => "SUBSCRIBE",
            Self::SubAck(_) => "SUBACK",
            Self::Unsubscribe(_) => "UNSUBSCRIBE",
            Self::UnsubAck(_) => "UNSUBACK",
            Self::PingReq => "PINGREQ",
            Self::PingResp => "PINGRESP",
            Self::Disconnect(_) => "DISCONNECT",
            Self::Auth(_) => "AUTH",
        }
    }

    /// The packet type number, 1 (CONNECT) to 15 (AUTH).
    pub fn packet_type(&self) -> u8 {
        match self {
            Self::Connect(_) => 1,
            Self::ConnAck(_) => 2,
            Self::Publish(_) => 3,
            Self::PubAck(_) => 4,
            Self::PubRec(_) => 5,
            Self::PubRel(_) => 6,
            Self::PubComp(_) => 7,
            Self::Subscribe(_) => 8,
            Self::SubAck(_) => 9,
            Self::Unsubscribe(_) => 10,
            Self::UnsubAck(_) => 11,
            Self::PingReq => 12,
            Self::PingResp => 13,
            Self::Disconnect(_) => 14,
            Self::Auth(_) => 15,
        }
    }
}
