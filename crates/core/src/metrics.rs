//! Broker-wide counters: what `$SYS/broker/...`, the management API and
//! Prometheus report. Plain relaxed atomics: a counter bump is the only
//! cost on the message path.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters for the whole broker.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Messages published into the broker (any protocol).
    pub messages_received: AtomicU64,
    /// Messages written to clients (deliveries, `basic.get`, MQTT PUBLISH).
    pub messages_sent: AtomicU64,
    /// Bytes read from client sockets.
    pub bytes_received: AtomicU64,
    /// Bytes written to client sockets.
    pub bytes_sent: AtomicU64,
    /// Open AMQP connections.
    pub amqp_connections: AtomicU64,
    /// Open MQTT connections (TCP and WebSocket).
    pub mqtt_connections: AtomicU64,
    /// Connections ever accepted.
    pub connections_total: AtomicU64,
    /// Messages published that no queue took.
    pub messages_unroutable: AtomicU64,
    /// Messages dropped for a subscriber: its queue was full while it was
    /// offline or slow, or the message was larger than it accepts
    /// (Mosquitto's `$SYS/broker/publish/messages/dropped`).
    pub messages_dropped: AtomicU64,
    /// Resource alarms on (memory, disk): 0, 1 or 2.
    pub resource_alarms: AtomicU64,
    /// Connections that stopped being read because they published while
    /// an alarm was on.
    pub blocked_connections: AtomicU64,
}

impl Metrics {
    /// Add `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Subtract one from a gauge.
    pub fn dec(counter: &AtomicU64) {
        let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some(v.saturating_sub(1))
        });
    }

    /// Read a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
