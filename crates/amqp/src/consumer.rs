//! The bridge from queues to one AMQP connection: the credit each
//! consumer has, and the events it leaves in the connection's
//! [`liebre_core::Outbox`].

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Weak};

use liebre_amqp_codec::ShortStr;
use liebre_core::{ConsumerSink, Delivery, Queue};

/// Something for the connection task to write.
#[derive(Debug)]
pub enum OutEvent {
    /// A message for a consumer on a channel.
    Deliver {
        /// Channel number.
        channel: u16,
        /// The delivery.
        delivery: Delivery,
        /// The consumer, to release its credit on ack.
        consumer: Arc<AmqpConsumer>,
    },
    /// The server cancelled a consumer (its queue was deleted).
    Cancel {
        /// Channel number.
        channel: u16,
        /// The consumer's tag.
        consumer_tag: ShortStr,
    },
}

/// An AMQP connection's outbox.
pub type Outbox = liebre_core::Outbox<OutEvent>;

/// Credit shared by the consumers of one channel: the `global` prefetch
/// of `basic.qos` and the channel's flow state.
#[derive(Debug, Default)]
pub struct ChannelCredit {
    /// Channel-wide prefetch (0: none).
    pub prefetch: AtomicU32,
    /// Unacknowledged deliveries on the channel (from consumers).
    pub in_flight: AtomicU32,
    /// `channel.flow` active.
    pub paused: AtomicBool,
}

/// One AMQP consumer, as seen by its queue.
pub struct AmqpConsumer {
    /// Channel number.
    pub channel: u16,
    /// Consumer tag.
    pub tag: ShortStr,
    /// Broker-wide consumer id.
    pub id: u64,
    /// The queue it consumes from.
    pub queue: Arc<Queue>,
    /// No acknowledgements.
    pub no_ack: bool,
    /// Per-consumer prefetch (0: none).
    pub prefetch: u32,
    /// Unacknowledged deliveries to this consumer.
    pub in_flight: AtomicU32,
    /// It was refused credit; kick its queue when credit returns.
    pub starved: AtomicBool,
    /// The client asked for `basic.cancel` notifications.
    pub cancel_notify: bool,
    /// Shared channel credit.
    pub credit: Arc<ChannelCredit>,
    /// The connection's outbox.
    pub outbox: Arc<Outbox>,
    me: Weak<AmqpConsumer>,
}

impl std::fmt::Debug for AmqpConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpConsumer")
            .field("channel", &self.channel)
            .field("tag", &self.tag)
            .finish()
    }
}

/// How to build an [`AmqpConsumer`].
#[derive(Debug)]
pub struct ConsumerSpec {
    /// Channel number.
    pub channel: u16,
    /// Consumer tag.
    pub tag: ShortStr,
    /// Broker-wide consumer id.
    pub id: u64,
    /// No acknowledgements.
    pub no_ack: bool,
    /// Per-consumer prefetch.
    pub prefetch: u32,
    /// Wants `basic.cancel` from the server.
    pub cancel_notify: bool,
}

impl AmqpConsumer {
    /// Build a consumer of `queue`.
    pub fn new(
        spec: ConsumerSpec,
        queue: Arc<Queue>,
        credit: Arc<ChannelCredit>,
        outbox: Arc<Outbox>,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            channel: spec.channel,
            tag: spec.tag,
            id: spec.id,
            queue,
            no_ack: spec.no_ack,
            prefetch: spec.prefetch,
            in_flight: AtomicU32::new(0),
            starved: AtomicBool::new(false),
            cancel_notify: spec.cancel_notify,
            credit,
            outbox,
            me: me.clone(),
        })
    }

    /// Give back the credit of `n` settled deliveries; kick the queue if
    /// the consumer had been refused.
    pub fn release(&self, n: u32) {
        if n == 0 || self.no_ack {
            return;
        }
        let _ = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some(v.saturating_sub(n))
            });
        let _ = self
            .credit
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some(v.saturating_sub(n))
            });
    }

    /// If this consumer was refused credit, clear that and retry its queue.
    pub fn kick_if_starved(&self) {
        if self.starved.swap(false, Ordering::AcqRel) {
            self.queue.kick();
        }
    }
}

impl ConsumerSink for AmqpConsumer {
    fn try_reserve(&self) -> bool {
        let refuse = || {
            self.starved.store(true, Ordering::Release);
            false
        };
        if self.credit.paused.load(Ordering::Acquire) || self.outbox.is_full() {
            return refuse();
        }
        if self.no_ack {
            return true;
        }
        if self.prefetch > 0 && self.in_flight.fetch_add(1, Ordering::AcqRel) >= self.prefetch {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return refuse();
        }
        if self.prefetch == 0 {
            self.in_flight.fetch_add(1, Ordering::AcqRel);
        }
        let global = self.credit.prefetch.load(Ordering::Acquire);
        let before = self.credit.in_flight.fetch_add(1, Ordering::AcqRel);
        if global > 0 && before >= global {
            self.credit.in_flight.fetch_sub(1, Ordering::AcqRel);
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return refuse();
        }
        true
    }

    fn deliver(&self, delivery: Delivery) {
        // The sink holds itself only through the queue's consumer list; the
        // event carries an Arc so the channel can release credit on ack.
        let Some(me) = self.me.upgrade() else {
            return;
        };
        let size = delivery.message.body.len();
        self.outbox.push(
            OutEvent::Deliver {
                channel: self.channel,
                delivery,
                consumer: me,
            },
            size,
        );
    }

    fn cancelled(&self, consumer_tag: &ShortStr) {
        self.outbox.push(
            OutEvent::Cancel {
                channel: self.channel,
                consumer_tag: consumer_tag.clone(),
            },
            0,
        );
    }
}
