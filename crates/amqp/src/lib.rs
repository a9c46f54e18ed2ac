//! AMQP 0-9-1 with RabbitMQ's semantics, as a sans-IO state machine over
//! the routing core.
//!
//! A [`Connection`] takes bytes and the current time in and gives bytes
//! out; it owns no socket and reads no clock. The server crate wraps it in
//! a short tokio task. Deliveries arrive from queues through
//! [`consumer::AmqpConsumer`] (the core's `ConsumerSink`) into a bounded
//! per-connection [`consumer::Outbox`], and the task is woken once per batch.
//!
//! # Layout
//! - [`connection`]: handshake, heartbeats, connection and channel methods.
//! - `channel`: per-channel state (content assembly, unacked, confirms, tx).
//! - [`consumer`]: consumer credit and the outbox.
//! - [`error`]: reply codes and their scope.

mod channel;
pub mod connection;
pub mod consumer;
pub mod error;

pub use connection::{AmqpConfig, Connection, Context};
pub use error::{AmqpError, Scope};
pub use liebre_core::Wake;
