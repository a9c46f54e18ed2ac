//! Protocol errors with their wire meaning decided once, in the type.

use liebre_amqp_codec::CodecError;
use liebre_core::CoreError;

/// Whether an error closes a channel or the whole connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `channel.close`: the connection and its other channels go on.
    Channel,
    /// `connection.close`: everything goes.
    Connection,
}

/// An AMQP error as it goes on the wire: reply code, text, the method that
/// caused it, and its scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpError {
    /// Reply code (403, 404, 501...).
    pub code: u16,
    /// Reply text, RabbitMQ style: `NOT_FOUND - no queue 'x' in vhost '/'`.
    pub text: String,
    /// Class of the method that failed (0 if none).
    pub class_id: u16,
    /// Method id of the method that failed (0 if none).
    pub method_id: u16,
    /// What it closes.
    pub scope: Scope,
}

impl AmqpError {
    /// A channel-scoped error.
    pub fn channel(code: u16, text: impl Into<String>) -> Self {
        Self {
            code,
            text: text.into(),
            class_id: 0,
            method_id: 0,
            scope: Scope::Channel,
        }
    }

    /// A connection-scoped error.
    pub fn connection(code: u16, text: impl Into<String>) -> Self {
        Self {
            code,
            text: text.into(),
            class_id: 0,
            method_id: 0,
            scope: Scope::Connection,
        }
    }

    /// Attach the failing method, unless one is already set.
    pub fn at(mut self, class_id: u16, method_id: u16) -> Self {
        if self.class_id == 0 && self.method_id == 0 {
            self.class_id = class_id;
            self.method_id = method_id;
        }
        self
    }

    /// 403 ACCESS_REFUSED for a resource the user may not touch.
    pub fn access_refused(kind: &str, name: &str, vhost: &str, user: &str) -> Self {
        Self::channel(
            403,
            format!("ACCESS_REFUSED - access to {kind} '{name}' in vhost '{vhost}' refused for user '{user}'"),
        )
    }

    /// 406 PRECONDITION_FAILED.
    pub fn precondition(text: impl std::fmt::Display) -> Self {
        Self::channel(406, format!("PRECONDITION_FAILED - {text}"))
    }

    /// 504 CHANNEL_ERROR.
    pub fn channel_error(text: impl std::fmt::Display) -> Self {
        Self::connection(504, format!("CHANNEL_ERROR - {text}"))
    }

    /// 505 UNEXPECTED_FRAME.
    pub fn unexpected_frame(text: impl std::fmt::Display) -> Self {
        Self::connection(505, format!("UNEXPECTED_FRAME - {text}"))
    }

    /// 503 COMMAND_INVALID.
    pub fn command_invalid(text: impl std::fmt::Display) -> Self {
        Self::connection(503, format!("COMMAND_INVALID - {text}"))
    }

    /// 540 NOT_IMPLEMENTED.
    pub fn not_implemented(text: impl std::fmt::Display) -> Self {
        Self::connection(540, format!("NOT_IMPLEMENTED - {text}"))
    }
}

impl From<CoreError> for AmqpError {
    fn from(e: CoreError) -> Self {
        let code = e.reply_code();
        let scope = match code {
            503 | 530 | 540 => Scope::Connection,
            _ => Scope::Channel,
        };
        Self {
            code,
            text: e.to_string(),
            class_id: 0,
            method_id: 0,
            scope,
        }
    }
}

impl From<CodecError> for AmqpError {
    fn from(e: CodecError) -> Self {
        // RabbitMQ answers a method frame it cannot decode (truncated
        // arguments, bad strings, bad field tables) with 501 FRAME_ERROR,
        // not 502; clients and tests expect its code.
        let code = match e {
            CodecError::Syntax { .. } => 501,
            _ => e.reply_code(),
        };
        let name = match code {
            501 => "FRAME_ERROR",
            502 => "SYNTAX_ERROR",
            540 => "NOT_IMPLEMENTED",
            _ => "INTERNAL_ERROR",
        };
        let (class_id, method_id) = match &e {
            CodecError::Syntax {
                class_id,
                method_id,
                ..
            }
            | CodecError::UnknownMethod {
                class_id,
                method_id,
            } => (*class_id, *method_id),
            _ => (0, 0),
        };
        Self {
            code,
            text: format!("{name} - {e}"),
            class_id,
            method_id,
            scope: Scope::Connection,
        }
    }
}
