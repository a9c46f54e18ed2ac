//! MQTT 3.1, 3.1.1 and 5.0 on the routing core, as sans-IO state machines.
//!
//! An [`MqttConnection`] takes bytes and time in and gives bytes out; the
//! server wraps it in a short task (TCP or WebSocket). MQTT meets AMQP the
//! way RabbitMQ's MQTT plugin has it: a PUBLISH goes to exchange
//! `amq.topic` with the topic as routing key (`/` and `.` swapped), and a
//! session is a queue bound to `amq.topic` with each subscription's filter
//! (`+` as `*`). So an AMQP publisher reaches MQTT subscribers and back.
//!
//! # Layout
//! - [`connection`]: CONNECT, publish in and out, QoS 1/2 flows, keepalive,
//!   topic aliases, wills.
//! - [`session`]: sessions that outlive connections, takeover, expiry,
//!   the consumer credit (Receive Maximum).
//! - [`sys`]: the `$SYS/broker/...` topics.
//! - [`mapping`]: topics, filters and properties between MQTT and AMQP.

pub mod connection;
pub mod mapping;
pub mod session;
pub mod sys;

pub use connection::{MqttConfig, MqttConnection, MqttContext};
pub use session::{SessionSnapshot, SessionStore, Sessions};
