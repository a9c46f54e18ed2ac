//! The one error type of the codec.

/// Everything that can go wrong while decoding or encoding AMQP 0-9-1.
///
/// Decoding errors are the peer's fault and map to the reply code the
/// connection must be closed with ([`CodecError::reply_code`]); encoding
/// errors ([`CodecError::TooLong`]) are the broker's own.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The 8 bytes a connection starts with are not `AMQP 0 0 9 1`.
    #[error("bad protocol header, expected AMQP 0-9-1")]
    BadProtocolHeader,
    /// A frame declared a size (payload plus 8 bytes of framing) above the
    /// negotiated `frame_max`.
    #[error("frame size {size} exceeds frame_max {max}")]
    FrameTooLarge {
        /// Total size of the frame as declared: payload plus header and frame-end.
        size: u64,
        /// The limit it was checked against.
        max: u32,
    },
    /// The octet after the payload is not `0xCE`.
    #[error("frame end octet is not 0xCE")]
    BadFrameEnd,
    /// The frame type octet is none of method (1), header (2), body (3), heartbeat (8).
    #[error("unknown frame type {0}")]
    UnknownFrameType(u8),
    /// A frame whose payload cannot be split into its parts: a method frame
    /// shorter than its class and method ids, a content header shorter than
    /// its fixed fields, a heartbeat that carries a payload.
    #[error("malformed frame: {reason}")]
    MalformedFrame {
        /// What was wrong.
        reason: &'static str,
    },
    /// A method frame names a class/method pair that AMQP 0-9-1 (with
    /// RabbitMQ's extensions) does not define.
    #[error("unknown method {class_id}.{method_id}")]
    UnknownMethod {
        /// Class id as received.
        class_id: u16,
        /// Method id as received.
        method_id: u16,
    },
    /// Arguments or properties that are truncated, followed by extra bytes,
    /// hold invalid UTF-8, an unknown field-value tag, tables nested too deeply...
    #[error("malformed arguments for method {class_id}.{method_id}: {reason}")]
    Syntax {
        /// Class id of the method or content header being decoded.
        class_id: u16,
        /// Method id being decoded; 0 for content headers and bare field tables.
        method_id: u16,
        /// What was wrong.
        reason: &'static str,
    },
    /// A value cannot be encoded: a shortstr over 255 bytes, a longstr, table
    /// or frame payload over 4 GiB, a field value nested deeper than
    /// [`MAX_NESTING_DEPTH`](crate::MAX_NESTING_DEPTH).
    #[error("value too long to encode")]
    TooLong,
}

impl CodecError {
    /// AMQP reply code the connection must be closed with: frame errors give
    /// 501 (FRAME_ERROR), [`Syntax`](Self::Syntax) 502 (SYNTAX_ERROR),
    /// [`UnknownMethod`](Self::UnknownMethod) 540 (NOT_IMPLEMENTED) and
    /// [`TooLong`](Self::TooLong) 541 (INTERNAL_ERROR).
    pub fn reply_code(&self) -> u16 {
        match self {
            Self::BadProtocolHeader
            | Self::FrameTooLarge { .. }
            | Self::BadFrameEnd
            | Self::UnknownFrameType(_)
            | Self::MalformedFrame { .. } => 501,
            Self::Syntax { .. } => 502,
            Self::UnknownMethod { .. } => 540,
            Self::TooLong => 541,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_codes() {
        assert_eq!(
            CodecError::FrameTooLarge { size: 1, max: 0 }.reply_code(),
            501
        );
        assert_eq!(CodecError::BadFrameEnd.reply_code(), 501);
        assert_eq!(CodecError::UnknownFrameType(9).reply_code(), 501);
        assert_eq!(CodecError::MalformedFrame { reason: "x" }.reply_code(), 501);
        let syntax = CodecError::Syntax {
            class_id: 60,
            method_id: 40,
            reason: "truncated",
        };
        assert_eq!(syntax.reply_code(), 502);
        assert_eq!(
            syntax.to_string(),
            "malformed arguments for method 60.40: truncated"
        );
        assert_eq!(
            CodecError::UnknownMethod {
                class_id: 1,
                method_id: 2
            }
            .reply_code(),
            540
        );
        assert_eq!(CodecError::TooLong.reply_code(), 541);
    }
}
