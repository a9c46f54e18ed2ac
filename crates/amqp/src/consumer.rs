//! The bridge from queues to one AMQP connection: a bounded outbox of
//! deliveries and the credit each consumer has.
//!
//! Queues call [`ConsumerSink`] from whichever task is running them (a
//! publisher's, or this connection's own on an ack). A delivery is pushed
//! into the connection's [`Outbox`] and the connection task is woken once;
//! the task drains the outbox, assigns delivery tags and writes everything
//! in one go. No message costs a task hop of its own.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use liebre_amqp_codec::ShortStr;
use liebre_core::{ConsumerSink, Delivery, Queue};
use parking_lot::Mutex;

/// Wakes the task that owns a connection. The server implements it over a
/// tokio `Notify`; tests can count calls.
pub trait Wake: Send + Sync {
    /// Make the connection task run soon.
    fn wake(&self);
}

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

/// A connection's pending deliveries. Bounded: a consumer without credit
/// limits (no-ack, or prefetch 0) stops receiving when the outbox holds
/// `max_len` deliveries or `max_bytes` of bodies, and is kicked again
/// once the connection has written them.
pub struct Outbox {
    events: Mutex<VecDeque<OutEvent>>,
    len: AtomicUsize,
    bytes: AtomicUsize,
    max_len: usize,
    max_bytes: usize,
    waker: Arc<dyn Wake>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").field("len", &self.len).finish()
    }
}

impl Outbox {
    /// An empty outbox waking `waker`.
    pub fn new(waker: Arc<dyn Wake>, max_len: usize, max_bytes: usize) -> Self {
        Self {
            events: Mutex::new(VecDeque::new()),
            len: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            max_len,
            max_bytes,
            waker,
        }
    }

    fn is_full(&self) -> bool {
        self.len.load(Ordering::Relaxed) >= self.max_len
            || self.bytes.load(Ordering::Relaxed) >= self.max_bytes
    }

    /// Whether anything is waiting (no lock taken).
    pub fn is_empty(&self) -> bool {
        self.len.load(Ordering::Acquire) == 0
    }

    fn push(&self, event: OutEvent) {
        let size = match &event {
            OutEvent::Deliver { delivery, .. } => delivery.message.body.len(),
            OutEvent::Cancel { .. } => 0,
        };
        let was_empty = {
            let mut ev = self.events.lock();
            ev.push_back(event);
            ev.len() == 1
        };
        self.bytes.fetch_add(size, Ordering::Relaxed);
        self.len.fetch_add(1, Ordering::Release);
        // One wake-up per batch: the task drains everything when it runs.
        if was_empty {
            self.waker.wake();
        }
    }

    /// Take everything queued so far.
    pub fn drain(&self) -> VecDeque<OutEvent> {
        let taken = std::mem::take(&mut *self.events.lock());
        self.len.fetch_sub(taken.len(), Ordering::Release);
        let bytes: usize = taken
            .iter()
            .map(|e| match e {
                OutEvent::Deliver { delivery, .. } => delivery.message.body.len(),
                OutEvent::Cancel { .. } => 0,
            })
            .sum();
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
        taken
    }
}

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
        self.outbox.push(OutEvent::Deliver {
            channel: self.channel,
            delivery,
            consumer: me,
        });
    }

    fn cancelled(&self, consumer_tag: &ShortStr) {
        self.outbox.push(OutEvent::Cancel {
            channel: self.channel,
            consumer_tag: consumer_tag.clone(),
        });
    }
}
