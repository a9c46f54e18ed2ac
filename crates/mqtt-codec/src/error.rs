//! Decoding and encoding errors.

/// Why a packet could not be decoded.
///
/// Every variant is the peer's fault and ends the connection. For MQTT 5.0
/// [`DecodeError::reason_code`] gives the reason code to send in the
/// DISCONNECT (or CONNACK) before closing; MQTT 3.x connections are simply
/// closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes cannot be parsed as the packet they claim to be: a
    /// remaining length or variable byte integer longer than 4 bytes (or not
    /// minimal, in 5.0), reserved or flag bits set wrongly, truncated
    /// fields, trailing bytes, invalid UTF-8 or U+0000 in a string, QoS 3, a
    /// zero packet identifier, an unknown property, a wildcard in a topic
    /// name or a misplaced one in a topic filter. Reason code 0x81.
    #[error("malformed packet: {0}")]
    MalformedPacket(&'static str),
    /// The packet parses but breaks a rule of the protocol: a first packet
    /// that is not CONNECT, AUTH outside 5.0, a property not allowed in
    /// this packet or repeated, a property value out of range, a SUBSCRIBE
    /// or UNSUBSCRIBE without topic filters, an unknown reason code.
    /// Reason code 0x82.
    #[error("protocol error: {0}")]
    ProtocolError(&'static str),
    /// A CONNECT names a protocol or protocol level this codec does not
    /// speak. The caller answers with CONNACK return code 0x01 (3.1.1) or
    /// reason code 0x84 (5.0) and closes. Reason code 0x84.
    #[error("unsupported protocol level {level}")]
    UnsupportedProtocol {
        /// The protocol level byte as received (0 when the CONNECT ended before it).
        level: u8,
    },
    /// A PUBLISH carries Topic Alias 0, which is never valid (5.0
    /// §3.3.2.3.4). Reason code 0x94 Topic Alias invalid.
    #[error("topic alias 0 is not valid")]
    TopicAliasInvalid,
    /// The fixed header declares a packet larger than the maximum the
    /// caller accepts. Detected from the fixed header alone, before the
    /// rest of the packet is buffered. Reason code 0x95.
    #[error("packet size {size} exceeds the maximum {max}")]
    PacketTooLarge {
        /// Whole packet size as declared: fixed header plus remaining length.
        size: u64,
        /// The limit it was checked against.
        max: u32,
    },
}

impl DecodeError {
    /// The MQTT 5.0 reason code for this error: 0x81 Malformed Packet,
    /// 0x82 Protocol Error, 0x84 Unsupported Protocol Version or 0x95
    /// Packet Too Large.
    pub fn reason_code(&self) -> u8 {
        match self {
            Self::MalformedPacket(_) => 0x81,
            Self::ProtocolError(_) => 0x82,
            Self::UnsupportedProtocol { .. } => 0x84,
            Self::TopicAliasInvalid => 0x94,
            Self::PacketTooLarge { .. } => 0x95,
        }
    }
}

/// Why a packet could not be encoded. These are the broker's own bugs or
/// limits, never the peer's; nothing is appended to the output on error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The remaining length would exceed 268,435,455 bytes, the most a
    /// variable byte integer holds (or a subscription identifier does).
    #[error("packet too large to encode")]
    TooLarge,
    /// A string or binary field is longer than 65,535 bytes.
    #[error("string or binary field longer than 65535 bytes")]
    StringTooLong,
    /// The packet does not exist in the protocol asked for: AUTH before 5.0.
    #[error("packet type not defined in this protocol version")]
    NotInProtocol,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_codes() {
        assert_eq!(DecodeError::MalformedPacket("x").reason_code(), 0x81);
        assert_eq!(DecodeError::ProtocolError("x").reason_code(), 0x82);
        assert_eq!(
            DecodeError::UnsupportedProtocol { level: 9 }.reason_code(),
            0x84
        );
        assert_eq!(
            DecodeError::PacketTooLarge { size: 10, max: 5 }.reason_code(),
            0x95
        );
        assert_eq!(
            DecodeError::PacketTooLarge { size: 10, max: 5 }.to_string(),
            "packet size 10 exceeds the maximum 5"
        );
    }
}
