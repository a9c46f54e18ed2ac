//! Errors of the routing core, each carrying the AMQP reply code it maps to.
//!
//! The core is protocol-agnostic, but RabbitMQ's reply codes are the most
//! precise vocabulary there is for these failures, so every error names
//! one; the MQTT side maps them to its own reason codes.

/// A failed core operation.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CoreError {
    /// 404 NOT_FOUND: the named entity does not exist.
    #[error("NOT_FOUND - no {kind} '{name}' in vhost '{vhost}'")]
    NotFound {
        /// "queue" or "exchange".
        kind: &'static str,
        /// The entity's name.
        name: String,
        /// The vhost searched.
        vhost: String,
    },
    /// 405 RESOURCE_LOCKED: an exclusive queue owned by another connection.
    #[error("RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{name}' in vhost '{vhost}'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.")]
    Locked {
        /// The queue's name.
        name: String,
        /// Its vhost.
        vhost: String,
    },
    /// 406 PRECONDITION_FAILED, with RabbitMQ-style text.
    #[error("PRECONDITION_FAILED - {0}")]
    Precondition(String),
    /// 403 ACCESS_REFUSED, with RabbitMQ-style text.
    #[error("ACCESS_REFUSED - {0}")]
    AccessRefused(String),
    /// 530 NOT_ALLOWED: e.g. a vhost that does not exist.
    #[error("NOT_ALLOWED - {0}")]
    NotAllowed(String),
    /// 503 COMMAND_INVALID (a connection error): e.g. an unknown exchange type.
    #[error("COMMAND_INVALID - {0}")]
    CommandInvalid(String),
    /// 540 NOT_IMPLEMENTED: a feature Liebre does not have (yet).
    #[error("NOT_IMPLEMENTED - {0}")]
    NotImplemented(String),
}

impl CoreError {
    /// The AMQP reply code.
    pub fn reply_code(&self) -> u16 {
        match self {
            Self::NotFound { .. } => 404,
            Self::Locked { .. } => 405,
            Self::Precondition(_) => 406,
            Self::AccessRefused(_) => 403,
            Self::NotAllowed(_) => 530,
            Self::CommandInvalid(_) => 503,
            Self::NotImplemented(_) => 540,
        }
    }

    /// Shorthand for a missing queue.
    pub fn no_queue(vhost: &str, name: &str) -> Self {
        Self::NotFound {
            kind: "queue",
            name: name.to_owned(),
            vhost: vhost.to_owned(),
        }
    }

    /// Shorthand for a missing exchange.
    pub fn no_exchange(vhost: &str, name: &str) -> Self {
        Self::NotFound {
            kind: "exchange",
            name: name.to_owned(),
            vhost: vhost.to_owned(),
        }
    }
}

/// Result alias for the core.
pub type Result<T, E = CoreError> = std::result::Result<T, E>;
