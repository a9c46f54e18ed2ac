//! End-to-end MQTT tests: a real server on ephemeral loopback ports per
//! test, driven by rumqttc (3.1.1 and 5.0, TCP and WebSocket), by lapin for
//! the AMQP side, and by a raw TCP client for protocol abuse.
//!
//! Run with `cargo test -p liebre-server --test mqtt`.

mod support;

mod alarms;
mod common;
mod cross;
mod flow;
mod raw;
mod sys;
mod v5;
mod websocket;
