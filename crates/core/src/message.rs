//! Messages as the core holds them, deliveries, and the injected clock.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use liebre_amqp_codec::{BasicProperties, ShortStr};
use parking_lot::Mutex;

use crate::queue::Queue;

/// A published message. Routed to many queues, it is shared behind one
/// `Arc`: the body is never copied per queue or per delivery.
#[derive(Debug, Clone)]
pub struct Message {
    /// Exchange it was published to.
    pub exchange: ShortStr,
    /// Routing key it was published with.
    pub routing_key: ShortStr,
    /// Decoded properties, for routing (headers), expiry and persistence.
    /// Boxed (see `ContentHeader::properties`): taken over from the
    /// decoded header without a copy.
    pub properties: Box<BasicProperties>,
    /// The properties exactly as they travel on the wire (flags + list), so
    /// a delivery writes them out without re-encoding.
    pub raw_properties: Bytes,
    /// The body, a slice of the publisher's read buffer.
    pub body: Bytes,
    /// The connection that published it (0 if none): MQTT's No Local
    /// option compares it with the subscriber's connection.
    pub origin: u64,
}

impl Message {
    /// A message from properties that were received in `raw_properties`.
    pub fn new(
        exchange: ShortStr,
        routing_key: ShortStr,
        properties: impl Into<Box<BasicProperties>>,
        raw_properties: Bytes,
        body: Bytes,
    ) -> Self {
        Self {
            exchange,
            routing_key,
            properties: properties.into(),
            raw_properties,
            body,
            origin: 0,
        }
    }

    /// A message built inside the broker: its properties are encoded once here.
    pub fn with_properties(
        exchange: ShortStr,
        routing_key: ShortStr,
        properties: impl Into<Box<BasicProperties>>,
        body: Bytes,
    ) -> Self {
        let properties = properties.into();
        let raw_properties = encode_properties(&properties);
        Self::new(exchange, routing_key, properties, raw_properties, body)
    }

    /// Whether it was published with delivery mode 2.
    pub fn is_persistent(&self) -> bool {
        self.properties.delivery_mode == Some(2)
    }

    /// The per-message TTL from the `expiration` property, if it is a valid
    /// number of milliseconds (validated when published).
    pub fn expiration(&self) -> Option<Duration> {
        parse_expiration(self.properties.expiration.as_deref()?)
    }
}

/// Parse an `expiration` property: a non-negative integer of milliseconds
/// written as a string, as RabbitMQ requires.
pub fn parse_expiration(s: &str) -> Option<Duration> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u64>().ok().map(Duration::from_millis)
}

/// Encode properties to their wire form (flags + list).
pub fn encode_properties(properties: &BasicProperties) -> Bytes {
    let mut buf = BytesMut::new();
    // Properties built by the broker only hold short strings it validated;
    // should encoding still fail, the message goes out without properties
    // rather than taking the broker down.
    if properties.encode(&mut buf).is_err() {
        buf.clear();
        let _ = BasicProperties::default().encode(&mut buf);
    }
    buf.freeze()
}

/// A message handed to a consumer.
#[derive(Clone)]
pub struct Delivery {
    /// The queue it comes from (for acks, rejects and requeues).
    pub queue: Arc<Queue>,
    /// The consumer tag it is delivered under.
    pub consumer_tag: ShortStr,
    /// The message.
    pub message: Arc<Message>,
    /// Its sequence number within the queue.
    pub seq: u64,
    /// Whether it was delivered before.
    pub redelivered: bool,
    /// When it expires (kept if it is requeued).
    pub expires_at: Option<Instant>,
    /// Whether the consumer acknowledges it (false for no-ack consumers).
    pub needs_ack: bool,
    /// Its id in the message store, if stored for this queue and
    /// acknowledgement is expected.
    pub stored: Option<u64>,
}

impl Delivery {
    /// Settle it as acknowledged (or otherwise done with, for good).
    pub fn ack(&self) {
        self.queue.ack(1, self.stored);
    }
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("queue", &self.queue.name())
            .field("consumer_tag", &self.consumer_tag)
            .field("seq", &self.seq)
            .field("redelivered", &self.redelivered)
            .finish()
    }
}

/// Where time comes from. Injected so expiry can be tested without sleeping.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current instant.
    fn now(&self) -> Instant;
}

/// The real clock.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that only moves when told to.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<Instant>,
}

impl Default for ManualClock {
    fn default() -> Self {
        Self {
            now: Mutex::new(Instant::now()),
        }
    }
}

impl ManualClock {
    /// Move time forward.
    pub fn advance(&self, by: Duration) {
        *self.now.lock() += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        *self.now.lock()
    }
}
