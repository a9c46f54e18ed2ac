//! Per-channel state: content assembly, consumers, unacknowledged
//! deliveries, confirms and transactions.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use liebre_amqp_codec::{BasicProperties, ShortStr};
use liebre_core::{Delivery, Queue, Returned};

use crate::consumer::{AmqpConsumer, ChannelCredit};

/// A publish whose content is still arriving.
#[derive(Debug)]
pub(crate) struct PendingPublish {
    pub exchange: ShortStr,
    pub routing_key: ShortStr,
    pub mandatory: bool,
    pub header: Option<(Box<BasicProperties>, Bytes, u64)>,
    pub body: BodyParts,
}

/// Body frames gathered so far: one frame stays a zero-copy slice.
#[derive(Debug, Default)]
pub(crate) enum BodyParts {
    #[default]
    Empty,
    One(Bytes),
    Many(BytesMut),
}

impl BodyParts {
    pub(crate) fn len(&self) -> usize {
        match self {
            Self::Empty => 0,
            Self::One(b) => b.len(),
            Self::Many(b) => b.len(),
        }
    }

    pub(crate) fn push(&mut self, chunk: Bytes) {
        *self = match std::mem::take(self) {
            Self::Empty => Self::One(chunk),
            Self::One(first) => {
                let mut m = BytesMut::with_capacity(first.len() + chunk.len());
                m.extend_from_slice(&first);
                m.extend_from_slice(&chunk);
                Self::Many(m)
            }
            Self::Many(mut m) => {
                m.extend_from_slice(&chunk);
                Self::Many(m)
            }
        }
    }

    pub(crate) fn into_bytes(self) -> Bytes {
        match self {
            Self::Empty => Bytes::new(),
            Self::One(b) => b,
            Self::Many(m) => m.freeze(),
        }
    }
}

/// A delivery awaiting acknowledgement.
#[derive(Debug)]
pub(crate) struct Unacked {
    pub tag: u64,
    pub delivery: Delivery,
    /// None for `basic.get`.
    pub consumer: Option<Arc<AmqpConsumer>>,
}

/// A published message held back by an open transaction.
#[derive(Debug)]
pub(crate) struct TxPublish {
    pub exchange: ShortStr,
    pub message: Arc<liebre_core::Message>,
    pub mandatory: bool,
}

/// An acknowledgement held back by an open transaction.
#[derive(Debug)]
pub(crate) enum TxSettle {
    Ack {
        tag: u64,
        multiple: bool,
    },
    Reject {
        tag: u64,
        multiple: bool,
        requeue: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Normal,
    Confirm,
    Tx,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChannelState {
    Open,
    /// We sent `channel.close` and wait for `close-ok`.
    Closing,
}

pub(crate) struct Channel {
    pub state: ChannelState,
    pub pending: Option<PendingPublish>,
    pub consumers: HashMap<ShortStr, Arc<AmqpConsumer>>,
    pub unacked: VecDeque<Unacked>,
    pub next_tag: u64,
    pub credit: Arc<ChannelCredit>,
    /// Prefetch for consumers created from now on (`basic.qos` global=false).
    pub consumer_prefetch: u32,
    pub mode: Mode,
    /// Next publish sequence number in confirm mode.
    pub next_publish_seq: u64,
    /// Confirms to send, in order: (seq, ack?, store position to wait
    /// for; 0 for none).
    pub confirms: VecDeque<(u64, bool, u64)>,
    /// `tx.commit-ok`s to send once the store reaches their position.
    pub commit_oks: VecDeque<u64>,
    pub tx_publishes: Vec<TxPublish>,
    pub tx_settles: Vec<TxSettle>,
    /// The hidden queue behind `amq.rabbitmq.reply-to` on this channel.
    pub reply_queue: Option<Arc<Queue>>,
    /// Exchanges this channel may write to (permission cache).
    pub write_ok: Vec<ShortStr>,
    /// The queue last declared here: an empty queue name refers to it.
    pub last_queue: Option<ShortStr>,
}

impl Channel {
    pub(crate) fn new() -> Self {
        Self {
            state: ChannelState::Open,
            pending: None,
            consumers: HashMap::new(),
            unacked: VecDeque::new(),
            next_tag: 1,
            credit: Arc::new(ChannelCredit::default()),
            consumer_prefetch: 0,
            mode: Mode::Normal,
            next_publish_seq: 1,
            confirms: VecDeque::new(),
            commit_oks: VecDeque::new(),
            tx_publishes: Vec::new(),
            tx_settles: Vec::new(),
            reply_queue: None,
            write_ok: Vec::new(),
            last_queue: None,
        }
    }

    /// Record a delivery written to the client; returns its tag.
    pub(crate) fn track(&mut self, delivery: Delivery, consumer: Option<Arc<AmqpConsumer>>) -> u64 {
        let tag = self.next_tag;
        self.next_tag += 1;
        if delivery.needs_ack {
            self.unacked.push_back(Unacked {
                tag,
                delivery,
                consumer,
            });
        }
        tag
    }

    /// Take the unacked deliveries an ack/nack/reject names. `Err` if the
    /// tag is unknown (406 PRECONDITION_FAILED).
    pub(crate) fn take_unacked(&mut self, tag: u64, multiple: bool) -> Result<Vec<Unacked>, ()> {
        if multiple {
            if tag == 0 {
                return Ok(self.unacked.drain(..).collect());
            }
            let end = self.unacked.partition_point(|u| u.tag <= tag);
            if end == 0 {
                // RabbitMQ accepts a multiple ack at or below the last tag
                // settled only if something matches; nothing does here.
                return Err(());
            }
            return Ok(self.unacked.drain(..end).collect());
        }
        let pos = self
            .unacked
            .binary_search_by_key(&tag, |u| u.tag)
            .map_err(|_| ())?;
        Ok(self.unacked.remove(pos).into_iter().collect())
    }

    /// Release the credit held by settled deliveries and tell their queues.
    /// The caller then kicks starved consumers ([`Channel::kick_starved`]):
    /// with a global prefetch, any consumer of the channel may have been
    /// refused because of another's deliveries.
    pub(crate) fn settle(settled: Vec<Unacked>, requeue: Option<bool>) {
        // Group by queue so a multiple-ack of a thousand messages costs one
        // lock per queue, not one per message.
        let mut by_queue: Vec<(Arc<Queue>, Vec<Returned>)> = Vec::new();
        let mut consumers: Vec<(Arc<AmqpConsumer>, u32)> = Vec::new();
        for u in settled {
            if let Some(c) = &u.consumer {
                match consumers.iter_mut().find(|(x, _)| Arc::ptr_eq(x, c)) {
                    Some((_, n)) => *n += 1,
                    None => consumers.push((c.clone(), 1)),
                }
            }
            let q = &u.delivery.queue;
            let r = Returned::from(&u.delivery);
            match by_queue.iter_mut().find(|(x, _)| Arc::ptr_eq(x, q)) {
                Some((_, v)) => v.push(r),
                None => by_queue.push((q.clone(), vec![r])),
            }
        }
        for (c, n) in &consumers {
            c.release(*n);
        }
        for (q, returned) in by_queue {
            match requeue {
                None => q.ack(
                    returned.len() as u64,
                    returned.iter().filter_map(|r| r.stored),
                ),
                Some(true) => q.requeue(returned),
                Some(false) => q.reject(returned),
            }
        }
    }

    /// Kick every starved consumer (after global credit was released or
    /// the outbox drained).
    pub(crate) fn kick_starved(&self) {
        for c in self.consumers.values() {
            c.kick_if_starved();
        }
    }
}
