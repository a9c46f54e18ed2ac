//! End-to-end tests: a real server on an ephemeral loopback port per test,
//! driven by lapin (and by a raw TCP client for protocol abuse).
//!
//! Run with `cargo test -p liebre-server --test it`.

mod raw;
mod support;

mod alarms;
mod basic;
mod confirms;
mod durable;
mod errors;
mod extras;
mod frames;
mod heartbeat;
mod queues;
mod routing;
mod shutdown;
mod store_failure;
