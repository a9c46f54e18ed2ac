//! The protocol-agnostic routing core of Liebre.
//!
//! Vhosts hold exchanges and queues; exchanges route messages to queues
//! (directly or through other exchanges); queues hold ready messages and
//! hand them to consumers that have credit. Nothing here does I/O or reads
//! the system clock directly: time comes from an injected [`Clock`], and
//! deliveries leave through the [`ConsumerSink`] trait that each protocol
//! front end implements.
//!
//! # Layout
//! - [`alarms`]: memory and disk alarms, and connections blocked by them.
//! - [`flow`]: subscriber queues holding the publishers that feed them.
//! - [`broker`]: the vhost registry, the root handle.
//! - [`definitions`]: the seam where durable definitions leave the core.
//! - [`vhost`]: declarations, bindings, routing, dead-lettering.
//! - [`exchange`]: exchange types and their binding indexes.
//! - [`topic`]: the topic trie (AMQP topic exchanges, MQTT filters).
//! - [`queue`]: ready/unacked messages, consumers, TTL, length limits.
//! - [`message`]: the shared message, deliveries, clocks.
//! - [`metrics`]: broker-wide counters.
//! - [`outbox`]: a connection's bounded inbox of deliveries.
//! - [`persistence`]: the seam where persistent messages reach the store.
//! - [`retained`]: retained messages per topic (MQTT).

pub mod alarms;
pub mod broker;
pub mod definitions;
pub mod error;
pub mod exchange;
pub mod flow;
pub mod message;
pub mod metrics;
pub mod outbox;
pub mod persistence;
pub mod queue;
pub mod retained;
pub mod topic;
pub mod vhost;

pub use alarms::{Alarms, Resource, Throttle};
pub use broker::Broker;
pub use definitions::Definitions;
pub use error::{CoreError, Result};
pub use exchange::{Binding, Destination, Exchange, ExchangeKind, ExchangeOptions};
pub use flow::{Backpressure, FlowLimits};
pub use message::{Clock, Delivery, ManualClock, Message, SystemClock};
pub use metrics::Metrics;
pub use outbox::{Outbox, Wake};
pub use persistence::{MessageStore, StoreRefused, Stored};
pub use queue::{
    Consumer, ConsumerSink, Got, Queue, QueueArgs, QueueOptions, QueueStats, Returned,
};
pub use vhost::{Congested, PublishOutcome, VHost};

/// The hash map of the publish path: names of exchanges and queues,
/// direct bindings, a connection's channels. foldhash instead of the
/// standard SipHash: several lookups per message made hashing a visible
/// share of the publish path's profile, and foldhash keeps a random
/// per-process seed, so keys a client picks do not make it predictable.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
